"""Examples for the report's image grid: a few samples each stage broke, attacked again alone."""

from __future__ import annotations

import torch
from torch import nn

from mlsec.auditing.plan import Plan
from mlsec.auditing.report import Example
from mlsec.core import model as _model

__all__ = ["find_examples"]


def find_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    plan: Plan,
    correct: torch.Tensor,
    robust: dict[tuple[str, float], torch.Tensor],
    limit: int,
) -> list[Example]:
    """A few samples each stage broke, attacked again alone to show an example it finds.

    With a random start the rerun can miss a sample the batch run broke; such a sample is
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
            xi, yi = x[index : index + 1].to(device), y[index : index + 1].to(device)
            result = planned.attack.run(model, xi, yi)
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
