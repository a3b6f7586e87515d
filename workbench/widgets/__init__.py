"""JupyterLab panels over plain controller classes (:mod:`workbench.widgets.controller`)."""

import importlib

__all__ = ["CyclePanel", "CycleController", "InspectorController", "InspectorPanel", "RecordsBrowser"]

_HOME = {
    "CyclePanel": "workbench.widgets.cycle_panel",
    "CycleController": "workbench.widgets.controller",
    "InspectorController": "workbench.widgets.inspector",
    "InspectorPanel": "workbench.widgets.inspector_panel",
    "RecordsBrowser": "workbench.widgets.records_browser",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'workbench.widgets' has no attribute {name!r}")
