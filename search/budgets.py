"""The budget names: one list for experiments (`budgets:`) and hardware profiles (`budgets:`).

A bottom-layer module, so that `search.hardware` need not import the experiment (`search.config`).
"""

BUDGET_KEYS = ("latency_ms", "memory_kb", "flash_kb")
