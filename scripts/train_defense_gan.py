"""Train the WGAN-GP generator behind Defense-GAN on MNIST test images 0-7999 (seeded, resumable).

Usage (from the repository root)::

    python scripts/train_defense_gan.py --run out/defense-gan --steps 6000
    python scripts/train_defense_gan.py --run out/defense-gan --steps 6000 --resume

Objective: WGAN-GP (Gulrajani et al. 2017), the objective Defense-GAN's authors used: the critic
estimates the Wasserstein-1 distance and a gradient penalty (lambda 10) on random interpolates
keeps it 1-Lipschitz. It trains stably without the balancing tricks a standard GAN needs, and its
critic loss tracks sample quality, which makes progress visible in the log. Adam (lr 1e-4, betas
0.5 / 0.9), 5 critic steps per generator step, batch 64.

Every ``--every`` generator steps the run folder gets ``checkpoint.safetensors`` (both networks,
both optimisers, the step and the RNG state; written through a temporary file and a rename), a
line of ``log.jsonl`` (critic's Wasserstein estimate, gradient penalty, generator loss, seconds)
and ``samples-STEP.png``, a grid of 64 samples from a fixed latent batch, to see whether the
generator converges or collapses. ``generator.safetensors`` holds the latest generator.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from mnist_source import DEFAULT_DIR, load_mnist_test
from PIL import Image
from safetensors.torch import load_file, save

from mlsec._files import write_atomic
from mlsec.defenses.gan_networks import mnist_critic, mnist_generator

ROOT = Path(__file__).resolve().parent.parent


def gradient_penalty(
    critic: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor
) -> torch.Tensor:
    """Mean of (||grad critic(x_hat)|| - 1)^2 over random interpolates x_hat of real and fake."""
    mix = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    x_hat = (mix * real + (1 - mix) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def grid(images: torch.Tensor, columns: int = 8) -> Image.Image:
    """A ``columns``-wide grid of ``[N, 1, 28, 28]`` images in [0, 1] as a greyscale PNG image."""
    rows = -(-images.shape[0] // columns)
    canvas = torch.ones(rows * 30, columns * 30)
    for i, image in enumerate(images[:, 0].clamp(0, 1)):
        r, c = divmod(i, columns)
        canvas[r * 30 + 1 : r * 30 + 29, c * 30 + 1 : c * 30 + 29] = image
    return Image.fromarray((canvas.numpy() * 255).round().astype(np.uint8), mode="L")


def state_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors = {}
    for index, entries in optimizer.state_dict()["state"].items():
        for name, value in entries.items():
            tensors[f"{prefix}.{index}.{name}"] = torch.as_tensor(value).detach().clone()
    return tensors


def load_state(
    prefix: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    groups = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--run", type=Path, default=ROOT / "out" / "defense-gan")
    parser.add_argument("--steps", type=int, default=6000, help="generator steps in all")
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--critic-steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--every", type=int, default=200, help="checkpoint every N generator steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)

    images, _ = load_mnist_test(args.mnist_dir)
    x = torch.from_numpy(images[:8000].astype("float32") / 255.0).unsqueeze(1).to(device)
    torch.manual_seed(args.seed)
    generator = mnist_generator(latent=args.latent).to(device)
    critic = mnist_critic().to(device)
    g_opt = torch.optim.Adam(generator.parameters(), lr=1e-4, betas=(0.5, 0.9))
    c_opt = torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.5, 0.9))
    fixed = torch.randn(64, args.latent, generator=torch.Generator().manual_seed(12345)).to(device)
    args.run.mkdir(parents=True, exist_ok=True)
    checkpoint = args.run / "checkpoint.safetensors"
    step = 0
    if checkpoint.exists():
        if not args.resume:
            print(
                f"{args.run} holds a checkpoint: pass --resume or choose another folder",
                file=sys.stderr,
            )
            return 2
        tensors = load_file(str(checkpoint))
        generator.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("g.")})
        critic.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("c.")})
        load_state("g_opt", g_opt, tensors)
        load_state("c_opt", c_opt, tensors)
        torch.set_rng_state(tensors["rng"])
        step = int(tensors["step"])
        print(f"resumed at generator step {step}")

    start = time.perf_counter()
    log = (args.run / "log.jsonl").open("a")
    while step < args.steps:
        generator.train()
        for _ in range(args.critic_steps):
            real = x[torch.randint(0, len(x), (args.batch_size,), device=device)]
            with torch.no_grad():
                fake = generator(torch.randn(args.batch_size, args.latent, device=device))
            wasserstein = critic(real).mean() - critic(fake).mean()
            penalty = gradient_penalty(critic, real, fake)
            c_opt.zero_grad(set_to_none=True)
            (-wasserstein + 10 * penalty).backward()
            c_opt.step()
        fake = generator(torch.randn(args.batch_size, args.latent, device=device))
        g_loss = -critic(fake).mean()
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()
        step += 1
        if step % args.every == 0 or step == args.steps:
            generator.eval()
            with torch.no_grad():
                grid(generator(fixed).cpu()).save(args.run / f"samples-{step:06d}.png")
            tensors = {
                f"g.{k}": v.detach().contiguous().clone() for k, v in generator.state_dict().items()
            }
            tensors.update(
                {f"c.{k}": v.detach().contiguous().clone() for k, v in critic.state_dict().items()}
            )
            tensors.update(state_tensors("g_opt", g_opt))
            tensors.update(state_tensors("c_opt", c_opt))
            tensors["rng"] = torch.get_rng_state()
            tensors["step"] = torch.tensor(step)
            write_atomic(checkpoint, save(tensors))
            g_only = {k[2:]: v for k, v in tensors.items() if k.startswith("g.")}
            write_atomic(
                args.run / "generator.safetensors",
                save(g_only, metadata={"latent": str(args.latent)}),
            )
            entry = {
                "step": step,
                "wasserstein": round(float(wasserstein.detach()), 4),
                "penalty": round(float(penalty.detach()), 4),
                "g_loss": round(float(g_loss.detach()), 4),
                "seconds": round(time.perf_counter() - start, 1),
            }
            log.write(json.dumps(entry) + "\n")
            log.flush()
            print(json.dumps(entry), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
