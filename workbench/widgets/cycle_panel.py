"""The cycle control panel: parameters, Run and Cancel, a progress line per phase, the serial log, and when done
a timeline of the phases with the blackout marked, the verification result and the record id."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w

import workbench.plotting
from workbench.lab.cycle import PHASES, phases_of
from workbench.lab.guest.target import GuestTarget
from workbench.lab.kernel import kernel_choices
from workbench.lab.params import CycleParams
from workbench.lab.qemu_target import QemuTarget
from workbench.lab.workload import Workload, make_workload
from workbench.records import RecordStore
from workbench.units import parse_size
from workbench.widgets.controller import CycleController

__all__ = ["CyclePanel", "figure_bundle", "TARGETS", "PANEL_PHASES"]

_STATUS_STYLE = {"pending": "", "running": "info", "done": "success", "failed": "danger"}
#: the panel's targets: the lab VM (busybox and the workbench's agent) or the Debian guest (systemd keeps the memfds)
TARGETS = [("lab VM (QEMU on this machine)", "qemu"), ("Debian sid guest: systemd's fd store", "guest")]
#: every phase a cycle of the panel's workloads reports, in order
PANEL_PHASES = (*PHASES[:2], "store", *PHASES[2:])


def figure_bundle(fig) -> dict[str, Any]:
    """A plotly figure as a display MIME bundle that JupyterLab renders live and HTML exports keep."""
    import plotly.io as pio

    data = fig.to_dict()
    bundle: dict[str, Any] = {}
    for name in workbench.plotting.RENDERER.split("+"):
        bundle.update(pio.renderers[name].to_mimebundle(data))
    return bundle


class CyclePanel(w.VBox):
    """``CyclePanel()`` in a notebook cell; the cycle runs in a worker thread, the kernel stays responsive."""

    def __init__(
        self,
        memfds: int = 2,
        memfd_size: str = "64M",
        session: str = "workbench",
        convert: str = "",
        kernel: str | None = None,
        target: str = "qemu",
        store: RecordStore | None = None,
        controller: CycleController | None = None,
    ):
        self.controller = controller or CycleController(store)
        choices = kernel_choices()
        if kernel is not None and kernel not in [name for _, name in choices]:
            choices.insert(0, (kernel, kernel))
        self.target = w.Dropdown(options=TARGETS, value=target, description="target")
        self.kernel = w.Dropdown(options=choices, value=kernel or choices[0][1], description="kernel")
        self.next_kernel = w.Dropdown(options=[("the same kernel", "")] + choices, value="", description="next kernel")
        self.memfds = w.BoundedIntText(value=memfds, min=0, max=64, description="memfds")
        self.memfd_size = w.Text(value=memfd_size, description="memfd size")
        self.session = w.Text(value=session, description="session")
        from workbench.kernels.conversion import STRATEGIES

        self.convert = w.Dropdown(
            options=[("filled in place", "")] + [(f"anonymous → {name}", name) for name in STRATEGIES],
            value=convert,
            description="memfd data",
        )
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.cancel_button = w.Button(description="Cancel", icon="stop", disabled=True)
        self.status = w.HTML("<b>idle</b>")
        self.bars = {
            p: w.FloatProgress(value=0, min=0, max=1, description=p, bar_style="", layout=w.Layout(width="420px"))
            for p in PANEL_PHASES
        }
        self.times = {p: w.Label("") for p in PANEL_PHASES}
        self.console = w.Textarea(value="", layout=w.Layout(width="100%", height="240px"), disabled=True)
        self.log_pane = w.Accordion(children=[self.console], titles=("serial console",), selected_index=None)
        self.figure = w.Output()
        self.outcome = w.HTML("")
        self.run_button.on_click(lambda _: self.start())
        self.cancel_button.on_click(lambda _: self.controller.cancel())
        self.controller.observe(self._changed)
        self.convert.observe(lambda _: self._show_rows(), names="value")
        self.target.observe(lambda _: self._show_rows(), names="value")
        form = w.VBox(
            [self.target, self.kernel, self.next_kernel, self.memfds, self.memfd_size, self.session, self.convert]
        )
        self.rows = {p: w.HBox([self.bars[p], self.times[p]]) for p in PANEL_PHASES}
        progress = w.VBox(list(self.rows.values()))
        self._show_rows()
        super().__init__(
            [
                w.HBox([form, progress]),
                w.HBox([self.run_button, self.cancel_button, self.status]),
                self.outcome,
                self.figure,
                self.log_pane,
            ]
        )

    @property
    def in_guest(self) -> bool:
        return self.target.value == "guest"

    def _show_rows(self) -> None:
        """The rows of the phases the chosen cycle goes through; in the guest systemd names the session and the
        memfds are filled in place."""
        self.convert.disabled = self.session.disabled = self.in_guest
        try:
            shown = set(phases_of(self.workload()))
        except ValueError:
            shown = set(PHASES) - {"convert"}
        for phase, row in self.rows.items():
            row.layout.display = "" if phase in shown else "none"

    def workload(self) -> Workload:
        """The workload the panel's fields describe: memfds filled in place, converted from anonymous memory, or
        (in the guest) pushed into a service's fd store that systemd keeps."""
        size = parse_size(self.memfd_size.value)
        if self.in_guest:
            if self.memfds.value < 1:
                raise ValueError("systemd's fd store needs at least one memfd")
            return make_workload("systemd", sizes=[size] * self.memfds.value)
        common = {"memfds": self.memfds.value, "memfd_size": size}
        if self.convert.value:
            return make_workload("converted", convert=[self.convert.value], **common)
        return make_workload("memfd", **common)

    def params(self) -> CycleParams:
        session = "systemd" if self.in_guest else self.session.value
        return CycleParams(session=session, next_kernel=self.next_kernel.value or None)

    def target_choice(self) -> QemuTarget:
        """The lab VM, or the Debian guest, booting the chosen kernel (both built in the worker on first use)."""
        if self.in_guest:
            return GuestTarget(kernel=self.kernel.value)
        return QemuTarget(kernel=self.kernel.value)

    def start(self) -> None:
        try:
            self.controller.start(self.workload(), self.params(), target=self.target_choice())
        except (ValueError, RuntimeError) as exc:
            self.status.value = f"<b style='color:#b00'>{html.escape(str(exc))}</b>"

    def run_and_wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Starts the cycle and blocks until it ends (headless notebooks); returns the result."""
        self.start()
        self.controller.wait(timeout)
        if self.controller.result is None:
            raise RuntimeError(self.controller.error or "the cycle did not finish")
        return self.controller.result

    # -- observer, called from the worker thread -------------------------------------------------------------
    def _changed(self, controller: CycleController, what: str) -> None:
        if what == "line":
            lines = list(controller.log)[-400:]
            self.console.value = "\n".join(lines)
            return
        for name, phase in controller.phases.items():
            if name not in self.bars:
                continue
            bar = self.bars[name]
            bar.bar_style = _STATUS_STYLE[phase.status]
            bar.value = 1 if phase.status in ("done", "failed") else (0.5 if phase.status == "running" else 0)
            self.times[name].value = f"{phase.seconds:.3f} s" if phase.seconds is not None else ""
        running = controller.state == "running"
        self.run_button.disabled = running
        self.cancel_button.disabled = not running
        state = html.escape(controller.state)
        detail = html.escape(controller.detail)
        self.status.value = f"<b>{state}</b> <small>{detail}</small>"
        if what == "state" and not running:
            self._show_outcome(controller)

    def _show_outcome(self, controller: CycleController) -> None:
        result = controller.result
        record = html.escape(controller.record_id or "")
        if result is None:
            self.outcome.value = (
                f"<div class='wb-outcome' style='color:#b00'><b>{html.escape(controller.state)}</b>: "
                f"{html.escape(controller.error or '')}<br>record <code>{record}</code></div>"
            )
            return
        ok = result["verified"]
        color = "#070" if ok else "#b00"
        self.outcome.value = (
            f"<div class='wb-outcome' style='color:{color}'><b>{'verified' if ok else 'NOT verified'}</b>: "
            f"{result['pages_checked']} pages, session <code>{html.escape(result['session'])}</code>, "
            f"blackout {result['blackout_s']:.3f} s, {html.escape(str(result['kernel_release_before']))} → "
            f"{html.escape(str(result['kernel_release_after']))}; record <code>{record}</code> "
            f"(<code>workbench records show {record}</code>)</div>"
        )
        from workbench.lab.plots import cycle_timeline

        # Called from the worker thread, where IPython's display machinery does not apply: the Output widget gets
        # the figure's MIME bundle directly (plotly's JupyterLab mimetype, plus HTML for static exports).
        self.figure.outputs = (
            {"output_type": "display_data", "data": figure_bundle(cycle_timeline(result)), "metadata": {}},
        )
