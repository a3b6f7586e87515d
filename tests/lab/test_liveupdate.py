"""The /dev/liveupdate ABI as the workbench encodes it (checked against the 7.2 uapi header's layout)."""

import errno

import pytest

from workbench.lab import liveupdate as L


def test_ioctl_numbers_are_io_0xba():
    assert L._io(L.CMD_CREATE_SESSION) == 0xBA00
    assert L._io(L.CMD_RETRIEVE_SESSION) == 0xBA01
    assert L._io(L.CMD_SESSION_PRESERVE_FD) == 0xBA40
    assert L._io(L.CMD_SESSION_RETRIEVE_FD) == 0xBA41
    assert L._io(L.CMD_SESSION_FINISH) == 0xBA42
    assert L._io(L.CMD_SESSION_GET_NAME) == 0xBA43


def test_struct_sizes_match_the_uapi():
    assert L._SESSION_ARG.size == 4 + 4 + 64
    assert L._FD_ARG.size == 16  # __u32 size, __s32 fd, __aligned_u64 token
    assert L._FINISH_ARG.size == 8
    assert L._NAME_ARG.size == 72


def test_session_name_limits():
    assert L.check_session_name("a" * 63) == b"a" * 63
    with pytest.raises(ValueError, match="64 bytes; LUO allows at most 63"):
        L.check_session_name("a" * 64)
    with pytest.raises(ValueError, match="empty"):
        L.check_session_name("")


def test_missing_device_says_what_to_do(tmp_path):
    with pytest.raises(L.LiveUpdateError, match="kho=on liveupdate=on"):
        L.LiveUpdate(str(tmp_path / "liveupdate"))


def test_kexec_file_load_refuses_what_is_no_kernel_and_names_its_flags(tmp_path):
    missing = tmp_path / "no-bzImage"
    with pytest.raises(FileNotFoundError):
        L.kexec_file_load(str(missing), None, "console=ttyS0", flags=L.KEXEC_FILE_ON_CRASH)
    garbage = tmp_path / "bzImage"
    garbage.write_bytes(b"not a kernel" * 100)
    # refused whoever runs it (EPERM without CAP_SYS_BOOT, ENOSYS under seccomp, ENOEXEC for a file that is no
    # bzImage, EADDRNOTAVAIL without a crash reservation), with the kernel's errno
    with pytest.raises(OSError, match=r"kexec_file_load\(.*bzImage, flags 0x6\)") as info:
        L.kexec_file_load(str(garbage), None, "console=ttyS0", flags=L.KEXEC_FILE_ON_CRASH)
    assert info.value.errno in errno.errorcode
    with pytest.raises(FileNotFoundError):  # the kernel's descriptor is closed when the initrd cannot be opened
        L.kexec_file_load(str(garbage), str(tmp_path / "no-initrd"), "console=ttyS0")
