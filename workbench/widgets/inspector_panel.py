"""The inspector panel: pick a running lab VM or a vmcore, press Open, see the KHO and LUO summaries, the physical
memory map and the LUO sessions. A thin layer over :class:`~workbench.widgets.inspector.InspectorController`,
which reads the kernel in a worker thread."""

from __future__ import annotations

import html
from pathlib import Path

import ipywidgets as w

from workbench.records import RecordStore
from workbench.widgets.cycle_panel import figure_bundle
from workbench.widgets.inspector import METHODS, InspectorController

__all__ = ["InspectorPanel", "frame_html"]

_STATUS_COLOR = {"idle": "#555", "opening": "#05a", "ready": "#070", "failed": "#b00"}


def frame_html(frame, title: str) -> str:
    """A DataFrame as an HTML table under a heading (empty frames say so)."""
    heading = f"<h4 style='margin:.6em 0 .2em'>{html.escape(title)}</h4>"
    if frame is None:
        return heading + "<i>not read</i>"
    if frame.empty:
        return heading + "<i>none</i>"
    return heading + frame.to_html(index=False, border=0, classes="wb-table", na_rep="")


class InspectorPanel(w.VBox):
    """``InspectorPanel(vmcore=..., vmlinux=...)`` in a notebook cell; Open (or :meth:`start`) reads the kernel in a
    worker thread, the notebook stays responsive. ``vmlinux`` defaults to the cached lab kernel's."""

    def __init__(
        self,
        vmcore: str | Path | None = None,
        qmp_socket: str | Path | None = None,
        vmlinux: str | Path | None = None,
        source: str | None = None,
        store: RecordStore | None = None,
        controller: InspectorController | None = None,
    ):
        self.controller = controller or InspectorController(store, vmlinux=vmlinux)
        c = self.controller
        if source is None:
            source = "vm" if qmp_socket and not vmcore else c.source
        self.source = w.ToggleButtons(options=[("live VM", "vm"), ("vmcore", "vmcore")], value=source)
        self.qmp_socket = w.Text(
            value=str(qmp_socket or c.qmp_socket),
            description="QMP socket",
            placeholder="a running lab VM's QMP socket (vm.qmp_sock)",
            layout=w.Layout(width="640px"),
        )
        self.method = w.Dropdown(options=list(METHODS), value=c.method, description="read via")
        self.running = w.Dropdown(options=[], description="running VMs", layout=w.Layout(width="640px"))
        self.rescan_button = w.Button(description="Rescan", icon="refresh")
        self.running.observe(self._pick_vm, names="value")
        self.rescan_button.on_click(lambda _: self.rescan())
        self.vmcore = w.Text(
            value=str(vmcore or c.vmcore),
            description="vmcore",
            placeholder="a dump: ELF, kdump or flattened (vmcore-preserve.elf)",
            layout=w.Layout(width="640px"),
        )
        self.vmlinux = w.Text(
            value=str(vmlinux or c.vmlinux),
            description="vmlinux",
            placeholder="empty: searched by the kernel's build id",
            layout=w.Layout(width="640px"),
        )
        self.memory = w.Checkbox(value=c.memory, description="memory map (walks the free lists)")
        self.open_button = w.Button(description="Open", button_style="primary", icon="folder-open")
        self.status = w.HTML("")
        self.kho_table = w.HTML("", layout=w.Layout(margin="0 2em 0 0"))
        self.luo_table = w.HTML("")
        self.figures = w.Output()
        self.vm_inputs = w.VBox([w.HBox([self.running, self.rescan_button]), w.HBox([self.qmp_socket, self.method])])
        self.vmcore_inputs = w.HBox([self.vmcore])
        self.source.observe(lambda _: self._show_inputs(), names="value")
        self.open_button.on_click(lambda _: self.start())
        c.observe(self._changed)
        super().__init__(
            [
                self.source,
                self.vm_inputs,
                self.vmcore_inputs,
                self.vmlinux,
                w.HBox([self.open_button, self.memory]),
                self.status,
                w.HBox([self.kho_table, self.luo_table], layout=w.Layout(align_items="flex-start")),
                self.figures,
            ]
        )
        self._show_inputs()
        self.rescan()
        self._changed(c, "state")

    def rescan(self) -> None:
        """Lists the lab VMs running on this machine; picking one fills in its QMP socket."""
        choices = self.controller.running_vms()
        self.running.options = [("(none running)" if not choices else "(pick one)", "")] + choices
        self.running.value = ""

    def _pick_vm(self, change) -> None:
        if change["new"]:
            self.qmp_socket.value = change["new"]

    def _show_inputs(self) -> None:
        vm = self.source.value == "vm"
        self.vm_inputs.layout.display = None if vm else "none"
        self.vmcore_inputs.layout.display = "none" if vm else None

    # -- commands --------------------------------------------------------------------------------------------
    # not ``open``: ipywidgets' Widget.open() opens the widget's comm and is called by its constructor
    def start(self) -> None:
        """Opens what the inputs say, in the controller's worker thread."""
        try:
            self.controller.open(
                self.source.value,
                qmp_socket=self.qmp_socket.value,
                vmcore=self.vmcore.value,
                vmlinux=self.vmlinux.value,
                method=self.method.value,
                memory=self.memory.value,
            )
        except RuntimeError as exc:
            self.status.value = f"<b style='color:#b00'>{html.escape(str(exc))}</b>"

    def start_and_wait(self, timeout: float | None = None) -> str:
        """Opens and blocks until done (tests, headless runs); returns the controller's status."""
        self.start()
        return self.controller.wait(timeout)

    # -- observer, called from the worker thread -------------------------------------------------------------
    def _changed(self, controller: InspectorController, what: str) -> None:
        color = _STATUS_COLOR.get(controller.status, "#555")
        self.status.value = (
            f"<div class='wb-inspect-status' style='color:{color}'><b>{html.escape(controller.status)}</b> "
            f"{html.escape(controller.describe().partition(': ')[2])}</div>"
        )
        self.open_button.disabled = controller.status == "opening"
        ready = controller.status == "ready"
        self.kho_table.value = frame_html(controller.kho_summary, "KHO") if ready else ""
        self.luo_table.value = frame_html(controller.luo_summary, "LUO sessions and files") if ready else ""
        # From the worker thread IPython's display machinery does not apply: the Output widget gets each figure's
        # MIME bundle directly (plotly's JupyterLab mimetype, plus HTML for static exports), as the cycle panel does.
        figures = [f for f in (controller.memory_figure, controller.sessions_figure) if f is not None]
        self.figures.outputs = tuple(
            {"output_type": "display_data", "data": figure_bundle(fig), "metadata": {}} for fig in figures
        )
