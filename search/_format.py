"""Numbers as people read them: one place for the terminal, the model card and the report.

Two styles, each kept exactly as the files a run writes have always shown it:

* `number`: short figures for running text (terminal summary, model card): four significant
  digits, thousands separators from 10,000, `-` for nothing.
* `cell`: the report's tables and hovers: integral values without a fraction, up to four
  decimals otherwise, scientific only when tiny or huge, blank for nothing.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["amount", "cell", "number"]


def number(v: Any, digits: int = 4) -> str:
    """`0.9833`, `12.08`, `95,600`; `-` for None, `yes`/`no` for booleans."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.{digits}g}"
    return str(v)


def cell(v: Any) -> str:
    """`0.9833`, `12`, `95,600`, `1.2e-05`; blank for None, `yes`/`no` for booleans."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v.is_integer() and abs(v) < 1e15:
            return cell(int(v))
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.4g}"
        return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    return str(v)


def amount(v: float, unit: str) -> str:
    """`3.68 ms`, `366 kB` (1 kB = 1024 bytes, as the budgets count)."""
    if unit == "bytes":
        return f"{v / 1024:.3g} kB" if v >= 1024 else f"{v:.0f} B"
    return f"{v:.3g} {unit}"
