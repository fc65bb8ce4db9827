"""ART's ``MembershipInferenceBlackBox`` (Shokri et al. 2017 style), run through ART itself.

ART trains an attack model (here a random forest, ``attack_model_type="rf"``) on the target
model's outputs and the labels of known members and non-members. mlsec only splits the data:
the attack model is fitted on a seeded, balanced random half of each, and scores the other halves,
so no sample is scored by a model that saw its membership.

Reference:
    R. Shokri, M. Stronati, C. Song, V. Shmatikov. Membership Inference Attacks Against Machine
    Learning Models. IEEE S&P 2017. arXiv:1610.05820.

"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mlsec.attacks.art.estimator import CountingModel, art_classifier, seeded
from mlsec.core import model as model_helpers
from mlsec.core.keyed import SampleKeys
from mlsec.core.validation import check_seed
from mlsec.errors import InputError

__all__ = ["art_blackbox", "balanced_halves"]


def balanced_halves(members: int, non_members: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Seeded positions ``(fit_members, score_members, fit_non_members, score_non_members)``.

    ``min(members, non_members) // 2`` of each fit the attack model; the rest are scored.

    Example:
        >>> halves = balanced_halves(6, 4, seed=0)
        >>> [len(h) for h in halves]
        [2, 4, 2, 2]

    """
    fit = min(members, non_members) // 2
    if fit < 1:
        raise InputError(
            "ART's black-box attack needs at least 2 members and 2 non-members (half of each "
            "trains its attack model)"
        )
    halves = []
    for count, stream in ((members, "art-blackbox/members"), (non_members, "art-blackbox/others")):
        keys = SampleKeys.of(seed, torch.arange(count))
        order = keys.uniform((1,), stream=stream)[:, 0].argsort()
        halves += [order[:fit].sort().values, order[fit:].sort().values]
    return tuple(halves)


def art_blackbox(
    model: nn.Module,
    members: tuple[torch.Tensor, torch.Tensor],
    non_members: tuple[torch.Tensor, torch.Tensor],
    *,
    seed: int = 0,
    bounds: tuple[float, float] = (0.0, 1.0),
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """ART's black-box membership attack on ``model``, scored on held-back halves.

    Args:
        model: the classifier (returning logits).
        members: ``(x, y)`` the model trained on.
        non_members: ``(x, y)`` it never saw.
        seed: seeds the split and ART's random forest (through numpy's global generator, which is
            restored afterwards).
        bounds: the inputs' range (ART's ``clip_values``).
        device: where the model computes (default: where its weights are).

    Returns:
        ``(member_scores, non_member_scores, note)``: the attack model's probability of
        "member" for the held-back members and non-members (float64), and a line for the report.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> x, y = torch.rand(40, 1, 2, 2), torch.arange(40) % 3
        >>> m, n, note = art_blackbox(net, (x[:20], y[:20]), (x[20:], y[20:]))
        >>> len(m), len(n)
        (10, 10)

    """
    # ART on first use, as mlsec.attacks.art imports it: importing it is slow and writes ~/.art.
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox

    check_seed(seed)
    (xm, ym), (xn, yn) = members, non_members
    device = device or model_helpers.device_of(model)
    fit_m, score_m, fit_n, score_n = balanced_halves(len(ym), len(yn), seed)
    with model_helpers.frozen(model):
        counting = CountingModel(model, device)
        with torch.no_grad():
            classes = int(model(xm[:1].to(device)).shape[1])
        classifier = art_classifier(counting, xm[:1].cpu(), classes, bounds)
        attack = MembershipInferenceBlackBox(
            classifier, input_type="prediction", attack_model_type="rf"
        )

        def arrays(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> list[np.ndarray]:
            return [x[rows].cpu().float().numpy(), y[rows].cpu().numpy()]

        with seeded(seed, torch.device("cpu")):
            attack.fit(*arrays(xm, ym, fit_m), *arrays(xn, yn, fit_n))
            scored = [
                attack.infer(*arrays(x, y, rows), probabilities=True)
                for x, y, rows in ((xm, ym, score_m), (xn, yn, score_n))
            ]
    member_scores, non_member_scores = (
        torch.from_numpy(np.asarray(s, dtype=np.float64).reshape(len(s), -1)[:, -1]) for s in scored
    )
    note = (
        f"ART's random-forest attack model was fitted on {len(fit_m)} members and {len(fit_n)} "
        f"non-members (seed {seed}) and scored on the other {len(score_m)} and {len(score_n)}"
    )
    return member_scores, non_member_scores, note
