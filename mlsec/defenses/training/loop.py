"""The training loop: epochs of the method's loss, held-out evaluation, checkpoints, progress.

Progress goes through :func:`mlsec.core.progress.progress`: one bar over the whole run on a
terminal (transient), and with ``progress`` one line per epoch on the console.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from rich.console import Console
from torch import nn

from mlsec.attacks.pgd import PGD
from mlsec.core.progress import Stage, progress
from mlsec.core.validation import MAX_SEED
from mlsec.defenses.checkpoints import BEST, LOG
from mlsec.defenses.training.config import (
    CatastrophicOverfittingWarning,
    TrainingResult,
    detect_collapse,
)
from mlsec.defenses.training.state import RunState
from mlsec.defenses.weights import read_safetensors, save_weights, state_problem, state_tensors
from mlsec.errors import InputError

__all__ = ["Trainer"]

OnEpoch = Callable[[dict[str, Any]], None]


class Trainer(RunState):
    """A training run: :meth:`train` runs the remaining epochs."""

    def eps_at(self, step: int) -> float:
        """The training eps at ``step`` (ramped up over ``config.eps_ramp`` epochs)."""
        ramp = self.config.eps_ramp * self.batches
        if ramp == 0:
            return float(self.method.eps)
        return float(self.method.eps) * min(1.0, (step + 1) / ramp)

    def train_epoch(self, net: nn.Module, stage: Stage) -> dict[str, Any]:
        """One pass over the training data; the epoch's loss, accuracy, last eps and lr.

        ``net`` is the model that trains: ``self.model``, in DistributedDataParallel when the run
        spans ranks. Every rank draws the same order and takes its share of each global batch.
        """
        config = self.config
        order = torch.randperm(self.x.shape[0], generator=self.shuffle).to(self.x.device)
        loss_sum = torch.zeros((), device=self.x.device)
        correct = torch.zeros((), device=self.x.device, dtype=torch.long)
        self.model.train()
        for batch in order.split(config.batch_size):
            loss, logits, index = self.train_step(net, batch)
            if logits is not None:
                loss_sum += loss.detach() * index.shape[0]
                correct += (logits.detach().argmax(1) == self.y[index]).sum()
            stage.advance(1, note=f"epoch {self.epoch + 1}/{config.epochs}")
        n = self.x.shape[0]
        total_loss, total_correct = self.ranks.sums([float(loss_sum), float(correct)])
        self.ranks.sync_buffers(self.model)
        return {
            "loss": total_loss / n,
            "train_accuracy": int(total_correct) / n,
            "eps": self.eps_at(self.step - 1),
            "lr": config.lr * self.lr_at((self.step - 1) / (config.epochs * self.batches)),
        }

    def train_step(
        self, net: nn.Module, batch: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """One optimiser step on the global ``batch`` (positions in the training set).

        Returns this rank's mean loss, its logits (``None`` for an empty share) and its share.
        """
        config = self.config
        lr = config.lr * self.lr_at(self.step / (config.epochs * self.batches))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        index = self.ranks.share(batch)
        xb, yb = self.x[index], self.y[index]
        seed = (config.seed * 1_000_003 + self.step) % (MAX_SEED + 1)
        logits: torch.Tensor | None = None
        if index.shape[0]:
            loss, logits = self.method.training_loss(
                net, xb, yb, eps=self.eps_at(self.step), seed=seed, index=index, attacked=self.model
            )
        else:
            # Nothing of this batch is ours, but the gradient average needs us: zeros.
            loss = net(xb).sum() * 0.0
        self.optimizer.zero_grad(set_to_none=True)
        if self.ranks.parallel:
            (loss * self.ranks.loss_scale(index.shape[0], batch.shape[0])).backward()
        else:
            loss.backward()
        self.optimizer.step()
        self.step += 1
        return loss, logits, index

    def evaluate(self) -> tuple[float | None, float | None]:
        """Held-out clean and PGD accuracy (``None`` without held-out data).

        Chunks of 500 go round-robin to the ranks; each sample's random start is keyed by its
        position in the held-out set, so the counts do not depend on the number of ranks.
        """
        if self.held is None:
            return None, None
        hx, hy = self.held
        monitor = PGD(
            eps=self.method.eps,
            norm=self.method.norm,
            bounds=self.method.bounds,
            steps=self.config.eval_steps,
            seed=self.config.seed,
        )
        self.model.eval()
        clean = robust = 0
        group = self.ranks.group
        for start in range(500 * group.rank, hx.shape[0], 500 * group.world):
            xb, yb = hx[start : start + 500], hy[start : start + 500]
            index = torch.arange(start, start + xb.shape[0], device=xb.device)
            result = monitor.run(self.model, xb, yb, index=index)
            with torch.no_grad():
                clean += int((self.model(xb).argmax(1) == yb).sum())
            robust += int((~result.success).sum())
        clean_total, robust_total = self.ranks.sums([clean, robust])
        return clean_total / hx.shape[0], robust_total / hx.shape[0]

    def run_epoch(self, net: nn.Module, stage: Stage) -> dict[str, Any]:
        """Train and evaluate one epoch, track the best and a collapse, write the folder's files.

        Rank 0 alone writes; the other ranks keep the best weights in memory.
        """
        start = time.perf_counter()
        record = self.train_epoch(net, stage)
        clean, robust = self.evaluate()
        self.epoch += 1
        record = {
            "epoch": self.epoch,
            **record,
            "clean_accuracy": clean,
            "robust_accuracy": robust,
            "seconds": time.perf_counter() - start,
        }
        self.history.append(record)
        if robust is not None and (
            self.best_epoch is None or robust > self.history[self.best_epoch - 1]["robust_accuracy"]
        ):
            self.best_epoch = self.epoch
            if self.folder is not None and self.ranks.is_main:
                save_weights(self.model, self.folder / BEST, {"epoch": str(self.epoch)})
            else:
                self.best_state = state_tensors(self.model)
        drop = getattr(self.method, "collapse_drop", None)
        if drop is not None and detect_collapse(self.history, drop=drop):
            self.collapsed = self.epoch
        if self.folder is not None and self.ranks.is_main:
            self.save()
            with (self.folder / LOG).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        return record

    def train(
        self, *, show: bool, console: Console | None, on_epoch: OnEpoch | None
    ) -> TrainingResult:
        """Run the remaining epochs; the model ends in eval mode with the kept weights.

        Only rank 0 shows progress.
        """
        console = console or Console(stderr=True)
        config = self.config
        show = show and self.ranks.is_main
        net = self.ranks.wrap(self.model)
        with progress(enabled=show, console=console, unit="batches", transient=True) as tracker:
            stage = tracker.stage(
                f"{self.method.name} training",
                total=config.epochs * self.batches,
                completed=self.epoch * self.batches,
            )
            while self.epoch < config.epochs and self.collapsed is None:
                record = self.run_epoch(net, stage)
                if show:
                    console.print(epoch_line(record, config.epochs), highlight=False)
                if on_epoch is not None:
                    on_epoch(record)
            stage.finish()
        del net  # DistributedDataParallel's hooks go with it
        kept = self.epoch
        if self.collapsed is not None or (config.keep == "best" and self.best_epoch is not None):
            kept = self.ranks.together(self._restore_best)
        if self.collapsed is not None:
            self._warn_collapse(kept, console if show else None)
        self.model.eval()
        return TrainingResult(
            history=list(self.history),
            best_epoch=self.best_epoch,
            collapsed_at=self.collapsed,
            kept=kept,
        )

    def _warn_collapse(self, kept: int, console: Console | None) -> None:
        message = (
            f"catastrophic overfitting at epoch {self.collapsed}: held-out PGD accuracy fell to "
            f"{self.history[-1]['robust_accuracy']:.1%} while clean accuracy held; "
            f"stopped and kept epoch {kept} (robust "
            f"{self.history[kept - 1]['robust_accuracy']:.1%}); a smaller alpha or eps ramp "
            "may avoid it"
        )
        # The warning points at the caller of fit: fit -> train -> here.
        warnings.warn(message, CatastrophicOverfittingWarning, stacklevel=4)
        if console is not None:
            console.print(f"[bold yellow]warning:[/] {message}", highlight=False)

    def _restore_best(self) -> int:
        assert self.best_epoch is not None
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
            return self.best_epoch
        assert self.folder is not None
        path = self.folder / BEST
        advice = "the best epoch's weights are lost: train again in another folder"
        weights, metadata = read_safetensors(path, "cannot read", advice)
        problem = state_problem(self.model.state_dict(), weights)
        if metadata.get("epoch") != str(self.best_epoch):
            problem = f"it holds epoch {metadata.get('epoch')}, not the best epoch"
        if problem is not None:
            raise InputError(
                f"cannot restore the best epoch ({self.best_epoch}) from {path} ({problem}); "
                + advice
            )
        self.model.load_state_dict(weights)
        return self.best_epoch


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One epoch's line on the console."""
    held = ""
    if record["clean_accuracy"] is not None:
        held = (
            f"  held-out clean {record['clean_accuracy']:.1%}  PGD {record['robust_accuracy']:.1%}"
        )
    return (
        f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}  loss {record['loss']:.4f}  "
        f"train acc {record['train_accuracy']:.1%}  eps {record['eps']:.3g}  "
        f"lr {record['lr']:.2e}{held}  {record['seconds']:.1f} s"
    )
