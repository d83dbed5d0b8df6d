"""One config type <-> one handler: a new operator is a new module that registers itself.

Modelled on torchao's `register_quantize_module_handler`: each operator module decorates its
handler with `@register_handler(ItsConfig)`, and `compress` looks the handler up by the type of
each config in the plan, so nothing here switches on operator names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

Handler = Callable[[nn.Module, Any, "Context"], nn.Module]
_HANDLERS: dict[type, Handler] = {}
H = TypeVar("H", bound=Handler)


@dataclass
class Context:
    """What every handler may read, and where it records what it did."""

    input_shape: tuple[int, ...]
    num_classes: int
    calib_inputs: torch.Tensor
    grad_batch: tuple[torch.Tensor, torch.Tensor]
    # final module name -> the plan's layer key (its name before low-rank split it)
    origin: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    layer_density: dict[str, float] = field(default_factory=dict)
    layer_bits: dict[str, int] = field(default_factory=dict)
    activation_bits: int = 32
    calibrate: bool = True  # False: leave activation ranges unset (costing needs none)

    def key(self, name: str) -> str:
        """The plan key for a final module name."""
        return self.origin.get(name, name)

    def skip(self, name: str, why: str) -> None:
        """Record that an operator left `name` whole (several reasons are joined)."""
        old = self.skipped.get(name)
        self.skipped[name] = why if old is None else f"{old}; {why}"

    def example_inputs(self) -> torch.Tensor:
        return self.calib_inputs[:2]


def register_handler(config_type: type) -> Callable[[H], H]:
    """Decorator: `handler(model, config, ctx) -> model` applies configs of `config_type`."""

    def wrap(fn: H) -> H:
        if config_type in _HANDLERS:
            raise ValueError(f"a handler for {config_type.__name__} is already registered")
        _HANDLERS[config_type] = fn
        return fn

    return wrap


def handler_for(config: Any) -> Handler:
    try:
        return _HANDLERS[type(config)]
    except KeyError:
        raise TypeError(f"no operator registered for {type(config).__name__}") from None


def registered() -> tuple[type, ...]:
    return tuple(_HANDLERS)
