"""The Defense interface shared by purifiers (Defense-GAN, APE-GAN) and adversarial training.

A defense is configured by hyperparameters and learns in :meth:`Defense.fit`. What it learns lives
in one of two places: in a purifier's own networks (it then implements :meth:`Defense.purify`, and
:meth:`Defense.wrap` puts the purifier in front of a classifier), or in the classifier's weights
(adversarial training: :meth:`Defense.fit` trains the model itself, and :meth:`Defense.wrap`
returns it unchanged).
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save
from torch import nn

from mlsec.attacks.adaptive import BPDA
from mlsec.core.files import write_atomic
from mlsec.core.keyed import SampleKeys, current_draw
from mlsec.core.registry import Registry
from mlsec.defenses.weights import META_KEY, module_tensors, read_safetensors
from mlsec.errors import InputError

__all__ = ["PURIFIERS", "Defense", "PurifiedModel", "Purifier", "load_defense"]

# Where a saved purifier records what it is: the safetensors metadata key and the format version.
_META_KEY = "mlsec.defense"
_FORMAT = 1


class Defense(abc.ABC):
    """Base class of every defense."""

    name: ClassVar[str] = ""

    @abc.abstractmethod
    def fit(self, data: Any, **options: Any) -> Any:
        """Learn from ``data`` (an ``(x, y)`` pair, a Dataset or a DataLoader)."""

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        """Map inputs to purified inputs; only purifiers do this."""
        raise InputError(
            f"{type(self).__name__} does not purify inputs: its defense is in the model's weights"
        )

    @abc.abstractmethod
    def wrap(self, model: nn.Module) -> nn.Module:
        """The defended model: a plain ``nn.Module`` that attacks and the audit accept."""

    def params(self) -> dict[str, Any]:
        """The hyperparameters as a plain dict (for logs, checkpoints and reports)."""
        if dataclasses.is_dataclass(self):
            return dataclasses.asdict(self)
        return {}


class Purifier(Defense):
    """A defense that maps inputs back towards clean data before the classifier sees them.

    Subclasses are dataclasses whose plain fields are hyperparameters and whose networks are
    listed by :meth:`networks`. They declare how an adaptive attack gets a gradient through
    :meth:`purify`: ``differentiable = True`` when autograd gives the exact gradient (one forward
    pass of a network, APE-GAN), otherwise the backward pass of :meth:`surrogate`, the identity by
    default (BPDA, for an optimisation such as Defense-GAN's projection).
    """

    differentiable: ClassVar[bool] = False
    # True where purify draws randomness (fresh per call of the wrapped model): attack with EOT.
    randomized: ClassVar[bool] = False

    @abc.abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """The fitted networks by name; :class:`InputError` if the defense is not fitted."""

    @abc.abstractmethod
    def purify(self, x: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        """Purified inputs, shaped like ``x``; ``seed`` overrides the defense's own seed."""

    def purify_keyed(self, x: torch.Tensor, keys: SampleKeys, *, step: int) -> torch.Tensor:
        """:meth:`purify` with row ``r``'s randomness drawn from ``keys[r]`` at ``step``.

        ``keys`` hold one key per row of ``x`` (:mod:`mlsec.core.keyed`): a randomised purifier
        draws from them under its own seed, so a sample is purified the same way whatever batch
        it is in. A purifier that draws nothing (the default) ignores them.
        """
        return self.purify(x)

    @classmethod
    def load(cls, path: str | Path) -> Purifier:
        """A purifier saved by :meth:`save`; on a subclass, the file must hold that subclass."""
        defense = load_defense(path)
        if not isinstance(defense, cls):
            raise InputError(f"{path} holds a saved {defense.name}, not a {cls.__name__}")
        return defense

    @classmethod
    @abc.abstractmethod
    def from_tensors(
        cls, params: dict[str, Any], tensors: dict[str, torch.Tensor], *, source: str
    ) -> Purifier:
        """A fitted purifier from saved hyperparameters and networks' tensors (``NET.KEY``)."""

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """The differentiable stand-in whose gradient BPDA uses for :meth:`purify` (identity)."""
        return x

    @property
    def surrogate_name(self) -> str:
        """How :meth:`surrogate` stands in for the purifier, for reports."""
        return "identity surrogate"

    def wrap(self, model: nn.Module) -> PurifiedModel:
        """``model`` behind the purifier: a plain ``nn.Module`` for attacks and the audit."""
        if not isinstance(model, nn.Module):
            raise InputError(f"wrap needs a torch.nn.Module (got {type(model).__name__})")
        return PurifiedModel(self, model)

    def params(self) -> dict[str, Any]:
        """The hyperparameters: every dataclass field that is not a network."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if not f.metadata.get("network")
        }

    def save(self, path: str | Path) -> None:
        """Write the networks to one safetensors file, with the hyperparameters as JSON metadata."""
        tensors: dict[str, torch.Tensor] = {}
        for name, network in self.networks().items():
            tensors.update(module_tensors(name, network))
        record = {"defense": self.name, "format": _FORMAT, "params": self.params()}
        write_atomic(Path(path), save(tensors, metadata={_META_KEY: json.dumps(record)}))


# The purifiers by name (``mlsec defend train NAME``, saved files' records); each registers itself
# with ``@PURIFIERS.register(NAME)`` where it is defined.
PURIFIERS: Registry[type[Purifier]] = Registry("defense")


def network_field() -> Any:
    """A dataclass field for a network: not a hyperparameter, not in ``repr`` or ``==``."""
    return dataclasses.field(default=None, repr=False, compare=False, metadata={"network": True})


def load_defense(path: str | Path) -> Purifier:
    """A purifier saved by :meth:`Purifier.save`, fitted and ready (safetensors: no pickle).

    Raises:
        InputError: one line naming the file for a folder, a missing, truncated or corrupt file,
            a file without a defense record or with a damaged one, an unknown defense, invalid
            hyperparameters, or weights that do not fit them.

    """
    path = Path(path)
    if path.is_dir():
        raise InputError(
            f"{path} is a folder, not a defense file; give the .safetensors file in it"
        )
    if not path.is_file():
        raise InputError(f"no defense file at {path}")
    tensors, metadata = read_safetensors(
        path, "cannot read defense file", "save or train the defense again"
    )
    raw = metadata.get(_META_KEY)
    if raw is None:
        # A run's checkpoint is the likeliest mix-up: the defense is written beside it.
        hint = (
            "a run's checkpoint is not a defense: use defense.safetensors beside it"
            if META_KEY in metadata
            else "give a file that mlsec defend train or Purifier.save wrote"
        )
        raise InputError(f"{path} is not a saved mlsec defense (no {_META_KEY!r} metadata); {hint}")
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("defense"), str)
        or not isinstance(record.get("params"), dict)
    ):
        raise InputError(
            f"{path}: its {_META_KEY!r} metadata is damaged (not a JSON object with a defense "
            "name and params); save the defense again"
        )
    name, params = record["defense"], record["params"]
    if record.get("format") != _FORMAT:
        raise InputError(
            f"{path}: defense file format {record.get('format')!r}, not {_FORMAT}: another version "
            "of mlsec wrote it; load it with that version"
        )
    if name not in PURIFIERS:
        raise InputError(f"{path}: unknown defense {name!r}; known: {', '.join(PURIFIERS.names())}")
    kind = PURIFIERS.get(name)
    fields = dataclasses.fields(kind)  # type: ignore[arg-type]  # every purifier is a dataclass
    known = {f.name for f in fields if not f.metadata.get("network")}
    unknown = sorted(set(params) - known)
    if unknown:
        raise InputError(f"{path}: {name} has no hyperparameter {', '.join(map(repr, unknown))}")
    try:
        kind(**params)  # the hyperparameters alone first, for a message that names the file
    except InputError as error:
        raise InputError(f"{path}: invalid {name} hyperparameters: {error}") from None
    return kind.from_tensors(params, tensors, source=str(path))


class PurifiedModel(nn.Module):
    """A classifier behind a purifier: ``model(purify(x))``, a plain ``nn.Module``.

    A randomised purifier (Defense-GAN's random starts) draws fresh randomness on every forward
    pass, so the defense behaves as deployed and Expectation over Transformation has something to
    average. Where the draws come from:

    - inside an attack (or the audit's clean pass) that says which samples the rows are
      (:func:`mlsec.core.keyed.drawing_for`), row ``r`` draws from its sample's key at the
      attack's call number, under the defense's seed: a sample's purification does not depend
      on the rest of the batch, the batch size, the survivors-only schedule or a resume point;
    - in a plain forward pass, from the seed ``defense.seed + calls``, ``calls`` counting such
      passes: reproducible run to run, but keyed by the batch's position in the sequence of calls.

    The backward pass is exact for a differentiable purifier, else BPDA with the purifier's
    :meth:`Purifier.surrogate`.
    """

    def __init__(self, defense: Purifier, model: nn.Module) -> None:
        super().__init__()
        self.classifier = model
        self.purifier = nn.ModuleDict(defense.networks())
        self.defense = defense
        # Plain (unkeyed) forward passes so far: the seed of the next is defense.seed + calls.
        self.calls = 0
        # In the classifier's mode (the purifiers run their networks in eval mode regardless).
        self.train(model.training)

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        """The purified input of this call (fresh randomness), with the declared gradient."""
        step = self._step()
        if self.defense.differentiable:
            return step(x)
        return BPDA(step, self.defense.surrogate)(x)

    def _step(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The purification of this call: keyed by the rows' samples if an attack set them."""
        draw = current_draw()
        if draw is None:
            seed = getattr(self.defense, "seed", 0) + self.calls
            self.calls += 1
            return lambda v: self.defense.purify(v, seed=seed)
        keys, call = draw.keys, draw.call

        def keyed(v: torch.Tensor) -> torch.Tensor:
            if len(keys) != v.shape[0]:
                raise InputError(
                    f"the attack keyed {len(keys)} rows but the purifier got {v.shape[0]}: a "
                    "model in front of it must keep the batch's rows",
                    subject="keys",
                )
            return self.defense.purify_keyed(v, keys.to(v.device), step=call)

        return keyed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's logits on the purified input."""
        return self.classifier(self.purify(x))
