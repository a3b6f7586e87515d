"""Reading a failed cycle's serial log: refused handovers by subsystem, a panic's message and location."""

from workbench.lab.diagnosis import Diagnosis, diagnose, diagnose_file

LUO_PANIC = """\
[    0.412345] KHO: restored 3 preserved folios
[    0.512000] luo_core: LUO state is incompatible with 'luo-neg'
[    0.512100] Kernel panic - not syncing: The incoming tree failed to initialize properly [-EINVAL], disabling \
live update
[    0.512200] CPU: 0 UID: 0 PID: 1 Comm: swapper/0 Not tainted 7.2.13-lab+luo-compat-mismatch #1
[    0.512300] Call Trace:
[    0.512400]  <TASK>
[    0.512500]  dump_stack_lvl+0x5d/0x80
[    0.512600]  vpanic+0xdb/0x2d0
[    0.512700]  panic+0x6b/0x6b
[    0.512800]  luo_early_startup+0x1a1/0x1c0
[    0.512900]  luo_late_startup+0x9/0x30
[    0.513000]  </TASK>
[    0.513100] ---[ end Kernel panic - not syncing: The incoming tree failed to initialize properly [-EINVAL] ]---
"""


def test_a_luo_refusal_and_its_panic():
    diagnosis = diagnose(LUO_PANIC.splitlines())
    assert diagnosis.outcome == "panic" and diagnosis.subsystem == "LUO"
    assert diagnosis.refusals[0].compatible == "luo-neg"
    assert diagnosis.panic_message.startswith("The incoming tree failed to initialize properly")
    assert diagnosis.panic_location == "luo_early_startup"
    summary = diagnosis.summary()
    assert "LUO refused the handover (it accepts 'luo-neg')" in summary and "in luo_early_startup" in summary
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
