"""Files a run writes: whole or not at all, and values JSON/YAML can hold.

Every write goes beside the target and is renamed over it, so a crash or a concurrent reader
never sees half a file (or half a folder).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a fresh file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp makes the file private; give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` whole or not at all."""
    return atomic_write(path, lambda p: p.write_text(text))


def atomic_write_dir(final: str | Path, fill: Callable[[Path], object]) -> Path:
    """Fill a fresh folder beside `final`, then swap it in: never half a folder on disk."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        fill(tmp)
        os.chmod(tmp, 0o755)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def jsonable(x: Any, *, inf: Any = None) -> Any:
    """`x` with NaN written as null and +-inf as `inf` (null unless told): neither is JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else inf
    if isinstance(x, Mapping):
        return {str(k): jsonable(v, inf=inf) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v, inf=inf) for v in x]
    return x


def plain(x: Any) -> Any:
    """YAML-safe plain values: tuples to lists, numpy/torch scalars to numbers, enums to their
    values, keys to strings."""
    if isinstance(x, Enum):
        return plain(x.value)
    if isinstance(x, Mapping):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        return x.item()
    return x
