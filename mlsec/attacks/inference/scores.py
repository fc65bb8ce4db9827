"""Per-sample membership scores from a model's logits: the higher, the more likely a member.

Each score is a pure function ``(logits [N, K], y [N]) -> float64 [N]``. A model fits its
training samples better than unseen ones, so every score measures how well the model fits the
sample's true label:

* :func:`loss`: minus the cross-entropy (Yeom et al. 2018);
* :func:`confidence`: the softmax probability of the true class;
* :func:`entropy`: minus the modified entropy of Song & Mittal (2021), which, unlike the plain
  entropy, uses the label: a confident *wrong* prediction scores low;
* :func:`logit_scaled`: LiRA's ``phi = log p_y - log(1 - p_y)`` (Carlini et al. 2022), whose
  distribution over training runs is close to Gaussian; computed stably as
  ``z_y - logsumexp_{j != y} z_j``.

References:
    S. Yeom, I. Giacomelli, M. Fredrikson, S. Jha. Privacy Risk in Machine Learning: Analyzing
    the Connection to Overfitting. CSF 2018. arXiv:1709.01604.

    L. Song, P. Mittal. Systematic Evaluation of Privacy Risks of Machine Learning Models.
    USENIX Security 2021. arXiv:2003.10595.

    N. Carlini, S. Chien, M. Nasr, S. Song, A. Terzis, F. Tramèr. Membership Inference Attacks
    From First Principles. IEEE S&P 2022. arXiv:2112.03264.

"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mlsec.core import model as model_helpers
from mlsec.core.validation import check_count, run_model
from mlsec.errors import InputError

__all__ = ["SCORES", "confidence", "entropy", "logit_scaled", "logits_of", "loss"]


def _checked(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.dim() != 2 or y.shape != (logits.shape[0],):
        raise InputError(
            f"need logits [n, classes] and labels [n] (got {tuple(logits.shape)} and "
            f"{tuple(y.shape)})"
        )
    return logits.detach().double(), y.to(logits.device, torch.long)


def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Minus the cross-entropy of the true class: ``log p_y`` (Yeom et al. 2018).

    Example:
        >>> round(float(loss(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))[0]), 4)
        -0.6931

    """
    z, y = _checked(logits, y)
    return torch.log_softmax(z, 1).gather(1, y[:, None])[:, 0]


def confidence(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The softmax probability of the true class.

    Example:
        >>> float(confidence(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))[0])
        0.5

    """
    z, y = _checked(logits, y)
    return torch.softmax(z, 1).gather(1, y[:, None])[:, 0]


def _log_complement(z: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """``log(1 - p_i)`` for every class, exact also where ``p_i`` rounds to 1.

    Only the most likely class can have ``p_i > 1/2``; its complement is computed as
    ``logsumexp_{j != i} z_j - logsumexp z``, the others' as ``log1p(-p_i)``.
    """
    out = torch.log1p(-log_p.exp())
    top = z.argmax(1, keepdim=True)
    rest = torch.logsumexp(z.scatter(1, top, float("-inf")), 1, keepdim=True)
    return out.scatter(1, top, rest - torch.logsumexp(z, 1, keepdim=True))


def entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Minus the modified entropy of Song & Mittal (2021), eq. (8).

    ``Mentr = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``: zero for a certain correct
    prediction, large for a confident wrong one. The score is ``-Mentr``.

    Example:
        >>> round(float(entropy(torch.tensor([[0.0, 0.0]]), torch.tensor([0]))[0]), 4)
        -0.6931

    """
    z, y = _checked(logits, y)
    log_p = torch.log_softmax(z, 1)
    p = log_p.exp()
    log_q = _log_complement(z, log_p)  # log(1 - p_i)
    true = torch.zeros_like(p, dtype=torch.bool).scatter_(1, y[:, None], True)
    # p * log(1 - p) -> 0 as p -> 0; where p = 1 exactly, log(1 - p) = -inf is multiplied by
    # (1 - p_y) = 0 for the true class: take the limit 0 in both cases.
    own = torch.where(p < 1.0, (1.0 - p) * log_p, torch.zeros_like(p))
    other = torch.where(p > 0.0, p * log_q, torch.zeros_like(p))
    mentr = -torch.where(true, own, other).sum(1)
    return -mentr


def logit_scaled(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LiRA's ``phi = log(p_y / (1 - p_y)) = z_y - logsumexp_{j != y} z_j`` (Carlini et al. 2022).

    Example:
        >>> z = torch.tensor([[2.0, 0.0, 0.0]])
        >>> round(float(logit_scaled(z, torch.tensor([0]))[0]), 4)  # 2 - log 2
        1.3069

    """
    z, y = _checked(logits, y)
    true = torch.zeros_like(z, dtype=torch.bool).scatter_(1, y[:, None], True)
    others = torch.logsumexp(z.masked_fill(true, float("-inf")), 1)
    return z.gather(1, y[:, None])[:, 0] - others


# The score attacks by name, in the order an audit runs them.
SCORES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "loss": loss,
    "confidence": confidence,
    "entropy": entropy,
}


def _check_logits(out: object, name: str) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(
            f"{name} must return logits [batch, classes] (got {shape}); wrap it so that its "
            "forward returns one row of class scores per input"
        )
    if not out.is_floating_point() or not bool(torch.isfinite(out).all()):
        raise InputError(f"{name} returned NaN, infinite or non-float outputs; check its weights")
    return out


def logits_of(
    model: nn.Module,
    x: torch.Tensor,
    batch_size: int = 500,
    device: torch.device | str | None = None,
    *,
    name: str = "the model",
) -> torch.Tensor:
    """The model's logits for ``x``, in eval mode without gradients, batch by batch.

    Args:
        model: the classifier; it must return logits (not probabilities) ``[batch, classes]``.
        x: inputs ``[N, ...]`` (on any device; moved batch by batch).
        batch_size: inputs per forward pass.
        device: where the model computes (default: where its weights are).
        name: the model's name in errors.

    Returns:
        float32 logits ``[N, classes]`` on the CPU.

    Raises:
        InputError: a model that does not return 2-D logits, or whose every row is non-negative
            and sums to 1 (probabilities: the scores need logits).

    Example:
        >>> net = nn.Linear(3, 2)
        >>> tuple(logits_of(net, torch.rand(5, 3), batch_size=2).shape)
        (5, 2)

    """
    check_count("batch_size", batch_size)
    device = torch.device(device) if device is not None else model_helpers.device_of(model)
    dtype = model_helpers.compute_dtype(model, x)
    parts = []
    with model_helpers.frozen(model), torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            batch = x[start : start + batch_size].to(device, dtype)
            out = _check_logits(run_model(model, batch, name), name)
            parts.append(out.float().cpu())
    logits = torch.cat(parts)
    if logits.numel() and bool((logits >= 0).all()):
        sums = logits.double().sum(1)
        if bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-4)):
            raise InputError(
                f"{name} returns probabilities (every row is non-negative and sums to 1), not "
                "logits; remove its final softmax (or pass torch.log of its output)"
            )
    return logits
