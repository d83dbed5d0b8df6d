"""Hardware-aware joint compression search for PyTorch models, driven by Optuna."""

from .config import Experiment, load_experiment
from .errors import ConfigError

__all__ = ["ConfigError", "Experiment", "load_experiment"]
__version__ = "0.1.0"
