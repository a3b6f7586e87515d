"""The meeting report: each notebook's headline finding on a front page, and what changed since last time.

* :mod:`~workbench.report.headline` — :func:`show_headline`, which a notebook cell calls with its finding
  (:class:`Headline`, :class:`Number`)
* :mod:`~workbench.report.collect` — the headlines read back from an executed notebook
* :mod:`~workbench.report.machine` — where a report ran: the host, the lab VMs' accelerators and kernels
* :mod:`~workbench.report.changes` — every headline number compared with earlier reports, against its noise
* :mod:`~workbench.report.front_page` — ``index.html``: findings, figures, machine, changes, pages
* :mod:`~workbench.report.build` — notebooks executed into a report folder, pages and front page
* :mod:`~workbench.report.demo` — every notebook into one recorded report (``workbench demo``)

One notebook run recorded (``workbench run-notebook``) is :func:`workbench.notebooks.record_notebook`. The errors
are in :mod:`~workbench.report.errors`. Only the headline and the collector are imported here (a notebook imports
this package for :func:`show_headline`, and :mod:`workbench.notebooks` imports the collector); import the others
by module.
"""

from workbench.report.collect import headlines_of
from workbench.report.errors import (
    BadHeadline,
    ChangesError,
    DemoFailed,
    NotebookFailed,
    ReportError,
    UnknownNotebook,
)
from workbench.report.headline import MIME_TYPE, Finding, Headline, Number, show_headline

__all__ = [
    "MIME_TYPE",
    "Finding",
    "Headline",
    "Number",
    "show_headline",
    "headlines_of",
    "ReportError",
    "BadHeadline",
    "UnknownNotebook",
    "NotebookFailed",
    "DemoFailed",
    "ChangesError",
]
