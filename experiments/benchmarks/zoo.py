"""The zoo benchmark: one joint plan built and costed on every torchvision classifier up to 60 M
parameters, the segmentation networks, the detection backbones and ViT-B/16.

    python experiments/benchmarks/zoo.py [--timeout 120] [--size 224] [--profile phone]
        [--threads N] [--max-params 60e6] [--models a,b,...] [--quick] [--out DIR]

For each network (random weights, `weights=None`; no download), in a process of its own that
is killed after `--timeout` seconds:
1. builds the torchvision model at `--size` x `--size` (segmentation too; a detection
   network's `.backbone`, its FPN or SSD feature extractor, at the same size, SSD300's at 300);
2. costs it as it is (fp32) on the `--profile` profile (`search.hardware.estimate_cost`);
3. builds one joint plan by hand and applies it (`search.compress.compress`): low-rank (SVD)
   at rank ratio 0.5 on every layer `compressible_layers` marks factorizable (0.25 on an
   attention block's square q/k/v/out projections, where 0.5 saves nothing), global L1
   structured pruning of 30 % of the channels, a quarter of each attention block's heads,
   and int8 weights and activations;
4. costs the result at its bits on the same profile;
5. runs it forward once and compares the output's shape with the base model's (a dict output:
   its 'out' tensor, else every tensor in it).
Recorded per network: ok flags (built = base model and plan built, costed = both costs,
forward = right shape), parameters and predicted latency before and after, channels the
pruning removed (per layer of the base network, the output channels of the module that ends
it after compression, a low-rank pair's second half, against its own; summed), attention
heads removed (the modules' `num_heads`/`n_heads`), the layers an operator left whole and why
(`Compressed.skipped`), seconds per stage and the error text of any stage that failed.
"Plan seconds" = build (listing the layers, making the plan, `compress`) + cost of the result,
for a study's next plan: after the first plan (and its forward check), the same plan at 35 %
pruning is built and costed in the same process, where it finds the SVDs the first computed
(a study computes each once; `first_plan_seconds` include them). A stage that ran out of time
counts as failed and has no figure.

Summary over the classifiers up to `--max-params` (the issue's targets: built_fraction = 1.0,
pruned_fraction >= 0.95, max_plan_seconds <= 10, median_plan_seconds <= 3), then the same
figures for segmentation, detection backbones and the larger networks, and per-family lists. Writes
experiments/results/zoo.json and zoo.md (rewritten after each network, so a stopped run keeps
what it measured); progress on stderr. Not a test: it asserts nothing. `--quick` (or
`--models`) runs a few networks, for a smoke run; point `--out` elsewhere then.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _stamp  # this folder is on sys.path when run as a script
from _zoo_networks import (
    BITS,
    MAX_PARAMS,
    PRUNE_RATIO,
    QUICK,
    RANK_RATIO,
    SQUARE_RANK_RATIO,
    channels_removed,
    entry,
    measure_here,
    select,
)
from _zoo_report import (
    TARGETS,
    document,
    families,
    first_error,
    group_summary,
    markdown,
    targets_met,
)

from search.files import atomic_write_text

# What other code reads as zoo.<name> (the tests).
__all__ = [
    "TARGETS",
    "channels_removed",
    "families",
    "group_summary",
    "main",
    "measure",
    "targets_met",
]

REPO = Path(__file__).resolve().parents[2]

RESULTS = REPO / "experiments" / "results"


# -- one network, in a child process with a time limit ---------------------------------------


def measure(
    name: str, *, size: int = 224, profile: str = "phone", timeout: float = 120, threads: int = 0
) -> dict[str, Any]:
    """`measure_here` in a fresh Python process, killed after `timeout` seconds. Never raises:
    a timeout or a crash is recorded in the row (with the stage it happened in)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", name]
    cmd += ["--size", str(size), "--profile", profile, "--threads", str(threads)]
    t0 = time.perf_counter()
    timed_out, rc, stderr = False, 0, ""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        stdout, stderr, rc = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        timed_out = True
        stdout = _text(exc.stdout)
        stderr = _text(exc.stderr)
    row = _last_row(stdout) or {
        **entry(name, None, summary=False),
        "built": False,
        "costed": False,
        "forward": False,
        "stage": "start",
        "errors": {},
    }
    for key in ("published_params", "in_summary"):
        row.pop(key, None)
    row["wall_seconds"] = round(time.perf_counter() - t0, 3)
    row["timed_out"] = timed_out
    if timed_out:
        row["errors"][row["stage"]] = f"timed out after {timeout:g} s"
    elif row.get("stage") != "done":
        tail = stderr.strip().splitlines()[-3:]
        row["errors"][row.get("stage") or "start"] = (
            f"the process ended (rc {rc}) during this stage: " + " | ".join(tail)
        )[:600]
    return row


def _text(v: bytes | str | None) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else (v or "")


def _last_row(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
    return None


def write(out: Path, doc: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "zoo.json", json.dumps(doc, indent=1) + "\n")
    atomic_write_text(out / "zoo.md", markdown(doc))


def _progress(i: int, n: int, r: dict[str, Any]) -> str:
    head = f"[{i}/{n}] {r['model']}:"
    if r["errors"]:
        return f"{head} {first_error(r)[:200]} ({r['wall_seconds']:.0f} s)"
    return (
        f"{head} {r.get('channels_removed', 0)} channels removed, "
        f"{r.get('latency_ms_before', math.nan):.3g} -> {r.get('latency_ms_after', math.nan):.3g} "
        f"ms, plan {r.get('plan_seconds', math.nan):.1f} s ({r['wall_seconds']:.0f} s)"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per network")
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--profile", default="phone")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--max-params", type=float, default=MAX_PARAMS)
    ap.add_argument("--models", help="comma-separated names (a detection backbone: NAME.backbone)")
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # the child: one network, rows on stdout
    args = ap.parse_args(argv)

    if args.one:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)

        def emit(row: dict[str, Any]) -> None:
            print(json.dumps(row), flush=True)

        measure_here(args.one, args.size, args.profile, emit)
        return

    stamp = _stamp.start()
    started = time.perf_counter()
    import torch
    import torchvision

    entries = select(args.models, args.quick, args.max_params)
    setup = {
        "size": args.size,
        "profile": args.profile,
        "timeout_s": args.timeout,
        "threads": args.threads,
        "max_params": args.max_params,
        "plan": {
            "lowrank": {
                "rank_ratio": RANK_RATIO,
                "square_attention_rank_ratio": SQUARE_RANK_RATIO,
                "layers": "every factorizable layer",
            },
            "prune": {"global_ratio": PRUNE_RATIO, "importance": "l1"},
            "quantize": {"weight_bits": BITS, "activation_bits": BITS},
        },
        "subset": bool(args.models or args.quick),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    print(f"{len(entries)} networks, {args.timeout:g} s each at most", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    for i, e in enumerate(entries, 1):
        r = measure(
            e["model"],
            size=args.size,
            profile=args.profile,
            timeout=args.timeout,
            threads=args.threads,
        )
        r["published_params"] = e["published_params"]
        r["in_summary"] = e["in_summary"]
        rows.append(r)
        print(_progress(i, len(entries), r), file=sys.stderr, flush=True)
        doc = document(rows, entries, setup)
        doc["stamp"] = {
            **_stamp.finish(stamp),
            "seconds": round(time.perf_counter() - started, 1),
            "networks_done": f"{i} of {len(entries)}",
        }
        write(args.out, doc)
    if not rows:
        doc = document(rows, entries, setup)
        doc["stamp"] = {**_stamp.finish(stamp), "seconds": 0.0, "networks_done": "0 of 0"}
        write(args.out, doc)
    print(f"wrote {args.out / 'zoo.json'} and zoo.md", file=sys.stderr)


if __name__ == "__main__":
    main()
