"""The CLI on awkward inputs: numbered class folders, escape sequences in names, report paths."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

import mlsec
import mlsec.cli.audit
from mlsec.auditing.report import AuditReport
from mlsec.cli import main
from mlsec.cli.app import build_parser
from mlsec.cli.exits import (
    EXIT_INTERNAL,
    EXIT_USAGE,
    error_message,
    flag_for,
    options_of,
)
from mlsec.core import files as _files
from mlsec.errors import InputError

TINY = [
    "--limit", "40", "--attacks", "fgsm", "--eps", "0.1", "--no-checks", "--no-progress",
]  # fmt: skip
ONE = ["audit", "--model", "mnist-cnn", *TINY]
ESC = "\x1b[31m"


def run_cli(argv: list[str]) -> int | str | None:
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def _one_line_error(capsys: pytest.CaptureFixture[str], *parts: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for part in parts:
        assert part in err[0], err[0]
    assert "\x1b" not in err[0]
    return err[0]


def _strays(*folders: Path) -> list[str]:
    """Hidden (temporary) files left in ``folders``."""
    return [p.name for folder in folders for p in folder.iterdir() if p.name.startswith(".")]


def _digits(root: Path, classes: list[int], per_class: int = 10) -> None:
    """PNGs of bundled MNIST digits of ``classes``, in a subfolder named after each digit."""
    x, y = mlsec.datasets.mnist_sample()
    pixels = (x[:, 0].numpy() * 255).round().astype(np.uint8)
    for digit in classes:
        folder = root / str(digit)
        folder.mkdir(parents=True)
        for i in np.flatnonzero(y.numpy() == digit)[:per_class]:
            Image.fromarray(pixels[i], mode="L").save(folder / f"{i:04d}.png")


def _no_attack(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> AuditReport:
        raise AssertionError("the audit ran")

    monkeypatch.setattr("mlsec.cli.audit.audit", fail)


# --- A. image folders with numbered classes ------------------------------------------------------


def test_numbered_class_folders_are_scored_by_their_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, report = tmp_path / "digits", tmp_path / "out.json"
    _digits(data, [0, 1, 4, 7, 8, 9])
    argv = ["audit", "--model", "mnist-cnn", "--data", str(data), "--attacks", "fgsm"]
    assert run_cli([*argv, "--eps", "0.1", "-q", "--no-checks", "--json", str(report)]) == 0
    # Indexed 0-5 by position, folder 4 would be scored as class 2: accuracy near 1/3.
    saved = json.loads(report.read_text())
    assert saved["n"] == 60
    assert saved["clean_accuracy"] > 0.9
    assert saved["config"]["data_classes"] == {"0": 0, "1": 1, "4": 4, "7": 7, "8": 8, "9": 9}
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long notes
    # Printed under -q: the mapping is not folder i = class i.
    assert "note: class labels from the folder names: 0=0, 1=1, 4=4, 7=7, 8=8, 9=9" in err


def test_identity_class_folders_stay_quiet_and_are_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, report = tmp_path / "digits", tmp_path / "out.json"
    _digits(data, [0, 1, 2], per_class=4)
    argv = ["audit", "--model", "mnist-cnn", "--data", str(data), *TINY, "-q"]
    assert run_cli([*argv, "--json", str(report)]) == 0
    assert "note:" not in capsys.readouterr().err
    assert json.loads(report.read_text())["config"]["data_classes"] == {"0": 0, "1": 1, "2": 2}


def test_two_folders_of_one_number_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _digits(tmp_path / "digits", [7, 1], per_class=2)
    (tmp_path / "digits" / "7").rename(tmp_path / "digits" / "07")
    _digits(tmp_path / "digits", [7], per_class=2)
    assert run_cli(["audit", "--data", str(tmp_path / "digits"), *TINY]) == 2
    _one_line_error(capsys, "class folders 07 and 7 are both class 7; merge them or rename one")


def test_data_without_a_folder_records_no_classes(tmp_path: Path) -> None:
    report = tmp_path / "out.json"
    assert run_cli([*ONE, "-q", "--json", str(report)]) == 0
    assert "data_classes" not in json.loads(report.read_text())["config"]


# --- B. escape sequences in names ----------------------------------------------------------------


def test_escape_sequences_in_names_are_shown_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / f"cnn{ESC}.safetensors"
    save_file(mlsec.zoo.load("mnist-cnn").state_dict(), str(model))
    data = tmp_path / f"digits{ESC}"
    _digits(data, [0, 1, 2], per_class=4)
    report = tmp_path / f"r{ESC}.json"
    argv = ["audit", "--model", str(model), "--arch", "mlsec.zoo.architectures:mnist_cnn"]
    argv += ["--data", str(data), *TINY[2:], "--no-color", "--json", str(report)]
    for quiet in ([], ["-q"]):
        assert run_cli(argv + quiet) == 0
        captured = capsys.readouterr()
        assert "\x1b" not in captured.out + captured.err
        if not quiet:  # the table, the notes and the reports line
            assert "Robust accuracy of cnn\\x1b[31m.safetensors on digits\\x1b[31m" in captured.out
            assert "cnn\\x1b[31m.safetensors" in captured.err  # "loaded ... tensors from" note
            assert f"reports: {tmp_path}/r\\x1b[31m.json, {tmp_path}/r\\x1b[31m.suite.toml" in (
                captured.out
            )
        else:
            assert captured.out.startswith("cnn\\x1b[31m.safetensors on digits\\x1b[31m: clean ")
    assert json.loads(report.read_text())["model"] == f"cnn{ESC}.safetensors"


@pytest.mark.parametrize(
    "argv",
    [
        [*ONE, "--json", f"/nonexistent{ESC}/r.json"],
        [*ONE, "--model", f"nosuch{ESC}.pt"],
        [*ONE, f"stray{ESC}"],  # argparse's own message
    ],
)
def test_escape_sequences_in_errors_are_shown_escaped(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(argv) == 2
    _one_line_error(capsys, "\\x1b[31m")


# --- C. report writes ----------------------------------------------------------------------------


def test_write_keeps_the_permission_bits(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text("old")
    path.chmod(0o640)
    _files.write_atomic(path, "new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    fresh = tmp_path / "fresh.json"
    umask = os.umask(0o027)
    try:
        _files.write_atomic(fresh, "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o640
    assert _strays(tmp_path) == []


def test_cli_report_keeps_its_mode_and_its_link(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "real.json"
    target.write_text("{}")
    target.chmod(0o600)
    link = tmp_path / "r.json"
    link.symlink_to(target)
    assert run_cli([*ONE, "-q", "--json", str(link)]) == 0
    assert os.path.islink(link)
    assert os.readlink(link) == str(target)
    assert json.loads(target.read_text())["n"] == 40
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert sorted(p.name for p in elsewhere.iterdir()) == ["real.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "r.json", "r.suite.toml"]


def test_a_link_to_another_file_system_is_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The link and its target lie in folders that a rename cannot cross, as on two file systems:
    # the write must make its temporary file beside the target, not beside the link.
    link_folder, target_folder = tmp_path / "links", tmp_path / "elsewhere"
    link_folder.mkdir()
    target_folder.mkdir()
    target = target_folder / "r.json"
    (link_folder / "r.json").symlink_to(target)
    real_replace = os.replace

    def one_file_system(src: str | Path, dst: str | Path) -> None:
        if Path(src).resolve().parent != Path(dst).resolve().parent:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", one_file_system)
    assert run_cli([*ONE, "-q", "--json", str(link_folder / "r.json")]) == 0
    assert os.path.islink(link_folder / "r.json")
    assert json.loads(target.read_text())["n"] == 40
    assert sorted(p.name for p in target_folder.iterdir()) == ["r.json"]
    assert not [p.name for p in link_folder.iterdir() if p.name.startswith(".")]


def test_a_dangling_link_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "r.json"
    link.symlink_to(tmp_path / "made.json")
    assert run_cli([*ONE, "-q", "--json", str(link)]) == 0
    assert os.path.islink(link)
    assert json.loads((tmp_path / "made.json").read_text())["n"] == 40


@pytest.mark.parametrize(
    "failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()]
)
def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    failure: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.json"
    path.write_text("old")

    def full(fd: int) -> None:
        raise failure

    monkeypatch.setattr(_files.os, "fsync", full)
    with pytest.raises(type(failure)):
        _files.write_atomic(path, "new")
    assert path.read_text() == "old"
    assert _strays(tmp_path) == []


def test_a_renderer_that_raises_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(self: AuditReport, path: object = None) -> str:
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(AuditReport, "to_html", broken)
    out = tmp_path / "out"
    assert run_cli([*ONE, "-q", "--out", str(out)]) == 3
    assert "renderer broke" in capsys.readouterr().err
    assert _strays(out) == []
    assert not (out / "report.html").exists()


def test_interrupt_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object, **kwargs: object) -> AuditReport:
        raise KeyboardInterrupt

    monkeypatch.setattr("mlsec.cli.audit.audit", interrupted)
    assert run_cli(ONE) == 130
    _one_line_error(capsys, "mlsec: interrupted")


def test_reports_line_names_every_file_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert run_cli([*ONE, "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    names = ["report.json", "report.md", "report.html", "report.junit.xml", "suite.toml"]
    assert line == "reports: " + ", ".join(str(out / name) for name in names)
    assert sorted(p.name for p in out.iterdir()) == sorted(names)


def test_reports_line_with_two_models_names_each_file_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert run_cli(["audit", *TINY, "--out", str(out), "--json", str(tmp_path / "r.json")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    written = line.removeprefix("reports: ").split(", ")
    expected = [
        str(path)
        for model in ("mnist-cnn", "mnist-cnn-pgd")
        for path in (
            tmp_path / f"r.{model}.json",
            out / model / "report.md",
            out / model / "report.html",
            out / model / "report.junit.xml",
        )
    ]
    assert sorted(written) == sorted([*expected, str(out / "suite.toml")])
    assert len(written) == len(set(written)) == 9
    assert all(Path(path).is_file() for path in written)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: (t / "file").write_text("x") and t / "file" / "sub", "file is not a folder"),
        (lambda t: (t / "file").write_text("x") and t / "file", "exists and is not a folder"),
        (lambda t: t / "no" / "such" / "out", "no/such does not exist"),
        (
            lambda t: (t / "out").symlink_to(t / "missing") or t / "out",
            "is a link that leads to no folder",
        ),
        (
            lambda t: (t / "out" / "report.json").mkdir(parents=True) or t / "out",
            "out/report.json is a folder",
        ),
    ],
)
def test_out_that_cannot_be_written_is_refused_before_the_audit(
    make: object,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert callable(make)
    _no_attack(monkeypatch)
    assert run_cli([*ONE, "--out", str(make(tmp_path))]) == 2
    _one_line_error(capsys, "mlsec: --out: ", message)


def test_out_in_a_read_only_folder_is_refused_before_the_audit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp_path.chmod(0o500)
    if os.geteuid() == 0:  # root may write anywhere: answer as the kernel answers other users
        real = os.access
        monkeypatch.setattr(
            os,
            "access",
            lambda path, mode, **kw: (
                real(path, mode, **kw) and not (Path(path) == tmp_path and mode & os.W_OK)
            ),
        )
    _no_attack(monkeypatch)
    try:
        assert run_cli([*ONE, "--out", str(tmp_path / "out")]) == 2
    finally:
        tmp_path.chmod(0o700)
    _one_line_error(capsys, "is not writable")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda t: (t / "r.json").symlink_to(t / "missing" / "r.json") or t / "r.json",
            "missing (where the link",
        ),
        (lambda t: (t / "r.json").symlink_to(t / "r.json") or t / "r.json", "symbolic links"),
        (lambda t: Path("/dev/null"), "/dev/null is not a regular file"),
        (lambda t: t / "missing" / "r.json", "missing does not exist"),
    ],
)
def test_report_path_that_cannot_be_written_is_refused_in_one_line(
    make: object,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert callable(make)
    _no_attack(monkeypatch)
    assert run_cli([*ONE, "--json", str(make(tmp_path))]) == 2
    _one_line_error(capsys, "mlsec: --json: ", message)


# --- D. exit code 130 is documented --------------------------------------------------------------


def test_exit_code_130_is_documented(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["audit", "--help"]) == 0
    assert "130 interrupted" in " ".join(capsys.readouterr().out.split())
    root = Path(__file__).resolve().parents[1]
    assert "130 interrupted (Ctrl-C)" in " ".join((root / "README.md").read_text().split())
    assert "| 130 | interrupted with Ctrl-C |" in (root / "docs" / "cli.md").read_text()


# --- E. library errors are shown with the command's flags ----------------------------------------


def _raises(error: BaseException) -> object:
    def run(*args: object, **kwargs: object) -> AuditReport:
        raise error

    return run


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (InputError("another audit's", subject="checkpoint"), "--checkpoint: another audit's"),
        (InputError("must be >= 1", subject="batch_size"), "--batch-size: must be >= 1"),
        (InputError("'x' is not A@E=V", subject="fail_under"), "--fail-under: 'x' is not A@E=V"),
        # No such option of mlsec audit: the library's own words, not an invented flag.
        (InputError("no held-out data", subject="held_out"), "held_out: no held-out data"),
        (InputError("plain message"), "plain message"),
    ],
)  # fmt: skip
def test_library_input_errors_name_the_flag(
    error: InputError,
    line: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("mlsec.cli.audit.audit", _raises(error))
    assert run_cli(ONE) == EXIT_USAGE == 2
    assert _one_line_error(capsys) == f"mlsec: {line}"


def test_sys_exit_in_user_code_exits_2_and_a_crash_exits_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("mlsec.cli.audit.audit", _raises(SystemExit(5)))
    assert run_cli(ONE) == 2
    _one_line_error(capsys, "mlsec: user code called sys.exit(5)")
    monkeypatch.setattr("mlsec.cli.audit.audit", _raises(ZeroDivisionError("boom")))
    assert run_cli(ONE) == EXIT_INTERNAL == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: boom" in err
    assert err.strip().splitlines()[-1].endswith("exit 3")


def test_flags_come_from_the_command_that_ran() -> None:
    parser = build_parser()
    audit_flags, train_flags = options_of(parser, "audit"), options_of(parser, "train")
    assert {"--batch-size", "--checkpoint", "--fail-under", "--max-drop"} <= audit_flags
    assert "--val" not in audit_flags and "--val" in train_flags
    assert "defense" in options_of(parser, "defend")  # the positional of mlsec defend train
    assert flag_for("folder", "train", train_flags) == "--out"
    assert flag_for("folder", "defend", options_of(parser, "defend")) == "--run"
    assert flag_for("thresholds", "audit", audit_flags) == "--fail-under/--max-drop"
    assert flag_for("thresholds", "train", train_flags) is None
    assert flag_for("eps_ramp", "train", train_flags) == "--eps-ramp"
    assert flag_for("eps_ramp", "audit", audit_flags) is None


def test_error_message_keeps_the_library_text_without_a_subject() -> None:
    flags = options_of(build_parser(), "audit")
    error = InputError("give at least one value", subject="eps")
    assert str(error) == "eps: give at least one value"
    assert error_message(error, "audit", flags) == "--eps: give at least one value"
    assert error_message(InputError("labels lie in [0, 12]"), "audit", flags) == (
        "labels lie in [0, 12]"
    )


# --- F. the strength of the suite is said under the table ----------------------------------------


def test_strength_note_is_printed_once_under_the_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    note = "weaker than the standard suite (no APGD, no Square): mlsec audit --suite standard"

    def weak(*args: Any, **kwargs: Any) -> AuditReport:
        return dataclasses.replace(real_audit(*args, **kwargs), strength_note=note)

    real_audit = mlsec.cli.audit.audit
    monkeypatch.setattr("mlsec.cli.audit.audit", weak)
    assert run_cli(ONE) == 0
    out = capsys.readouterr().out.splitlines()
    assert out.count(f"note: {note}") == 1
    assert out.index(f"note: {note}") > max(i for i, line in enumerate(out) if "worst case" in line)
    # Two models, one table: the note is said once, under it.
    assert run_cli(["audit", *TINY]) == 0
    assert capsys.readouterr().out.splitlines().count(f"note: {note}") == 1
    # Quiet prints one summary line per model and no table, so no note either.
    assert run_cli([*ONE, "-q"]) == 0
    assert "note:" not in capsys.readouterr().out


def test_strength_note_gives_the_command_for_this_model_and_data(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_cli(ONE) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1
    # FGSM alone lacks every part of the standard suite; the command reruns this model's audit.
    assert "no APGD-CE, no APGD-T or APGD-DLR, no Square" in notes[0]
    assert notes[0].endswith(
        "run mlsec audit --model mnist-cnn --data mnist-sample --limit 40 --eps 0.1 "
        "--suite standard"
    )
