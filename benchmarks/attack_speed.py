"""Wall-clock speed of mlsec's PGD against a minimal gradient loop, ART and torchattacks.

Usage (from the repository root, with mlsec installed)::

    python benchmarks/attack_speed.py                   # CPU: mnist-cnn, batch 256, 10 steps
    python benchmarks/attack_speed.py --device cuda     # GPU: PreAct-ResNet-18, batch 512, 10 steps
    python benchmarks/attack_speed.py --threads 1 --json speed.json

All runners attack the same model (in eval mode), the same batch and the same number of steps:

  bound         steps x (forward + backward of the summed cross-entropy w.r.t. the input only,
                parameters' requires_grad off) at the clean batch; no projection, no bookkeeping.
                mlsec / bound is mlsec's overhead over the bare gradient computations.
  bound@start   the same loop at the random start point (the clean batch plus the uniform noise
                mlsec draws with seed 0, clipped). Shown for information: on the CPU some kernels
                (max pooling) run slower on noisy inputs than on clean MNIST digits, which every
                PGD pays and the clean bound does not.
  mlsec         mlsec.attacks.PGD(eps=0.3, step_size=0.01, steps=steps, random_start=True).run
  art           ART's ProjectedGradientDescentPyTorch through a PyTorchClassifier, eps=0.3,
                eps_step=0.01, max_iter=steps, num_random_init=1 (one uniform start in the eps
                ball, as mlsec's random_start=True), timed on attack.generate(x_numpy, y_numpy).
                The model is handed over as a user holds it (parameters trainable), so ART's
                loss.backward() also computes parameter gradients; --art-frozen-params adds a
                second ART run with parameters' requires_grad off.
  torchattacks  torchattacks.PGD(model, eps=0.3, alpha=0.01, steps=steps, random_start=True),
                skipped if torchattacks does not import.

  mlsec@eps0    the same mlsec PGD at eps 0: no sample can succeed, so none leaves the batch. On
                the CPU mlsec drops a sample from the batch once it has succeeded (its result is
                fixed); this row shows the loop's cost when that saves nothing.

Forward passes per run: bound and torchattacks steps; mlsec at most steps + 1 (it evaluates the
final iterate to report success) plus a one-sample label check; ART steps + 1 (a final predict).

Each runner is warmed up once, then timed --repeats times with time.perf_counter (after
torch.cuda.synchronize() on CUDA). Repetitions are interleaved round-robin, with the order rotated
every round, so that background load hits every runner alike; the ratios are of medians.
On a busy machine, ``--threads 1 --clock cpu`` times with time.process_time instead: the CPU time
the process used, which other processes' load disturbs much less than wall-clock time.

On CUDA the model is a CIFAR-shaped PreAct-ResNet-18 with seeded random weights and the batch is
seeded uniform noise with random labels: the speed of an attack does not depend on training.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

import mlsec

EPS = 0.3
STEP_SIZE = 0.01
SEED = 0
MNIST_MODELS = ("mnist-cnn", "mnist-softmax")
CIFAR_MODELS = ("preact-resnet18",)
# device: (model, batch, steps, max mlsec/bound, min ART/mlsec)
CONFIGS: dict[str, tuple[str, int, int, float, float]] = {
    "cpu": ("mnist-cnn", 256, 10, 1.05, 1.4),
    "cuda": ("preact-resnet18", 512, 10, 1.02, 2.5),
}


# --------------------------------------------------------------------------- the CIFAR model


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al., Identity Mappings in Deep Residual Networks, 2016)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """The PreAct-ResNet-18 for 32x32 inputs used across the adversarial-training literature.

    As in Rice, Wong and Kolter (Overfitting in adversarially robust deep learning, ICML 2020):
    a 3x3 stem, four stages of two pre-activation blocks (64, 128, 256, 512 channels), a final
    batch norm and ReLU, 4x4 average pooling and a linear layer.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        blocks: list[nn.Module] = []
        in_planes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            for block_stride in (stride, 1):
                blocks.append(PreActBlock(in_planes, planes, block_stride))
                in_planes = planes
        self.layers = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.conv1(x))
        out = F.avg_pool2d(F.relu(self.bn(out)), 4)
        return self.linear(out.flatten(1))


# --------------------------------------------------------------------------- setup


@dataclass(frozen=True, kw_only=True)
class Setup:
    """The shared problem: model (eval mode), batch on the device, and the numpy copy for ART."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    input_shape: tuple[int, ...]
    classes: int
    device: torch.device


def build_setup(model_name: str, batch: int, device: torch.device) -> Setup:
    torch.manual_seed(SEED)
    if model_name in MNIST_MODELS:
        x_all, y_all = mlsec.datasets.mnist_sample()
        if batch > x_all.shape[0]:
            raise SystemExit(
                f"attack_speed: --batch must be <= {x_all.shape[0]} for {model_name} "
                f"(the bundled MNIST sample holds {x_all.shape[0]} images; got {batch})"
            )
        model = mlsec.zoo.load(model_name)
        x, y = x_all[:batch], y_all[:batch]
    else:
        model = PreActResNet18(num_classes=10)
        generator = torch.Generator().manual_seed(SEED)
        x = torch.rand((batch, 3, 32, 32), generator=generator)
        y = torch.randint(0, 10, (batch,), generator=generator)
    model = model.to(device).eval()
    with torch.no_grad():
        classes = int(model(x[:1].to(device)).shape[1])
    return Setup(
        model=model,
        x=x.to(device).contiguous(),
        y=y.to(device),
        input_shape=tuple(x.shape[1:]),
        classes=classes,
        device=device,
    )


@contextlib.contextmanager
def params_frozen(model: nn.Module) -> Iterator[None]:
    """Parameters' requires_grad off for the duration; restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


# --------------------------------------------------------------------------- runners


@dataclass(kw_only=True)
class Runner:
    """One way of running ``steps`` gradient steps on the batch; ``call`` is what gets timed."""

    name: str
    call: Callable[[], object]
    context: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
    times: list[float] = field(default_factory=list)


def random_start(setup: Setup) -> torch.Tensor:
    """The start point mlsec's linf PGD draws with seed 0: x + U(-eps, eps), clipped to [0, 1]."""
    generator = torch.Generator(device=setup.device).manual_seed(SEED)
    noise = torch.rand(setup.x.shape, generator=generator, device=setup.device, dtype=setup.x.dtype)
    return torch.clamp(setup.x + (2 * noise - 1) * EPS, 0.0, 1.0)


def bound_runner(setup: Setup, steps: int, *, at_start: bool = False) -> Runner:
    model, y = setup.model, setup.y
    x = random_start(setup) if at_start else setup.x

    def call() -> torch.Tensor:
        xg = x.detach().clone().requires_grad_(True)
        grad = xg
        for _ in range(steps):
            loss = F.cross_entropy(model(xg), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, xg)
        return grad

    name = "bound@start" if at_start else "bound"
    return Runner(name=name, call=call, context=lambda: params_frozen(model))


def mlsec_runner(setup: Setup, steps: int, *, eps: float = EPS) -> Runner:
    attack = mlsec.attacks.PGD(eps=eps, step_size=STEP_SIZE, steps=steps, random_start=True)
    name = "mlsec" if eps == EPS else f"mlsec@eps{eps:g}"
    return Runner(name=name, call=lambda: attack.run(setup.model, setup.x, setup.y))


def art_runner(setup: Setup, steps: int, *, frozen: bool) -> Runner | None:
    try:
        from art.attacks.evasion import ProjectedGradientDescentPyTorch
        from art.estimators.classification import PyTorchClassifier
    except ImportError as exc:
        print(f"attack_speed: ART skipped (import failed: {exc})")
        return None
    classifier = PyTorchClassifier(
        model=setup.model,
        loss=nn.CrossEntropyLoss(),
        input_shape=setup.input_shape,
        nb_classes=setup.classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if setup.device.type == "cuda" else "cpu",
    )
    attack = ProjectedGradientDescentPyTorch(
        classifier,
        norm=np.inf,
        eps=EPS,
        eps_step=STEP_SIZE,
        max_iter=steps,
        num_random_init=1,
        batch_size=setup.x.shape[0],
        verbose=False,
    )
    x_np = setup.x.cpu().numpy()
    y_np = setup.y.cpu().numpy()
    name = "art (params frozen)" if frozen else "art"
    context = (lambda: params_frozen(setup.model)) if frozen else contextlib.nullcontext
    return Runner(name=name, call=lambda: attack.generate(x_np, y_np), context=context)


def torchattacks_runner(setup: Setup, steps: int) -> Runner | None:
    try:
        import torchattacks
    except ImportError as exc:
        print(f"attack_speed: torchattacks skipped (import failed: {exc})")
        return None
    attack = torchattacks.PGD(setup.model, eps=EPS, alpha=STEP_SIZE, steps=steps, random_start=True)
    return Runner(name="torchattacks", call=lambda: attack(setup.x, setup.y))


# --------------------------------------------------------------------------- timing


def median_seconds(
    once: Callable[[str], float], names: list[str], repeats: int
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Medians and all of ``repeats`` timings per runner (``once(name)`` -> seconds).

    Each runner is warmed up once; the timed runs are interleaved round-robin, the order rotated
    each round, so that drift in the machine's speed falls on every runner alike.
    """
    for name in names:
        once(name)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(once(name))
    return {name: statistics.median(t) for name, t in times.items()}, times


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_eval(model: nn.Module, runner: str) -> None:
    if any(module.training for module in model.modules()):
        raise RuntimeError(f"attack_speed: the model is in training mode after {runner}")


def time_once(runner: Runner, setup: Setup, clock: Callable[[], float]) -> float:
    with runner.context():
        check_eval(setup.model, "setup")
        synchronize(setup.device)
        start = clock()
        runner.call()
        synchronize(setup.device)
        elapsed = clock() - start
    check_eval(setup.model, runner.name)
    return elapsed


def measure(
    runners: list[Runner],
    setup: Setup,
    repeats: int,
    clock: Callable[[], float],
    console: Console,
) -> None:
    """Warm every runner up once, then time them round-robin, rotating the order every round."""
    with console.status("warming up") as status:
        for runner in runners:
            status.update(f"warming up {runner.name}")
            time_once(runner, setup, clock)
        for rep in range(repeats):
            shift = rep % len(runners)
            for runner in runners[shift:] + runners[:shift]:
                status.update(f"round {rep + 1}/{repeats}: {runner.name}")
                runner.times.append(time_once(runner, setup, clock))


# --------------------------------------------------------------------------- report


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def package_version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except ImportError:
        return None


def environment(setup: Setup, args: argparse.Namespace) -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mlsec": mlsec.__version__,
        "art": package_version("art"),
        "torchattacks": package_version("torchattacks"),
        "device": str(setup.device),
        "device_name": device_name(setup.device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "model": args.model,
        "batch": setup.x.shape[0],
        "input_shape": list(setup.input_shape),
        "steps": args.steps,
        "repeats": args.repeats,
        "clock": "time.perf_counter" if args.clock == "wall" else "time.process_time",
        "eps": EPS,
        "step_size": STEP_SIZE,
    }


def ratio(results: dict[str, dict[str, float]], top: str, bottom: str) -> float | None:
    if top not in results or bottom not in results:
        return None
    return results[top]["median"] / results[bottom]["median"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=sorted(CONFIGS), default="cpu")
    parser.add_argument(
        "--model",
        choices=MNIST_MODELS + CIFAR_MODELS,
        default=None,
        help="default: mnist-cnn on cpu, preact-resnet18 on cuda",
    )
    parser.add_argument("--batch", type=int, default=None, help="default: 256 on cpu, 512 on cuda")
    parser.add_argument("--steps", type=int, default=None, help="default: 10")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per runner (default 7)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: time.perf_counter (default); cpu: time.process_time (CPU only)",
    )
    parser.add_argument(
        "--art-frozen-params",
        action="store_true",
        help="also time ART with the parameters' requires_grad off",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here as JSON")
    args = parser.parse_args(argv)

    default_model, default_batch, default_steps, max_overhead, min_art = CONFIGS[args.device]
    is_default = args.model in (None, default_model) and args.batch in (None, default_batch)
    is_default = is_default and args.steps in (None, default_steps)
    args.model = args.model or default_model
    args.batch = args.batch if args.batch is not None else default_batch
    args.steps = args.steps if args.steps is not None else default_steps
    for flag in ("batch", "steps", "repeats", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag} must be >= 1 (got {value})")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            "--device cuda was requested but CUDA is not available "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False); "
            "run on a machine with a CUDA GPU and a CUDA build of torch, or use --device cpu"
        )
    if args.clock == "cpu" and args.device != "cpu":
        parser.error(
            "--clock cpu measures CPU time and is meaningless for GPU work; use --clock wall"
        )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    np.random.seed(SEED)  # ART draws its random start from numpy

    console = Console()
    setup = build_setup(args.model, args.batch, torch.device(args.device))
    runners = [
        bound_runner(setup, args.steps),
        bound_runner(setup, args.steps, at_start=True),
        mlsec_runner(setup, args.steps),
        mlsec_runner(setup, args.steps, eps=0.0),
    ]
    extra = [art_runner(setup, args.steps, frozen=False), torchattacks_runner(setup, args.steps)]
    if args.art_frozen_params:
        extra.append(art_runner(setup, args.steps, frozen=True))
    runners += [runner for runner in extra if runner is not None]

    env = environment(setup, args)
    console.print(
        "environment: " + ", ".join(f"{key}={value}" for key, value in env.items()),
        highlight=False,
    )
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    measure(runners, setup, args.repeats, clock, console)

    results = {
        r.name: {"min": min(r.times), "median": statistics.median(r.times), "max": max(r.times)}
        for r in runners
    }
    table = Table(title=f"{args.model}, batch {args.batch}, {args.steps} steps, {args.device}")
    unit = "s" if args.clock == "wall" else "cpu s"
    for column in ("runner", f"min {unit}", f"median {unit}", f"max {unit}", "median / bound"):
        table.add_column(column, justify="left" if column == "runner" else "right")
    bound_median = results["bound"]["median"]
    for name, stats in results.items():
        table.add_row(
            name,
            f"{stats['min']:.4f}",
            f"{stats['median']:.4f}",
            f"{stats['max']:.4f}",
            f"{stats['median'] / bound_median:.3f}",
        )
    console.print(table)

    ratios = {
        "mlsec/bound": ratio(results, "mlsec", "bound"),
        "art/mlsec": ratio(results, "art", "mlsec"),
        "torchattacks/mlsec": ratio(results, "torchattacks", "mlsec"),
    }
    ratios["mlsec/bound@start"] = ratio(results, "mlsec", "bound@start")
    ratios["mlsec@eps0/bound"] = ratio(results, "mlsec@eps0", "bound")
    if args.art_frozen_params:
        ratios["art_frozen/mlsec"] = ratio(results, "art (params frozen)", "mlsec")
    targets = {"mlsec/bound": ("<=", max_overhead), "art/mlsec": (">=", min_art)}
    verdicts: dict[str, bool | None] = {}
    for key, value in ratios.items():
        verdict = ""
        if key in targets and value is not None:
            op, limit = targets[key]
            met = value <= limit if op == "<=" else value >= limit
            verdicts[key] = met
            verdict = f"  (target {op} {limit}: {'met' if met else 'MISSED'})"
        shown = "skipped" if value is None else f"{value:.3f}"
        console.print(f"ratio of medians {key}: {shown}{verdict}", highlight=False)
    if not is_default:
        console.print(
            f"note: the targets are set for the default {args.device} configuration "
            f"({default_model}, batch {default_batch}, {default_steps} steps)",
            highlight=False,
        )

    if args.json is not None:
        payload = {
            "environment": env,
            "results": {r.name: {**results[r.name], "times": r.times} for r in runners},
            "ratios": ratios,
            "targets": {key: {"op": op, "value": v} for key, (op, v) in targets.items()},
            "targets_met": verdicts,
            "default_configuration": is_default,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        console.print(f"wrote {args.json}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
