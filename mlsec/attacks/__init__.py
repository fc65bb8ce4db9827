"""Attacks behind one interface: ``attack(model, x, y)`` gives ``x_adv``; ``attack.run``, more."""

from mlsec.attacks.adaptive import BPDA, EOT
from mlsec.attacks.apgd import APGD, APGDDLR, APGDT
from mlsec.attacks.art import ARTAttack
from mlsec.attacks.base import Attack, AttackResult, Perturbation, Problem
from mlsec.attacks.fgsm import FGSM
from mlsec.attacks.pgd import PGD
from mlsec.attacks.registry import create, get, list_attacks, register_attack
from mlsec.attacks.square import Square

__all__ = [
    "APGD",
    "APGDDLR",
    "APGDT",
    "BPDA",
    "EOT",
    "FGSM",
    "PGD",
    "ARTAttack",
    "Attack",
    "AttackResult",
    "Perturbation",
    "Problem",
    "Square",
    "create",
    "get",
    "list_attacks",
    "register_attack",
]
