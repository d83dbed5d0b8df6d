"""scale.md, the page scale.py and scale_real.py both write: here, so neither imports the other.

`derive` adds the figures and notes computed from scale.py's measured runs; `markdown` renders
the whole page from scale.json (scale.py's throughput and kill-and-resume sections, then
scale_real.py's real-sized section when it has run); `real_sized_markdown` renders that section
alone (the page scale_real.py writes before scale.py has run).
"""

from __future__ import annotations

import statistics
from typing import Any

TARGETS = {"speedup_2_workers": 1.7, "lost_trials": 0, "duplicate_trials": 0}
# scale_real.py's run settings: its section of the page quotes them.
RECOVERY = {"steps": 2, "batch_size": 16, "early_stop": False}
VAL_SUBSET = 64


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    """The median of `key` over `runs`, to 3 decimals."""
    return round(statistics.median(r[key] for r in runs), 3)


def derive(result: dict[str, Any]) -> None:
    """Figures computed from the measured runs: how much CPU each setting actually got. On a
    shared machine a second worker can only help if a second core is free."""
    tp = result["throughput"]
    for r in tp["runs"]:
        r["cores_used"] = round(r["cpu_s"] / r["wall_s"], 2)
        r["trials_per_cpu_min"] = round(r["complete"] / r["cpu_s"] * 60, 2)
    labels = list(tp["trials_per_min"])
    by = {label: [r for r in tp["runs"] if r["config"] == label] for label in labels}
    tp["cores_used"] = {label: median_of(rs, "cores_used") for label, rs in by.items()}
    tp["trials_per_cpu_min"] = {
        label: median_of(rs, "trials_per_cpu_min") for label, rs in by.items()
    }
    best, two = tp["best_single_process"], "2w-1t"
    notes = [
        f"CPU obtained (CPU seconds of the process tree / wall seconds): {tp['cores_used']}. "
        f"The 2-worker runs got {tp['cores_used'][two]} cores against {tp['cores_used'][best]} "
        f"for {best}: the speedup is bounded by that ratio "
        f"({round(tp['cores_used'][two] / tp['cores_used'][best], 2)}) times the work per CPU "
        f"second ({round(tp['trials_per_cpu_min'][two] / tp['trials_per_cpu_min'][best], 2)}: "
        "the second process's start-up and the shared database).",
        f"Load average {result['machine']['load_avg_before']} at the start on "
        f"{result['machine']['cores']} cores: other work held part of the machine.",
    ]
    rate, per_cpu = tp["trials_per_min"], tp["trials_per_cpu_min"]
    if rate["1w-2t"] < rate["1w-1t"]:
        notes.append(
            f"One process with 2 torch threads (the CLI's cores // jobs) ran "
            f"{round(rate['1w-1t'] / rate['1w-2t'], 1)}x slower than with 1 thread and used "
            f"{round(per_cpu['1w-1t'] / per_cpu['1w-2t'], 1)}x the CPU per trial: on small "
            "models and a busy machine the second thread waits for a core instead of working."
        )
    result["notes"] = notes


def markdown(result: dict[str, Any]) -> str:
    tp, crash = result["throughput"], result["crash"]
    names = {
        "1w-2t": "1 process, 2 torch threads (the CLI's old default)",
        "1w-1t": "1 process, 1 torch thread (the CLI's default)",
        "2w-1t": "2 processes (--jobs 2), 1 torch thread each (the CLI's default)",
    }
    lines = [
        "# Scale: workers on PostgreSQL, and kill-and-resume",
        "",
        f"At commit {result['machine'].get('commit', '?')}, {result['machine'].get('date', '?')}. "
        f"Machine: {result['machine']['cores']} cores, shared with other work (load average "
        f"{result['machine']['load_avg_before']} at the start, "
        f"{result['machine']['load_avg_after']} at the end). Workload: the digits task, "
        f"{result['workload']['trials_per_run']} trials per run, recovery "
        f"{result['workload']['recovery_epochs']} epochs. Command: `{result['command']}`.",
        "",
        "| setting | trials/min (search) | trials/min (end to end) |",
        "|---|---|---|",
    ]
    for label, name in names.items():
        lines.append(
            f"| {name} | {tp['trials_per_min'][label]} | "
            f"{tp['trials_per_min_end_to_end'][label]} |"
        )
    lines += [
        "",
        f"**speedup_2_workers = {result['speedup_2_workers']}** (target >= "
        f"{TARGETS['speedup_2_workers']}): 2 processes against the faster single-process "
        f"setting ({tp['best_single_process']}). End to end "
        f"{tp['speedup_2_workers_end_to_end']}; steady state (from the second worker's first "
        f"trial) {tp['speedup_2_workers_steady']}; against 1 process with 2 threads "
        f"{tp['speedup_vs_cli_default_single']}.",
        "",
        "| run (in order) | setting | complete | search s | wall s | CPU s | cores used | "
        "trials/min | steady trials/min |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in tp["runs"]:
        lines.append(
            f"| {r['study']} | {r['config']} | {r['complete']} | {r['window_s']} | "
            f"{r['wall_s']} | {r['cpu_s']} | {r['cores_used']} | "
            f"{r['trials_per_min']} | {r['trials_per_min_steady']} |"
        )
    lines += [
        "",
        f"Kill and resume: a {crash['trials_requested']}-trial `run --jobs 2` search, "
        f"SIGKILLed {crash['kills']} times inside running trials (after "
        f"{crash['kill_after_complete']} completed), restarted at once each time.",
        "",
        "| lost_trials | duplicate_trials | complete | extra | killed mid-trial | retried | "
        "stuck running | surviving workers |",
        "|---|---|---|---|---|---|---|---|",
        f"| {result['lost_trials']} | {result['duplicate_trials']} | {crash['complete']} | "
        f"{crash['extra_complete']} | {len(crash['killed_running_trials'])} | "
        f"{len(crash['killed_trials_retried'])} | {crash['stuck_running']} | "
        f"{crash['orphan_workers']} |",
        "",
        "Extra: each worker finishes the trial it holds when the target is reached, so two "
        "workers can end one over. Stuck running: killed trials whose 30 s grace period had "
        "not passed when the search finished; the next run or worker fails and retries them. "
        "Surviving workers: worker processes still alive 10 s after their parent was killed.",
        "",
    ]
    if result.get("notes"):
        lines += ["Notes:", "", *[f"- {n}" for n in result["notes"]], ""]
    if result.get("real_sized"):  # written by scale_real.py
        lines += [real_sized_markdown(result["real_sized"])]
    return "\n".join(lines)


def real_sized_markdown(real: dict[str, Any]) -> str:
    from search.record import TrialStatus

    lines = [
        "## Real-sized data: torchvision networks at 3x224x224, streamed from disk",
        "",
        f"Command: `{real['command']}`. {real['when']}, commit {real['commit']}, load average "
        f"{real['load_avg_before']} before, {real['load_avg_after']} after, "
        f"{real['cores']} cores shared with other work. Dataset: synthetic uint8 `.npy` "
        f"shards on disk ({real['dataset_gb']} GB for {real['images'][-1]} training images), "
        "read one image per `__getitem__`. Search: 3 trials, per-layer pruning and 8-bit "
        f"weights, online distillation, `recovery.steps: {RECOVERY['steps']}` (batch "
        f"{RECOVERY['batch_size']}), `task.val_subset: {VAL_SUBSET}`, 1 torch thread.",
        "",
        "| network | training images | peak RSS MB: after the stream / at the end | largest "
        "loader worker MB | full stream of the training split | cost of the network s (cold "
        "/ cached) | slowest build + cost of a trial s | 3-trial search s | trials trained "
        "(repeats of a plan not counted) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in real["runs"]:
        # A repeated plan is answered from its first trial; an enqueued plan left unrun has
        # no status: neither is a trial the search ran.
        ran = [t for t in r["trials"] if t["status"] not in (None, TrialStatus.DUPLICATE)]
        trained = sum(t["status"] == TrialStatus.TRAINED for t in ran)
        rate = round(r["stream_rows"] / max(r["stream_s"], 1e-9))
        build = max((t["build_s"] or 0) for t in r["trials"])
        lines.append(
            f"| {r['model']} | {r['images']} | "
            f"{r['peak_rss_after_stream_mb']} / {r['peak_rss_mb']} | "
            f"{r['peak_rss_workers_mb']} | {r['stream_rows']} rows, {r['stream_s']} s "
            f"({rate}/s) | {r['cost_s']} / {r['cost_cached_s']} | {build} | {r['search_s']} | "
            f"{trained}/{len(ran)} |"
        )
    lines += ["", *[f"- {n}" for n in real["notes"]], ""]
    t = real.get("teacher")
    if t:
        lines += [
            "Distillation teacher, measured on a small case (ResNet-18, 256 images, batch "
            f"{t['batch']}, 1 thread): online {t['online_teacher_s_per_step']} s per step "
            f"(a student step is {t['student_step_s']} s); cached on disk: "
            f"{t['cache_build_s_per_image']} s per image to build the memory-mapped file, "
            f"then {t['cache_read_s_per_step']} s per step to read a batch's logits. Building "
            f"the cache for {real['images'][-1]} images costs {t['cache_build_s_total']} s, "
            f"repaid after {t['break_even_steps']} recovery steps in all. Chosen: online "
            "(see the notes).",
            "",
        ]
    return "\n".join(lines)
