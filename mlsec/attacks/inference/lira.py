"""Offline LiRA (Carlini et al. 2022): a likelihood-ratio test against shadow models.

A sample's logit-scaled confidence ``phi`` (:func:`~mlsec.attacks.inference.scores.logit_scaled`)
varies from sample to sample far more than between members and non-members: some samples are
easy for every model. LiRA calibrates per sample. Shadow models are trained on random halves of
the data; for each sample the shadows that did *not* train on it ("OUT") give the distribution of
``phi`` a model that never saw it produces, modelled as a Gaussian ``N(mu_out, sigma^2)``. The
target model's ``phi`` far above ``mu_out`` is evidence of membership: the offline test is
one-sided, and the score ``(phi - mu_out) / sigma`` is monotone in its likelihood ratio.

With few shadows the per-sample variance is a poor estimate; Carlini et al. (Sec. VI-A) recommend
one global ("fixed") variance, which is what this does: the pooled variance of every OUT value
around its own sample's ``mu_out``.

Reference:
    N. Carlini, S. Chien, M. Nasr, S. Song, A. Terzis, F. Tramèr. Membership Inference Attacks
    From First Principles. IEEE S&P 2022. arXiv:2112.03264.

"""

from __future__ import annotations

import torch

from mlsec.errors import InputError

__all__ = ["lira_offline"]


def lira_offline(
    target_phi: torch.Tensor, shadow_phi: torch.Tensor, shadow_in: torch.Tensor
) -> torch.Tensor:
    """Offline LiRA scores (higher: more likely a member).

    Args:
        target_phi: the target model's logit-scaled confidence per sample ``[N]``.
        shadow_phi: each shadow model's ``[S, N]``.
        shadow_in: ``[S, N]`` bool, whether shadow ``s`` trained on sample ``n``.

    Returns:
        float64 ``[N]``: ``(phi_target - mu_out) / sigma``, with ``mu_out`` the mean of the
        sample's OUT shadows and ``sigma`` the pooled standard deviation of all OUT values.

    Raises:
        InputError: mismatched shapes, or a sample that every shadow trained on (no OUT shadow).

    Example:
        >>> shadow = torch.tensor([[0.0, 1.0], [2.0, 3.0], [9.0, 9.0]])
        >>> inside = torch.tensor([[False, False], [False, False], [True, True]])
        >>> scores = lira_offline(torch.tensor([3.0, 2.0]), shadow, inside)
        >>> [round(s, 4) for s in scores.tolist()]  # mu_out = 1 and 2; sigma = sqrt(4 / 2)
        [1.4142, 0.0]

    """
    target = target_phi.detach().double().cpu().reshape(-1)
    phi = shadow_phi.detach().double().cpu()
    inside = shadow_in.detach().cpu().bool()
    if phi.dim() != 2 or phi.shape != inside.shape or phi.shape[1] != target.shape[0]:
        raise InputError(
            f"need target_phi [N], shadow_phi [S, N] and shadow_in [S, N] (got "
            f"{tuple(target_phi.shape)}, {tuple(shadow_phi.shape)} and {tuple(shadow_in.shape)})"
        )
    out = ~inside
    count = out.sum(0)
    if bool((count == 0).any()):
        first = int((count == 0).nonzero()[0, 0])
        raise InputError(
            f"sample {first} has no OUT shadow (every shadow trained on it); LiRA needs shadows "
            "that never saw each sample: train more shadows, each on a random half of the data"
        )
    mu = torch.where(out, phi, 0.0).sum(0) / count
    residual = torch.where(out, phi - mu, 0.0)
    dof = int(count.sum()) - int((count > 0).sum())  # one mean estimated per sample
    variance = residual.square().sum() / max(dof, 1)
    sigma = float(variance.sqrt())
    if not sigma > 0.0:  # every OUT shadow agrees exactly: the scale is arbitrary
        sigma = 1.0
    return (target - mu) / sigma
