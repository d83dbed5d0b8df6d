"""Built-in tasks (data + reference model) and the loader for user tasks."""

from ._data import DataSplit
from ._digits import DigitsCNN, digits_splits
from ._gratings import GratingsCNN, gratings_splits
from ._task import Task, file_sha256, load_state_dict_file, load_task
from ._train import (
    TrainingDiverged,
    classification_metrics,
    evaluate_split,
    fit,
    predict,
    reestimate_batchnorm,
)

__all__ = [
    "DataSplit",
    "DigitsCNN",
    "GratingsCNN",
    "Task",
    "TrainingDiverged",
    "classification_metrics",
    "digits_splits",
    "evaluate_split",
    "file_sha256",
    "gratings_splits",
    "fit",
    "load_state_dict_file",
    "load_task",
    "predict",
    "reestimate_batchnorm",
]
