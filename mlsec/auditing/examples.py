"""Examples for the report's image grid: a few samples each stage broke, attacked again alone."""

from __future__ import annotations

import torch
from torch import nn

from mlsec.auditing.plan import Plan
from mlsec.auditing.report import Example
from mlsec.core import model as _model
from mlsec.core.data import Samples

__all__ = ["find_examples"]


def find_examples(
    model: nn.Module,
    samples: Samples,
    plan: Plan,
    correct: torch.Tensor,
    robust: dict[tuple[str, float], torch.Tensor],
    limit: int,
) -> list[Example]:
    """A few samples each stage broke, attacked again alone to show an example it finds.

    The rerun draws the sample's own randomness (keyed by its index), so it finds what the
    chain found; should it still miss (a model whose output depends on its batch), the sample is
    skipped, so every example shown is a real adversarial example.
    """
    per_stage = max(1, limit // max(1, len(robust)))
    device = _model.device_of(model)
    found: list[Example] = []
    before = correct
    for planned in plan.stages:
        after = robust[(planned.label, planned.eps)]
        candidates = (before & ~after).nonzero().flatten()[: 3 * per_stage].tolist()
        before = after
        kept = 0
        for index in candidates:
            if kept == per_stage or len(found) == limit:
                break
            xs, ys = samples.get([index])
            xi, yi = xs.to(device), ys.to(device)
            result = planned.attack.run(model, xi, yi, index=torch.tensor([index], device=device))
            if not bool(result.success[0]):
                continue
            kept += 1
            found.append(
                Example(
                    index=index,
                    label=int(yi[0]),
                    attack=planned.label,
                    eps=planned.eps,
                    clean_prediction=int(yi[0]),  # only correctly classified samples break
                    adversarial_prediction=int(result.logits.argmax(1)[0]),
                    clean=xi[0].detach().float().cpu(),
                    adversarial=result.x_adv[0].detach().float().cpu(),
                )
            )
    return found
