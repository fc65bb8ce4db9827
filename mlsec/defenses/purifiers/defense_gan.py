"""Defense-GAN (Samangouei et al. 2018): purify an input by projecting it onto a GAN's range.

A generator ``G`` is trained on clean data (here with WGAN-GP). At inference an input ``x`` is
replaced by ``G(z*)`` where ``z*`` approximately minimises ``||G(z) - x||^2``: ``steps`` (L) Adam
steps on ``z`` from ``restarts`` (R) random starts, folded into one batch, the best kept. The
classifier then sees only images the generator can draw, so a perturbation off the generator's
range is projected away.

The projection is an optimisation, not a differentiable layer: an adaptive attack differentiates
it with BPDA (the identity: ``G(z*) ≈ x``) and averages over its random starts with EOT. Athalye
et al. (2018) broke it that way; ``mlsec audit --defense`` reports both numbers.

Optionally an encoder ``E`` (the "inverse GAN" variant) gives the first start ``E(x)``, near the
end of the descent, so that far fewer steps reach the same reconstruction.

Reference:
    P. Samangouei, M. Kabkab, R. Chellappa. Defense-GAN: Protecting Classifiers Against
    Adversarial Attacks Using Generative Models. ICLR 2018. arXiv:1805.06605.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from rich.console import Console
from torch import nn

from mlsec.core.data import as_tensors
from mlsec.core.fingerprint import fingerprint_tensors
from mlsec.core.keyed import SampleKeys
from mlsec.core.model import frozen
from mlsec.core.progress import Tracker
from mlsec.core.progress import progress as progress_bars
from mlsec.core.validation import MAX_SEED, check_count, check_number, check_seed
from mlsec.defenses.base import PURIFIERS, Purifier, network_field
from mlsec.defenses.purifiers import run
from mlsec.defenses.purifiers.networks import (
    latent_size,
    mnist_critic,
    mnist_encoder,
    mnist_generator,
    project,
)
from mlsec.defenses.purifiers.wgan import WGANPlan, gradient_penalty, wgan_step
from mlsec.defenses.weights import module_tensors, optimizer_tensors
from mlsec.errors import InputError

__all__ = ["DefenseGAN", "gradient_penalty"]

_INITS = ("random", "encoder")
_BPDA = ("auto", "identity", "encoder")


@PURIFIERS.register("defense-gan")
@dataclass(kw_only=True)
class DefenseGAN(Purifier):
    """Defense-GAN purifier for 28 x 28 grey images.

    Args:
        latent: size of the generator's latent ``z``.
        width: channel width of the generator, critic and encoder.
        steps: gradient steps of the projection (L); at least 1.
        restarts: random starts per input (R), folded into one batch; at least 1.
        lr: Adam's step size on ``z``.
        seed: seeds the random starts (and :meth:`fit`); with sample keys (an attack's), the
            starts are drawn from a stream named after it, so two seeds draw differently.
        init: ``"random"`` (the paper) or ``"encoder"``: the first start is ``E(x)``.
        bpda: the surrogate whose gradient adaptive attacks use for the projection:
            ``"identity"`` (``G(z*) ≈ x``), ``"encoder"`` (``G(E(x))``, the encoder's
            differentiable approximation of the projection, whose gradient lies along the
            generator's range) or ``"auto"``: the encoder where one is fitted. On the bundled
            weights the encoder surrogate is the stronger (see docs/defense-gan.md).
        generator: the fitted generator (set by :meth:`fit` or loading).
        encoder: the fitted encoder, if any (set by :meth:`fit` with ``encoder_steps``, or loading).

    Example:
        >>> import torch
        >>> from mlsec.defenses.purifiers.networks import mnist_generator
        >>> defense = DefenseGAN(latent=8, steps=5, restarts=2, generator=mnist_generator(8))
        >>> defense.purify(torch.rand(3, 1, 28, 28)).shape
        torch.Size([3, 1, 28, 28])

    """

    name: ClassVar[str] = "defense-gan"
    randomized: ClassVar[bool] = True

    latent: int = 32
    width: int = 64
    steps: int = 200
    restarts: int = 10
    lr: float = 0.05
    seed: int = 0
    init: str = "random"
    bpda: str = "auto"
    generator: nn.Module | None = network_field()  # noqa: RUF009  # a fresh field per class
    encoder: nn.Module | None = network_field()  # noqa: RUF009  # a fresh field per class

    def __post_init__(self) -> None:
        check_count("latent", self.latent)
        check_count("width", self.width, low=2)
        check_count("steps", self.steps)
        check_count("restarts", self.restarts)
        check_number("lr", self.lr)
        check_seed(self.seed)
        if self.init not in _INITS:
            raise InputError(f"init must be one of {', '.join(_INITS)} (got {self.init!r})")
        if self.bpda not in _BPDA:
            raise InputError(f"bpda must be one of {', '.join(_BPDA)} (got {self.bpda!r})")
        for role, network in (("generator", self.generator), ("encoder", self.encoder)):
            if network is not None and not isinstance(network, nn.Module):
                raise InputError(f"{role} must be a torch.nn.Module (got {type(network).__name__})")
        if self.generator is not None and latent_size(self.generator) != self.latent:
            raise InputError(
                f"latent size {self.latent} does not match the generator's weights "
                f"(latent {latent_size(self.generator)})"
            )
        if self.encoder is not None:
            out = [m for m in self.encoder.modules() if isinstance(m, nn.Linear)]
            if out and out[-1].out_features != self.latent:
                raise InputError(
                    f"latent size {self.latent} does not match the encoder's weights "
                    f"(latent {out[-1].out_features})"
                )

    # --- purification ----------------------------------------------------------------------------

    def networks(self) -> dict[str, nn.Module]:
        """The fitted networks by name."""
        if self.generator is None:
            raise InputError("DefenseGAN is not fitted: call fit(data) or load a saved defense")
        nets = {"generator": self.generator}
        if self.encoder is not None:
            nets["encoder"] = self.encoder
        return nets

    def _through_encoder(self) -> bool:
        return self.bpda == "encoder" or (self.bpda == "auto" and self.encoder is not None)

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """BPDA's differentiable stand-in for the projection (see ``bpda``)."""
        if not self._through_encoder():
            return x
        generator = self.networks()["generator"]
        if self.encoder is None:
            raise InputError('bpda="encoder" needs a fitted encoder (fit with encoder_steps)')
        return generator.eval()(self.encoder.eval()(x))

    @property
    def surrogate_name(self) -> str:
        """``identity surrogate`` or ``encoder surrogate G(E(x))``."""
        return "encoder surrogate G(E(x))" if self._through_encoder() else "identity surrogate"

    def purify(
        self,
        x: torch.Tensor,
        *,
        seed: int | None = None,
        keys: SampleKeys | None = None,
        step: int = 0,
    ) -> torch.Tensor:
        """``G(z*)``: the best of R projections of ``x`` on the generator's range (``project``)."""
        return self.project(x, seed=seed, keys=keys, step=step)[0]

    def purify_keyed(self, x: torch.Tensor, keys: SampleKeys, *, step: int) -> torch.Tensor:
        """``G(z*)`` with row ``r``'s random starts drawn from ``keys[r]`` at ``step``."""
        return self.project(x, keys=keys, step=step)[0]

    def project(
        self,
        x: torch.Tensor,
        *,
        seed: int | None = None,
        steps: int | None = None,
        keys: SampleKeys | None = None,
        step: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G(z*), z*)`` for ``x``; ``steps`` overrides L (to compare inits at equal cost).

        Row ``r``'s R random starts are drawn from ``keys[r]`` (one key per row of ``x``, see
        :mod:`mlsec.core.keyed`) at ``step``, in a stream named after ``seed`` (default: the
        defense's own): so a sample's purification depends on its key, the step and the seed
        only, never on the rest of the batch. Without ``keys`` row ``r`` is keyed as sample
        ``r`` under ``seed`` (``SampleKeys.of(seed, arange(B))``) at step 0.
        """
        generator = self.networks()["generator"]
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise InputError(f"DefenseGAN purifies [B, 1, 28, 28] images (got {tuple(x.shape)})")
        z0 = self.starts(x, seed=seed, keys=keys, step=step)
        return project(
            generator, x, steps=steps or self.steps, restarts=self.restarts, lr=self.lr, z0=z0
        )

    def starts(
        self,
        x: torch.Tensor,
        *,
        seed: int | None = None,
        keys: SampleKeys | None = None,
        step: int = 0,
    ) -> torch.Tensor:
        """The projection's starts ``[R, B, latent]``: keyed normal draws, ``E(x)`` first if set."""
        seed = self.seed if seed is None else seed
        if keys is None:
            keys = SampleKeys.of(seed, torch.arange(x.shape[0], device=x.device))
        if len(keys) != x.shape[0]:
            raise InputError(
                f"{len(keys)} sample keys for a batch of {x.shape[0]}: give one key per row",
                subject="keys",
            )
        draws = keys.normal((self.restarts, self.latent), stream=f"defense-gan/{seed}/z", step=step)
        z0 = draws.transpose(0, 1).contiguous()
        if self.init == "encoder":
            if self.encoder is None:
                raise InputError('init="encoder" needs a fitted encoder (fit with encoder_steps)')
            with torch.no_grad(), frozen(self.encoder) as encoder:
                z0[0] = encoder(x.detach()).float().to(z0.device)
        return z0

    # --- training --------------------------------------------------------------------------------

    def fit(  # type: ignore[override]  # the base takes any options; this names its own
        self,
        data: Any,
        *,
        gan_steps: int = 10000,
        encoder_steps: int = 2000,
        batch_size: int = 64,
        critic_steps: int = 5,
        penalty: float = 10.0,
        gan_lr: float = 1e-4,
        folder: str | None = None,
        resume: bool = False,
        every: int = 200,
        device: str | torch.device = "cpu",
        progress: bool = False,
        console: Console | None = None,
    ) -> DefenseGAN:
        """Train the generator (WGAN-GP), then the encoder if ``encoder_steps`` > 0.

        WGAN-GP (Gulrajani et al. 2017) is the objective Defense-GAN's authors used: the critic
        estimates the Wasserstein-1 distance and a gradient penalty keeps it 1-Lipschitz, which
        trains stably without the balancing tricks of the original GAN loss, and the critic's
        estimate tracks sample quality, so the log shows progress. Adam (``gan_lr``, betas 0.5 /
        0.9), ``critic_steps`` critic updates per generator update.

        The encoder minimises ``||G(E(x)) - x||^2`` on the data plus ``||E(G(z)) - z||^2`` on
        samples, with the generator frozen.

        Args:
            data: ``(x, y)`` tensors, a Dataset or a DataLoader of ``[1, 28, 28]`` images in
                [0, 1] (the labels are not used).
            folder: the run folder: ``checkpoint.safetensors`` and a ``log.jsonl`` line every
                ``every`` generator steps, and ``samples-STEP.png``, 64 samples of a fixed batch
                of latents, to see whether the GAN converges or collapses.
            resume: continue the run in ``folder`` from its checkpoint.
            gan_steps: generator updates in all (a resumed run counts those already done).
            encoder_steps: encoder updates after the GAN (0: no encoder).
            batch_size: images per update.
            critic_steps: critic updates per generator update.
            penalty: weight of the gradient penalty (lambda).
            gan_lr: Adam's step size for the generator and the critic.
            every: generator steps between checkpoints.
            device: where to train.
            progress: show rich progress bars (losses included).
            console: where progress goes (stderr by default).

        Returns:
            ``self``, fitted, networks in eval mode on the CPU.

        """
        x, _ = as_tensors(data)
        if tuple(x.shape[1:]) != (1, 28, 28):
            raise InputError(f"DefenseGAN trains on [n, 1, 28, 28] images (got {tuple(x.shape)})")
        plan = WGANPlan(gan_steps, batch_size, critic_steps, penalty, gan_lr, every)
        plan.check()
        check_count("encoder_steps", encoder_steps, low=0)
        folder_ = run.RunFolder(
            folder,
            resume=resume,
            defense=self.name,
            settings={
                # What the generator's training depends on; the projection's settings (steps,
                # restarts, lr, init, bpda), every and encoder_steps may change on resume.
                "params": {"latent": self.latent, "width": self.width, "seed": self.seed},
                "fit": plan.settings(),
                "data": {"training data": fingerprint_tensors(x)},
            },
        )
        x = x.to(torch.device(device))
        with progress_bars(enabled=progress, console=console, unit="steps") as tracker:
            self.generator = self._fit_gan(x, plan, folder_, tracker).eval()
            self.encoder = None
            if encoder_steps:
                self.encoder = self._fit_encoder(x, encoder_steps, batch_size, tracker)
        self.generator = self.generator.cpu()
        for p in self.generator.parameters():
            p.requires_grad_(False)
        return self

    def _fit_gan(
        self, x: torch.Tensor, plan: WGANPlan, folder: run.RunFolder, tracker: Tracker
    ) -> nn.Module:
        """The WGAN-GP generator, trained (or resumed) to ``plan.gan_steps`` steps."""
        device = x.device
        torch.manual_seed(self.seed)
        generator = mnist_generator(self.latent, self.width).to(device)
        critic = mnist_critic(self.width).to(device)
        g_opt = torch.optim.Adam(generator.parameters(), lr=plan.gan_lr, betas=(0.5, 0.9))
        c_opt = torch.optim.Adam(critic.parameters(), lr=plan.gan_lr, betas=(0.5, 0.9))
        fixed = torch.randn(64, self.latent, generator=torch.Generator().manual_seed(12345))
        step, seconds = 0, 0.0
        saved = folder.load()
        if saved is not None:
            step, seconds = saved.restore(
                networks={"g": generator, "c": critic},
                optimizers={"g_opt": g_opt, "c_opt": c_opt},
                counter="step",
                total=plan.gan_steps,
                limit="gan_steps",
            )
        clock = run.Clock(seconds)
        stage = tracker.stage("WGAN-GP", total=plan.gan_steps, completed=min(step, plan.gan_steps))
        while step < plan.gan_steps:
            losses = wgan_step(x, generator, critic, (g_opt, c_opt), plan, latent=self.latent)
            step += 1
            if step % plan.every != 0 and step != plan.gan_steps:
                stage.advance(1)
                continue
            record = {"step": step, **losses, "seconds": clock()}
            stage.advance(1, note=f"W {record['wasserstein']:.3f}  GP {record['penalty']:.3f}")
            generator.eval()
            with torch.no_grad():
                folder.image(f"samples-{step:06d}.png", generator(fixed.to(device)))
            tensors = {
                **module_tensors("g", generator),
                **module_tensors("c", critic),
                **optimizer_tensors("g_opt", g_opt),
                **optimizer_tensors("c_opt", c_opt),
                "rng": torch.get_rng_state(),
                "step": torch.tensor(step),
                "seconds": torch.tensor(record["seconds"]),
            }
            folder.save(tensors, record)
        stage.finish()
        return generator

    def _fit_encoder(
        self, x: torch.Tensor, steps: int, batch_size: int, tracker: Tracker
    ) -> nn.Module:
        assert self.generator is not None
        generator = self.generator.eval()
        for p in generator.parameters():
            p.requires_grad_(False)
        torch.manual_seed((self.seed + 1) % (MAX_SEED + 1))
        encoder = mnist_encoder(self.latent, self.width).to(x.device)
        optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-3)
        stage = tracker.stage("encoder", total=steps)
        for _ in range(steps):
            real = x[torch.randint(0, len(x), (batch_size,), device=x.device)]
            z = torch.randn(batch_size, self.latent, device=x.device)
            with torch.no_grad():
                drawn = generator(z)
            image_loss = (generator(encoder(real)) - real).pow(2).flatten(1).sum(1).mean()
            latent_loss = (encoder(drawn) - z).pow(2).sum(1).mean()
            optimizer.zero_grad(set_to_none=True)
            (image_loss + latent_loss).backward()
            optimizer.step()
            losses = (float(image_loss.detach()), float(latent_loss.detach()))
            stage.advance(1, note=f"image {losses[0]:.2f}  latent {losses[1]:.3f}")
        stage.finish()
        return encoder.eval().cpu()

    # --- files -----------------------------------------------------------------------------------

    @classmethod
    def from_tensors(
        cls, params: dict[str, Any], tensors: dict[str, torch.Tensor], *, source: str
    ) -> DefenseGAN:
        """A fitted DefenseGAN from saved hyperparameters and its networks' tensors."""
        defense = cls(**params)
        nets = {"generator": mnist_generator(defense.latent, defense.width)}
        if any(k.startswith("encoder.") for k in tensors):
            nets["encoder"] = mnist_encoder(defense.latent, defense.width)
        run.load_networks(
            nets,
            tensors,
            f"{source}: the weights do not fit latent {defense.latent}, width {defense.width}",
        )
        for network in nets.values():
            network.eval().requires_grad_(False)
        defense.generator = nets["generator"]
        defense.encoder = nets.get("encoder")
        return defense
