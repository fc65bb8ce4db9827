"""Train the bundled Defense-GAN purifier ``mnist-defense-gan`` on MNIST test images 0-7999.

Usage (from the repository root, with mlsec installed)::

    python scripts/train_defense_gan.py --gan-steps 12000     # -> mlsec/zoo/weights/...
    python scripts/train_defense_gan.py --gan-steps 12000 --resume

:meth:`mlsec.defenses.DefenseGAN.fit`: a WGAN-GP generator (latent 32; Adam 1e-4, betas 0.5 /
0.9, 5 critic steps per generator step, gradient penalty 10, batch 64, seed 0), then an encoder
(2,000 steps) for the inverse-GAN start. Every 200 generator steps the run folder (``--run``) gets
a checkpoint, a ``log.jsonl`` line and ``samples-STEP.png``; ``--resume`` continues the run, and
a resumed run is the same as an uninterrupted one. The saved defense purifies with the
projection settings below: the encoder's start plus one random start, 10 Adam steps each
(``--init``, ``--steps``, ``--restarts``; docs/defense-gan.md explains the choice). The end prints
clean and FGSM accuracy of ``mnist-cnn`` behind the purifier on 500 held-out images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mnist_source import DEFAULT_DIR, check_purifier, training_split

from mlsec.defenses import DefenseGAN

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "mlsec" / "zoo" / "weights" / "mnist_defense_gan.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--run", type=Path, default=ROOT / "out" / "defense-gan")
    parser.add_argument("--gan-steps", type=int, default=12000, help="generator steps in all")
    parser.add_argument("--encoder-steps", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=10, help="projection steps L of the defense")
    parser.add_argument("--restarts", type=int, default=2, help="starts R of the defense")
    parser.add_argument("--init", default="encoder", help="the first start: encoder or random")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    x, y = training_split(args.mnist_dir)
    defense = DefenseGAN(steps=args.steps, restarts=args.restarts, init=args.init, seed=0).fit(
        (x, y),
        gan_steps=args.gan_steps,
        encoder_steps=args.encoder_steps,
        folder=str(args.run),
        resume=args.resume,
        device=args.device,
        progress=True,
    )
    defense.save(args.out)
    check_purifier(defense, args.out)


if __name__ == "__main__":
    main()
