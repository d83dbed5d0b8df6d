"""The search-quality benchmark's settings: the task, target and budgets every arm runs on, the
arms, spaces and baselines compared, and issue 21's targets (search_quality.py says why).

`TASK` is the one setting a run changes: `--task` (smoke runs may use `digits`) sets it here in
the parent process and in every worker (`_search_quality_arms.unit`); read it as
`settings.TASK`, never as a name imported from here.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The file every experiment of the benchmark is parsed as coming from (its messages and folder).
SCRIPT = Path(__file__).resolve().with_name("search_quality.py")
TASK, TARGET = "gratings", "mcu"
BUDGETS = {"latency_ms": 20.0}  # the board's SRAM and flash budgets apply as they are
OBJECTIVES = ["accuracy", "latency_ms", "weight_bytes"]
MAX_DROP = 0.06
POINT = 0.01
TRAININGS, SEEDS = 16, tuple(range(10))
# Short recoveries, the same for every arm and baseline: a plan of the trained network gets
# 80 Adam steps of 64 rows (1.3 epochs), a student from scratch 160.
RECOVERY = {"steps": 80, "student_steps": 160}
RANDOM_SEED_OFFSET = 1000
SPACES = ("full", "no_students")
ARMS = ("auto", "random", "sequential")
BASELINES = ("int8_qat", "int8_prune_bisected", "student_w0.5_int8_kd")
STAGES = ("architecture", "lowrank", "prune", "quantize")
RELAXED = {"latency_ms": 1e9, "memory_kb": 1e9, "flash_kb": 1e9}  # stages before the last
TARGETS = {  # issue 21's
    "seeds_won": 8,  # of 10, against random and against sequential
    "hv_ratio_of_means_vs_random": 1.2,
    "hv_ratio_of_means_vs_sequential": 1.15,
    "baselines_dominated": 9,  # seeds of 10, per baseline
    "trainings_to_random_hv": 1 / 3,  # of the trainings, median over seeds
    "best_speedup_vs_int8_at_1pt": 2.0,
}
