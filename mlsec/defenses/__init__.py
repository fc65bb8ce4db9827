"""Defenses (GAN-based purifiers, adversarial training) behind the Defense interface; none yet."""

__all__: list[str] = []
