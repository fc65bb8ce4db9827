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
    """A few samples each stage broke, attacked again in one batch per stage to show examples.

    The rerun draws each sample's own randomness (keyed by its index), so it finds what the
    chain found; should it still miss (a model whose output depends on its batch), the sample is
    skipped, so every example shown is a real adversarial example. Only the stages that have a
    share of the grid left to fill run, each on at most twice its share.
    """
    per_stage = max(1, limit // max(1, len(robust)))
    device = _model.device_of(model)
    found: list[Example] = []
    before = correct
    for planned in plan.stages:
        after = robust[(planned.label, planned.eps)]
        candidates = (before & ~after).nonzero().flatten()[: 2 * per_stage].tolist()
        before = after
        if not candidates or len(found) >= limit:
            continue
        xs, ys = (t.to(device) for t in samples.get(candidates))
        index = torch.tensor(candidates, device=device)
        result = planned.attack.run(model, xs, ys, index=index)
        hits = result.success.nonzero().flatten().tolist()[: min(per_stage, limit - len(found))]
        found += [
            Example(
                index=candidates[i],
                label=int(ys[i]),
                attack=planned.label,
                eps=planned.eps,
                clean_prediction=int(ys[i]),  # only correctly classified samples break
                adversarial_prediction=int(result.logits.argmax(1)[i]),
                clean=xs[i].detach().float().cpu(),
                adversarial=result.x_adv[i].detach().float().cpu(),
            )
            for i in hits
        ]
    return found
