"""JUnit XML: each CI threshold is a test case, so CI systems show a failed gate as a failed test.

The layout follows the de-facto schema that Jenkins, GitLab and GitHub test reporters read:
``<testsuites><testsuite><properties/><testcase/>...<system-out/></testsuite></testsuites>``.
"""

from __future__ import annotations

from mlsec.auditing.report import FORMATS, AuditReport
from mlsec.reports.markdown import render_markdown
from mlsec.reports.page import TestCase, junit_document

__all__ = ["render_junit"]


@FORMATS.register("junit")
def render_junit(report: AuditReport) -> str:
    """The report as JUnit XML.

    Args:
        report: the audit to report.

    Returns:
        One ``<testsuite>`` named ``mlsec audit: MODEL on DATA`` with one ``<testcase>`` per
        threshold (a failed threshold carries a ``<failure>`` with its message), or a single
        passing ``audit completed`` case when there are no thresholds. The suite's properties hold
        the headline numbers (``certified_METHOD@EPS`` for an audit that certified, and
        ``strength_note`` when the suite is weaker than the standard one); the Markdown summary
        is the suite's ``<system-out>``.

    """
    facts = {
        "model": report.model,
        "data": report.data,
        "norm": report.norm,
        "n": str(report.n),
        "clean_accuracy": f"{report.clean_accuracy:.6f}",
        **{f"worst_case@{eps:g}": f"{report.worst_case[eps]:.6f}" for eps in report.eps},
    }
    if report.certification is not None:
        method = report.certification.method
        for outcome in report.certification.outcomes:
            facts[f"certified_{method}@{outcome.eps:g}"] = f"{outcome.certified_accuracy:.6f}"
    if report.strength_note is not None:
        facts["strength_note"] = report.strength_note
    cases = [TestCase(t.spec, None if t.passed else t.message) for t in report.thresholds] or [
        TestCase("audit completed")
    ]
    return junit_document(
        f"mlsec audit: {report.model} on {report.data}",
        classname="mlsec.audit",
        seconds=sum(report.seconds(attack) for attack in report.attacks),
        properties=facts,
        cases=cases,
        failure_type="ThresholdFailed",
        system_out=render_markdown(report),
    )
