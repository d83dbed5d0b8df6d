"""The validated experiment: typed, frozen dataclasses and the names they allow."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._checks import check_int, check_out_path, check_storage, check_target, check_targets

# Metrics the built-in pipeline measures, with the direction that is better.
METRIC_DIRECTIONS = {
    "accuracy": "maximize",
    "f1": "maximize",
    "recall": "maximize",
    "latency_ms": "minimize",
    "weight_bytes": "minimize",
    "flash_bytes": "minimize",
    "memory_bytes": "minimize",
    "peak_activation_bytes": "minimize",
    "macs": "minimize",
    "params": "minimize",
}
SAMPLERS = ("auto", "tpe", "nsga2", "gp", "random")
# Which latency a budget is checked against: the prediction, or its pessimistic p90 bound
# (prediction x (1 + the profile's measured p90 error)).
BUDGET_MARGINS = ("none", "p90")


@dataclass(frozen=True)
class Objective:
    """One objective of a study: a metric name and its direction (the experiment's, and the
    review's reading of a stored study)."""

    metric: str
    direction: str  # "maximize" | "minimize"

    def __post_init__(self) -> None:
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"objective {self.metric}: direction {self.direction!r}")

    @property
    def sign(self) -> float:
        """+1 for minimise, -1 for maximise: `sign * value` is a loss."""
        return 1.0 if self.direction == "minimize" else -1.0


# What a plan asks of recovery: `quantize` keeps the trained network's structure (bits only),
# `structure` prunes or factorises it, `student` trains a compact network from scratch.
RECOVERY_KINDS = ("quantize", "structure", "student")


@dataclass(frozen=True)
class Schedule:
    """One recovery run, resolved for a plan's kind (`Recovery.schedule`)."""

    epochs: int
    steps: int | None  # optimizer steps; None: count `epochs`
    lr: float
    warmup: float  # fraction of the steps with a linear learning-rate warm-up
    freeze_bn: float | None  # fraction of the steps after which BatchNorm statistics freeze

    @property
    def unit(self) -> str:
        """What the budget counts: `step` or `epoch`."""
        return "epoch" if self.steps is None else "step"

    @property
    def length(self) -> int:
        """The budget in its unit: steps, or epochs."""
        return self.epochs if self.steps is None else self.steps


@dataclass(frozen=True)
class Recovery:
    """Fine-tuning after compression (short while searching, long in the refine stage).

    The defaults are chosen by experiments/benchmarks/recovery.py (docs/experiments.md): a
    trained network is fine-tuned gently, a student trained from scratch.
    """

    epochs: int = 2
    student_epochs: int = 10  # students start from scratch, so they need more than a touch-up
    lr: float = 0.003  # plans that prune or factorise the trained network
    quant_lr: float = 0.0001  # plans that only quantize it: its weights are already right
    student_lr: float = 0.03  # from scratch, in a short budget
    warmup: float = 0.1  # Adam's first steps at full rate undo part of a trained network
    # BatchNorm statistics freeze after this fraction of a trained network's recovery, as QAT
    # does (a quantize-only plan keeps its trained statistics from the start); students, from
    # scratch, update theirs throughout. Per-channel weight quantization makes the frozen
    # BatchNorm exactly foldable into the convolution before it (test_recovery.py).
    freeze_bn: float = 0.5
    # Skip the recovery of a plan of the trained network whose accuracy before recovery is
    # already within this much of the base model's: there is nothing left to recover.
    skip_within: float | None = 0.002
    batch_size: int = 64
    distillation: bool = True
    early_stop: bool = True  # stop hopeless plans at the recovery checkpoint
    refine_epochs: int = 8
    refine_student_epochs: int = 30  # the refine stage's budget for students
    refine_top_k: int = 0  # 0 = no refine stage
    # Step budgets (optimizer steps): when set they replace the matching epochs, so a trial on a
    # large dataset costs the same whatever its size.
    steps: int | None = None
    student_steps: int | None = None
    refine_steps: int | None = None
    refine_student_steps: int | None = None
    amp: bool = True  # mixed precision for recovery on a GPU (ignored on the CPU)

    def schedule(self, kind: str, *, refine: bool = False) -> Schedule:
        """The recovery of a plan of `kind` (one of RECOVERY_KINDS). The refine stage is never
        shorter than the search's."""
        student = kind == "student"
        if student:
            epochs, lr, longer = self.student_epochs, self.student_lr, self.refine_student_epochs
        else:
            epochs = self.epochs
            lr = self.quant_lr if kind == "quantize" else self.lr
            longer = self.refine_epochs
        freeze = None if student else (0.0 if kind == "quantize" else self.freeze_bn)
        return Schedule(
            epochs=max(longer, epochs) if refine else epochs,
            steps=self._steps(student, refine=refine),
            lr=lr,
            warmup=self.warmup,
            freeze_bn=freeze,
        )

    def _steps(self, student: bool, *, refine: bool) -> int | None:
        """The step budget of one recovery, or None to count epochs. The refine stage is never
        shorter than the search's."""
        if student:
            steps, longer = self.student_steps, self.refine_student_steps
        else:
            steps, longer = self.steps, self.refine_steps
        if not refine:
            return steps
        if longer is None:
            return steps
        return max(longer, steps or 0)


@dataclass(frozen=True)
class UserTask:
    """A user's model and data, given as importable `pkg.module:function` factories."""

    model: str
    data: str
    input_shape: tuple[int, ...]
    num_classes: int
    weights: str | None = None
    evaluate: str | None = None
    train_epochs: int = 10
    train_steps: int | None = None  # base training in optimizer steps (replaces train_epochs)
    workers: int = 2  # DataLoader worker processes for datasets not held in memory
    val_subset: int | None = None  # the search evaluates on this many fixed val rows


@dataclass(frozen=True)
class Experiment:
    """One validated experiment. Build with `load_experiment`; every field is checked."""

    name: str
    source: str  # the file it was read from
    task: str | UserTask = "digits"
    target: str = "host"
    # Several targets: one study costs every plan on each, trains it once, and keeps one front
    # per target (search.multi_target). Empty: the single `target`. `target` is then the first.
    targets: tuple[str, ...] = ()
    space: str = "joint"
    objectives: tuple[Objective, ...] = (
        Objective("accuracy", "maximize"),
        Objective("latency_ms", "minimize"),
        Objective("weight_bytes", "minimize"),
    )
    budgets: Mapping[str, float] = field(default_factory=dict)
    max_accuracy_drop: float | None = 0.02
    trials: int = 30
    seed: int = 0
    sampler: str = "auto"
    storage: str | None = None
    out: str | None = None
    device: str = "cpu"
    latency: str = "predicted"  # or "measured": ONNX Runtime on this machine (host target only)
    budget_margin: str = "none"  # "p90": check latency_ms against the profile's p90 bound
    # Offer students with more weights than the user's network (a compressor rarely wants one).
    larger_students: bool = False
    recovery: Recovery = field(default_factory=Recovery)
    storage_flag: bool = False  # the storage came from --storage, not the file (for messages)

    @property
    def storage_where(self) -> tuple[str, str]:
        """(file, field) that gave the storage URL, for error messages."""
        return ("<command line>", "--storage") if self.storage_flag else (self.source, "storage")

    @property
    def base_dir(self) -> Path:
        """Folder of the experiment file: relative task paths and imports start here."""
        return Path(self.source).resolve().parent

    @property
    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("experiments") / "runs" / self.name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.run_dir / 'study.db').resolve()}"

    def with_overrides(self, **changes: Any) -> Experiment:
        """Apply command-line overrides (None means "not given"), validating each."""
        changes = {k: v for k, v in changes.items() if v is not None}
        where = "<command line>"
        if "trials" in changes:
            changes["trials"] = check_int(where, "--trials", changes["trials"], low=1)
        if "seed" in changes:
            changes["seed"] = check_int(where, "--seed", changes["seed"], low=0)
        if "out" in changes:
            changes["out"] = check_out_path(where, "--out", changes["out"])
        if "target" in changes and "targets" in changes:
            raise ConfigError(where, "--targets", "give --target or --targets, not both")
        if "target" in changes:
            changes["target"] = check_target(where, "--target", changes["target"])
            changes["targets"] = ()  # --target X searches for X alone
        elif "targets" in changes:
            names = changes["targets"].split(",")
            changes["targets"] = check_targets(where, "--targets", names)
            # One name is the ordinary single-target search for it.
            changes["target"] = check_target(where, "--targets", names[0])
        if "storage" in changes:
            changes["storage"] = check_storage(where, "--storage", changes["storage"])
            changes["storage_flag"] = True
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["objectives"] = [{o.metric: o.direction} for o in self.objectives]
        data["budgets"] = dict(self.budgets)
        data["targets"] = list(self.targets)
        data.pop("storage_flag")
        return data
