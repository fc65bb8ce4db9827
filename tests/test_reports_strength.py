"""The strength note (a suite weaker than ``standard``) in every report format; the plot's lines."""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from test_reports import (
    CHROMIUM,
    CLEAN,
    EPS,
    REQUIRE_BROWSER,
    chromium_screenshot,
    make_report,
    parse,
    pixels_near,
)

from mlsec.auditing.report import AuditReport
from mlsec.reports.plot import ATTACK_COLORS, WORST_CASE_COLOR, plot_series

# Backticks, underscores, "<" and "&" test escaping; the command is what a user copies.
NOTE = (
    "suite `default` (fgsm, pgd) is weaker than `standard` <apgd_ce, square> & may overstate"
    " robustness; for the standard evaluation run: mlsec audit --suite standard"
)
NOTE_BACKGROUND = "#fff3cd"


@pytest.fixture(scope="module")
def noted() -> AuditReport:
    return make_report(strength_note=NOTE)


@pytest.fixture(scope="module")
def plain() -> AuditReport:
    return make_report()


# --- Markdown -------------------------------------------------------------------------------------


def test_markdown_note_follows_the_table(noted: AuditReport) -> None:
    lines = noted.to_markdown().splitlines()
    worst = next(i for i, line in enumerate(lines) if line.startswith("| **worst case** |"))
    assert lines[worst + 1] == ""
    note = lines[worst + 2]
    assert note == (
        r"> **Note:** suite \`default\` (fgsm, pgd) is weaker than \`standard\` \<apgd\_ce,"
        r" square> \& may overstate robustness; for the standard evaluation run:"
        " mlsec audit --suite standard"
    )
    assert lines[worst + 3 : worst + 5] == ["", "### Thresholds"]


def test_markdown_without_note_is_unchanged(noted: AuditReport, plain: AuditReport) -> None:
    text = plain.to_markdown()
    assert "Note" not in text
    assert not any(line.startswith(">") for line in text.splitlines())
    # The note adds exactly a blank line and the note line; nothing else changes.
    with_note = noted.to_markdown().splitlines()
    at = next(i for i, line in enumerate(with_note) if line.startswith("> **Note:**"))
    assert with_note[at - 1] == ""
    assert with_note[: at - 1] + with_note[at + 1 :] == text.splitlines()


# --- HTML -----------------------------------------------------------------------------------------


def test_html_note_under_the_results_table(noted: AuditReport) -> None:
    page = noted.to_html()
    parsed = parse(page)
    assert parsed.errors == [] and parsed.stack == []
    assert parsed.ids["strength-note"] == "p"
    section = re.search(r'<section id="robust-accuracy">.*?</section>', page, re.DOTALL)
    assert section is not None
    table_end = section.group().index("</table>")
    note_at = section.group().index('id="strength-note"')
    assert note_at > table_end
    assert (
        "suite `default` (fgsm, pgd) is weaker than `standard` &lt;apgd_ce, square&gt; &amp; may"
        " overstate robustness; for the standard evaluation run: mlsec audit --suite standard"
        in section.group()
    )
    assert "apgd_ce" not in parsed.tags


def test_html_without_note_has_no_note(noted: AuditReport, plain: AuditReport) -> None:
    page = plain.to_html()
    assert "strength-note" not in page and "Note:" not in page
    assert NOTE_BACKGROUND not in page
    # Apart from the note's paragraph, the two pages are the same.
    noted_page = noted.to_html()
    paragraph = re.search(r'<p id="strength-note".*?</p>\n', noted_page)
    assert paragraph is not None
    assert noted_page.replace(paragraph.group(), "") == page


# --- JUnit ----------------------------------------------------------------------------------------


def junit_properties(report: AuditReport) -> tuple[dict[str, str], str]:
    root = ET.fromstring(report.to_junit())
    suite = root.find("testsuite")
    assert suite is not None
    properties = {
        str(p.get("name")): str(p.get("value")) for p in suite.findall("properties/property")
    }
    return properties, suite.findtext("system-out") or ""


def test_junit_note_in_properties_and_output(noted: AuditReport) -> None:
    properties, out = junit_properties(noted)
    assert properties["strength_note"] == NOTE
    assert properties["clean_accuracy"] == f"{CLEAN:.6f}"
    assert "> **Note:** suite \\`default\\`" in out
    assert out.count("mlsec audit --suite standard") == 1


def test_junit_note_with_control_characters_stays_valid() -> None:
    report = make_report(
        strength_note="weaker\x1b[31m suite\x00; run: mlsec audit --suite standard"
    )
    properties, _ = junit_properties(report)
    assert (
        properties["strength_note"]
        == "weaker\ufffd[31m suite\ufffd; run: mlsec audit --suite standard"
    )


def test_junit_without_note(plain: AuditReport) -> None:
    properties, out = junit_properties(plain)
    assert "strength_note" not in properties
    assert set(properties) == {"model", "data", "norm", "n", "clean_accuracy"} | {
        f"worst_case@{eps:g}" for eps in EPS
    }
    assert "Note" not in out


# --- the plot's lines ---------------------------------------------------------------------------


def test_plot_series_start_at_clean_accuracy(plain: AuditReport) -> None:
    lines = plot_series(plain)
    assert [line.label for line in lines] == ["fgsm", "pgd", "worst case"]
    assert [line.color for line in lines] == [*ATTACK_COLORS[:2], WORST_CASE_COLOR]
    assert [line.worst for line in lines] == [False, False, True]
    for line in lines:
        assert line.eps == [0.0, *EPS]
        assert line.accuracy[0] == CLEAN
    assert lines[0].accuracy[1:] == [0.80, 0.55, 0.30]
    assert lines[2].accuracy[1:] == [0.70, 0.40, 0.10]


# --- in a browser ---------------------------------------------------------------------------------


@pytest.mark.skipif(
    not CHROMIUM.exists() and not REQUIRE_BROWSER,
    reason="needs Debian's chromium at /usr/bin/chromium (set MLSEC_REQUIRE_BROWSER=1 to insist)",
)
def test_browser_shows_the_note(
    noted: AuditReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    page = tmp_path / "report.html"
    noted.to_html(page)
    shot = chromium_screenshot(page, tmp_path)
    # The note's pale yellow band spans the page's width under the table.
    assert pixels_near(shot, NOTE_BACKGROUND, tolerance=4) > 20_000
    rgb = np.asarray(shot, dtype=np.int64)
    band = np.all(np.abs(rgb - np.array([0xFF, 0xF3, 0xCD])) <= 4, axis=-1)
    assert int(np.count_nonzero(np.any(band, axis=1))) > 20
