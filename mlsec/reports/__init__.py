"""Renderers of an :class:`~mlsec.auditing.report.AuditReport`: Markdown, self-contained HTML, JUnit XML.

Each is a function from a report to text; :meth:`~mlsec.auditing.report.AuditReport.to_markdown`,
:meth:`~mlsec.auditing.report.AuditReport.to_html` and :meth:`~mlsec.auditing.report.AuditReport.to_junit` call them.
"""

from mlsec.reports.html import render_html
from mlsec.reports.junit import render_junit
from mlsec.reports.markdown import render_markdown

__all__ = ["render_html", "render_junit", "render_markdown"]
