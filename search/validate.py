"""Checks that need two validated inputs at once: a search space against its target profile.

Each check raises `ConfigError(file, field, message)` naming the file the user must change.
"""

from __future__ import annotations

from spaces import SearchSpace

from .errors import ConfigError
from .hardware import HardwareProfile


def check_space_runs_on(space: SearchSpace, profile: HardwareProfile) -> None:
    """Refuse a space whose bit widths the target cannot run at all.

    `SearchSpace.suggest` keeps only the widths the target runs; when none of the space's widths
    is one of them it falls back to the space's own list, and every plan would use a precision
    the device has no kernel for. A partial overlap is fine: the others are simply not offered.

    Raises:
        ConfigError: naming the space file and `quantize.weight_bits` or
            `quantize.activation_bits`.
    """
    if "quantize" not in space.sections:
        return  # no quantization searched: plans stay at full precision
    for key, runs in (
        ("weight_bits", profile.weight_bits),
        ("activation_bits", profile.activation_bits),
    ):
        dim = space.sections["quantize"].get(key)
        if dim is None:
            continue
        offered = [int(v) for v in dim.values()]
        if not set(offered) & set(runs):
            raise ConfigError(
                space.source,
                f"quantize.{key}",
                f"{offered} has no width the target {profile.name!r} runs; it runs "
                f"{list(runs)}: add one of them or choose another target",
            )
