"""WGAN-GP (Gulrajani et al. 2017), the objective Defense-GAN's generator is trained with.

Reference:
    I. Gulrajani, F. Ahmed, M. Arjovsky, V. Dumoulin, A. Courville. Improved Training of
    Wasserstein GANs. NeurIPS 2017. arXiv:1704.00028.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mlsec.core.validation import check_count
from mlsec.errors import InputError

__all__ = ["WGANPlan", "gradient_penalty", "wgan_step"]


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP's penalty: mean of ``(||grad critic(x_hat)|| - 1)^2`` on random interpolates."""
    mix = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
    x_hat = (mix * real + (1 - mix) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


@dataclass(frozen=True)
class WGANPlan:
    """How a WGAN-GP generator is trained (the options of :meth:`DefenseGAN.fit`)."""

    gan_steps: int
    batch_size: int
    critic_steps: int
    penalty: float
    gan_lr: float
    every: int

    def check(self) -> None:
        """Raise :class:`InputError` unless every option is valid."""
        for label in ("gan_steps", "batch_size", "critic_steps", "every"):
            check_count(label, getattr(self, label))
        if not (self.penalty >= 0 and self.gan_lr > 0):
            raise InputError(
                f"need penalty >= 0 and gan_lr > 0 (got {self.penalty}, {self.gan_lr})"
            )

    def settings(self) -> dict[str, Any]:
        """What the generator's training depends on, besides the data and seed."""
        return {
            "batch_size": self.batch_size,
            "critic_steps": self.critic_steps,
            "penalty": self.penalty,
            "gan_lr": self.gan_lr,
        }


def wgan_step(
    x: torch.Tensor,
    generator: nn.Module,
    critic: nn.Module,
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
    plan: WGANPlan,
    *,
    latent: int,
) -> dict[str, float]:
    """``plan.critic_steps`` critic updates, then one generator update; the last losses.

    The generator draws ``[batch, latent]`` normal latents; randomness is the global RNG's.
    """
    g_opt, c_opt = optimizers
    size, device = plan.batch_size, x.device
    generator.train()
    for _ in range(plan.critic_steps):
        real = x[torch.randint(0, len(x), (size,), device=device)]
        with torch.no_grad():
            fake = generator(torch.randn(size, latent, device=device))
        wasserstein = critic(real).mean() - critic(fake).mean()
        gp = gradient_penalty(critic, real, fake)
        c_opt.zero_grad(set_to_none=True)
        (-wasserstein + plan.penalty * gp).backward()
        c_opt.step()
    fake = generator(torch.randn(size, latent, device=device))
    g_loss = -critic(fake).mean()
    g_opt.zero_grad(set_to_none=True)
    g_loss.backward()
    g_opt.step()
    losses = {"wasserstein": wasserstein, "penalty": gp, "g_loss": g_loss}
    return {k: round(float(v.detach()), 4) for k, v in losses.items()}
