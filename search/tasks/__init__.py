"""Built-in tasks (data + reference model) and the loader for user tasks."""

from ._digits import DigitsCNN, digits_splits
from ._task import Task, file_sha256, load_state_dict_file, load_task
from ._train import TrainingDiverged, classification_metrics, fit, predict

__all__ = [
    "DigitsCNN",
    "Task",
    "TrainingDiverged",
    "classification_metrics",
    "digits_splits",
    "file_sha256",
    "fit",
    "load_state_dict_file",
    "load_task",
    "predict",
]
