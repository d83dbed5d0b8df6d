"""The demo study of test_pareto as a newer search records it, for the report's tests
(tests/test_report.py, tests/test_report_browser.py): per-layer cost rows, a profile with a
measured latency error, base MACs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import create_trial

try:  # the study builder lives beside this file
    from test_pareto import BASE, BUDGETS, SPECS, make_study, make_trial
except ImportError:  # tests/ imported as a package
    from tests.test_pareto import BASE, BUDGETS, SPECS, make_study, make_trial


# The cost model's per-kernel rows as the objective records them (name, kind, latency_ms,
# weight_bytes, activation bytes): the base model, and every plan (conv2 factorized in two).
BASE_ROWS = [
    ["conv1", "conv", 1.0, 1000, 400],
    ["conv2", "conv", 2.0, 3000, 800],
    ["relu", "elementwise", 0.5, 0, 800],
    ["fc", "linear", 0.5, 1000, 100],
]
PLAN_ROWS = [
    ["conv1", "conv", 0.2, 250, 100],
    ["conv2.0", "conv", 0.3, 400, 200],
    ["conv2.1", "conv", 0.2, 300, 150],
    ["relu", "elementwise", 0.2, 0, 200],
    ["fc", "linear", 0.1, 250, 25],
]
P90 = 0.2


def make_costed_study(path: Path, **experiment: Any) -> str:
    """The demo study as a newer search records it: per-layer cost rows on every costed
    trial and the base model, a profile with a measured latency error, base MACs."""
    url = make_study(path, specs=[])
    study = optuna.load_study(study_name="demo", storage=url)
    error = {"p90": P90, "source": "test rows", "rows": 5}
    study.set_user_attr("profile", {"name": "testboard", "latency_error": error})
    study.set_user_attr("experiment", {"name": "demo", **experiment})
    study.set_user_attr("base_layer_costs", BASE_ROWS)
    study.set_user_attr("base_metrics", {**BASE, "macs": 400_000})
    for i, spec in enumerate(SPECS):
        t = make_trial(i, *spec, budgets=BUDGETS)
        attrs = dict(t.user_attrs)
        if t.values is not None:
            attrs["layer_costs"] = PLAN_ROWS
        study.add_trial(
            create_trial(
                state=t.state, values=t.values, user_attrs=attrs, constraints=t.constraints or None
            )
        )
    return url
