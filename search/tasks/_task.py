"""A task: data tensors, the trained base model (cached), its teacher logits, and evaluation."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pickle
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import Experiment, UserTask
from ..errors import ConfigError
from ._digits import DigitsCNN, digits_splits
from ._train import Split, classification_metrics, fit, predict

BASE_TRAINING = {"epochs": 30, "lr": 0.01, "batch_size": 64, "seed": 0}


@dataclass
class Task:
    """Everything a trial needs that does not depend on the plan, built once per process."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    train: Split
    val: Split
    test: Split
    base_model: nn.Module  # trained, eval mode; never modified (operators deep-copy it)
    base_hash: str  # sha256 of the cached base state_dict file
    device: str = "cpu"
    user_evaluate: Callable[[nn.Module, Any], dict[str, float]] | None = None
    _teacher_logits: Tensor | None = field(default=None, repr=False)

    @property
    def teacher_logits(self) -> Tensor:
        """The base model's logits on the training split, computed once and reused."""
        if self._teacher_logits is None:
            self._teacher_logits = predict(self.base_model, self.train[0], device=self.device)
        return self._teacher_logits

    def calibration_inputs(self, n: int = 256) -> Tensor:
        """A fixed slice of training inputs for activation ranges and Taylor importance."""
        return self.train[0][:n]

    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        x, y = {"val": self.val, "test": self.test, "train": self.train}[split]
        if self.user_evaluate is not None:
            metrics = self.user_evaluate(model, torch.utils.data.TensorDataset(x, y))
            return {str(k): float(v) for k, v in metrics.items()}
        return classification_metrics(predict(model, x, device=self.device), y, self.num_classes)


def _cache_dir(exp: Experiment) -> Path:
    # Shared by every worker of a run; tests point it elsewhere to train the base model once.
    override = os.environ.get("COMPRESS_SEARCH_CACHE")
    return Path(override) if override else exp.run_dir / "cache"


def _settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


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


def _as_tensors(
    dataset: Any, name: str, exp: Experiment, shape: tuple[int, ...], num_classes: int | None
) -> Split:
    """Materialise a dataset of (x, y) once, checking shapes against the experiment."""
    where = "task.data"
    try:
        n = len(dataset)
        rows = [dataset[i] for i in range(n)]
        xs = torch.stack([torch.as_tensor(r[0], dtype=torch.float32) for r in rows])
        ys = (
            torch.as_tensor([int(r[1]) for r in rows])
            if num_classes
            else torch.stack([torch.as_tensor(r[1]) for r in rows])
        )
    except Exception as exc:  # any malformed dataset: say what was expected
        raise ConfigError(
            exp.source,
            where,
            f"the {name} split must be a sized dataset of (x, y) "
            f"pairs ({type(exc).__name__}: {exc})",
        ) from None
    if n == 0:
        raise ConfigError(exp.source, where, f"the {name} split is empty")
    if tuple(xs.shape[1:]) != shape:
        raise ConfigError(
            exp.source,
            where,
            f"the {name} split has inputs of shape "
            f"{list(xs.shape[1:])}, but input_shape is {list(shape)}",
        )
    if num_classes and (ys.min() < 0 or ys.max() >= num_classes):
        raise ConfigError(
            exp.source, where, f"the {name} split has labels outside [0, {num_classes - 1}]"
        )
    return xs, ys


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
    train, val, test = digits_splits()
    settings = {"task": "digits", "model": "DigitsCNN(width=32)", **BASE_TRAINING}

    def make() -> nn.Module:
        return DigitsCNN(width=32, num_classes=10)

    model, digest = _cached_base(exp, settings, make, train, log, user_weights=None)
    return Task("digits", (1, 8, 8), 10, train, val, test, model, digest, device)


def _load_user_task(
    exp: Experiment, spec: UserTask, device: str, log: Callable[[str], None]
) -> Task:
    make_model = _factory(exp, spec.model, "task.model")
    make_data = _factory(exp, spec.data, "task.data")
    evaluate = _factory(exp, spec.evaluate, "task.evaluate") if spec.evaluate else None

    def make() -> nn.Module:
        model = make_model()
        if not isinstance(model, nn.Module):
            raise ConfigError(exp.source, "task.model", f"{spec.model} must return an nn.Module")
        return model

    make()  # fail early on a bad factory, before any data work
    splits = make_data()
    if not (isinstance(splits, (tuple, list)) and len(splits) == 3):
        raise ConfigError(exp.source, "task.data", f"{spec.data} must return (train, val, test)")
    classes = None if evaluate else spec.num_classes
    train, val, test = (
        _as_tensors(d, n, exp, spec.input_shape, classes)
        for d, n in zip(splits, ("train", "val", "test"))
    )
    weights = Path(spec.weights) if spec.weights else None
    settings = {
        "task": spec.model,
        "data": spec.data,
        "epochs": spec.train_epochs,
        "weights": file_sha256(weights) if weights else None,
        **BASE_TRAINING,
    }
    settings["epochs"] = spec.train_epochs
    model, digest = _cached_base(exp, settings, make, train, log, user_weights=weights)
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
    )


def _cached_base(
    exp: Experiment,
    settings: dict[str, Any],
    make: Callable[[], nn.Module],
    train: Split,
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
    log(f"base model: training it ({settings['epochs']} epochs); it is cached for the next run")
    torch.manual_seed(settings["seed"])
    model = make()
    fit(
        model,
        train,
        epochs=settings["epochs"],
        lr=settings["lr"],
        batch_size=settings["batch_size"],
        seed=settings["seed"],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)  # atomic: concurrent workers never read a half-written file
    return model.cpu().eval(), file_sha256(path)
