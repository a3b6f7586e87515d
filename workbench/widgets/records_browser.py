"""The records browser: filter runs by kind, status and parameters; pick two or more to compare side by side; re-run
one and see whether the new result agrees."""

from __future__ import annotations

import html

import ipywidgets as w
import pandas as pd
import plotly.express as px

from workbench.records import RecordStore
from workbench.widgets.controller import RecordsController
from workbench.widgets.rerun_controller import RerunController

__all__ = ["RecordsBrowser"]


class RecordsBrowser(w.VBox):
    def __init__(self, store: RecordStore | None = None):
        self.controller = RecordsController(store)
        self.kind = w.Dropdown(options=[""] + self.controller.kinds(), description="kind")
        self.status = w.Dropdown(options=["", "ok", "failed", "interrupted", "running"], description="status")
        self.param = w.Text(placeholder="key=value", description="parameter", continuous_update=False)
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.runs = w.SelectMultiple(options=[], rows=10, layout=w.Layout(width="100%"), description="runs")
        self.table = w.Dropdown(options=[], description="table")
        self.compare_button = w.Button(description="Compare", button_style="primary")
        self.rerun_button = w.Button(description="Re-run", icon="repeat", disabled=True)
        self.rerun_status = w.HTML("")
        self.rerun_out = w.Output()
        self.rerunner = RerunController(self.controller.store)
        self.rerunner.observe(self._rerun_changed)
        self.out = w.Output()
        for widget in (self.kind, self.status, self.param):
            widget.observe(lambda _: self.refresh(), names="value")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.runs.observe(lambda _: self._tables(), names="value")
        self.compare_button.on_click(lambda _: self.compare())
        self.rerun_button.on_click(lambda _: self.rerun())
        super().__init__(
            [
                w.HBox([self.kind, self.status, self.param, self.refresh_button]),
                self.runs,
                w.HBox([self.table, self.compare_button, self.rerun_button, self.rerun_status]),
                self.out,
                self.rerun_out,
            ]
        )
        self.refresh()

    def _filters(self) -> dict[str, str]:
        key, sep, value = self.param.value.partition("=")
        return {key.strip(): value.strip()} if sep and key.strip() else {}

    def refresh(self) -> None:
        frame = self.controller.runs(self.kind.value, self.status.value, **self._filters())
        self.runs.options = (
            [(f"{r.id}  {r.kind}  {r.status}", r.id) for r in frame.itertuples()] if not frame.empty else []
        )

    def _tables(self) -> None:
        ids = list(self.runs.value)
        self.table.options = self.controller.common_tables(ids) if ids else []
        reason = self.rerunner.can_rerun(ids[0]) if len(ids) == 1 else "pick one run to re-run it"
        self.rerun_button.disabled = bool(reason) or self.rerunner.running
        self.rerun_button.tooltip = reason or "run it again with the same parameters and compare"

    def rerun(self) -> None:
        """Re-runs the one selected run in the background; the comparison appears when it is done."""
        ids = list(self.runs.value)
        if len(ids) == 1:
            self.rerun_button.disabled = True
            self.rerunner.start(ids[0])

    def _rerun_changed(self, controller: RerunController, what: str) -> None:
        """Called from the re-run's worker thread."""
        if controller.state == "running":
            self.rerun_status.value = f"re-running {html.escape(controller.run_id or '')}…"
            return
        self.rerun_button.disabled = False
        self.rerun_out.clear_output()
        if controller.state == "failed":
            self.rerun_status.value = f"<b style='color:#b00'>re-run failed</b>: {html.escape(controller.error or '')}"
            return
        report = controller.report
        colour = "#070" if report.verdict == "agree" else "#b00"
        self.rerun_status.value = (
            f"<b style='color:{colour}'>{report.verdict}</b>: {len(report.comparison.differences)} of "
            f"{len(report.comparison.fields)} fields differ (re-run {', '.join(report.rerun_ids)}, record "
            f"{report.record_id})"
        )
        self.rerun_out.append_display_data(report.comparison.table())

    def compare(self) -> None:
        ids = list(self.runs.value)
        self.out.clear_output()
        with self.out:
            if len(ids) < 1:
                print("pick one or more runs")
                return
            from IPython.display import display

            display(self.controller.compare_results(ids))
            if self.table.value:
                frame = self.controller.compare([*ids], self.table.value)
                display(frame)
                numeric = [c for c in frame.columns if c != "run_id" and pd.api.types.is_numeric_dtype(frame[c])]
                label = next((c for c in frame.columns if frame[c].dtype == object and c != "run_id"), None)
                if numeric:
                    px.bar(frame, x=label or frame.index, y=numeric[-1], color="run_id", barmode="group").show()
