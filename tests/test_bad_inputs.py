"""Bad input is refused safely: exit status 2, one `error:` line naming the file and the field,
nothing written, and no code from a file executed.

Every case in tests/bad_inputs/ (a folder with experiment.yaml, the files it points to, and
expected.yaml) runs through the real CLI, `python -m search run` (or the command its
expected.yaml gives, such as `cost`), in a subprocess. Hypothesis
fuzzes the experiment, profile and space loaders: a valid config or a clear error, never
another exception.
"""

from __future__ import annotations

import atexit
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.config import load_experiment
from search.errors import ConfigError
from search.hardware import load_profile
from spaces import SearchSpace, SpaceError
from tests._tiny import cli_env
from tests.bad_inputs.make_weights import make_weights

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "expected.yaml").is_file())
ERROR = re.compile(r"^error: (?P<file>.+?): (?P<field>[^:]+): (?P<message>.+)$")
# Cases that fail before the CLI imports torch take a fraction of a second; the others (space,
# profile and task checks) need the engine's imports: a few seconds each.
QUICK = {
    "malformed_yaml",
    "empty_file",
    "not_a_mapping",
    "unknown_key",
    "unknown_nested_key",
    "wrong_type_trials",
    "wrong_type_budget",
    "zero_budget",
    "negative_budget",
    "zero_trials",
    "negative_trials_cli",
    "unknown_profile",
    "misspelt_profile",
    "unknown_space",
    "out_escapes",
    "out_escapes_cli",
    "missing_weights",
    "storage_not_a_url",
    "unknown_objective",
    "negative_lr",
    "zero_recovery_steps",
}


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_corpus_has_at_least_20_cases() -> None:
    assert len(CASES) >= 20, CASES
    for name in CASES:
        expected = yaml.safe_load((CORPUS / name / "expected.yaml").read_text())
        assert {"what", "file", "field", "message"} <= set(expected), name


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in QUICK else pytest.mark.slow) for n in CASES]
)
def test_bad_input_is_refused_cleanly(name: str, tmp_path: Path) -> None:
    expected = yaml.safe_load((CORPUS / name / "expected.yaml").read_text())
    project = tmp_path / "project"
    case = project / name
    shutil.copytree(
        CORPUS / name,
        case,
        ignore=shutil.ignore_patterns("expected.yaml", "__pycache__", "weights.pt"),
    )
    marker = case / expected.get("marker", "PWNED")
    if "weights" in expected:
        make_weights(case, expected["weights"], marker=marker)
    before = _files(project)

    env = cli_env(PYTHONDONTWRITEBYTECODE="1")
    env.pop("COMPRESS_SEARCH_CACHE", None)  # a cache written into the run folder would show
    # `command`: another command's flags (cost), run in the case's folder; else `run` on it.
    args = expected.get("command") or [
        "run",
        f"{name}/experiment.yaml",
        "--no-progress",
        *expected.get("args", []),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "search", *args],
        cwd=case if "command" in expected else project,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )

    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    match = ERROR.match(errors[0])
    assert match, errors[0]
    if expected["file"] == "<command line>":
        assert match["file"] == "<command line>"
    else:  # the file the user must fix, as given (relative) or resolved (absolute)
        assert (project / match["file"]).resolve() == (case / expected["file"]).resolve()
    assert match["field"] == expected["field"], errors[0]
    assert expected["message"] in match["message"], errors[0]
    # Nothing half-written: no run folder, no cache, no changed input file; no code ran.
    assert _files(project) == before
    assert not marker.exists()


def test_hostile_pickles_would_run_code(tmp_path: Path) -> None:
    """The two hostile weights files are live: an unsafe load runs their payload. So the
    corpus's `marker never appears` really shows that the CLI did not run it."""
    for kind in ("pickle_exec_torch", "pickle_exec_raw"):
        folder = tmp_path / kind
        folder.mkdir()
        marker = folder / "ran"
        path = make_weights(folder, kind, marker=marker)
        if kind == "pickle_exec_raw":
            pickle.loads(path.read_bytes())  # noqa: S301 - the point of the test
        else:
            torch.load(path, weights_only=False)  # never do this with a file from elsewhere
        assert marker.read_text() == "code ran"


# -- fuzzing the loaders --------------------------------------------------------------------

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-5, 10**9)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(-2, 64), inner, max_size=4)
    ),
    max_leaves=12,
)


def _documents(keys: list[str]) -> st.SearchStrategy[str]:
    mapping = st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), _VALUES, max_size=8)
    as_yaml = mapping.map(lambda d: yaml.safe_dump(d, allow_unicode=True, sort_keys=False))
    raw = st.text(max_size=200)  # anything at all, malformed YAML included
    return as_yaml | raw | _VALUES.map(lambda v: yaml.safe_dump(v, sort_keys=False))


def _write(text: str, suffix: str = ".yaml") -> Path:
    fd, name = tempfile.mkstemp(suffix=suffix, dir=_FUZZ_DIR)
    with open(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(name)


_FUZZ_DIR = tempfile.mkdtemp(prefix="search-fuzz-")
atexit.register(shutil.rmtree, _FUZZ_DIR, True)
_FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@_FUZZ
@given(
    _documents(
        [
            "name",
            "task",
            "target",
            "space",
            "objectives",
            "budgets",
            "trials",
            "seed",
            "sampler",
            "storage",
            "out",
            "device",
            "recovery",
            "max_accuracy_drop",
        ]
    )
)
def test_fuzz_experiment_loader(text: str) -> None:
    path = _write(text)
    try:
        load_experiment(path)
    except ConfigError as exc:
        assert exc.file == str(path) and exc.message
    finally:
        path.unlink()


@_FUZZ
@given(
    _documents(
        [
            "name",
            "description",
            "sources",
            "peak_macs_per_s",
            "native_precisions",
            "fallback_precision",
            "bandwidth_bytes_per_s",
            "efficiency",
            "layer_overhead_us",
            "model_overhead_us",
            "threads",
            "batch",
            "memory",
            "weights_in",
            "runtime_flash_kb",
            "budgets",
            "sparse_support",
            "depthwise_in_place",
        ]
    )
)
def test_fuzz_profile_loader(text: str) -> None:
    path = _write(text)
    try:
        load_profile(str(path))
    except ConfigError as exc:
        assert exc.file == str(path) and exc.message
    finally:
        path.unlink()


@_FUZZ
@given(
    _documents(["name", "description", "architecture", "lowrank", "prune", "quantize", "distill"])
)
def test_fuzz_space_loader(text: str) -> None:
    path = _write(text)
    try:
        SearchSpace.from_file(path)
    except SpaceError as exc:
        assert exc.file == str(path) and exc.message
    finally:
        path.unlink()


def test_space_bits_against_target() -> None:
    """Bits the target cannot run at all are refused; a partial overlap is narrowed instead."""
    from search.validate import check_space_runs_on

    mcu = load_profile("mcu")  # runs 8 and 32 bits
    partial = SearchSpace.from_dict(
        {"quantize": {"weight_bits": [4, 8], "activation_bits": [8]}}, source="partial.yaml"
    )
    check_space_runs_on(partial, mcu)
    check_space_runs_on(SearchSpace.from_dict({"prune": {"ratio": [0.5]}}), mcu)  # no quantize
    low = SearchSpace.from_dict({"quantize": {"weight_bits": 4}}, source="space.yaml")
    with pytest.raises(ConfigError) as info:
        check_space_runs_on(low, mcu)
    assert (info.value.file, info.value.field) == ("space.yaml", "quantize.weight_bits")
    assert "[8, 32]" in info.value.message
