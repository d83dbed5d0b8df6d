"""Write the binary weights file of a bad-input case (kept out of git: two of them are hostile).

    python tests/bad_inputs/make_weights.py tests/bad_inputs/pickle_exec_torch

reads the case's expected.yaml (`weights: KIND`) and writes `weights.pt` beside it. The hostile
pickles, if ever unpickled without `weights_only=True`, would create the file named by the
case's `marker` in the case folder; the test asserts it never appears.
"""

from __future__ import annotations

import io
import pickle
import sys
from pathlib import Path

import torch
import yaml
from torch import nn

KINDS = ("wrong_arch", "truncated", "list", "pickle_exec_torch", "pickle_exec_raw")


class _Payload:
    """Unpickling this calls exec(code): the classic pickle attack."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def _valid_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    return net.state_dict()


def make_weights(case: Path, kind: str, *, marker: Path | None = None) -> Path:
    """Write `case/weights.pt` of the given kind; returns its path."""
    path = case / "weights.pt"
    code = f"open({str(marker or case / 'PWNED')!r}, 'w').write('code ran')"
    if kind == "wrong_arch":  # same layer names, 16 channels instead of 8
        net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 4),
        )
        torch.save(net.state_dict(), path)
    elif kind == "truncated":
        buffer = io.BytesIO()
        torch.save(_valid_state(), buffer)
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    elif kind == "list":
        torch.save([1, 2, 3], path)
    elif kind == "pickle_exec_torch":  # a genuine torch.save zip with the payload inside
        state: dict[str, object] = dict(_valid_state())
        state["0.weight"] = _Payload(code)
        torch.save(state, path)
    elif kind == "pickle_exec_raw":  # a bare pickle, the pre-zip torch format
        path.write_bytes(pickle.dumps({"0.weight": _Payload(code)}, protocol=2))
    else:
        raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
    return path


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        folder = Path(arg)
        expected = yaml.safe_load((folder / "expected.yaml").read_text())
        print(
            make_weights(
                folder, expected["weights"], marker=folder / expected.get("marker", "PWNED")
            )
        )
