"""The one place forward hooks are registered.

``hooks_installed`` records each handle *as it is registered, inside the try*,
and removes them all in ``finally`` — so a failure part-way through
registration, or an exception in the body, never leaves a hook behind (the bug
steering-vectors' ``apply()`` and lm-eval's ``steer()`` have).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from traitlens.models.adapter import ArchitectureAdapter, HookPoint

# A hook function receives the hook point's tensor ([batch, seq, width]) and
# returns a replacement tensor, or None to leave it unchanged.
HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]


def _wrap(fn: HookFn) -> Callable[[nn.Module, Any, Any], Any]:
    def forward_hook(module: nn.Module, inputs: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            new = fn(output[0])
            return output if new is None else (new, *output[1:])
        return fn(output)

    return forward_hook


@contextmanager
def hooks_installed(
    adapter: ArchitectureAdapter, hooks: Sequence[tuple[str | HookPoint, HookFn]]
) -> Iterator[list[HookPoint]]:
    """Install ``(hook_point, fn)`` pairs for the duration of the block.

    Hook points are validated before anything is registered; hooks on the same
    point run in the order given. Yields the resolved hook points.
    """
    resolved = [(adapter.resolve(point), fn) for point, fn in hooks]
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for point, fn in resolved:
            handles.append(adapter.module(point).register_forward_hook(_wrap(fn)))
        yield [point for point, _ in resolved]
    finally:
        for handle in handles:
            handle.remove()
