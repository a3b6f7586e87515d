"""Where a report ran: the host's facts and the lab VMs its records name."""

import time

from workbench.environment import snapshot
from workbench.report.machine import machine_of


def _lab_record(store, kind, accelerator, release):
    with store.run(kind, {}) as run:
        run.update_environment(accelerator=accelerator, target_kernel_release=release)
    return store.get(run.id)


def test_host_facts_come_from_the_environment():
    env = {
        "hostname": "lab-1",
        "cpu_model": "Some CPU",
        "cpu_count": 2,
        "host_kernel_release": "6.12.0",
        "git": {"commit": "abc123", "dirty": True},
    }
    machine = machine_of(env)
    assert (machine.hostname, machine.cpu_model, machine.cpu_count, machine.host_kernel) == (
        "lab-1",
        "Some CPU",
        2,
        "6.12.0",
    )
    assert machine.git_commit == "abc123" and machine.git_dirty is True
    assert machine.accelerators == {} and machine.lab_kernels == {}
    assert machine_of().hostname == snapshot()["hostname"]


def test_lab_vms_of_the_records_made_since_the_report_started(store):
    before = _lab_record(store, "lab.cycle", "kvm", "7.1.0")
    time.sleep(0.01)
    with store.run("demo", {}) as demo:
        pass
    started = store.get(demo.id).started
    _lab_record(store, "lab.cycle", "tcg", "7.2.0-lab")
    _lab_record(store, "lab.cycle", "tcg", "7.2.0-lab")
    _lab_record(store, "bench.conversion", "tcg", "7.3.0-lab")
    with store.run("bench.hash", {}):
        pass  # a benchmark on the host: no lab VM
    machine = machine_of(store.get(demo.id).environment, store, since=started)
    assert machine.accelerators == {"tcg": 3}
    assert machine.lab_kernels == {"7.2.0-lab": 2, "7.3.0-lab": 1}
    assert machine_of({}, store).accelerators == {"kvm": 1, "tcg": 3}
    assert machine_of({}, store, until=started).lab_kernels == {"7.1.0": 1} and before.kind == "lab.cycle"
    assert machine.as_dict()["accelerators"] == {"tcg": 3}
