"""A task: streamed data splits, the trained base model (cached), its teacher, and evaluation."""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
import pickle
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import IterableDataset, TensorDataset

from ..config import Experiment, UserTask
from ..errors import ConfigError
from ..files import atomic_write
from ._data import DataSplit
from ._digits import DigitsCNN, digits_splits
from ._gratings import GratingsCNN, gratings_splits
from ._probe import probe_model
from ._train import Teacher, TrainingDiverged, evaluate_split, fit, predict

BASE_TRAINING = {"epochs": 30, "lr": 0.01, "batch_size": 64, "seed": 0}
# Built-in tasks by name: (model factory, (train, val, test) tensors, input shape, classes,
# base-training settings that differ from BASE_TRAINING).
BUILTIN_TASKS: dict[
    str,
    tuple[Callable[[], nn.Module], Callable[[], Any], tuple[int, ...], int, dict[str, Any]],
] = {
    "digits": (lambda: DigitsCNN(width=32, num_classes=10), digits_splits, (1, 8, 8), 10, {}),
    # 6 % label noise: 30 epochs memorise it (86 % val), 12 reach 90 %.
    "gratings": (GratingsCNN, gratings_splits, (3, 16, 16), 10, {"epochs": 12}),
}


@dataclass
class Task:
    """Everything a trial needs that does not depend on the plan, built once per process.

    The splits stream from the user's datasets (`DataSplit`); nothing is read whole. The search
    evaluates on `val_subset` fixed validation rows when set (`evaluate(..., subset=True)`);
    refine and export use the whole validation split, and only export reads the test split.
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    train: DataSplit
    val: DataSplit
    test: DataSplit
    base_model: nn.Module  # trained, eval mode, on the CPU; never modified (operators copy it)
    base_hash: str  # sha256 of the cached base state_dict file
    device: str = "cpu"
    user_evaluate: Callable[[nn.Module, Any], dict[str, float]] | None = None
    val_subset: int | None = None
    amp: bool = True  # mixed precision for recovery when `device` is a GPU
    _teacher_logits: Tensor | None = field(default=None, repr=False)
    _teacher_model: nn.Module | None = field(default=None, repr=False)
    _rows: dict[int, tuple[Tensor, Any]] = field(default_factory=dict, repr=False)
    _subsets: dict[str, DataSplit] = field(default_factory=dict, repr=False)

    def teacher(self) -> Teacher:
        """The base model as distillation teacher: `teacher(x, rows) -> logits`.

        An in-memory training split (a `TensorDataset`) gets its logits computed once and
        looked up by row: they are smaller than the data already held. Any other split runs
        the teacher online, one forward pass per batch: it needs no pass over the whole split
        before the first trial, no disk, and stays right when the dataset augments (measured
        against logits cached on disk in experiments/results/scale.md).
        """
        if self.train.in_memory:
            if self._teacher_logits is None:
                x_all = self.train.dataset.tensors[0]  # type: ignore[attr-defined]
                self._teacher_logits = predict(self.base_model, x_all, device=self.device)
                self.base_model.cpu()
            logits = self._teacher_logits

            def cached(x: Tensor, rows: Tensor | None) -> Tensor:
                assert rows is not None
                return logits[rows].to(x.device, non_blocking=True)

            return cached
        if self._teacher_model is None:  # a copy on a GPU: the base model stays on the CPU
            on_cpu = torch.device(self.device).type == "cpu"
            base = self.base_model if on_cpu else copy.deepcopy(self.base_model)
            self._teacher_model = base.to(self.device).eval()
        model = self._teacher_model

        def online(x: Tensor, _rows: Tensor | None) -> Tensor:
            with torch.no_grad():
                return model(x)

        return online

    def rows(self, n: int) -> tuple[Tensor, Any]:
        """`n` fixed training rows (x, y): the first of an in-memory split, seeded random rows
        of a map-style one (folders are often sorted by class), the first of a stream."""
        if n not in self._rows:
            if self.train.in_memory:
                x_all, y_all = self.train.dataset.tensors  # type: ignore[attr-defined]
                self._rows[n] = (x_all[:n].float(), y_all[:n])
            else:
                self._rows[n] = self.train.take(n)
        return self._rows[n]

    def calibration_inputs(self, n: int) -> Tensor:
        """Fixed training inputs for activation ranges and Taylor importance (see `rows`)."""
        return self.rows(n)[0]

    def evaluate(
        self, model: nn.Module, split: str = "val", *, subset: bool = False
    ) -> dict[str, float]:
        """Metrics on a split, streamed; `subset`: the search's fixed `val_subset` rows."""
        data = {"val": self.val, "test": self.test, "train": self.train}[split]
        if subset:
            if split not in self._subsets:  # the same rows every time
                self._subsets[split] = data.subset(self.val_subset)
            data = self._subsets[split]
        if self.user_evaluate is not None:
            metrics = self.user_evaluate(model, data.dataset)
            return {str(k): float(v) for k, v in metrics.items()}
        return evaluate_split(model, data, self.num_classes, device=self.device)


def _cache_dir(exp: Experiment) -> Path:
    # Shared by every worker of a run; tests point it elsewhere to train the base model once.
    override = os.environ.get("COMPRESS_SEARCH_CACHE")
    return Path(override) if override else exp.run_dir / "cache"


def _settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _architecture_id(model: nn.Module) -> str:
    """The class and its parameter shapes: a cached base of an older architecture is not reused."""
    shapes = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    return f"{type(model).__name__}-{_settings_hash({'shapes': shapes})[:8]}"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def _importable(*folders: Path) -> Iterator[None]:
    """The experiment file's folder and the current directory are importable."""
    added = [str(f) for f in folders if str(f) not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for f in added:
            sys.path.remove(f)


def _factory(exp: Experiment, spec: str, field_name: str) -> Callable[..., Any]:
    module_name, func_name = spec.split(":")
    with _importable(exp.base_dir, Path.cwd()):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                exp.source, field_name, f"cannot import {module_name!r}: {exc}"
            ) from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(exp.source, field_name, f"{module_name!r} has no function {func_name!r}")
    return func


def load_state_dict_file(path: Path, *, file: str, field_name: str) -> dict[str, Tensor]:
    """Load a state_dict safely: tensors only, never code (`weights_only=True`)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise ConfigError(
            file, field_name, f"{path} is not a plain state_dict; refused to unpickle it ({first})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            file, field_name, f"{path} is not a readable torch file ({first})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(file, field_name, f"{path} must hold a state_dict (names -> tensors)")
    return state


def _load_weights(model: nn.Module, path: Path, *, file: str, field_name: str) -> None:
    state = load_state_dict_file(path, file=file, field_name=field_name)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise ConfigError(
            file, field_name, f"{path} does not match the model's architecture ({detail})"
        ) from None


def _as_split(
    dataset: Any, name: str, exp: Experiment, shape: tuple[int, ...], num_classes: int | None
) -> DataSplit:
    """The user's dataset as a split, its first batches checked (the rest as they stream)."""
    if not isinstance(dataset, IterableDataset) and not (
        hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")
    ):
        raise ConfigError(
            exp.source,
            "task.data",
            f"the {name} split must be a torch Dataset (map-style with __len__, or an "
            f"IterableDataset) of (x, y) pairs, got {type(dataset).__name__}",
        )
    split = DataSplit(name, dataset, exp.source, shape, num_classes)
    split.check()
    return split


def _resolve_device(requested: str, log: Callable[[str], None]) -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        log("device: cuda was asked for but is not available; training on the CPU")
        return "cpu"
    return requested


def load_task(exp: Experiment, *, log: Callable[[str], None] = print) -> Task:
    """Build the experiment's task: data, trained base model (cached by settings), evaluation."""
    device = _resolve_device(exp.device, log)
    if isinstance(exp.task, UserTask):
        return _load_user_task(exp, exp.task, device, log)
    name = exp.task
    make, splits, shape, classes, training = BUILTIN_TASKS[name]
    train, val, test = (
        DataSplit(split, TensorDataset(x, y), exp.source, shape, classes)
        for (x, y), split in zip(splits(), ("train", "val", "test"))
    )
    model_id = "DigitsCNN(width=32)" if name == "digits" else _architecture_id(make())
    settings = {"task": name, "model": model_id, **BASE_TRAINING, **training}
    model, digest = _cached_base(exp, settings, make, train, device, log, user_weights=None)
    return Task(
        name, shape, classes, train, val, test, model, digest, device, amp=exp.recovery.amp
    )


def _call(exp: Experiment, field_name: str, spec: str, factory: Callable[[], Any]) -> Any:
    """Call a user's factory; an exception in it is one error naming the field, no traceback."""
    try:
        return factory()
    except ConfigError:
        raise
    except Exception as exc:  # the user's code failed: name it
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ConfigError(
            exp.source, field_name, f"{spec} raised {type(exc).__name__}: {first}"
        ) from None


def _load_user_task(
    exp: Experiment, spec: UserTask, device: str, log: Callable[[str], None]
) -> Task:
    make_model = _factory(exp, spec.model, "task.model")
    make_data = _factory(exp, spec.data, "task.data")
    evaluate = _factory(exp, spec.evaluate, "task.evaluate") if spec.evaluate else None

    def make() -> nn.Module:
        model = _call(exp, "task.model", spec.model, make_model)
        if not isinstance(model, nn.Module):
            raise ConfigError(exp.source, "task.model", f"{spec.model} must return an nn.Module")
        return model

    make()  # fail early on a bad factory, before any data work
    splits = _call(exp, "task.data", spec.data, make_data)
    if not (isinstance(splits, (tuple, list)) and len(splits) == 3):
        raise ConfigError(exp.source, "task.data", f"{spec.data} must return (train, val, test)")
    classes = None if evaluate else spec.num_classes
    train, val, test = (
        replace(
            _as_split(d, n, exp, spec.input_shape, classes),
            workers=spec.workers,
            pin_memory=device == "cuda",
        )
        for d, n in zip(splits, ("train", "val", "test"))
    )
    # Before the weights load or base training starts: the model against the experiment.
    probe_model(make(), train, source=exp.source, spec=spec.model, num_classes=classes)
    weights = Path(spec.weights) if spec.weights else None
    if not train.sized:  # a stream without a length cannot be counted in epochs
        if weights is None and spec.train_steps is None:
            raise ConfigError(
                exp.source,
                "task.train_steps",
                "the train split is a stream without a length: "
                "give the base training a step budget (or task.weights)",
            )
        if exp.recovery.steps is None and exp.recovery.epochs > 0:
            raise ConfigError(
                exp.source,
                "recovery.steps",
                "the train split is a stream without a length: give recovery a step budget",
            )
    settings = {
        **BASE_TRAINING,
        "task": spec.model,
        "data": spec.data,
        "epochs": spec.train_epochs,
        "weights": file_sha256(weights) if weights else None,
    }
    if spec.train_steps is not None:
        settings["steps"] = spec.train_steps
    model, digest = _cached_base(exp, settings, make, train, device, log, user_weights=weights)
    return Task(
        spec.model,
        spec.input_shape,
        spec.num_classes,
        train,
        val,
        test,
        model,
        digest,
        device,
        user_evaluate=evaluate,
        val_subset=spec.val_subset,
        amp=exp.recovery.amp,
    )


def _cached_base(
    exp: Experiment,
    settings: dict[str, Any],
    make: Callable[[], nn.Module],
    train: DataSplit,
    device: str,
    log: Callable[[str], None],
    *,
    user_weights: Path | None,
) -> tuple[nn.Module, str]:
    """The trained base model: the user's weights, else a cached copy, else train and cache."""
    model = make()
    if user_weights is not None:
        _load_weights(model, user_weights, file=exp.source, field_name="task.weights")
        return model.eval(), file_sha256(user_weights)
    path = _cache_dir(exp) / f"base-{_settings_hash(settings)}.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        log(f"base model: reusing the cached one at {path}")
        return model.eval(), file_sha256(path)
    steps = settings.get("steps")
    budget = f"{steps} steps" if steps is not None else f"{settings['epochs']} epochs"
    log(f"base model: training it ({budget}); it is cached for the next run")
    torch.manual_seed(settings["seed"])
    model = make()
    try:
        fit(
            model,
            train,
            epochs=settings["epochs"],
            steps=steps,
            lr=settings["lr"],
            batch_size=settings["batch_size"],
            seed=settings["seed"],
            device=device,
            amp=exp.recovery.amp,
        )
    except TrainingDiverged as exc:  # finite inputs, but on a scale training cannot take
        raise ConfigError(
            exp.source,
            "task.data",
            f"training the base model on the train split diverged ({exc}); normalise the "
            "inputs (e.g. to mean 0, std 1) or give task.weights",
        ) from None
    model.cpu()
    # Whole or not at all: concurrent workers never read a half-written file.
    atomic_write(path, lambda tmp: torch.save(model.state_dict(), tmp))
    return model.eval(), file_sha256(path)
