"""Run state that does not fit is refused in one line: ``mlsec train`` / ``mlsec defend train``
``--resume`` with other data or settings or a damaged checkpoint, and damaged purifier files.

Every case runs the real command line in-process and expects exit 2 and exactly one line on stderr,
``mlsec: ...``, that names the problem; a checkpoint that fits still resumes.
"""

from __future__ import annotations

import json
import shutil
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

import mlsec
from mlsec.cli import main
from mlsec.defenses import APEGAN, DefenseGAN
from mlsec.defenses.purifiers.ape_gan import ape_generator
from mlsec.defenses.purifiers.networks import mnist_generator
from mlsec.errors import InputError

ARCH = "mlsec.zoo.architectures:mnist_cnn"
CHECKPOINT = "checkpoint.safetensors"

Tensors = dict[str, torch.Tensor]
Edit = Callable[[Path], None]


# --- helpers -------------------------------------------------------------------------------------


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The single ``mlsec: ...`` line on stderr (fails on a traceback or any other output)."""
    err = capsys.readouterr().err
    assert err.startswith("mlsec: ") and err.count("\n") == 1, err
    return err


def read(path: Path) -> tuple[Tensors, dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    return tensors, metadata


def write(path: Path, tensors: Tensors, metadata: dict[str, str] | None) -> None:
    path.write_bytes(save(tensors, metadata=metadata))


def raw_bytes(data: bytes | Callable[[bytes], bytes]) -> Edit:
    def edit(path: Path) -> None:
        path.write_bytes(data(path.read_bytes()) if callable(data) else data)

    return edit


def raw_metadata(key: str, text: str | None) -> Edit:
    """Set (or, with None, drop all) the file's metadata under ``key`` to ``text`` verbatim."""

    def edit(path: Path) -> None:
        tensors, _ = read(path)
        write(path, tensors, None if text is None else {key: text})

    return edit


def json_metadata(key: str, change: Callable[[dict[str, Any]], object]) -> Edit:
    def edit(path: Path) -> None:
        tensors, metadata = read(path)
        meta = json.loads(metadata[key])
        change(meta)
        write(path, tensors, {**metadata, key: json.dumps(meta)})

    return edit


def tensors_edit(change: Callable[[Tensors], object]) -> Edit:
    def edit(path: Path) -> None:
        tensors, metadata = read(path)
        change(tensors)
        write(path, tensors, metadata)

    return edit


def first(tensors: Tensors, prefix: str, suffix: str = "") -> str:
    return next(k for k in sorted(tensors) if k.startswith(prefix) and k.endswith(suffix))


def reshape_first(prefix: str, suffix: str = "") -> Edit:
    def change(tensors: Tensors) -> None:
        tensors[first(tensors, prefix, suffix)] = torch.zeros(3)

    return tensors_edit(change)


def retype_first(prefix: str, suffix: str = "") -> Edit:
    def change(tensors: Tensors) -> None:
        key = first(tensors, prefix, suffix)
        tensors[key] = tensors[key].double()

    return tensors_edit(change)


def drop(key: str) -> Edit:
    return tensors_edit(lambda tensors: tensors.pop(first(tensors, key)))


def put(key: str, value: torch.Tensor) -> Edit:
    return tensors_edit(lambda tensors: tensors.__setitem__(key, value))


def set_key(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda meta: meta.__setitem__(key, value)


NOISE = bytes(range(256)) * 16
INVALID_RNG = torch.full((5056,), 255, dtype=torch.uint8)


# --- mlsec train --resume ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Training and held-out files, and others of the same sizes but other images."""
    folder = tmp_path_factory.mktemp("data")
    x, y = mlsec.datasets.mnist_sample()
    files = {}
    for name, start, stop in (
        ("train", 0, 200),
        ("other_train", 200, 400),
        ("val", 1000, 1100),
        ("other_val", 1100, 1200),
    ):
        files[name] = folder / f"{name}.npz"
        np.savez(files[name], x=x[start:stop].numpy(), y=y[start:stop].numpy())
    return files


def train_argv(files: dict[str, Path], out: Path, /, **overrides: str) -> list[str]:
    options = {
        "--model": ARCH,
        "--data": str(files["train"]),
        "--val": str(files["val"]),
        "--method": "pgd",
        "--eps": "0.1",
        "--steps": "1",
        "--epochs": "1",
        "--batch-size": "100",
        "--eval-size": "50",
        "--eval-steps": "1",
        "--keep": "best",
        "--out": str(out),
    }
    options.update({"--" + k.replace("_", "-"): v for k, v in overrides.items()})
    return ["train", *[part for item in options.items() for part in item], "--no-audit", "-q"]


@pytest.fixture(scope="module")
def finished_train_run(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run (2 batches of 100) to copy and damage."""
    out = tmp_path_factory.mktemp("train") / "run"
    assert main(train_argv(data, out)) == 0
    return out


@pytest.fixture
def train_run(finished_train_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished_train_run, tmp_path / "run"))


def test_train_resume_with_the_same_data_and_settings_still_works(
    data: dict[str, Path], train_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = load_file(train_run / "model.safetensors")
    assert main([*train_argv(data, train_run), "--resume"]) == 0
    assert capsys.readouterr().err == ""
    after = load_file(train_run / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len((train_run / "log.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize(
    ("option", "file", "message"),
    [
        ("data", "other_train", "was made with other data (training data differs)"),
        ("val", "other_val", "was made with other data (held-out data differs)"),
    ],
)
def test_train_resume_refuses_other_data_of_the_same_size(
    data: dict[str, Path],
    train_run: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    file: str,
    message: str,
) -> None:
    checkpoint = (train_run / CHECKPOINT).read_bytes()
    argv = train_argv(data, train_run, **{option: str(data[file])})
    assert main([*argv, "--resume"]) == 2
    err = one_line_error(capsys)
    assert f"--resume: the checkpoint in {train_run} {message}; resume with the same" in err
    assert (train_run / CHECKPOINT).read_bytes() == checkpoint


def test_train_resume_names_other_settings_and_data_together(
    data: dict[str, Path], train_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = train_argv(data, train_run, lr="0.01", data=str(data["other_train"]))
    assert main([*argv, "--resume"]) == 2
    err = one_line_error(capsys)
    assert (
        "other settings (config.lr: 0.001 in the checkpoint, 0.01 now; training data differs)"
        in err
    )


TRAIN_DAMAGE: list[tuple[str, Edit, str]] = [
    ("truncated", raw_bytes(lambda b: b[:-64]), "it is truncated or not a safetensors file"),
    ("random bytes", raw_bytes(NOISE), "cannot read"),
    ("empty", raw_bytes(b""), "cannot read"),
    ("no metadata", raw_metadata("mlsec", None), "holds no mlsec metadata"),
    ("metadata not JSON", raw_metadata("mlsec", "{oops"), "metadata is not a JSON object"),
    ("metadata a list", raw_metadata("mlsec", "[1, 2]"), "metadata is not a JSON object"),
    (
        "unknown format",
        json_metadata("mlsec", set_key("format", "nope")),
        "unknown checkpoint format 'nope'",
    ),
    (
        "format not a string",
        json_metadata("mlsec", set_key("format", [1])),
        "unknown checkpoint format [1]",
    ),
    (
        "older format",
        json_metadata("mlsec", set_key("format", "mlsec-train-checkpoint/1")),
        "was written by an older mlsec, which did not record the data it was made with",
    ),
    (
        "defend checkpoint",
        json_metadata("mlsec", set_key("format", "mlsec-gan-checkpoint/1")),
        "was written by mlsec defend train, not by mlsec train",
    ),
    (
        "settings not an object",
        json_metadata("mlsec", set_key("settings", 3)),
        "its settings are not a JSON object",
    ),
    (
        "epoch a string",
        json_metadata("mlsec", set_key("epoch", "1")),
        "epoch '1' is not an integer",
    ),
    (
        "step off",
        json_metadata("mlsec", set_key("step", 7)),
        "(step 7, not 2 after epoch 1)",
    ),
    (
        "history lost",
        json_metadata("mlsec", set_key("history", [])),
        "(the history is not a list of 1 epoch records)",
    ),
    (
        "history record",
        json_metadata("mlsec", lambda m: m["history"][0].__setitem__("robust_accuracy", "high")),
        "history record 1: robust_accuracy 'high' is not a fraction",
    ),
    (
        "best epoch",
        json_metadata("mlsec", set_key("best_epoch", 5)),
        "best_epoch 5 is not an epoch in [1, 1]",
    ),
    (
        "optimizer scalars",
        json_metadata("mlsec", set_key("optimizer_scalars", [1])),
        "optimizer_scalars is not an object of objects",
    ),
    ("missing weights", drop("model."), "does not fit this model (missing tensor model."),
    ("misshapen weights", reshape_first("model."), "has shape [3], not ["),
    ("weights of another dtype", retype_first("model."), "is float64, not float32"),
    ("missing rng", drop("rng.torch"), "is damaged (missing tensor rng.torch)"),
    (
        "rng not a state",
        put("rng.shuffle", torch.zeros(10, dtype=torch.uint8)),
        "rng.shuffle is uint8 of shape [10], not a generator state",
    ),
    ("rng invalid", put("rng.torch", INVALID_RNG), "rng.torch: Invalid mt19937 state"),
    (
        "misshapen optimiser state",
        reshape_first("optimizer.", ".exp_avg"),
        ".exp_avg has shape [3], not [",
    ),
    (
        "optimiser state missing an entry",
        drop("optimizer.0.exp_avg_sq"),
        "optimiser state optimizer.0 holds exp_avg, step, not exp_avg, exp_avg_sq, step",
    ),
    (
        "optimiser step of another type",
        put("optimizer.0.step", torch.tensor(2)),
        "optimizer.0.step is int64, not float32",
    ),
    (
        "optimiser state of no parameter",
        put("optimizer.99.step", torch.tensor(2.0)),
        "optimiser state optimizer.99 for a parameter the model does not have",
    ),
    ("stray tensor", put("junk", torch.zeros(1)), "unexpected tensor junk"),
    (
        "malformed optimiser name",
        put("optimizer.x", torch.zeros(1)),
        "unexpected tensor optimizer.x",
    ),
]


@pytest.mark.parametrize(
    ("damage", "message"), [c[1:] for c in TRAIN_DAMAGE], ids=[c[0] for c in TRAIN_DAMAGE]
)
def test_train_resume_refuses_a_damaged_checkpoint_in_one_line(
    data: dict[str, Path],
    train_run: Path,
    capsys: pytest.CaptureFixture[str],
    damage: Edit,
    message: str,
) -> None:
    damage(train_run / CHECKPOINT)
    model = (train_run / "model.safetensors").read_bytes()
    assert main([*train_argv(data, train_run), "--resume"]) == 2
    err = one_line_error(capsys)
    assert err.startswith("mlsec: --resume: ") and str(train_run) in err and message in err, err
    assert (train_run / "model.safetensors").read_bytes() == model  # nothing was trained or saved


@pytest.mark.parametrize("name", [CHECKPOINT, "log.jsonl", "best.safetensors", "model.safetensors"])
def test_train_refuses_a_folder_where_a_run_file_goes(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    out = tmp_path / "run"
    (out / name).mkdir(parents=True)
    argv = train_argv(data, out)
    assert main([*argv, "--resume"] if name == CHECKPOINT else argv) == 2
    err = one_line_error(capsys)
    assert f"{out / name} is a folder where the run keeps its {name} file" in err
    assert not (out / CHECKPOINT).is_file()  # refused before any training


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (raw_bytes(lambda b: b[:100]), "it is truncated or not a safetensors file; the best"),
        (raw_metadata("epoch", "2"), "(it holds epoch 2, not the best epoch)"),
        (reshape_first(""), "has shape [3], not ["),
    ],
)
def test_lost_best_weights_are_refused_not_kept_silently(
    data: dict[str, Path],
    train_run: Path,
    capsys: pytest.CaptureFixture[str],
    damage: Edit,
    message: str,
) -> None:
    damage(train_run / "best.safetensors")
    assert main([*train_argv(data, train_run), "--resume"]) == 2
    err = one_line_error(capsys)
    assert message in err and str(train_run / "best.safetensors") in err


# --- mlsec defend train --resume -----------------------------------------------------------------


@pytest.fixture(scope="module")
def other_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``module:function`` giving 64 other images than ``mnist-sample --limit 64``."""
    folder = tmp_path_factory.mktemp("module")
    name = f"hardening_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import mlsec

            def other_images():
                x, y = mlsec.datasets.mnist_sample()
                return x[64:128], y[64:128]
            """
        )
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        yield f"{name}:other_images"


def defend_argv(defense: str, run: Path, **overrides: str) -> list[str]:
    options = {"--data": "mnist-sample", "--limit": "64", "--run": str(run), "--batch-size": "16"}
    if defense == "defense-gan":
        options.update({"--gan-steps": "2", "--encoder-steps": "0", "--latent": "8"})
    else:
        options.update({"--epochs": "1"})
    options.update({"--" + k.replace("_", "-"): v for k, v in overrides.items()})
    argv = ["defend", "train", defense, *[p for item in options.items() for p in item]]
    return [*argv, "--no-progress"]


@pytest.fixture(scope="module")
def finished_gan_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    runs = {}
    for defense in ("defense-gan", "ape-gan"):
        runs[defense] = tmp_path_factory.mktemp(defense) / "run"
        assert main(defend_argv(defense, runs[defense])) == 0
    return runs


@pytest.fixture
def gan_runs(finished_gan_runs: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    return {k: Path(shutil.copytree(v, tmp_path / k)) for k, v in finished_gan_runs.items()}


def test_defend_resume_with_the_same_settings_continues(
    gan_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run = gan_runs["defense-gan"]
    # More generator steps continue the run; the projection's settings may change.
    argv = defend_argv("defense-gan", run, gan_steps="3", steps="5")
    assert main([*argv, "--resume"]) == 0
    assert capsys.readouterr().err == ""
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [
        2,
        3,
    ]
    assert isinstance(DefenseGAN.load(run / "defense.safetensors"), DefenseGAN)
    assert main([*defend_argv("ape-gan", gan_runs["ape-gan"]), "--resume"]) == 0


@pytest.mark.parametrize(
    ("defense", "overrides", "message"),
    [
        (
            "defense-gan",
            {"latent": "16"},
            "other settings (params.latent: 8 in the checkpoint, 16 now)",
        ),
        (
            "defense-gan",
            {"batch_size": "32"},
            "other settings (fit.batch_size: 16 in the checkpoint, 32 now)",
        ),
        ("defense-gan", {"seed": "1"}, "other settings (params.seed: 0 in the checkpoint, 1 now)"),
        ("ape-gan", {"eps": "0.2"}, "other settings (params.eps: 0.3 in the checkpoint, 0.2 now)"),
        ("ape-gan", {"model": "mnist-cnn-pgd"}, "other data (classifier differs)"),
    ],
)
def test_defend_resume_refuses_other_settings_naming_them(
    gan_runs: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    defense: str,
    overrides: dict[str, str],
    message: str,
) -> None:
    run = gan_runs[defense]
    assert main([*defend_argv(defense, run, **overrides), "--resume"]) == 2
    err = one_line_error(capsys)
    assert f"mlsec: --resume: the checkpoint in {run} was made with {message}; resume with" in err


def test_defend_resume_refuses_other_images_of_the_same_count(
    gan_runs: dict[str, Path], other_images: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = gan_runs["defense-gan"]
    assert main([*defend_argv("defense-gan", run, data=other_images), "--resume"]) == 2
    assert "was made with other data (training data differs)" in one_line_error(capsys)


def test_defend_resume_refuses_fewer_steps_than_done(
    gan_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run = gan_runs["defense-gan"]
    assert main([*defend_argv("defense-gan", run, gan_steps="1"), "--resume"]) == 2
    err = one_line_error(capsys)
    assert f"the checkpoint in {run} is at step 2, past gan_steps 1" in err


def test_gan_resume_errors_name_the_resume_argument_not_a_flag(tmp_path: Path) -> None:
    x, y = mlsec.datasets.mnist_sample()
    images = (x[:32], y[:32])
    options: dict[str, Any] = {"encoder_steps": 0, "batch_size": 16, "folder": str(tmp_path)}
    DefenseGAN(latent=8, width=8).fit(images, gan_steps=2, **options)
    with pytest.raises(InputError) as past:
        DefenseGAN(latent=8, width=8).fit(images, gan_steps=1, resume=True, **options)
    with pytest.raises(InputError) as other:
        DefenseGAN(latent=8, width=16).fit(images, gan_steps=3, resume=True, **options)
    (tmp_path / CHECKPOINT).write_bytes(b"junk")
    with pytest.raises(InputError) as broken:
        DefenseGAN(latent=8, width=8).fit(images, gan_steps=3, resume=True, **options)
    with pytest.raises(InputError) as nowhere:
        DefenseGAN(latent=8, width=8).fit(images, gan_steps=3, resume=True)
    assert str(past.value) == (
        f"resume: the checkpoint in {tmp_path} is at step 2, past gan_steps 1; give gan_steps 2 "
        "or more, or start a new run in another folder"
    )
    assert "params.width: 8 in the checkpoint, 16 now" in str(other.value)
    assert f"cannot read {tmp_path / CHECKPOINT}" in str(broken.value)
    for error in (past, other, broken, nowhere):
        assert error.value.subject == "resume"
        assert "--" not in str(error.value), str(error.value)


def test_defend_resume_refuses_a_checkpoint_of_another_run(
    gan_runs: dict[str, Path],
    finished_train_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ape = gan_runs["ape-gan"]
    assert main([*defend_argv("defense-gan", ape), "--resume"]) == 2
    err = one_line_error(capsys)
    assert f"the checkpoint in {ape} was made by ape-gan, not defense-gan" in err
    assert "resume it with mlsec defend train ape-gan" in err

    trained = tmp_path / "trained"
    trained.mkdir()
    shutil.copy(finished_train_run / CHECKPOINT, trained / CHECKPOINT)
    assert main([*defend_argv("defense-gan", trained), "--resume"]) == 2
    assert "was written by mlsec train, not by mlsec defend train" in one_line_error(capsys)


GAN_DAMAGE: list[tuple[str, Edit, str]] = [
    ("truncated", raw_bytes(lambda b: b[: len(b) // 2]), "it is truncated or not a safetensors"),
    ("random bytes", raw_bytes(NOISE), "cannot read"),
    ("no metadata", raw_metadata("mlsec", None), "holds no mlsec metadata"),
    ("metadata not JSON", raw_metadata("mlsec", "not json"), "metadata is not a JSON object"),
    ("no defense named", json_metadata("mlsec", set_key("defense", None)), "it names no defense"),
    (
        "settings not an object",
        json_metadata("mlsec", set_key("settings", "x")),
        "its settings are not a JSON object",
    ),
    ("missing rng", drop("rng"), "is damaged (missing tensor rng)"),
    ("missing weights", drop("g."), "is damaged (missing tensor g."),
    ("misshapen weights", reshape_first("c."), "has shape [3], not ["),
    ("weights of another dtype", retype_first("g."), "is float64, not float32"),
    ("misshapen optimiser state", reshape_first("g_opt.", ".exp_avg"), "has shape [3], not ["),
    ("missing optimiser state", drop("c_opt.0.exp_avg"), "optimiser state c_opt.0 holds"),
    ("step a float", put("step", torch.tensor(2.5)), "step is float32 of shape [], not an integer"),
    (
        "step of two",
        put("step", torch.tensor([2, 2])),
        "step is int64 of shape [2], not an integer",
    ),
    ("step negative", put("step", torch.tensor(-1)), "step is -1, not an integer >= 0"),
    ("missing seconds", drop("seconds"), "is damaged (missing tensor seconds)"),
    ("stray tensor", put("junk", torch.zeros(1)), "unexpected tensor junk"),
]


@pytest.mark.parametrize(
    ("damage", "message"), [c[1:] for c in GAN_DAMAGE], ids=[c[0] for c in GAN_DAMAGE]
)
def test_defend_resume_refuses_a_damaged_checkpoint_in_one_line(
    gan_runs: dict[str, Path], capsys: pytest.CaptureFixture[str], damage: Edit, message: str
) -> None:
    run = gan_runs["defense-gan"]
    damage(run / CHECKPOINT)
    assert main([*defend_argv("defense-gan", run), "--resume"]) == 2
    err = one_line_error(capsys)
    assert err.startswith("mlsec: --resume: ") and str(run / CHECKPOINT) in err, err
    assert message in err


def test_defend_resume_refuses_a_checkpoint_that_is_a_folder(
    gan_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run = gan_runs["ape-gan"]
    (run / CHECKPOINT).unlink()
    (run / CHECKPOINT).mkdir()
    assert main([*defend_argv("ape-gan", run), "--resume"]) == 2
    assert f"{run / CHECKPOINT} is a folder where the run keeps" in one_line_error(capsys)


# --- purifier files: mlsec audit --defense PATH --------------------------------------------------

KEY = "mlsec.defense"


def relabel(params: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda record: record["params"].update(params)


PURIFIER_DAMAGE: list[tuple[str, Edit, str]] = [
    ("truncated", raw_bytes(lambda b: b[:-10]), "cannot read defense file"),
    ("random bytes", raw_bytes(NOISE), "it is truncated or not a safetensors file"),
    ("no record", raw_metadata(KEY, None), "is not a saved mlsec defense (no 'mlsec.defense'"),
    ("record not JSON", raw_metadata(KEY, "{"), "its 'mlsec.defense' metadata is damaged"),
    (
        "params a list",
        json_metadata(KEY, set_key("params", [1])),
        "its 'mlsec.defense' metadata is damaged",
    ),
    ("unknown kind", json_metadata(KEY, set_key("defense", "gan")), "unknown defense 'gan'"),
    ("future format", json_metadata(KEY, set_key("format", 2)), "defense file format 2, not 1"),
    (
        "another purifier's record",
        json_metadata(KEY, set_key("params", APEGAN(width=8).params())),
        "defense-gan has no hyperparameter 'adv_weight', 'eps', 'recon_weight'",
    ),
    (
        "a network as hyperparameter",
        json_metadata(KEY, relabel({"generator": 1})),
        "defense-gan has no hyperparameter 'generator'",
    ),
    (
        "invalid hyperparameter",
        json_metadata(KEY, relabel({"latent": -1})),
        "invalid defense-gan hyperparameters: latent must be an integer >= 1 (got -1)",
    ),
    (
        "seed not an integer",
        json_metadata(KEY, relabel({"seed": "x"})),
        "seed must be an integer in [0, 2**63 - 1] (got 'x')",
    ),
    (
        "weights of another latent",
        json_metadata(KEY, relabel({"latent": 16})),
        "the weights do not fit latent 16, width 8 (generator.0.weight has shape [392, 8], not "
        "[392, 16])",
    ),
    ("weights of another dtype", retype_first("generator."), "is float64, not float32"),
    ("missing weights", drop("generator.1."), "(missing tensor generator.1."),
    ("stray tensor", put("extra.weight", torch.zeros(1)), "(unexpected tensor extra.weight)"),
]


@pytest.fixture
def purifier_file(tmp_path: Path) -> Path:
    path = tmp_path / "dgan.safetensors"
    DefenseGAN(latent=8, width=8, generator=mnist_generator(8, 8)).save(path)
    return path


@pytest.mark.parametrize(
    ("damage", "message"), [c[1:] for c in PURIFIER_DAMAGE], ids=[c[0] for c in PURIFIER_DAMAGE]
)
def test_audit_refuses_a_damaged_purifier_file_in_one_line(
    purifier_file: Path, capsys: pytest.CaptureFixture[str], damage: Edit, message: str
) -> None:
    damage(purifier_file)
    assert main(["audit", "--defense", str(purifier_file), "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert str(purifier_file) in err and message in err, err


def test_audit_refuses_a_run_checkpoint_or_folder_as_a_defense(
    finished_gan_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run = finished_gan_runs["defense-gan"]
    assert main(["audit", "--defense", str(run / CHECKPOINT), "--no-progress"]) == 2
    assert "a run's checkpoint is not a defense: use defense.safetensors" in one_line_error(capsys)
    assert main(["audit", "--defense", str(run), "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert f"--defense: {run} is a folder; give the defense file in it" in err


def test_a_purifier_file_of_another_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ape.safetensors"
    APEGAN(width=8, generator=ape_generator(8)).save(path)
    with pytest.raises(InputError, match="holds a saved ape-gan, not a DefenseGAN") as error:
        DefenseGAN.load(path)
    assert "\n" not in str(error.value)
    assert isinstance(APEGAN.load(path), APEGAN)
