"""Export a chosen plan as a shippable winner (`export_winner`), and rebuild it (`apply_winner`).

`_export` picks the trial, trains and evaluates it on the test split and writes `winner/`; its
parts sit under it: `_card` (the model card), `_winner` (the winner file's format, hashes and
`apply_winner`) and `_runtimes` (the deployed file written and checked in ONNX Runtime or
TFLite Micro), which uses `_tflite` (the `.tflite`, its C array, TFLite Micro and LiteRT; the
optional extra `tflite`).
"""

from ._export import ExportResult, export_winner
from ._winner import WINNER_FORMAT, ApplyResult, apply_winner

__all__ = ["WINNER_FORMAT", "ApplyResult", "ExportResult", "apply_winner", "export_winner"]
