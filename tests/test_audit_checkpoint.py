"""Audit checkpoints hold no stale state: whatever does not match this audit is refused in one line.

Each refusal test runs the command line in process on a crafted folder and checks exit code 2, a
single ``mlsec: ...`` line that says what is wrong, and that no attack ran before the refusal.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

import mlsec
from mlsec.auditing import chain_checks
from mlsec.auditing.resume import (
    FORMAT,
    BatchRecord,
    Checkpoint,
)
from mlsec.cli import main
from mlsec.core.fingerprint import fingerprint_code, fingerprint_model
from mlsec.errors import InputError

ARGV = [
    "audit", "--model", "mnist-cnn", "--attacks", "fgsm", "--eps", "0.1", "--limit", "40",
    "--batch-size", "10", "--no-checks", "-q",
]  # fmt: skip


def run(folder: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of the audit with ``--checkpoint folder``."""
    code = main([*ARGV, "--checkpoint", str(folder), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refusal(folder: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """The one line the audit is refused with (exit code 2)."""
    code, _, err = run(folder, capsys, *extra)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mlsec: --checkpoint: "), err
    return lines[0]


@pytest.fixture
def forbid_attacks(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to fail the run (exit 3) if any attack starts: refusals come before the work."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an attack ran before the checkpoint was refused")

    def arm() -> None:
        monkeypatch.setattr(mlsec.attacks.Attack, "run", refuse)

    return arm


@pytest.fixture
def made(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A checkpoint folder of a finished audit, with several records."""
    folder = tmp_path / "ck"
    code, _, err = run(folder, capsys)
    assert code == 0, err
    assert len((folder / "batches.jsonl").read_bytes().splitlines()) >= 3
    return folder


# --- an untouched resume ------------------------------------------------------------------------


def test_untouched_resume_replays_the_same_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "ck"
    first = run(folder, capsys, "--json", str(tmp_path / "first.json"))
    assert first[0] == 0, first[2]
    log = folder / "batches.jsonl"
    before = log.read_bytes()

    # The replay attacks no batch of the chain again (its log is unchanged below).
    sizes: list[int] = []
    real_run = mlsec.attacks.Attack.run

    def spy(self: mlsec.Attack, model: nn.Module, x: torch.Tensor, *args: Any, **kw: Any) -> Any:
        sizes.append(x.shape[0])
        return real_run(self, model, x, *args, **kw)

    monkeypatch.setattr(mlsec.attacks.Attack, "run", spy)
    again = run(folder, capsys, "--json", str(tmp_path / "again.json"))
    assert again[0] == 0, again[2]
    # Examples and the sanity checks' probes: a few dozen samples at most, never a batch again.
    assert sizes and max(sizes) <= chain_checks.PROBE
    assert again[1] == first[1]
    results = [
        json.loads((tmp_path / f"{n}.json").read_text())["results"] for n in ("first", "again")
    ]
    assert results[0] == results[1]
    assert log.read_bytes() == before
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["format"] == FORMAT
    assert meta["mlsec"] == mlsec.__version__
    assert meta["torch"] == torch.__version__
    assert all(attack["seed"] == 0 for attack in meta["suite"]["attack"])


def test_another_seed_is_another_audit(
    made: Path, capsys: pytest.CaptureFixture[str], forbid_attacks: Callable[[], None]
) -> None:
    forbid_attacks()
    line = refusal(made, capsys, "--seed", "1")
    assert "belongs to a different audit: the attacks, their settings or seeds" in line


# --- the model's code ---------------------------------------------------------------------------

NET = """
import torch
from torch import nn

import mlsec


def prepare(x: torch.Tensor) -> torch.Tensor:
    return x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = mlsec.zoo.load("mnist-cnn")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(prepare(x))
"""
# The same values on clean inputs, but no gradient: FGSM breaks nothing. The same weights, and
# the same correctly classified samples, so without the code in the key the records of the first
# model would be replayed for this one.
MASKED = NET.replace("    return x\n", "    return x.detach() + 0 * x  # masks the gradient\n")


def _import(path: Path, source: str, name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Write ``source`` to ``path`` and import it as a new module ``name``, as a rerun would."""
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def test_edited_model_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = mlsec.datasets.mnist_sample()
    data = (x[:40], y[:40])
    kwargs: dict[str, Any] = {
        "attacks": ["fgsm"],
        "eps": [0.1],
        "batch_size": 10,
        "sanity_checks": False,
    }
    path = tmp_path / "netmodule.py"
    net = _import(path, NET, "netmodule_first", monkeypatch).Net()
    first = mlsec.audit(net, data, checkpoint=tmp_path / "ck", **kwargs)
    assert first.outcomes[0].broken > 0

    # The same file imported again: the same code, so the folder resumes.
    same = _import(path, NET, "netmodule_again", monkeypatch).Net()
    again = mlsec.audit(same, data, checkpoint=tmp_path / "ck", **kwargs)
    assert again.worst_case == first.worst_case
    code = fingerprint_code(net)  # read from the file as it is now, as a fresh run would

    # Only a helper function beside the class changes: same weights, other numbers.
    masked = _import(path, MASKED, "netmodule_masked", monkeypatch).Net()
    assert fingerprint_model(masked) == fingerprint_model(net)
    assert fingerprint_code(masked) != code
    truth = mlsec.audit(masked, data, **kwargs)
    assert truth.clean_accuracy == first.clean_accuracy
    assert truth.worst_case != first.worst_case, "the edit must change the numbers"
    with pytest.raises(
        InputError,
        match=r"belongs to a different audit: the model's code or layers changed; "
        "use a new folder or delete this one",
    ):
        mlsec.audit(masked, data, checkpoint=tmp_path / "ck", **kwargs)


def _cnn() -> nn.Sequential:
    model = mlsec.zoo.load("mnist-cnn")
    assert isinstance(model, nn.Sequential)
    return model


def _patched_forward() -> nn.Module:
    model = _cnn()
    original = model.forward
    model.forward = lambda x: -original(x)  # type: ignore[method-assign]
    return model


def _hooked() -> nn.Module:
    model = _cnn()
    model.register_forward_hook(lambda module, args, out: -out)
    return model


def _tanh() -> nn.Module:
    model = _cnn()
    model[1] = nn.Tanh()
    return model


def _ceil_mode_pool() -> nn.Module:
    model = _cnn()
    model[2] = nn.MaxPool2d(2, ceil_mode=True)
    return model


@pytest.mark.parametrize(
    "edit", [_patched_forward, _hooked, _tanh, _ceil_mode_pool], ids=lambda f: f.__name__
)
def test_code_fingerprint_sees_changes_the_weights_miss(edit: Callable[[], nn.Module]) -> None:
    base, changed = _cnn(), edit()
    assert fingerprint_model(changed) == fingerprint_model(base)
    assert fingerprint_code(changed) != fingerprint_code(base)
    assert fingerprint_code(_cnn()) == fingerprint_code(base)


SCALE = """
import torch
from torch import nn


class Scale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * FACTOR
"""


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_code_fingerprint_of_torchscript_and_exported_programs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlsec.io import ExportedModel

    sample = torch.zeros(2, 3)
    # The same class name in two files: what differs is only the code TorchScript or fx keeps.
    classes = []
    for factor in (2, 3):
        (tmp_path / f"v{factor}").mkdir()
        path = tmp_path / f"v{factor}" / "scale.py"
        source = SCALE.replace("FACTOR", str(factor))
        classes.append(_import(path, source, f"scale_v{factor}", monkeypatch).Scale)

    def exported(module: nn.Module) -> nn.Module:
        return ExportedModel(torch.export.export(module, (sample,)).module(), None)

    def traced(module: nn.Module) -> nn.Module:
        return torch.jit.trace(module, sample)

    converters: list[Callable[[nn.Module], nn.Module]] = [
        torch.jit.script,
        traced,
        exported,
        torch.fx.symbolic_trace,
    ]
    for convert in converters:
        double, triple = convert(classes[0]()), convert(classes[1]())
        assert fingerprint_code(double) == fingerprint_code(convert(classes[0]()))
        assert fingerprint_code(double) != fingerprint_code(triple), convert


def test_code_fingerprint_without_source_uses_the_bytecode() -> None:
    def build(factor: float) -> nn.Module:
        namespace: dict[str, object] = {"__name__": "typed_in_a_repl"}
        exec(  # as a REPL defines it: no file to read
            "import torch\n"
            "class Typed(torch.nn.Module):\n"
            f"    def forward(self, x):\n        return x * {factor}\n",
            namespace,
        )
        typed = namespace["Typed"]
        assert isinstance(typed, type)
        module = typed()
        assert isinstance(module, nn.Module)
        return module

    assert fingerprint_code(build(2.0)) == fingerprint_code(build(2.0))
    assert fingerprint_code(build(2.0)) != fingerprint_code(build(-2.0))


def test_weights_include_buffers_the_state_dict_leaves_out() -> None:
    def build(value: float) -> nn.Module:
        model = nn.Linear(2, 2)
        model.register_buffer("scale", torch.tensor(value), persistent=False)
        return model

    torch.manual_seed(0)
    one = build(1.0)
    two = build(2.0)
    two.load_state_dict(one.state_dict())
    assert fingerprint_model(one) != fingerprint_model(two)
    # BatchNorm's step count is a 0-dim tensor.
    assert fingerprint_model(nn.BatchNorm2d(3)) == fingerprint_model(nn.BatchNorm2d(3))


# --- meta.json ----------------------------------------------------------------------------------


def test_records_without_meta_are_refused(
    made: Path, capsys: pytest.CaptureFixture[str], forbid_attacks: Callable[[], None]
) -> None:
    log = (made / "batches.jsonl").read_bytes()
    (made / "meta.json").unlink()
    forbid_attacks()
    line = refusal(made, capsys)
    assert "holds batches.jsonl but no meta.json" in line
    assert not (made / "meta.json").exists()
    assert (made / "batches.jsonl").read_bytes() == log


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "meta.json is not valid JSON"),
        (b"", "meta.json is not valid JSON"),
        (b"[1, 2]", "meta.json holds a JSON list, not the object mlsec writes"),
        (b'"an audit"', "meta.json holds a JSON string, not the object mlsec writes"),
        (b"\xff\xfe{}", "meta.json is unreadable"),
        (b"{}", "has a meta.json without a checkpoint format"),
    ],
    ids=["not-json", "empty", "list", "string", "not-utf8", "no-format"],
)
def test_bad_meta_is_refused(
    made: Path,
    capsys: pytest.CaptureFixture[str],
    forbid_attacks: Callable[[], None],
    content: bytes,
    message: str,
) -> None:
    log = (made / "batches.jsonl").read_bytes()
    (made / "meta.json").write_bytes(content)
    forbid_attacks()
    assert message in refusal(made, capsys)
    assert (made / "meta.json").read_bytes() == content, "never re-initialised"
    assert (made / "batches.jsonl").read_bytes() == log


def test_checkpoint_of_an_older_mlsec_is_refused(
    made: Path, capsys: pytest.CaptureFixture[str], forbid_attacks: Callable[[], None]
) -> None:
    meta = json.loads((made / "meta.json").read_text())
    # As mlsec wrote it before records had checksums.
    old = {k: v for k, v in meta.items() if k not in ("code", "mlsec", "torch")}
    (made / "meta.json").write_text(json.dumps({**old, "format": 1}))
    (made / "batches.jsonl").write_text(
        '{"stage": 0, "batch": 0, "indices": [0, 1], "broken": [1], "seconds": 0.1}\n'
    )
    forbid_attacks()
    line = refusal(made, capsys)
    assert f"was made by an older mlsec (checkpoint format 1, this one reads {FORMAT}); " in line
    assert line.endswith("use a new folder or delete this one")


def test_changed_data_is_named(
    made: Path, capsys: pytest.CaptureFixture[str], forbid_attacks: Callable[[], None]
) -> None:
    forbid_attacks()
    line = refusal(made, capsys, "--limit", "30")
    assert "belongs to a different audit: the data changed; " in line


# --- batches.jsonl ------------------------------------------------------------------------------


def _edit(line: bytes, **changes: object) -> bytes:
    item = json.loads(line)
    item.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del item[key]
    return json.dumps(item).encode() + b"\n"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (lambda line: _edit(line, seconds=123.0), "its checksum does not match"),
        (lambda line: line.replace(b'"indices":[', b'"indices":[0,'), "its checksum does not"),
        (lambda line: b"garbage\n", "it is not valid JSON"),
        (lambda line: b"\n", "it is not valid JSON"),
        (lambda line: b"[1, 2]\n", "it needs exactly the fields"),
        (lambda line: _edit(line, checksum=None), "it needs exactly the fields"),
        (lambda line: _edit(line, extra=1), "it needs exactly the fields"),
        (lambda line: _edit(line, indices=["a"]), "indices must be a list of integers"),
        (lambda line: _edit(line, indices=5), "indices must be a list of integers"),
        (lambda line: _edit(line, indices=[1, 1]), "indices repeats a sample"),
        (lambda line: _edit(line, broken=[True]), "broken must be a list of integers"),
        (lambda line: _edit(line, broken=[39], indices=[1]), "broken lists samples that are not"),
        (lambda line: _edit(line, stage=-1), "stage must be an integer >= 0"),
        (lambda line: _edit(line, batch=1.5), "batch must be an integer >= 0"),
        (lambda line: _edit(line, seconds=-1), "seconds must be a finite number >= 0"),
        (lambda line: _edit(line, seconds=float("nan")), "seconds must be a finite number >= 0"),
        (lambda line: _edit(line, seconds="1"), "seconds must be a number"),
    ],
    ids=[
        "edited-seconds", "edited-indices", "not-json", "empty", "list", "no-checksum",
        "extra-field", "index-type", "indices-type", "repeated-index", "bool-index",
        "broken-not-subset", "negative-stage", "float-batch", "negative-seconds", "nan-seconds",
        "string-seconds",
    ],
)  # fmt: skip
def test_bad_record_is_refused_with_its_line(
    made: Path,
    capsys: pytest.CaptureFixture[str],
    forbid_attacks: Callable[[], None],
    bad: Callable[[bytes], bytes],
    reason: str,
) -> None:
    log = made / "batches.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    lines[1] = bad(lines[1])
    log.write_bytes(b"".join(lines))
    forbid_attacks()
    line = refusal(made, capsys)
    assert f"{log} line 2 is not a valid record: {reason}" in line
    assert line.endswith("; use a new folder or delete this one")
    assert log.read_bytes() == b"".join(lines), "a refused folder is left as it was"


def test_record_copied_from_another_checkpoint_is_refused(
    made: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = made.parent / "other"
    assert run(other, capsys, "--eps", "0.2")[0] == 0
    log = made / "batches.jsonl"
    ours = log.read_bytes().splitlines(keepends=True)
    theirs = (other / "batches.jsonl").read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join([theirs[0], *ours[1:]]))
    assert "line 1 is not a valid record: its checksum does not match" in refusal(made, capsys)


def test_repeated_record_is_refused(
    made: Path, capsys: pytest.CaptureFixture[str], forbid_attacks: Callable[[], None]
) -> None:
    log = made / "batches.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join([*lines, lines[0]]))
    forbid_attacks()
    line = refusal(made, capsys)
    assert f"line {len(lines) + 1} is not a valid record: it repeats stage 0 batch 0" in line


def test_index_outside_the_data_is_refused(
    made: Path, capsys: pytest.CaptureFixture[str], forbid_attacks: Callable[[], None]
) -> None:
    # A record with a valid checksum (written through the API) whose index is out of range.
    fingerprint = json.loads((made / "meta.json").read_text())
    del fingerprint["format"]
    store = Checkpoint(made, fingerprint)
    store.append(BatchRecord(stage=9, batch=0, indices=[3, 40], broken=[40], seconds=0.5))
    count = len((made / "batches.jsonl").read_bytes().splitlines())
    forbid_attacks()
    line = refusal(made, capsys)
    reason = "sample index 40 is out of range (the data has 40 samples)"
    assert f"line {count} is not a valid record: {reason}" in line
    with pytest.raises(InputError, match="sample index 40 is out of range"):
        Checkpoint(made, fingerprint, samples=40)
    assert Checkpoint(made, fingerprint, samples=41).records[(9, 0)].broken == [40]


def test_torn_last_line_is_dropped_and_the_run_resumes(
    made: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = made / "batches.jsonl"
    complete = log.read_bytes()
    log.write_bytes(complete + complete.splitlines(keepends=True)[0][:25])
    code, _, err = run(made, capsys)
    assert code == 0, err
    assert log.read_bytes() == complete


def test_checksum_is_bound_to_the_fingerprint(tmp_path: Path) -> None:
    record = BatchRecord(stage=0, batch=0, indices=[1, 2], broken=[2], seconds=0.25)
    Checkpoint(tmp_path / "a", {"model": "a"}).append(record)
    Checkpoint(tmp_path / "b", {"model": "b"})
    (tmp_path / "b" / "batches.jsonl").write_bytes((tmp_path / "a" / "batches.jsonl").read_bytes())
    assert Checkpoint(tmp_path / "a", {"model": "a"}, samples=3).records == {(0, 0): record}
    with pytest.raises(InputError, match="line 1 is not a valid record: its checksum does not"):
        Checkpoint(tmp_path / "b", {"model": "b"})


# --- the folder and its files -------------------------------------------------------------------


def test_path_that_is_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], forbid_attacks: Callable[[], None]
) -> None:
    (tmp_path / "ck").write_text("notes")
    forbid_attacks()
    line = refusal(tmp_path / "ck", capsys)
    assert (
        line == f"mlsec: --checkpoint: {tmp_path / 'ck'} exists and is not a folder; give a folder"
    )


def test_folder_that_cannot_be_created_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], forbid_attacks: Callable[[], None]
) -> None:
    (tmp_path / "file").write_text("")
    forbid_attacks()
    line = refusal(tmp_path / "file" / "ck", capsys)
    assert f"cannot create the folder {tmp_path / 'file' / 'ck'} (" in line
    assert line.endswith("give a folder you can write to")


def test_parents_are_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path / "a" / "b" / "ck", capsys)[0] == 0
    assert (tmp_path / "a" / "b" / "ck" / "meta.json").is_file()


def test_folder_without_write_access_is_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    forbid_attacks: Callable[[], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "ck"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: have the OS say no as it would to a user
        real = os.access

        def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
            return Path(path) != folder and real(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
    else:
        folder.chmod(0o500)
    try:
        forbid_attacks()
        line = refusal(folder, capsys)
    finally:
        folder.chmod(0o700)
    assert line == (
        f"mlsec: --checkpoint: cannot write to the folder {folder} (permission denied); "
        "give a folder you can write to"
    )


def test_failed_first_write_is_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    forbid_attacks: Callable[[], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What a read-only file system or a full disk does to the first write.
    def fail(path: Path, data: str | bytes) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("mlsec.auditing.resume.write_atomic", fail)
    forbid_attacks()
    line = refusal(tmp_path / "ck", capsys)
    assert f"cannot write {tmp_path / 'ck' / 'meta.json'} (Read-only file system)" in line


@pytest.mark.parametrize("name", ["meta.json", "batches.jsonl"])
@pytest.mark.parametrize("kind", ["a folder", "a symbolic link", "a special file"])
def test_meta_or_log_that_is_not_a_regular_file_is_refused(
    made: Path,
    capsys: pytest.CaptureFixture[str],
    forbid_attacks: Callable[[], None],
    name: str,
    kind: str,
) -> None:
    path = made / name
    copy = made.parent / f"copy-{name}"
    copy.write_bytes(path.read_bytes())
    path.unlink()
    if kind == "a folder":
        path.mkdir()
    elif kind == "a symbolic link":
        path.symlink_to(copy)
    else:
        os.mkfifo(path)
    forbid_attacks()
    line = refusal(made, capsys)
    assert line == (
        f"mlsec: --checkpoint: {path} is {kind}, not a regular file; "
        "use a new folder or delete this one"
    )
