"""Renderers of an audit report (and of the privacy audit's report): Markdown, HTML, JUnit XML.

Each is a function from an :class:`~mlsec.auditing.report.AuditReport` to text, registered in
:data:`mlsec.auditing.report.FORMATS`; the report's ``to_markdown``, ``to_html`` and ``to_junit``
call them. The HTML page draws its
accuracy-vs-eps plot with :mod:`mlsec.reports.plot` and its example images with
:mod:`mlsec.reports.png`; :mod:`mlsec.reports.labels` formats numbers the same way for every format.
"""

from mlsec.reports.html import render_html
from mlsec.reports.junit import render_junit
from mlsec.reports.markdown import render_markdown
from mlsec.reports.privacy import (
    render_privacy_html,
    render_privacy_junit,
    render_privacy_markdown,
)
from mlsec.reports.scan import render_scan_html, render_scan_junit, render_scan_markdown

__all__ = [
    "render_html",
    "render_junit",
    "render_markdown",
    "render_privacy_html",
    "render_privacy_junit",
    "render_privacy_markdown",
    "render_scan_html",
    "render_scan_junit",
    "render_scan_markdown",
]
