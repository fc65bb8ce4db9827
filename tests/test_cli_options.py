"""Command-line options that need more than argparse: ``--normalize``, and the flags io names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import input_error

import mlsec
from mlsec.cli.options import FLAGS, apply_normalize, parse_normalize
from mlsec.io import load_model
from mlsec.zoo import architectures


@pytest.fixture(scope="module")
def sample() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = mlsec.datasets.mnist_sample()
    return x[:64], y[:64]


# --- normalization ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.1307,0.3081", ([0.1307], [0.3081])),
        (
            "0.485, 0.456, 0.406, 0.229, 0.224, 0.225",
            ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ),
        ("-1,2", ([-1.0], [2.0])),
    ],
)
def test_parse_normalize(text: str, expected: tuple[list[float], list[float]]) -> None:
    assert parse_normalize(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.5", "an odd count"),
        ("0.5,0.5,0.5", "an odd count"),
        ("", "expected comma-separated numbers"),
        ("0.5,", "expected comma-separated numbers"),
        ("mean,std", "expected comma-separated numbers"),
        ("0.5,0", "std values must be > 0 (got 0.0)"),
        ("0.5,0.5,1,-1", "std values must be > 0 (got 1.0,-1.0)"),
        ("nan,1", "values must be finite"),
        ("0,inf", "values must be finite"),
    ],
)
def test_parse_normalize_rejects(text: str, message: str) -> None:
    input_error(lambda: parse_normalize(text), "--normalize", message)


def test_apply_normalize_normalizes_inside_the_model(
    sample: tuple[torch.Tensor, torch.Tensor],
) -> None:
    model = mlsec.zoo.load("mnist-cnn")
    mean, std = parse_normalize("0.1307,0.3081")
    wrapped = apply_normalize(model, mean, std, channels=1)
    assert not wrapped.training
    x = sample[0]
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), model((x - 0.1307) / 0.3081), atol=1e-6, rtol=0)
        assert not torch.allclose(wrapped(x), model(x), atol=1e-3)


def test_apply_normalize_checks_channels() -> None:
    model = architectures.mnist_cnn()
    input_error(
        lambda: apply_normalize(model, [0.5, 0.5, 0.5], [0.2, 0.2, 0.2], channels=1),
        "--normalize gives 3 channels but the inputs have 1",
    )
    assert isinstance(apply_normalize(model, [0.5], [0.2], channels=3), mlsec.Normalized)


# --- the flags io's messages name ---------------------------------------------------------------


def test_flags_are_the_command_lines_own(tmp_path: Path) -> None:
    assert (FLAGS.arch, FLAGS.trust_pickle, FLAGS.defense) == (
        "--arch",
        "--trust-pickle",
        "--defense",
    )
    path = tmp_path / "weights.pt"
    torch.save(architectures.mnist_cnn().state_dict(), path)
    message = input_error(lambda: load_model(str(path), terms=FLAGS), "holds weights only")
    assert message.endswith("give --arch module:factory returning the network to load them into")
