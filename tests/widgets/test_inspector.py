"""The inspector: its controller reads a kernel in a worker thread and says clearly what went wrong; on the lab VM's
real dump (the shared cycle of tests/conftest.py) it shows preserved pages, the session and the figures; the panel
is a thin layer whose Open button drives the controller."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import MEMFD_SIZE, TOKENS
from workbench.widgets.inspector import InspectorController, default_vmlinux
from workbench.widgets.inspector_panel import InspectorPanel

lab = pytest.mark.lab
PAGE = 4096


def _statuses(controller: InspectorController) -> list[str]:
    seen: list[str] = []
    controller.observe(lambda c, what: seen.append(c.status))
    return seen


# -- no VM needed -----------------------------------------------------------------------------------------------
def test_starts_idle_with_the_lab_kernel_vmlinux(store):
    controller = InspectorController(store)
    assert controller.status == "idle" and controller.error is None
    default = default_vmlinux()
    assert controller.vmlinux == (str(default) if default else "")


def test_a_vmcore_that_does_not_exist_fails_with_its_path(store, tmp_path):
    controller = InspectorController(store)
    seen = _statuses(controller)
    missing = tmp_path / "no-such-vmcore.elf"
    controller.open("vmcore", vmcore=missing)
    assert controller.wait(60) == "failed"
    assert seen == ["opening", "failed"]
    assert controller.error == f"FileNotFoundError: vmcore {missing} does not exist"
    assert controller.kho_summary is None and controller.memory_figure is None
    record = store.get(controller.record_id)  # recorded like `workbench inspect`, as a failed run
    assert record.kind == "inspect" and record.status == "failed" and str(missing) in record.error
    assert record.params["vmcore"] == str(missing)


def test_a_file_that_is_not_a_dump_is_named(store, tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not a kernel dump\n" * 100)
    controller = InspectorController(store)
    controller.open("vmcore", vmcore=junk)
    assert controller.wait(60) == "failed"
    assert controller.error_type == "UnreadableDump"
    assert "is not a kernel dump" in controller.error


def test_a_vm_socket_that_does_not_exist_says_so(store, tmp_path):
    controller = InspectorController(store)
    controller.open("vm", qmp_socket=tmp_path / "qmp")
    assert controller.wait(60) == "failed"
    assert controller.error_type == "VmUnreachable"
    assert "does not exist: is the VM running" in controller.error
    assert store.get(controller.record_id).params["qmp"] == str(tmp_path / "qmp")


def test_missing_inputs_fail_at_once_without_a_worker(store):
    controller = InspectorController(store)
    seen = _statuses(controller)
    controller.open("vmcore", vmcore="  ")
    assert controller.status == "failed" and not controller.running
    assert "no vmcore given" in controller.error and seen == ["failed"]
    controller.open("vm")
    assert "no QMP socket given" in controller.error
    controller.open("dump")
    assert "source is one of vm, vmcore" in controller.error
    assert store.runs(kind="inspect") == []  # nothing was opened, nothing recorded


def test_without_a_store_nothing_is_recorded(tmp_path):
    controller = InspectorController(record=False)
    controller.open("vmcore", vmcore=tmp_path / "x")
    assert controller.wait(60) == "failed" and controller.record_id is None


def test_a_broken_observer_does_not_stop_the_worker(store, tmp_path):
    controller = InspectorController(store)

    def broken(c, what):
        raise ValueError("boom")

    controller.observe(broken)
    controller.open("vmcore", vmcore=tmp_path / "x")
    assert controller.wait(60) == "failed"
    assert any("boom" in e for e in controller.observer_errors)


def test_constructing_the_panel_opens_nothing(store, tmp_path):
    panel = InspectorPanel(vmcore=tmp_path / "x", store=store)
    assert panel.comm is not None  # the widget's own comm is open: it can be displayed
    assert panel.controller.status == "idle" and "idle" in panel.status.value
    assert store.runs(kind="inspect") == []


def test_panel_switches_inputs_and_shows_a_failure(store, tmp_path):
    panel = InspectorPanel(store=store)
    assert panel.source.value == "vmcore"
    assert panel.vm_inputs.layout.display == "none" and panel.vmcore_inputs.layout.display is None
    panel.source.value = "vm"
    assert panel.vm_inputs.layout.display is None and panel.vmcore_inputs.layout.display == "none"
    panel.qmp_socket.value = str(tmp_path / "qmp")
    panel.open_button.click()
    assert panel.controller.wait(60) == "failed"
    assert "failed" in panel.status.value and "VmUnreachable" in panel.status.value
    assert not panel.open_button.disabled
    assert panel.kho_table.value == "" and panel.figures.outputs == ()


# -- the lab VM's real dump -------------------------------------------------------------------------------------
@lab
def test_real_vmcore_shows_preserved_pages_the_session_and_figures(inspection, lab_kernel, store):
    vmcore = inspection.result["vmcores"]["preserve"]
    controller = InspectorController(store, vmlinux=lab_kernel.vmlinux)
    seen = _statuses(controller)
    controller.open("vmcore", vmcore=vmcore)
    assert controller.running  # open() returned while the worker reads the dump
    with pytest.raises(RuntimeError, match="already running"):
        controller.open()
    assert controller.wait(900) == "ready", controller.error
    assert seen == ["opening", "ready"]
    assert controller.errors == {}

    kho = dict(zip(controller.kho_summary["field"], controller.kho_summary["value"], strict=True))
    assert kho["enabled"] == "True"
    assert int(kho["preserved_pages"]) >= MEMFD_SIZE // PAGE  # the memfd's pages and KHO's own
    luo = controller.luo_summary
    assert list(luo["direction"]) == ["outgoing"] * len(TOKENS)
    assert list(luo["token"]) == TOKENS and luo["session"].iloc[0]

    lanes = {t.name: t for t in controller.memory_figure.data}
    preserved = [t for name, t in lanes.items() if name.startswith("preserved order")]
    assert preserved and sum(len(t.x) for t in preserved) > 0
    assert "scratch" in lanes and len(lanes["scratch"].x) > 0
    sunburst = controller.sessions_figure.data[0]
    assert len(sunburst.ids) >= 3  # session, file, folio runs
    assert max(sunburst.values) == MEMFD_SIZE // PAGE * len(TOKENS)

    live = inspection.snapshots["preserve"]  # the dump says what QMP said while the guest was paused
    assert controller.snapshot.kho == live.kho and controller.snapshot.luo == live.luo
    record = store.get(controller.record_id)
    assert record.kind == "inspect" and record.status == "ok"
    assert {"kho_summary", "luo_summary", "memory_map"} <= set(record.table_names)
    assert record.result["kho"]["preserved_pages"] == int(kho["preserved_pages"])
    assert "ready: vmcore" in controller.describe() and controller.record_id in controller.describe()
    assert "moment preserved" in controller.describe()  # the dump was taken after preserve

    controller.refresh()  # the same dump again
    assert controller.wait(900) == "ready"
    assert controller.snapshot.kho == live.kho


@lab
def test_real_vmcore_with_another_elf_as_vmlinux_is_refused(inspection, store):
    controller = InspectorController(store)
    controller.open("vmcore", vmcore=inspection.result["vmcores"]["preserve"], vmlinux=sys.executable)
    assert controller.wait(600) == "failed"
    assert controller.error_type == "VmlinuxMismatch"
    assert "does not match" in controller.error and "build id" in controller.error
    assert controller.kho_summary is None and controller.memory_figure is None
    assert store.get(controller.record_id).status == "failed"


@lab
def test_panel_open_button_reads_the_real_vmcore(inspection, lab_kernel, store):
    panel = InspectorPanel(vmcore=inspection.result["vmcores"]["preserve"], vmlinux=lab_kernel.vmlinux, store=store)
    assert panel.vmcore_inputs.layout.display is None
    panel.memory.value = False  # the memory map is the controller test's; this one checks the wiring
    panel.open_button.click()
    assert panel.open_button.disabled  # while the worker reads
    assert panel.controller.wait(900) == "ready", panel.controller.error
    assert not panel.open_button.disabled
    assert "ready" in panel.status.value and panel.controller.record_id in panel.status.value
    assert "preserved_pages" in panel.kho_table.value
    assert "outgoing" in panel.luo_table.value and str(TOKENS[0]) in panel.luo_table.value
    assert panel.controller.memory_figure is None  # not asked for
    (sunburst,) = panel.figures.outputs
    data = sunburst["data"]["application/vnd.plotly.v1+json"]
    assert data["data"][0]["type"] == "sunburst" and len(data["data"][0]["ids"]) >= 3
    json.dumps(panel.figures.outputs)  # the Output widget's state must be JSON


@lab
def test_panel_lists_the_running_lab_vm_and_reads_it_live(inspection):
    """In the shared cycle's pause after preserve, the panel offered the paused VM, and picking it and pressing
    Open read the live kernel over QMP: the outgoing session with the memfd's token, and the memory map."""
    assert not [e for e in inspection.errors if " panel:" in e], inspection.errors
    vm_sockets = [qmp for _, qmp in inspection.running_vms if qmp]
    assert vm_sockets and all(qmp.endswith("/qmp") for qmp in vm_sockets)
    panel = inspection.live_panel
    assert panel["qmp_socket"] in vm_sockets
    assert panel["status"] == "ready", panel["error"]
    assert list(panel["luo"]["token"]) == TOKENS and set(panel["luo"]["direction"]) == {"outgoing"}
    kho = dict(zip(panel["kho"]["field"], panel["kho"]["value"], strict=True))
    assert int(kho["preserved_pages"]) >= MEMFD_SIZE // PAGE
    assert panel["figures"] == 2 and panel["record_id"]


@lab
def test_a_vm_that_stopped_is_no_longer_offered(lab_kernel, tmp_path):
    from workbench.lab.initramfs import build_initramfs
    from workbench.lab.qemu import QemuVM, VMConfig

    config = VMConfig(kernel=lab_kernel.bzimage, initrd=build_initramfs(), cmdline="console=ttyS0 wb.phase=probe")
    with QemuVM(config, tmp_path / "vm") as vm:
        offered = [qmp for _, qmp in InspectorController.running_vms()]
        assert str(vm.qmp_sock) in offered
    assert str(vm.qmp_sock) not in [qmp for _, qmp in InspectorController.running_vms()]
