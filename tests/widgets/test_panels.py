"""The widget layer is thin: it builds, refuses bad input with a message, and shows a controller's state."""

import pandas as pd

from workbench.lab.cycle import PHASES
from workbench.widgets.cycle_panel import CyclePanel
from workbench.widgets.records_browser import RecordsBrowser


def test_cycle_panel_has_a_bar_per_phase_and_refuses_bad_sizes(store):
    panel = CyclePanel(store=store)
    assert set(panel.bars) == set(PHASES) | {"store"}
    panel.memfd_size.value = "lots"
    panel.start()
    assert "is not a size" in panel.status.value
    assert panel.controller.state == "idle"
    panel.memfd_size.value = "64M"
    panel.session.value = "x" * 70
    panel.start()
    assert "at most 63" in panel.status.value


def test_cycle_panel_converts_anonymous_memory_only_when_asked(store):
    panel = CyclePanel(store=store)
    assert panel.workload().name == "memfd" and panel.rows["convert"].layout.display == "none"
    panel.convert.value = "vmsplice-splice"
    assert panel.rows["convert"].layout.display == ""
    workload = panel.workload()
    assert workload.name == "converted" and workload.convert == ["vmsplice-splice"]
    assert workload.phases_before_kexec == ("prepare", "convert", "preserve", "load")
    workload.validate()


def test_cycle_panel_reflects_controller_phases(store):
    panel = CyclePanel(store=store)
    controller = panel.controller
    controller.phases["prepare"].status = "done"
    controller.phases["prepare"].seconds = 1.25
    controller.phases["preserve"].status = "running"
    controller.state = "running"
    panel._changed(controller, "phase")
    assert panel.bars["prepare"].bar_style == "success" and panel.times["prepare"].value == "1.250 s"
    assert panel.bars["preserve"].bar_style == "info"
    assert panel.run_button.disabled and not panel.cancel_button.disabled


def test_records_browser_filters_and_compares(store):
    for n in (1, 2):
        with store.run("bench.x", {"n": n}) as run:
            run.add_table("t", pd.DataFrame({"phase": ["a"], "seconds": [float(n)]}))
    browser = RecordsBrowser(store)
    assert len(browser.runs.options) == 2
    browser.param.value = "n=2"
    browser.refresh()
    assert len(browser.runs.options) == 1
    browser.param.value = ""
    browser.refresh()
    browser.runs.value = tuple(v for _, v in browser.runs.options)
    assert browser.table.options == ("t",)


def test_cycle_panel_offers_every_kernel_to_boot_and_to_kexec_into(store):
    from workbench.lab.kernel import KERNEL_VERSIONS

    panel = CyclePanel(store=store)
    names = [value for _, value in panel.kernel.options]
    assert set(KERNEL_VERSIONS) <= {name.split("+")[0] for name in names}
    assert panel.params().next_kernel is None and panel.target_choice().kernel == names[0]
    panel.kernel.value = "7.3" if "7.3" in names else names[-1]
    panel.next_kernel.value = names[0]
    assert panel.params().next_kernel == names[0]
    assert panel.target_choice().kernel == panel.kernel.value


def test_records_browser_reruns_one_run_and_shows_the_verdict(store):
    from workbench.experiments.bench_metadata import record_bench_metadata

    summary, _ = record_bench_metadata(
        store,
        {"memory_bytes": 1 << 30, "memory": 1 << 30, "folio_mix": {"4096": 1.0}, "sparsity": 0.5,
         "fragmentation": 1.0, "memfds": 2, "seed": 1},
    )  # fmt: skip
    with store.run("inspect", {"target": "live"}):
        pass
    browser = RecordsBrowser(store)
    ids = [value for _, value in browser.runs.options]
    browser.runs.value = (ids[1],)  # the inspection cannot be re-run: the button says why
    assert browser.rerun_button.disabled and "cannot be re-run" in browser.rerun_button.tooltip
    browser.runs.value = tuple(ids)
    assert browser.rerun_button.disabled
    browser.runs.value = (summary["record_id"],)
    assert not browser.rerun_button.disabled
    browser.rerun()
    assert browser.rerunner.wait(120) == "done", browser.rerunner.error
    assert browser.rerunner.report.original_id == summary["record_id"]
    assert "fields differ" in browser.rerun_status.value and not browser.rerun_button.disabled
    assert browser.rerun_out.outputs  # the comparison table


def test_cycle_panel_picks_the_debian_guest_where_systemd_keeps_the_memfds(store):
    panel = CyclePanel(store=store)
    assert panel.rows["store"].layout.display == "none" and not panel.session.disabled
    panel.target.value = "guest"
    panel.memfds.value, panel.memfd_size.value = 3, "8M"
    workload = panel.workload()
    assert workload.name == "systemd" and workload.sizes == [8 << 20] * 3
    assert panel.target_choice().name == "guest" and panel.params().session == "systemd"
    assert panel.session.disabled and panel.convert.disabled
    shown = [p for p, row in panel.rows.items() if row.layout.display == ""]
    assert shown == ["boot", "prepare", "store", "load", "kexec", "restore", "verify", "finish"]
    panel.memfds.value = 0
    panel.start()
    assert "at least one memfd" in panel.status.value and panel.controller.state == "idle"
    panel.target.value = "qemu"
    assert not panel.session.disabled and panel.rows["store"].layout.display == "none"
