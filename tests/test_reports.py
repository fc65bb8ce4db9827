"""The Markdown, HTML and JUnit renderings of an audit report, down to what a browser draws."""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mlsec
from mlsec.auditing.report import AttackOutcome, AuditReport, Example, ThresholdResult
from mlsec.reports.plot import WORST_CASE_COLOR

HOSTILE_NAME = '<script>alert(1)</script> & "quotes"'
N = 200
CLEAN = 0.98
EPS = (0.1, 0.2, 0.3)
# Cumulative robust accuracy: PGD runs on what FGSM left standing, so its row is the worst case.
ACCURACY = {"fgsm": (0.80, 0.55, 0.30), "pgd": (0.70, 0.40, 0.10)}
ATTACKED = {"fgsm": (196, 160, 110), "pgd": (160, 100, 50)}
SECONDS = {"fgsm": (0.5, 0.5, 0.5), "pgd": (4.0, 4.5, 5.0)}

CHROMIUM = Path("/usr/bin/chromium")
REQUIRE_BROWSER = os.environ.get("MLSEC_REQUIRE_BROWSER") == "1"


def make_report(**changes: object) -> AuditReport:
    """A made-up but self-consistent audit: 2 attacks x 3 eps, 4 MNIST examples, 2 thresholds."""
    outcomes = [
        AttackOutcome(
            attack=attack,
            eps=eps,
            robust_accuracy=ACCURACY[attack][i],
            attacked=ATTACKED[attack][i],
            broken=ATTACKED[attack][i] - round(ACCURACY[attack][i] * N),
            seconds=SECONDS[attack][i],
            params={"steps": 40} if attack == "pgd" else {},
        )
        for attack in ACCURACY
        for i, eps in enumerate(EPS)
    ]
    x, y = mlsec.datasets.mnist_sample()
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(x[:4].shape, generator=generator).sign()
    x_adv = (x[:4] + 0.3 * noise).clamp(0, 1)
    examples = [
        Example(
            index=i,
            label=int(y[i]),
            attack="pgd",
            eps=0.3,
            clean_prediction=int(y[i]),
            adversarial_prediction=(int(y[i]) + 1) % 10,
            clean=x[i],
            adversarial=x_adv[i],
        )
        for i in range(4)
    ]
    thresholds = [
        ThresholdResult(
            spec="fgsm@0.1=0.75",
            kind="min-accuracy",
            attack="fgsm",
            eps=0.1,
            limit=0.75,
            value=0.80,
            passed=True,
        ),
        ThresholdResult(
            spec="worst@0.3=0.25",
            kind="min-accuracy",
            attack="worst",
            eps=0.3,
            limit=0.25,
            value=0.10,
            passed=False,
        ),
    ]
    index = torch.arange(N)
    robust = {
        (attack, eps): index < round(ACCURACY[attack][i] * N)
        for attack in ACCURACY
        for i, eps in enumerate(EPS)
    }
    fields: dict[str, object] = {
        "model": HOSTILE_NAME,
        "data": "mnist-sample",
        "norm": "linf",
        "bounds": (0.0, 1.0),
        "n": N,
        "clean_accuracy": CLEAN,
        "outcomes": outcomes,
        "worst_case": dict(zip(EPS, ACCURACY["pgd"], strict=True)),
        "warnings": ["pgd: the loss barely changed on 12% of samples; gradients may be masked"],
        "thresholds": thresholds,
        "examples": examples,
        "config": {"attacks": [{"name": "fgsm"}, {"name": "pgd", "steps": 40}], "note": "<b>"},
        "environment": {"mlsec": "0.1.0", "torch": torch.__version__, "device": "cpu"},
        "correct": index < round(CLEAN * N),
        "robust": robust,
        **changes,
    }
    return AuditReport(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def report() -> AuditReport:
    return make_report()


class Collector(HTMLParser):
    """Tags, ids and URLs of a page, and whether every non-void element was closed in order."""

    VOID = frozenset({"meta", "img", "br", "hr", "input", "link", "source", "col", "area", "wbr"})
    # SVG shapes are written self-closing.
    SELF_CLOSING = frozenset({"line", "rect", "circle", "polyline", "path"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.ids: dict[str, str] = {}
        self.sources: list[str] = []
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        attributes = dict(attrs)
        if attributes.get("id"):
            self.ids[str(attributes["id"])] = tag
        if "src" in attributes:
            self.sources.append(str(attributes["src"]))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in self.VOID | self.SELF_CLOSING:
            self.errors.append(f"<{tag}/> is not a void element")

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def parse(page: str) -> Collector:
    collector = Collector()
    collector.feed(page)
    collector.close()
    return collector


def decode_data_png(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    image.load()
    return image


# --- Markdown -------------------------------------------------------------------------------------


def test_markdown_table_thresholds_and_warnings(report: AuditReport) -> None:
    text = report.to_markdown()
    lines = text.splitlines()
    assert lines[0] == r'## mlsec audit: \<script>alert(1)\</script> \& "quotes" on mnist-sample'
    assert "| Samples | 200 |" in lines
    assert "| Clean accuracy | 98.00% |" in lines
    assert "| Attack | eps 0.1 | eps 0.2 | eps 0.3 | Time |" in lines
    assert "| fgsm | 80.00% | 55.00% | 30.00% | 1.50 s |" in lines
    assert "| pgd | 70.00% | 40.00% | 10.00% | 13.5 s |" in lines
    assert "| **worst case** | **70.00%** | **40.00%** | **10.00%** | 15.0 s |" in lines
    passing = next(line for line in lines if line.startswith("| fgsm@0.1=0.75 |"))
    failing = next(line for line in lines if line.startswith("| worst@0.3=0.25 |"))
    assert passing.endswith("| 80.00% | PASS |")
    assert failing.endswith("| 10.00% | **FAIL** |")
    assert "**FAIL**: 1 of 2 thresholds fail" in lines
    assert "- pgd: the loss barely changed on 12% of samples; gradients may be masked" in lines


def test_markdown_escapes_names_and_says_none(report: AuditReport) -> None:
    quiet = dataclasses.replace(report, model="a|b", warnings=[], thresholds=[])
    text = quiet.to_markdown()
    assert "| Model | a\\|b |" in text
    # A backslash before "<" keeps the tag literal; no "<" may stand unescaped.
    assert re.search(r"(?<!\\)<", report.to_markdown()) is None
    assert "### Warnings\n\nnone\n\nSanity checks" in text
    assert "PASS" not in text and "FAIL" not in text


# --- JUnit ----------------------------------------------------------------------------------------


def test_junit_one_case_per_threshold(report: AuditReport) -> None:
    root = ET.fromstring(report.to_junit())
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == f"mlsec audit: {HOSTILE_NAME} on mnist-sample"
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    assert set(cases) == {"fgsm@0.1=0.75", "worst@0.3=0.25"}
    assert all(case.get("classname") == "mlsec.audit" for case in cases.values())
    assert cases["fgsm@0.1=0.75"].find("failure") is None
    failure = cases["worst@0.3=0.25"].find("failure")
    assert failure is not None
    assert "measured 0.1000" in failure.get("message", "")
    out = suite.findtext("system-out")
    assert out is not None and "| pgd | 70.00% | 40.00% | 10.00% | 13.5 s |" in out


def test_junit_without_thresholds_and_with_control_characters(report: AuditReport) -> None:
    root = ET.fromstring(make_report(thresholds=[], model="bell\x07model").to_junit())
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("1", "0")
    (case,) = suite.findall("testcase")
    assert case.get("name") == "audit completed"
    assert case.find("failure") is None


# --- HTML -----------------------------------------------------------------------------------------


def test_html_is_self_contained_and_escaped(report: AuditReport, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    page = report.to_html(tmp_path / "report.html")
    assert (tmp_path / "report.html").read_text(encoding="utf-8") == page
    parsed = parse(page)
    assert parsed.errors == []
    assert parsed.stack == []
    assert "script" not in parsed.tags
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quotes&quot;" in page
    assert parsed.ids["accuracy-plot"] == "img"
    assert parsed.ids["results"] == "table"
    assert "http://" not in page and "https://" not in page
    assert all(src.startswith("data:image/png;base64,") for src in parsed.sources)
    # The config's "<b>" is shown, not obeyed.
    assert "&quot;&lt;b&gt;&quot;" in page and "b" not in parsed.tags


def test_html_tables_and_images(report: AuditReport) -> None:
    pytest.importorskip("matplotlib")
    page = report.to_html()
    match = re.search(r'<table id="results">.*?</table>', page, re.DOTALL)
    assert match is not None
    results = match.group()
    assert re.search(r"<td>fgsm</td>.*80\.00%.*55\.00%.*30\.00%", results)
    assert re.search(r"worst case</td>.*70\.00%.*40\.00%.*10\.00%", results)
    assert '<td class="fail">FAIL</td>' in page and '<td class="pass">PASS</td>' in page
    assert "gradients may be masked" in page
    parsed = parse(page)
    plot, *examples = (decode_data_png(src) for src in parsed.sources)
    assert plot.width > 400
    assert len(examples) == 8
    assert all(image.size == (112, 112) for image in examples)
    # Nearest-neighbour: each source pixel is a 4 x 4 block.
    clean = torch.from_numpy(np.asarray(examples[0], dtype=np.int64))
    assert torch.equal(clean, clean[::4, ::4].repeat_interleave(4, 0).repeat_interleave(4, 1))
    expected = mlsec.datasets.mnist_sample()[0][0, 0].mul(255).round().long()
    assert torch.equal(clean[::4, ::4], expected)


def test_html_svg_plot_without_matplotlib(
    report: AuditReport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    page = report.to_html()
    parsed = parse(page)
    assert parsed.errors == []
    assert parsed.ids["accuracy-plot"] == "svg"
    assert parsed.tags.count("polyline") == 3
    assert WORST_CASE_COLOR in page
    assert "http://" not in page and "https://" not in page
    assert "script" not in parsed.tags


def test_a_report_without_attacks_renders(monkeypatch: pytest.MonkeyPatch) -> None:
    empty = make_report(outcomes=[], worst_case={}, thresholds=[], examples=[], robust={})
    assert "| **worst case** | 0.00 s |" in empty.to_markdown()
    assert ET.fromstring(empty.to_junit()).find("testsuite/testcase") is not None
    assert 'id="accuracy-plot"' in empty.to_html()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert parse(empty.to_html()).ids["accuracy-plot"] == "svg"


# --- in a browser ---------------------------------------------------------------------------------


def chromium_screenshot(page: Path, tmp_path: Path) -> Image.Image:
    if not CHROMIUM.exists():
        pytest.fail(
            "MLSEC_REQUIRE_BROWSER=1 but /usr/bin/chromium is missing; install it with "
            "`sudo apt-get install -y --no-install-recommends chromium` (Debian) or unset "
            "MLSEC_REQUIRE_BROWSER to skip the browser test"
        )
    shot = tmp_path / "shot.png"
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,2400",
        "--virtual-time-budget=2000",
        f"--screenshot={shot}",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert shot.exists(), f"chromium wrote no screenshot (exit {done.returncode}):\n{done.stderr}"
    return Image.open(shot).convert("RGB")


def pixels_near(image: Image.Image, color: str, tolerance: int = 24) -> int:
    """How many pixels are within ``tolerance`` of ``color`` in every channel."""
    target = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)])
    rgb = np.asarray(image, dtype=np.int64)
    return int((np.abs(rgb - target) <= tolerance).all(-1).sum())


@pytest.mark.skipif(
    not CHROMIUM.exists() and not REQUIRE_BROWSER,
    reason="needs Debian's chromium at /usr/bin/chromium (set MLSEC_REQUIRE_BROWSER=1 to insist)",
)
@pytest.mark.parametrize("plot", ["matplotlib", "svg"])
def test_browser_draws_plot_and_table(
    report: AuditReport, plot: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if plot == "svg":
        monkeypatch.setitem(sys.modules, "matplotlib", None)
    page = tmp_path / "report.html"
    report.to_html(page)
    shot = chromium_screenshot(page, tmp_path)
    assert shot.size == (1200, 2400)
    inked = (np.asarray(shot).min(-1) < 250).mean()
    assert inked > 0.05, f"the page is (nearly) blank: {inked:.1%} of pixels are not white"
    # The worst-case line, the first attack's line, and the results table's header.
    assert pixels_near(shot, WORST_CASE_COLOR) > 300
    assert pixels_near(shot, "#1f77b4") > 300
    assert pixels_near(shot, "#1b4f72", tolerance=6) > 2000
