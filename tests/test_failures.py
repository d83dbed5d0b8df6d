"""Failed trials: an exception, a NaN loss or an out-of-memory error in a trial is recorded as
FAIL with its reason, the search goes on, and trials.csv and the report list the failures."""

from __future__ import annotations

import csv
import html
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

import search.pipeline
from search.config import load_experiment
from search.review import load_run, write_outputs
from search.study import run_search
from tests._tiny import write_tiny_experiment

# Trial number -> the fault injected into its recovery, and the reason the trial must record.
FAULTS = {
    1: ("exception", "ValueError: cannot compress layer '0'"),
    2: ("cuda-oom", "OutOfMemoryError: CUDA out of memory"),
    3: ("cpu-oom", "MemoryError: could not allocate"),
    4: ("nan", "TrainingDiverged: loss became nan"),
}


@pytest.mark.slow
def test_failed_trials_are_recorded_and_the_search_goes_on(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = load_experiment(write_tiny_experiment(in_tmp, trials=5)).with_overrides(out="run")
    real_recover = search.pipeline.recover

    def faulty_recover(compressed, plan, task, *, seed, **kwargs):
        # The objective seeds recovery with exp.seed + trial.number: that names the trial.
        kind = FAULTS.get(seed - exp.seed, ("none", ""))[0]
        if kind == "exception":
            raise ValueError("cannot compress layer '0'")
        if kind == "cuda-oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if kind == "cpu-oom":
            raise MemoryError("could not allocate 8589934592 bytes")
        if kind == "nan":  # a real divergence: NaN weights give a NaN loss in the real fit()
            with torch.no_grad():
                for p in compressed.model.parameters():
                    p.fill_(float("nan"))
        return real_recover(compressed, plan, task, seed=seed, **kwargs)

    monkeypatch.setattr(search.pipeline, "recover", faulty_recover)
    result = run_search(exp, progress=False, log=lambda _line: None)

    trials = result.study.get_trials(deepcopy=False)
    failed = {t.number: t for t in trials if t.state == TrialState.FAIL}
    assert sorted(failed) == sorted(FAULTS)
    for number, (_kind, reason) in FAULTS.items():
        attrs = failed[number].user_attrs
        assert attrs["fail_reason"].startswith(reason), attrs["fail_reason"]
        assert attrs["status"] == "failed"
        assert "plan" in attrs  # what was being tried is kept beside why it failed
    # The search went on past every failure to the requested number of trainings.
    assert result.trainings == 5 and result.failed == len(FAULTS)
    assert max(t.number for t in trials if t.state == TrialState.COMPLETE) > max(FAULTS)

    paths = write_outputs(load_run(result.storage_url, exp.name), result.run_dir)
    with open(paths["trials.csv"], newline="") as fh:
        rows = {int(r["trial"]): r for r in csv.DictReader(fh)}
    assert len(rows) == len(trials)
    for number, (_kind, reason) in FAULTS.items():
        assert rows[number]["state"] == "FAIL"
        assert rows[number]["fail_reason"].startswith(reason)
    page = html.unescape(paths["report.html"].read_text())
    for _kind, reason in FAULTS.values():
        assert reason.split(": ", 1)[1] in page
