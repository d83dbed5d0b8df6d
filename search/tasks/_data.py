"""A split as a stream: a user's `Dataset` (map-style or iterable) read in batches, never whole.

Every batch is checked as it is read (inputs float, finite and of the experiment's shape;
labels integer class indices in range), so bad data stops with a `task.data` error naming the
split, wherever in the stream it is. A `TensorDataset` is already in memory: it is batched by
indexing its tensors (no loader processes), the same batches a loader would give.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

from ..errors import ConfigError

# Batch: inputs, labels, and the rows' dataset indices (in-memory splits only, else None).
Batch = tuple[Tensor, Any, Tensor | None]
CHECK_BATCHES = 2  # batches read when the task loads: enough to catch a wrong format early


@dataclass(frozen=True)
class DataSplit:
    """One split of a task's data, read batch by batch.

    Args:
        name: "train", "val" or "test" (for messages).
        dataset: a map-style `Dataset` (with `__len__`) or an `IterableDataset` of (x, y).
        source: the experiment file, named by errors.
        input_shape: the shape of one input, without the batch dimension.
        num_classes: labels are checked to be in [0, num_classes); None leaves labels to the
            user's `evaluate` (any value the default collate accepts).
        workers: DataLoader worker processes (in-memory splits use none).
        pin_memory: pinned host memory for faster copies to a GPU.
    """

    name: str
    dataset: Dataset[Any]
    source: str
    input_shape: tuple[int, ...]
    num_classes: int | None
    workers: int = 0
    pin_memory: bool = False

    @property
    def in_memory(self) -> bool:
        return isinstance(self.dataset, TensorDataset)

    @property
    def iterable(self) -> bool:
        return isinstance(self.dataset, IterableDataset)

    @property
    def sized(self) -> bool:
        """Whether its length is known (map-style datasets must have one)."""
        try:
            len(self.dataset)  # type: ignore[arg-type]
        except TypeError:
            return False
        return True

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def error(self, message: str) -> ConfigError:
        return ConfigError(self.source, "task.data", f"the {self.name} split {message}")

    def subset(self, n: int | None, *, seed: int = 0) -> DataSplit:
        """A fixed subset of `n` rows: seeded random rows of a map-style split (a folder
        sorted by class would give one class from its first rows), the first `n` of a stream.
        The whole split when `n` is None or not smaller."""
        if n is None or (self.sized and n >= len(self)):
            return self
        if self.iterable:
            return replace(self, dataset=_Head(self.dataset, n))  # type: ignore[arg-type]
        g = torch.Generator().manual_seed(seed)
        rows = torch.randperm(len(self), generator=g)[:n].sort().values
        if self.in_memory:
            tensors = self.dataset.tensors  # type: ignore[attr-defined]
            return replace(self, dataset=TensorDataset(*(t[rows] for t in tensors)))
        return replace(self, dataset=Subset(self.dataset, rows.tolist()))

    def take(self, n: int, *, seed: int = 0) -> tuple[Tensor, Any]:
        """`n` fixed rows (see `subset`) as one batch: calibration and importance inputs."""
        for x, y, _ in self.subset(n, seed=seed).batches(n, workers=0):
            return x, y
        raise self.error("is empty")

    def check(self) -> None:
        """Read the first batches and check them (the rest is checked as it streams)."""
        seen = 0
        try:
            for k, _batch in enumerate(self.batches(64, workers=0)):
                seen += 1
                if k + 1 >= CHECK_BATCHES:
                    break
        except ConfigError:
            raise
        except Exception as exc:  # a dataset that cannot be read: say what was expected
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise self.error(
                f"must be a Dataset of (x, y) pairs; reading it raised "
                f"{type(exc).__name__}: {first}"
            ) from None
        if seen == 0:
            raise self.error("is empty")

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        workers: int | None = None,
    ) -> Iterator[Batch]:
        """Checked batches (x float32, y, dataset indices or None); a shuffled map-style split
        draws its order from `generator`. An iterable split streams in its own order."""
        if self.sized and len(self) == 0:
            raise self.error("is empty")
        if self.in_memory:
            yield from self._tensor_batches(batch_size, shuffle=shuffle, generator=generator)
            return
        if not self.iterable and not self.sized:
            raise self.error("is a map-style Dataset without __len__; give it one")
        workers = self.workers if workers is None else workers
        if self.iterable:
            # More than one worker would read the stream once each unless the dataset shards
            # itself by `get_worker_info()`: one background reader is safe for any stream.
            workers = min(workers, 1)
        loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            shuffle=shuffle and not self.iterable,
            generator=generator,
            num_workers=workers,
            pin_memory=self.pin_memory,
        )
        for k, batch in enumerate(loader):
            x, y = self._pair(batch, k)
            yield x, y, None

    def _tensor_batches(
        self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None
    ) -> Iterator[Batch]:
        tensors = self.dataset.tensors  # type: ignore[attr-defined]
        if len(tensors) != 2:
            raise self.error(f"must hold (x, y) pairs; its TensorDataset has {len(tensors)}")
        x_all, y_all = tensors
        n = len(x_all)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for k, start in enumerate(range(0, n, batch_size)):
            idx = order[start : start + batch_size]
            x, y = self._pair((x_all[idx], y_all[idx]), k)
            yield x, y, idx

    def _pair(self, batch: Any, k: int) -> tuple[Tensor, Any]:
        """Check one collated batch; returns (float32 inputs, labels)."""
        if isinstance(batch, dict) or not isinstance(batch, (tuple, list)) or len(batch) != 2:
            got = (
                f"a dict with keys {sorted(map(str, batch))[:4]}"
                if isinstance(batch, dict)
                else f"{type(batch).__name__} of {len(batch)}"
                if isinstance(batch, (tuple, list))
                else type(batch).__name__
            )
            raise self.error(f"must yield (x, y) pairs; it yields {got}")
        x, y = batch
        if not isinstance(x, Tensor):
            raise self.error(f"must yield tensor or array inputs; got {type(x).__name__}")
        if not x.is_floating_point():
            raise self.error(
                f"has inputs of dtype {x.dtype}; inputs must be floating point (convert and "
                "normalise them in the dataset, e.g. x.float() / 255)"
            )
        if tuple(x.shape[1:]) != self.input_shape:
            raise self.error(
                f"has inputs of shape {list(x.shape[1:])}, but input_shape is "
                f"{list(self.input_shape)}"
            )
        if not bool(torch.isfinite(x).all()):
            raise self.error(f"has NaN or infinite inputs (batch {k + 1}); clean or drop them")
        if self.num_classes is not None:
            if not isinstance(y, Tensor) or y.dtype == torch.bool or not _integer(y):
                kind = y.dtype if isinstance(y, Tensor) else type(y).__name__
                raise self.error(f"has labels of type {kind}; labels must be integer classes")
            if y.shape != (x.shape[0],):
                raise self.error(f"has labels of shape {list(y.shape)}; one class per input")
            if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
                raise self.error(f"has labels outside [0, {self.num_classes - 1}]")
            y = y.long()
        return x.float(), y


def _integer(t: Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex())


class _Head(IterableDataset):
    """The first `n` items of a stream."""

    def __init__(self, stream: IterableDataset, n: int) -> None:
        self.stream, self.n = stream, n

    def __iter__(self) -> Iterator[Any]:
        for k, item in enumerate(self.stream):
            if k >= self.n:
                return
            yield item
