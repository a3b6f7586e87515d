"""The widget layer is thin: it builds, refuses bad input with a message, and shows a controller's state."""

import pandas as pd

from workbench.lab.cycle import PHASES
from workbench.widgets.cycle_panel import CyclePanel
from workbench.widgets.records_browser import RecordsBrowser


def test_cycle_panel_has_a_bar_per_phase_and_refuses_bad_sizes(store):
    panel = CyclePanel(store=store)
    assert set(panel.bars) == set(PHASES)
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
