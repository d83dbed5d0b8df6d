"""Command line: `python -m search run|worker|report|export|apply|cost|profiles ...`.

Exit status: 0 on success, 2 on bad input (one `error:` line naming file and field), 1 on an
internal fault.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from .errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    from ._resources import builtin_names

    # The built-in profiles as the profile folder has them (no list to keep in step by hand).
    profiles = ", ".join(builtin_names("profile"))
    p = argparse.ArgumentParser(prog="python -m search", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def experiment_args(cmd: argparse.ArgumentParser, *, storage_required: bool = False) -> None:
        cmd.add_argument("experiment", help="experiment YAML, or a built-in name (quickstart)")
        cmd.add_argument(
            "--storage",
            required=storage_required,
            help="SQLAlchemy URL (default: SQLite in the run folder)",
        )
        cmd.add_argument(
            "--trials",
            type=int,
            help="trainings wanted in the study (over-budget plans and repeats do not count)",
        )
        cmd.add_argument(
            "--target", help=f"hardware profile: a built-in one ({profiles}) or a YAML path"
        )
        cmd.add_argument(
            "--targets",
            help="several profiles, comma-separated (mcu,phone): one study, a front per target",
        )
        cmd.add_argument("--out", help="run folder (default experiments/runs/NAME)")
        cmd.add_argument("--seed", type=int)
        cmd.add_argument("--jobs", type=int, default=1, help="worker processes on this machine")
        cmd.add_argument(
            "--threads",
            type=int,
            default=1,
            help="torch threads per process (jobs x threads <= cores; default 1)",
        )
        cmd.add_argument("--no-progress", action="store_true", help="no progress bar")

    experiment_args(sub.add_parser("run", help="run or resume a search"))
    experiment_args(sub.add_parser("worker", help="join a shared study"), storage_required=True)

    rep = sub.add_parser("report", help="re-render trials.csv, pareto.json, report.html")
    rep.add_argument("run_dir", nargs="?", help="run folder holding study.db")
    rep.add_argument("--storage", help="SQLAlchemy URL of a shared study")
    rep.add_argument("--study", help="study name (with --storage)")
    rep.add_argument("--out", help="where to write (default: the run folder)")

    exp = sub.add_parser(
        "export", help="export a winner: winner.yaml, model.onnx (or model.tflite), card.md"
    )
    exp.add_argument("run_dir", nargs="?", help="run folder (or --storage and --study)")
    exp.add_argument("--storage", help="SQLAlchemy URL of a shared study")
    exp.add_argument("--study", help="study name (with --storage)")
    group = exp.add_mutually_exclusive_group()
    group.add_argument(
        "--pick", default="knee", choices=["knee", "max-accuracy", "min-latency", "min-size"]
    )
    group.add_argument("--trial", type=int, help="export this trial number")
    exp.add_argument("--out", help="default RUN_DIR/winner")
    exp.add_argument("--allow-infeasible", action="store_true")
    exp.add_argument(
        "--target", help="which target's front to pick from (required for a multi-target run)"
    )
    exp.add_argument(
        "--format",
        default="onnx",
        choices=["onnx", "onnx-fp16", "tflite"],
        help="onnx (default; int8 QDQ for 8-bit layers), onnx-fp16 (float16, for GPUs) or "
        'tflite: int8 .tflite + C array, checked in TFLite Micro (pip install -e ".[tflite]")',
    )

    app = sub.add_parser("apply", help="rebuild a winner from its base model and check it")
    app.add_argument("winner", help="winner/winner.yaml")
    app.add_argument("--out", help="also write the rebuilt model's ONNX file here")

    cost = sub.add_parser("cost", help="cost a model on a hardware profile")
    cost.add_argument("--model", required=True, help="pkg.module:function returning an nn.Module")
    cost.add_argument(
        "--input-shape", required=True, help="one input's shape without the batch: C,H,W"
    )
    cost.add_argument(
        "--target", default="host", help=f"a built-in profile ({profiles}) or a YAML path"
    )
    cost.add_argument("--measure", action="store_true", help="also measure it in ONNX Runtime")
    cost.add_argument("--json", action="store_true")

    prof = sub.add_parser("profiles", help="hardware profiles")
    psub = prof.add_subparsers(dest="action", required=True)
    psub.add_parser("list")
    show = psub.add_parser("show")
    show.add_argument("name", help=f"a built-in profile ({profiles}) or a YAML path")
    cal = psub.add_parser("calibrate-host", help="measure this machine, write a host profile")
    cal.add_argument("--out", default=None, help="default hardware_profiles/host.yaml")
    fit = psub.add_parser("calibrate", help="fit a profile to latencies measured on a device")
    fit.add_argument(
        "--measurements",
        required=True,
        help="CSV: latency_ms and onnx (a file) or network + precision (a zoo network)",
    )
    fit.add_argument("--base", required=True, help="profile to start from")
    fit.add_argument("--out", required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args) or 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed trials are kept, run again to resume", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1


def _experiment(args: argparse.Namespace):
    from .config import load_experiment

    exp = load_experiment(args.experiment)
    if args.trials is not None and args.trials <= 0:
        raise ConfigError("<command line>", "--trials", f"must be >= 1, got {args.trials}")
    if args.jobs < 1:
        raise ConfigError("<command line>", "--jobs", f"must be >= 1, got {args.jobs}")
    cores = os.cpu_count() or 1
    if args.threads < 1 or args.jobs * args.threads > max(cores, args.jobs):
        # Small models train fastest on one thread per process: use --jobs for more cores.
        raise ConfigError(
            "<command line>",
            "--threads",
            f"jobs x threads must be <= {cores} "
            f"cores and threads >= 1, got {args.jobs} x {args.threads}",
        )
    return exp.with_overrides(
        trials=args.trials,
        seed=args.seed,
        out=args.out,
        target=args.target,
        targets=args.targets,
        storage=args.storage,
    )


def _run(args: argparse.Namespace, *, worker: bool = False) -> int:
    exp = _experiment(args)  # config errors exit here, before the engine's heavy imports
    from .parallel import run_jobs, run_lock

    # A second `run` of the same study is refused (it would race to create the study);
    # `worker` is the way to join one.
    with contextlib.nullcontext() if worker else run_lock(exp):
        import torch

        from .study import run_search

        torch.set_num_threads(args.threads)
        if args.jobs > 1:
            result = run_jobs(
                exp,
                jobs=args.jobs,
                threads=args.threads,
                progress=not args.no_progress,
                worker=worker,
            )
        else:
            result = run_search(exp, progress=not args.no_progress, worker=worker)
        _write_outputs(result.storage_url, exp.name, result.run_dir, summary=True)
    return 0


def _write_outputs(storage_url: str, study_name: str, run_dir: Path, *, summary: bool) -> None:
    from .review import load_run, write_outputs

    run = load_run(storage_url, study_name)
    paths = write_outputs(run, run_dir)
    if summary:
        print(run.summary_text())
        for path in paths.values():
            print(f"wrote {path}")


def _report(args: argparse.Namespace) -> int:
    from .review import run_dir_storage

    if args.storage:
        if not args.study:
            raise ConfigError("<command line>", "--study", "is required with --storage")
        from .storage import check_storage_url

        check_storage_url(args.storage, "<command line>", "--storage")
        out = Path(args.out or args.run_dir or Path("experiments/runs") / args.study)
        _write_outputs(args.storage, args.study, out, summary=True)
        return 0
    if not args.run_dir:
        raise ConfigError(
            "<command line>", "run_dir", "give a run folder or --storage and --study"
        )
    url, name = run_dir_storage(args.run_dir)
    _write_outputs(url, name, Path(args.out or args.run_dir), summary=True)
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_winner

    if not args.run_dir and not (args.storage and args.study):
        raise ConfigError(
            "<command line>", "run_dir", "give a run folder or --storage and --study"
        )
    if args.storage:
        from .storage import check_storage_url

        check_storage_url(args.storage, "<command line>", "--storage")
    result = export_winner(
        Path(args.run_dir) if args.run_dir else None,
        storage=args.storage,
        study=args.study,
        pick=args.pick or "knee",
        trial=args.trial,
        out=Path(args.out) if args.out else None,
        allow_infeasible=args.allow_infeasible,
        fmt=args.format,
        target=args.target,
    )
    print(result)
    return 0


def _apply(args: argparse.Namespace) -> int:
    from .export import apply_winner

    result = apply_winner(Path(args.winner), out=Path(args.out) if args.out else None)
    print(result)
    return 0 if result.ok else 1


def _cost(args: argparse.Namespace) -> int:
    from ._format import number
    from .hardware import cost_summary, load_profile

    shape = _input_shape(args.input_shape)
    model = _import_model(args.model)
    _probe_input_shape(model, shape, args.model)
    profile = load_profile(args.target, file="<command line>", field="--target")
    summary = cost_summary(model, shape, profile, measure=args.measure)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        width = max(len(k) for k in summary)
        for key, value in summary.items():
            print(f"{key:<{width}}  {number(value)}")
    return 0


def _input_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ConfigError(
            "<command line>",
            "--input-shape",
            f"must be positive integers like 3,224,224 (one input, no batch), got {text!r}",
        )
    return shape


def _probe_input_shape(model, shape: tuple[int, ...], spec: str) -> None:
    """One zero input through the model: a shape it cannot take is the flag's mistake."""
    import torch

    from .errors import describe

    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape))
    except Exception as exc:  # the user's model refused it: name the flag, not a traceback
        given = ",".join(map(str, shape))
        raise ConfigError(
            "<command line>",
            "--input-shape",
            f"{spec} cannot take a {given} input ({describe(exc)}); give one input's shape "
            "without the batch, as the model's first layer takes it (e.g. C,H,W)",
        ) from None


def _import_model(spec: str):
    import importlib

    from torch import nn

    if ":" not in spec:
        raise ConfigError("<command line>", "--model", "must look like 'pkg.module:function'")
    module_name, func = spec.split(":", 1)
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            "<command line>", "--model", f"cannot import {module_name!r}: {exc}"
        ) from None
    factory = getattr(module, func, None)
    try:
        model = factory() if callable(factory) else None
    except Exception as exc:  # the user's factory failed: one line, not a traceback
        from .errors import describe

        raise ConfigError("<command line>", "--model", f"{spec} raised {describe(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError("<command line>", "--model", f"{spec} must return an nn.Module")
    return model.eval()


def _profiles(args: argparse.Namespace) -> int:
    from . import hardware
    from ._resources import builtin_names

    if args.action == "list":
        for name in builtin_names("profile"):
            profile = hardware.load_profile(name)
            print(f"{name:<10} {profile.description}")
    elif args.action == "show":
        import yaml

        profile = hardware.load_profile(args.name, file="<command line>", field="name")
        print(yaml.safe_dump(profile.to_dict(), sort_keys=False), end="")
    elif args.action == "calibrate-host":
        out = Path(args.out) if args.out else _default_host_profile()
        hardware.calibrate_host(out, log=print)
        print(f"wrote {out}")
    else:
        out = Path(args.out)
        cal = hardware.calibration_from_csv(Path(args.measurements), args.base, out_path=out)
        print(cal.report())  # the fit and its leave-one-network-out error
        print(f"wrote {out}")
    return 0


def _default_host_profile() -> Path:
    """hardware_profiles/host.yaml in a checkout (so `target: host` finds it), else ./host.yaml."""
    folder = Path("hardware_profiles")
    return folder / "host.yaml" if folder.is_dir() else Path("host.yaml")


_COMMANDS = {
    "run": _run,
    "worker": lambda a: _run(a, worker=True),
    "report": _report,
    "export": _export,
    "apply": _apply,
    "cost": _cost,
    "profiles": _profiles,
}
