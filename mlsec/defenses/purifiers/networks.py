"""Small networks for GAN-based defenses on 28 x 28 grey images (MNIST).

- :func:`mnist_generator`: latent ``z`` -> image in ``[0, 1]`` (DCGAN-style, two transposed
  convolutions; batch norm in the generator only).
- :func:`mnist_encoder`: image -> latent, to start the projection near its end (inverse GAN).
- :func:`mnist_critic`: image -> one unbounded score (a WGAN-GP critic: no batch norm, whose
  per-sample statistics would break the gradient penalty).

- :func:`project`: Defense-GAN's projection of images onto the generator's range.

Both networks are kept small so that the shipped weights stay well under 3 MB and Defense-GAN's
projection (hundreds of generator passes per image) stays fast.

Reference:
    P. Samangouei, M. Kabkab, R. Chellappa. Defense-GAN: Protecting Classifiers Against
    Adversarial Attacks Using Generative Models. ICLR 2018. arXiv:1805.06605.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import nn

from mlsec.core.model import frozen
from mlsec.core.validation import check_count
from mlsec.defenses.weights import save_weights
from mlsec.errors import InputError

__all__ = [
    "latent_size",
    "load_generator",
    "mnist_critic",
    "mnist_encoder",
    "mnist_generator",
    "project",
    "save_generator",
]


def mnist_generator(latent: int = 32, width: int = 64) -> nn.Module:
    """A generator from ``[B, latent]`` to ``[B, 1, 28, 28]`` images in ``[0, 1]``.

    Example:
        >>> import torch
        >>> generator = mnist_generator(latent=8).eval()
        >>> image = generator(torch.zeros(2, 8))
        >>> tuple(image.shape), bool(image.min() >= 0), bool(image.max() <= 1)
        ((2, 1, 28, 28), True, True)

    """
    check_count("latent", latent)
    return nn.Sequential(
        nn.Linear(latent, width * 7 * 7),
        nn.BatchNorm1d(width * 7 * 7),
        nn.ReLU(),
        nn.Unflatten(1, (width, 7, 7)),
        nn.ConvTranspose2d(width, width // 2, 4, stride=2, padding=1),  # 14 x 14
        nn.BatchNorm2d(width // 2),
        nn.ReLU(),
        nn.ConvTranspose2d(width // 2, 1, 4, stride=2, padding=1),  # 28 x 28
        nn.Sigmoid(),
    )


def mnist_encoder(latent: int = 32, width: int = 64) -> nn.Module:
    """An encoder from ``[B, 1, 28, 28]`` images to latents ``[B, latent]`` (the inverse GAN's).

    Example:
        >>> import torch
        >>> tuple(mnist_encoder(latent=8)(torch.zeros(2, 1, 28, 28)).shape)
        (2, 8)

    """
    check_count("latent", latent)
    return nn.Sequential(*_downsample(width), nn.Linear(width * 7 * 7, latent))


def _downsample(width: int) -> list[nn.Module]:
    """28 x 28 x 1 -> flat 7 x 7 x ``width`` features: two strided 4 x 4 convolutions, no norm."""
    return [
        nn.Conv2d(1, width // 2, 4, stride=2, padding=1),  # 14 x 14
        nn.LeakyReLU(0.2),
        nn.Conv2d(width // 2, width, 4, stride=2, padding=1),  # 7 x 7
        nn.LeakyReLU(0.2),
        nn.Flatten(),
    ]


def mnist_critic(width: int = 64) -> nn.Module:
    """A WGAN-GP critic from ``[B, 1, 28, 28]`` images to scores ``[B]``."""
    return nn.Sequential(*_downsample(width), nn.Linear(width * 7 * 7, 1), nn.Flatten(0))


def project(
    generator: nn.Module,
    x: torch.Tensor,
    *,
    steps: int = 200,
    restarts: int = 10,
    lr: float = 0.05,
    seed: int = 0,
    z0: torch.Tensor | None = None,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Defense-GAN's projection: ``G(z*)`` with ``z* ~ argmin_z ||G(z) - x||^2``, per sample.

    ``restarts`` random starts per sample are folded into one batch ``[restarts * B, latent]``
    and descended together with Adam for ``steps`` steps (Adam is elementwise and the generator
    runs in eval mode, so the samples and starts do not interact); the start with the lowest final
    error is kept. The generator's weights are not changed.

    Args:
        generator: maps ``[N, latent]`` to images shaped like ``x``.
        x: images ``[B, ...]``.
        steps: gradient steps on z (L in the paper); at least 1.
        restarts: random starts per sample (R in the paper); at least 1.
        lr: Adam's step size on z.
        seed: seeds the random starts.
        z0: the starts ``[restarts, B, latent]`` instead of seeded normal draws.
        chunk: latents per generator pass within a step (the step's gradient is the same, and
            Adam still updates all latents at once). Default: all at once on a GPU, where one
            large batch is fastest; 256 on the CPU, where a batch that fits the caches is faster
            per latent than one large batch.

    Returns:
        ``(reconstruction, z)``: ``G(z*)`` shaped like ``x``, and ``z*`` ``[B, latent]``.

    Example:
        >>> gen = mnist_generator(latent=8)
        >>> x = gen.eval()(torch.randn(3, 8)).detach()
        >>> rec, z = project(gen, x, steps=5, restarts=2)
        >>> rec.shape == x.shape, tuple(z.shape)
        (True, (3, 8))

    """
    check_count("steps", steps)
    check_count("restarts", restarts)
    if chunk is not None:
        check_count("chunk", chunk)
    if not lr > 0:
        raise InputError(f"lr must be > 0 (got {lr!r})")
    latent = latent_size(generator)
    batch = x.shape[0]
    if z0 is None:
        draws = torch.Generator(device="cpu").manual_seed(seed)
        z0 = torch.randn(restarts, batch, latent, generator=draws)
    if tuple(z0.shape) != (restarts, batch, latent):
        raise InputError(f"z0 must have shape {(restarts, batch, latent)} (got {tuple(z0.shape)})")
    with frozen(generator):
        z = z0.reshape(restarts * batch, latent).to(x.device, x.dtype).clone().requires_grad_(True)
        target = x.detach().repeat(restarts, *([1] * (x.dim() - 1)))
        size = chunk or (z.shape[0] if x.device.type == "cuda" else _CPU_CHUNK)
        _descend(generator, z, target, steps=steps, lr=lr, chunk=size)
        return _best_restart(generator, z.detach(), target, restarts)


def _descend(
    generator: nn.Module,
    z: torch.Tensor,
    target: torch.Tensor,
    *,
    steps: int,
    lr: float,
    chunk: int,
) -> None:
    """``steps`` Adam steps on ``z`` (in place) towards ``||G(z) - target||^2`` per row."""
    optimizer = torch.optim.Adam([z], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            for start in range(0, z.shape[0], chunk):
                part = slice(start, start + chunk)
                error = (generator(z[part]) - target[part]).pow(2).flatten(1).sum(1)
                error.sum().backward()
            optimizer.step()


def _best_restart(
    generator: nn.Module, z: torch.Tensor, target: torch.Tensor, restarts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, ``G(z)`` and ``z`` of the restart with the lowest reconstruction error."""
    batch = z.shape[0] // restarts
    with torch.no_grad():
        images = generator(z)
        error = (images - target).pow(2).flatten(1).sum(1).view(restarts, batch)
        pick = error.argmin(0) * batch + torch.arange(batch, device=z.device)
        return images[pick], z[pick]


# Latents per generator pass on the CPU (see ``project``): measured on 2 cores, 200 latents per
# pass cost 0.11 ms per latent and step, 2,000 latents 0.18 ms.
_CPU_CHUNK = 256


def latent_size(generator: nn.Module) -> int:
    """The generator's latent size: the input width of its first linear layer."""
    first = next((m for m in generator.modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        raise InputError("the generator has no linear layer to read its latent size from")
    return first.in_features


def save_generator(generator: nn.Module, path: str | Path) -> None:
    """Write ``generator``'s weights to ``path`` as safetensors, its latent size in the metadata."""
    save_weights(generator, Path(path), metadata={"latent": str(latent_size(generator))})


def load_generator(path: str | Path, *, latent: int | None = None) -> nn.Module:
    """An eval-mode :func:`mnist_generator` with the weights of ``path`` (safetensors, no pickle).

    ``latent`` defaults to the size the file records; a different one is refused in one line.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get("latent")
        state = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise InputError(f"cannot read generator weights {path}: {error}") from None
    width = state.get("0.weight")
    if width is None:
        raise InputError(f"{path} does not hold mnist_generator weights (no '0.weight')")
    stored = int(width.shape[1])
    if recorded is not None and int(recorded) != stored:
        raise InputError(f"{path}: its metadata says latent {recorded}, its weights {stored}")
    if latent is not None and latent != stored:
        raise InputError(
            f"latent size {latent} does not match the weights in {path} (latent {stored})"
        )
    generator = mnist_generator(latent=stored, width=int(state["0.weight"].shape[0]) // 49)
    try:
        generator.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise InputError(f"{path} does not hold mnist_generator weights: {first}") from None
    return generator.eval()
