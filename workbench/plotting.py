"""Plotly set-up shared by notebooks and reports: figures that survive a static HTML export and work offline."""

from __future__ import annotations

import plotly.io as pio

__all__ = ["setup", "RENDERER"]

# The mimetype renders live in JupyterLab; "notebook" embeds plotly.js in the output so that nbconvert's HTML
# export shows the figure with no network.
RENDERER = "plotly_mimetype+notebook"


def setup() -> None:
    """Call once at the top of a notebook."""
    pio.renderers.default = RENDERER
    pio.templates.default = "plotly_white"
