"""Export a chosen plan as a shippable winner (`export_winner`), and rebuild it (`apply_winner`).

`_export` picks the trial, trains and evaluates it on the test split and writes `winner/`; its
parts sit under it: `_card` (the model card), `_winner` (the winner file's format, hashes and
`apply_winner`) and `_runtimes` (the deployed file written and checked in ONNX Runtime or
TFLite Micro), which uses `_tflite` (the `.tflite`, its C array, TFLite Micro and LiteRT; the
optional extra `tflite`).

Exported too, for scripts that check a deployed file by hand (the benchmarks): `convert`,
`operators`, `TflmModel` and `missing_extra` (a `.tflite` in TFLite Micro), `to_float16` (a
float16 ONNX file), and `stored_experiment` and `load_state` (a winner folder rebuilt).
"""

from ._export import ExportResult, export_winner
from ._runtimes import to_float16
from ._tflite import TflmModel, convert, missing_extra, operators
from ._winner import WINNER_FORMAT, ApplyResult, apply_winner, load_state, stored_experiment

__all__ = [
    "WINNER_FORMAT",
    "ApplyResult",
    "ExportResult",
    "TflmModel",
    "apply_winner",
    "convert",
    "export_winner",
    "load_state",
    "missing_extra",
    "operators",
    "stored_experiment",
    "to_float16",
]
