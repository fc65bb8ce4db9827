"""What every HTML and JUnit report shares: the page, settings, environment, the JUnit document.

The audit, the privacy audit and the backdoor scan render different bodies into the same page
(one inline style sheet, no script, no external reference, every user-controlled string through
:func:`html.escape`) and the same JUnit layout (``<testsuites><testsuite><properties/>
<testcase/>...<system-out/>``, the de-facto schema Jenkins, GitLab and GitHub read).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

__all__ = ["TestCase", "html_page", "junit_document", "settings_sections", "xml_text"]

# Characters XML 1.0 cannot carry at all, escaped or not; ElementTree would write them through
# and produce a file no parser accepts.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """Text XML 1.0 can carry: characters it cannot are replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", str(text))


def html_page(title: str, css: str, body: Sequence[str]) -> str:
    """A complete, self-contained HTML page: ``title`` (escaped here), inline ``css``, ``body``."""
    return (
        "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en">',
                "<head>",
                '<meta charset="utf-8">',
                '<meta name="viewport" content="width=device-width, initial-scale=1">',
                f"<title>{escape(title)}</title>",
                f"<style>{css}</style>",
                "</head>",
                "<body>",
                *body,
                "</body>",
                "</html>",
            ]
        )
        + "\n"
    )


def settings_sections(config: Mapping[str, Any], environment: Mapping[str, Any]) -> list[str]:
    """The closing ``settings`` (the config as JSON) and ``environment`` (a table) sections."""
    lines = [
        '<section id="settings">',
        "<h2>Settings</h2>",
        f"<pre>{escape(json.dumps(config, indent=2, default=str, ensure_ascii=False))}</pre>",
        "</section>",
        '<section id="environment">',
        "<h2>Environment</h2>",
    ]
    if not environment:
        return [*lines, "<p>not recorded</p>", "</section>"]
    rows = [
        f"<tr><th>{escape(str(key))}</th><td>{escape(str(value))}</td></tr>"
        for key, value in environment.items()
    ]
    return [*lines, '<table id="environment-table">', *rows, "</table>", "</section>"]


@dataclass(frozen=True)
class TestCase:
    """One JUnit test case: its name, and the failure message when it failed."""

    __test__ = False  # not a pytest test class

    name: str
    failure: str | None = None


def junit_document(
    suite_name: str,
    *,
    classname: str,
    seconds: float,
    properties: Mapping[str, str],
    cases: Sequence[TestCase],
    failure_type: str,
    system_out: str,
) -> str:
    """JUnit XML with one test suite: its properties, its cases and the output under them."""
    failures = sum(case.failure is not None for case in cases)
    counts = {"tests": str(len(cases)), "failures": str(failures), "errors": "0", "skipped": "0"}
    time = f"{seconds:.3f}"
    root = ET.Element("testsuites", {"name": "mlsec", **counts, "time": time})
    suite = ET.SubElement(root, "testsuite", {"name": xml_text(suite_name), **counts, "time": time})
    props = ET.SubElement(suite, "properties")
    for name, value in properties.items():
        ET.SubElement(props, "property", {"name": xml_text(name), "value": xml_text(value)})
    for case in cases:
        element = ET.SubElement(
            suite, "testcase", {"classname": classname, "name": xml_text(case.name)}
        )
        if case.failure is not None:
            failure = ET.SubElement(
                element, "failure", {"message": xml_text(case.failure), "type": failure_type}
            )
            failure.text = xml_text(case.failure)
    ET.SubElement(suite, "system-out").text = xml_text(system_out)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
