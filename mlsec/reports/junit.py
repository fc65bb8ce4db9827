"""JUnit XML: each CI threshold is a test case, so CI systems show a failed gate as a failed test.

The layout follows the de-facto schema that Jenkins, GitLab and GitHub test reporters read:
``<testsuites><testsuite><properties/><testcase/>...<system-out/></testsuite></testsuites>``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from mlsec.auditing.report import FORMATS, AuditReport
from mlsec.reports.markdown import render_markdown

__all__ = ["render_junit", "xml_text"]

# Characters XML 1.0 cannot carry at all, escaped or not; ElementTree would write them through
# and produce a file no parser accepts.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """Text XML 1.0 can carry: characters it cannot are replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", str(text))


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
    failures = sum(not t.passed for t in report.thresholds)
    tests = max(len(report.thresholds), 1)
    seconds = f"{sum(report.seconds(attack) for attack in report.attacks):.3f}"
    counts = {"tests": str(tests), "failures": str(failures), "errors": "0", "skipped": "0"}

    root = ET.Element("testsuites", {"name": "mlsec", **counts, "time": seconds})
    suite = ET.SubElement(
        root,
        "testsuite",
        {
            "name": xml_text(f"mlsec audit: {report.model} on {report.data}"),
            **counts,
            "time": seconds,
        },
    )
    properties = ET.SubElement(suite, "properties")
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
    for name, value in facts.items():
        ET.SubElement(properties, "property", {"name": xml_text(name), "value": xml_text(value)})

    if not report.thresholds:
        ET.SubElement(suite, "testcase", {"classname": "mlsec.audit", "name": "audit completed"})
    for threshold in report.thresholds:
        case = ET.SubElement(
            suite, "testcase", {"classname": "mlsec.audit", "name": xml_text(threshold.spec)}
        )
        if not threshold.passed:
            failure = ET.SubElement(
                case, "failure", {"message": xml_text(threshold.message), "type": "ThresholdFailed"}
            )
            failure.text = xml_text(threshold.message)

    ET.SubElement(suite, "system-out").text = xml_text(render_markdown(report))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
