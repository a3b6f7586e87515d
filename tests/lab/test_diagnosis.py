"""Reading a failed cycle's serial log: refused handovers by subsystem, a panic's message and location."""

from workbench.lab.diagnosis import Diagnosis, diagnose, diagnose_file

# the serial log of a forced kexec from 7.2 into 7.2+luo-compat-mismatch (host arrival stamp, then printk time)
LUO_PANIC = """\
[    26.346] [    0.011000] tsc: Unable to calibrate against PIT
[    26.692] [    0.245004] luo: LUO state is incompatible with 'luo-neg'
[    26.692] [    0.246151] Kernel panic - not syncing: The incoming tree failed to initialize properly \
[-22], disabling live update
[    26.692] [    0.246726] CPU: 0 UID: 0 PID: 1 Comm: swapper/0 Not tainted 7.2.13-lab+luo-compat-mismatch #1
[    26.692] [    0.246726] Call Trace:
[    26.693] [    0.246726]  <TASK>
[    26.694] [    0.246726]  vpanic+0x2f3/0x470
[    26.694] [    0.246726]  panic+0x4f/0x50
[    26.694] [    0.246726]  ? kho_retrieve_subtree+0x9c/0x100
[    26.694] [    0.246726]  liveupdate_early_init+0xeb/0x150
[    26.694] [    0.246726]  ? early_liveupdate_param+0x10/0x10
[    26.694] [    0.246726]  do_one_initcall+0x72/0x180
[    26.694] [    0.246726]  kernel_init_freeable+0x9a/0x240
[    26.695] [    0.246726]  ? rest_init+0xe0/0xe0
[    26.695] [    0.246726]  kernel_init+0x15/0x190
[    26.695] [    0.246726]  ret_from_fork+0x18a/0x1d0
[    26.695] [    0.246726]  ? rest_init+0xe0/0xe0
[    26.695] [    0.246726]  ret_from_fork_asm+0x11/0x20
[    26.696] [    0.246726]  </TASK>
"""


def test_a_luo_refusal_and_its_panic():
    diagnosis = diagnose(LUO_PANIC.splitlines())
    assert diagnosis.outcome == "panic" and diagnosis.subsystem == "LUO"
    assert diagnosis.refusals[0].compatible == "luo-neg"
    assert diagnosis.panic_message.startswith("The incoming tree failed to initialize properly")
    assert diagnosis.panic_location == "liveupdate_early_init"  # not the panic machinery, not a "? stale" frame
    summary = diagnosis.summary()
    assert "LUO refused the handover (it accepts 'luo-neg')" in summary and "in liveupdate_early_init" in summary
    assert diagnosis.as_dict()["subsystem"] == "LUO"


def test_refusals_of_kho_and_of_a_file_handler_without_a_panic():
    log = [
        "[    0.1] KHO: setup: handover FDT (0x1000) is incompatible with 'kho-v4': -22",
        "[    0.2] luo_file: No registered handler for compatible 'memfd-v3'",
    ]
    diagnosis = diagnose(log)
    assert diagnosis.outcome == "refused" and diagnosis.subsystem == "KHO"
    assert [(r.subsystem, r.compatible) for r in diagnosis.refusals] == [
        ("KHO", "kho-v4"),
        ("LUO file handler", "memfd-v3"),
    ]
    assert "LUO file handler refused the handover 'memfd-v3'" in diagnosis.summary()


def test_a_panic_without_a_trace_or_a_refusal():
    diagnosis = diagnose(["Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"])
    assert diagnosis.outcome == "panic" and diagnosis.subsystem is None and diagnosis.panic_location is None


def test_a_quiet_log_gives_no_diagnosis(tmp_path):
    assert diagnose(["[    0.1] Linux version 7.2.13", "WB-MARK {}"]) == Diagnosis()
    assert diagnose_file(tmp_path / "missing.log").summary() is None
    log = tmp_path / "serial.log"
    log.write_bytes(b"\xff\xfe garbage\n" + LUO_PANIC.encode())
    assert diagnose_file(log).subsystem == "LUO"
