"""APE-GAN (Shen et al. 2017): a generator trained to map adversarial examples back to clean ones.

The generator is a small convolutional encoder-decoder. It is trained on FGSM examples made on the
fly against the classifier it will protect, with a reconstruction loss (mean squared error to the
clean image, weight ``recon_weight``) plus the adversarial loss of a discriminator that tells
clean images from purified ones (weight ``adv_weight``; the paper's 0.7 / 0.3). At inference
purification is one forward pass.

That forward pass is differentiable, so an adaptive attack needs no approximation: it attacks
``classifier(G(x))`` with the exact gradient (Carlini and Wagner 2017 broke APE-GAN that way).

Reference:
    S. Shen, G. Jin, K. Gao, Y. Zhang. APE-GAN: Adversarial Perturbation Elimination with GAN.
    arXiv:1707.05474, 2017.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from mlsec.attacks.fgsm import FGSM
from mlsec.core.data import as_tensors
from mlsec.core.fingerprint import fingerprint_model, fingerprint_tensors
from mlsec.core.progress import Stage
from mlsec.core.progress import progress as progress_bars
from mlsec.core.validation import check_count, check_number, check_seed
from mlsec.defenses.base import PURIFIERS, Purifier, network_field
from mlsec.defenses.purifiers import run
from mlsec.defenses.weights import module_tensors, optimizer_tensors
from mlsec.errors import InputError

__all__ = ["APEGAN", "ape_discriminator", "ape_generator"]


def ape_generator(width: int = 64) -> nn.Module:
    """``[B, 1, 28, 28]`` -> ``[B, 1, 28, 28]`` in [0, 1]: two strided convolutions, two back."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, stride=2, padding=1),  # 14 x 14
        nn.BatchNorm2d(width),
        nn.LeakyReLU(0.2),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),  # 7 x 7
        nn.BatchNorm2d(2 * width),
        nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),  # 14 x 14
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.ConvTranspose2d(width, 1, 4, stride=2, padding=1),  # 28 x 28
        nn.Sigmoid(),
    )


def ape_discriminator(width: int = 64) -> nn.Module:
    """``[B, 1, 28, 28]`` -> one logit per image (clean vs purified)."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(2 * width * 7 * 7, 1),
        nn.Flatten(0),
    )


@PURIFIERS.register("ape-gan")
@dataclass(kw_only=True)
class APEGAN(Purifier):
    """APE-GAN purifier for 28 x 28 grey images.

    Args:
        width: channel width of the generator and discriminator.
        eps: linf budget of the FGSM examples it trains on.
        recon_weight: weight of the reconstruction loss.
        adv_weight: weight of the adversarial loss.
        lr: Adam's step size for both networks (betas 0.5 / 0.999).
        seed: seeds training.
        generator: the fitted generator (set by :meth:`fit` or loading).

    Example:
        >>> import torch
        >>> defense = APEGAN(generator=ape_generator())
        >>> defense.purify(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 1, 28, 28])

    """

    name: ClassVar[str] = "ape-gan"
    differentiable: ClassVar[bool] = True

    width: int = 64
    eps: float = 0.3
    recon_weight: float = 0.7
    adv_weight: float = 0.3
    lr: float = 2e-4
    seed: int = 0
    generator: nn.Module | None = network_field()  # noqa: RUF009  # a fresh field per class

    def __post_init__(self) -> None:
        check_count("width", self.width, low=2)
        for label in ("eps", "recon_weight", "adv_weight"):
            check_number(label, getattr(self, label), zero=True)
        check_number("lr", self.lr)
        check_seed(self.seed)
        if self.recon_weight == 0 and self.adv_weight == 0:
            raise InputError("recon_weight and adv_weight are both 0: nothing to train on")
        if self.generator is not None and not isinstance(self.generator, nn.Module):
            kind = type(self.generator).__name__
            raise InputError(f"generator must be a torch.nn.Module (got {kind})")

    def networks(self) -> dict[str, nn.Module]:
        """The fitted networks by name."""
        if self.generator is None:
            raise InputError("APEGAN is not fitted: call fit(data, model=...) or load a saved one")
        return {"generator": self.generator}

    def purify(self, x: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        """``G(x)``: one forward pass (eval mode), differentiable; ``seed`` is not used."""
        generator = self.networks()["generator"]
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise InputError(f"APEGAN purifies [B, 1, 28, 28] images (got {tuple(x.shape)})")
        if generator.training:
            generator.eval()
        return generator(x)

    def fit(  # type: ignore[override]  # the base takes any options; this names its own
        self,
        data: Any,
        *,
        model: nn.Module,
        epochs: int = 10,
        batch_size: int = 64,
        folder: str | None = None,
        resume: bool = False,
        device: str | torch.device = "cpu",
        progress: bool = False,
        console: Console | None = None,
    ) -> APEGAN:
        """Train on FGSM examples (made on the fly against ``model``) of the clean ``data``.

        Each epoch appends to ``folder``'s ``log.jsonl``, writes ``checkpoint.safetensors`` (both
        networks, both optimisers, RNG state, epoch) and ``samples-EPOCH.png``: rows of 8 clean
        images, their FGSM versions and the purified ones. ``resume`` continues from the
        checkpoint.

        Returns:
            ``self``, fitted, generator in eval mode on the CPU.

        """
        x, y = as_tensors(data)
        if tuple(x.shape[1:]) != (1, 28, 28):
            raise InputError(f"APEGAN trains on [n, 1, 28, 28] images (got {tuple(x.shape)})")
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module (got {type(model).__name__})")
        check_count("epochs", epochs)
        check_count("batch_size", batch_size)
        folder_ = run.RunFolder(
            folder,
            resume=resume,
            defense=self.name,
            settings={
                "params": self.params(),
                "fit": {"batch_size": batch_size},
                # It learns to undo FGSM examples made against the classifier: those are its data.
                "data": {
                    "training data": fingerprint_tensors(x, y),
                    "classifier": fingerprint_model(model),
                },
            },
        )
        device = torch.device(device)
        x, y, model = x.to(device), y.to(device), model.to(device)
        torch.manual_seed(self.seed)
        nets = _Networks(
            ape_generator(self.width).to(device), ape_discriminator(self.width).to(device), self.lr
        )
        epoch, seconds = 0, 0.0
        saved = folder_.load()
        if saved is not None:
            epoch, seconds = saved.restore(
                networks={"g": nets.generator, "d": nets.critic},
                optimizers={"g_opt": nets.g_opt, "d_opt": nets.d_opt},
                counter="epoch",
                total=epochs,
                limit="epochs",
            )
        clock = run.Clock(seconds)
        batches = -(-len(x) // batch_size)
        with progress_bars(enabled=progress, console=console, unit="batches") as tracker:
            stage = tracker.stage("APE-GAN", total=epochs * batches, completed=epoch * batches)
            while epoch < epochs:
                means, shown = self._epoch(nets, model, x, y, batch_size, stage)
                epoch += 1
                record = {
                    "epoch": epoch,
                    "mse": round(means[0], 5),
                    "adv_loss": round(means[1], 4),
                    "d_loss": round(means[2], 4),
                    "seconds": clock(),
                }
                folder_.image(f"samples-{epoch:03d}.png", nets.samples(*shown))
                folder_.save(nets.tensors("epoch", epoch, record["seconds"]), record)
            stage.finish()
        self.generator = nets.generator.eval().cpu().requires_grad_(False)
        return self

    def _epoch(
        self,
        nets: _Networks,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        stage: Stage,
    ) -> tuple[list[float], tuple[torch.Tensor, torch.Tensor]]:
        """One pass over the data: mean (mse, adversarial, discriminator) losses, last batch."""
        fgsm = FGSM(eps=self.eps)
        order = torch.randperm(len(x), device=x.device)
        totals = torch.zeros(3)
        clean = adversarial = x[:0]
        for start in range(0, len(x), batch_size):
            pick = order[start : start + batch_size]
            clean, labels = x[pick], y[pick]
            adversarial = fgsm(model, clean, labels)
            recon, adv, d_loss = nets.step(clean, adversarial, self.recon_weight, self.adv_weight)
            totals += torch.stack([recon, adv, d_loss]).cpu()
            stage.advance(1, note=f"mse {float(recon):.4f}  adv {float(adv):.3f}")
        batches = -(-len(x) // batch_size)
        return (totals / batches).tolist(), (clean, adversarial)

    @classmethod
    def from_tensors(
        cls, params: dict[str, Any], tensors: dict[str, torch.Tensor], *, source: str
    ) -> APEGAN:
        """A fitted APEGAN from saved hyperparameters and ``generator.`` tensors."""
        defense = cls(**params)
        generator = ape_generator(defense.width)
        where = f"{source}: the weights do not fit width {defense.width}"
        run.load_networks({"generator": generator}, tensors, where)
        defense.generator = generator.eval().requires_grad_(False)
        return defense


class _Networks:
    """APE-GAN's generator and discriminator with their optimisers, and one training step."""

    def __init__(self, generator: nn.Module, critic: nn.Module, lr: float) -> None:
        self.generator = generator
        self.critic = critic
        self.g_opt = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.5, 0.999))
        self.d_opt = torch.optim.Adam(critic.parameters(), lr=lr, betas=(0.5, 0.999))

    def step(
        self, clean: torch.Tensor, adversarial: torch.Tensor, recon_weight: float, adv_weight: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One discriminator and one generator update; the (detached) losses."""
        self.generator.train()
        purified = self.generator(adversarial)
        real_logit, fake_logit = self.critic(clean), self.critic(purified.detach())
        d_loss = F.binary_cross_entropy_with_logits(
            real_logit, torch.ones_like(real_logit)
        ) + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
        self.d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_opt.step()
        fooled = self.critic(purified)
        recon = F.mse_loss(purified, clean)
        adv = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
        g_loss = recon_weight * recon + adv_weight * adv
        self.g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        self.g_opt.step()
        return recon.detach(), adv.detach(), d_loss.detach()

    def samples(self, clean: torch.Tensor, adversarial: torch.Tensor) -> torch.Tensor:
        """Rows of 8 clean images, their FGSM versions and the purified ones."""
        show = slice(0, 8)
        self.generator.eval()
        with torch.no_grad():
            cleaned = self.generator(adversarial[show])
        return torch.cat([clean[show], adversarial[show], cleaned])

    def tensors(self, counter: str, done: int, seconds: float) -> dict[str, torch.Tensor]:
        """The checkpoint's tensors: networks, optimisers, global RNG and progress."""
        return {
            **module_tensors("g", self.generator),
            **module_tensors("d", self.critic),
            **optimizer_tensors("g_opt", self.g_opt),
            **optimizer_tensors("d_opt", self.d_opt),
            "rng": torch.get_rng_state(),
            counter: torch.tensor(done),
            "seconds": torch.tensor(seconds),
        }
