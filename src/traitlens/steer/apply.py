"""Applying interventions: compile them to one forward hook per hook point, install
those with :func:`traitlens.models.hooks.hooks_installed` (which removes every
hook it registered, even when registration fails part-way or the body raises).

Everything that can be done once is done at context entry: identity, width,
layer and neuron-index checks; summing every ``AddDirection`` that lands on the
same hook point into one vector; casting vectors to the dtype and device of the
block they act on. The hooks themselves do one or two in-place tensor ops on
the device — no ``.cpu()``, no Python loop over tokens — and fall back to
out-of-place ops only when autograd is recording (an in-place edit would then
corrupt the backward pass).

Works the same for ``tm.model(...)`` forward passes and for ``model.generate``
(left-padded batches, KV cache): adding to pad positions is harmless because
pads are masked out of attention, so every real token sees exactly what it
would see alone (tested: batched equals unbatched under steering).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import torch

from traitlens.capture.capture import Prompt
from traitlens.errors import InterventionError
from traitlens.models.adapter import HookPoint
from traitlens.models.generation import generate_answers
from traitlens.models.hooks import HookFn, hooks_installed
from traitlens.models.loading import TraitModel
from traitlens.neurons.selected import SelectedNeurons
from traitlens.steer.artifact import TraitVector
from traitlens.steer.directions import unit
from traitlens.steer.interventions import (
    Ablate,
    AblateDirection,
    AddDirection,
    AddPerRow,
    Clamp,
    Intervention,
    NeuronEdit,
    Positions,
    ShiftNeurons,
    npti_factor,
)

Op = Callable[[torch.Tensor], torch.Tensor]


class SteeringPlan:
    """Ops per hook point, in the order the interventions were given: what each
    intervention kind's compiler (:func:`register_intervention`) adds to. ``push(point,
    positions, "fn", op)`` adds an op of your own, ``op(hidden) -> hidden``."""

    def __init__(self, tm: TraitModel):
        self.tm = tm
        self.ops: dict[HookPoint, list[tuple[Positions, str, Any]]] = {}
        self._placement: dict[int, tuple[torch.device, torch.dtype]] = {}

    def placement(self, layer: int) -> tuple[torch.device, torch.dtype]:
        if layer not in self._placement:
            self._placement[layer] = self.tm.placement(layer)
        return self._placement[layer]

    def resolve(self, kind: str, layer: int) -> HookPoint:
        """The hook point ``kind[layer]``; HookPointError names the valid range."""
        return self.tm.adapter.resolve(f"{kind}[{layer}]")

    def push(self, point: HookPoint, positions: Positions, kind: str, payload: Any) -> None:
        ops = self.ops.setdefault(point, [])
        if kind == "add" and ops and ops[-1][0] == positions and ops[-1][1] == "add":
            # several traits on one layer: one fused add instead of one per vector
            ops[-1] = (positions, "add", ops[-1][2] + payload)
        else:
            ops.append((positions, kind, payload))


Compiler = Callable[[SteeringPlan, Any], None]
COMPILERS: dict[type, Compiler] = {}
"""Intervention kind → the function that compiles one of them into a plan's ops."""


def register_intervention(*kinds: type) -> Callable[[Compiler], Compiler]:
    """Decorator: ``compile(plan, item)`` turns an intervention of one of ``kinds`` into
    ops on ``plan`` (hook points through ``plan.resolve``), so a new kind of edit plugs
    into :func:`steering` the way a direction method plugs into ``trait_vector``::

        @register_intervention(Scale)
        def _scale(plan, item):
            for layer in item.layers:
                plan.push(plan.resolve("resid", layer), "all", "fn", lambda h: h * item.factor)
    """

    def register(compile_one: Compiler) -> Compiler:
        for kind in kinds:
            if kind in COMPILERS:
                raise ValueError(f"intervention kind {kind.__name__} is registered twice")
            COMPILERS[kind] = compile_one
        return compile_one

    return register


def _check_vector(tm: TraitModel, vector: TraitVector) -> None:
    vector.identity.check_matches(tm.identity, f"{vector.trait}/{vector.method} trait vector")
    if vector.d_model != tm.identity.d_model:
        raise InterventionError(
            f"the {vector.trait}/{vector.method} vector has width {vector.d_model} but "
            f"{tm.identity.name} has d_model={tm.identity.d_model}; build the vector on this model"
        )


@register_intervention(AddDirection, AblateDirection)
def _add_vector_ops(plan: SteeringPlan, item: AddDirection | AblateDirection) -> None:
    vector = item.vector
    _check_vector(plan.tm, vector)
    for layer in item.layers or ():
        point = plan.resolve(vector.hook, layer)
        step = vector.step(point.layer).double()
        if isinstance(item, AddDirection):
            plan.push(point, item.positions, "add", step * item.strength)
        else:
            plan.push(point, item.positions, "project", unit(step))


def _neuron_groups(
    plan: SteeringPlan, neurons: SelectedNeurons, what: str
) -> dict[HookPoint, torch.Tensor]:
    """Row indices of ``neurons`` per resolved ``mlp_act`` hook point."""
    d_mlp = plan.tm.identity.d_mlp
    if len(neurons) and int(neurons.indices.max()) >= d_mlp:
        raise InterventionError(
            f"{what} refers to neuron {int(neurons.indices.max())} but {plan.tm.identity.name} "
            f"has d_mlp={d_mlp} neurons per layer (valid: 0..{d_mlp - 1}); were these "
            "neurons selected on another model?"
        )
    groups: dict[HookPoint, list[int]] = {}
    for row, layer in enumerate(neurons.layers.tolist()):
        groups.setdefault(plan.resolve("mlp_act", int(layer)), []).append(row)
    return {point: torch.tensor(rows, dtype=torch.long) for point, rows in groups.items()}


@register_intervention(NeuronEdit, ShiftNeurons, Ablate, Clamp)
def _add_neuron_ops(plan: SteeringPlan, item: NeuronEdit | ShiftNeurons | Ablate | Clamp) -> None:
    d_mlp = plan.tm.identity.d_mlp
    if isinstance(item, ShiftNeurons):
        amount = item.gamma * item.shift.double()
        for point, rows in _neuron_groups(plan, item.neurons, "ShiftNeurons").items():
            step = torch.zeros(d_mlp, dtype=torch.float64)
            step.index_add_(0, item.neurons.indices[rows], amount[rows])
            plan.push(point, item.positions, "npti", (step, None, None))
        return
    if isinstance(item, NeuronEdit):
        boosts: dict[HookPoint, torch.Tensor] = {}
        caps: dict[HookPoint, torch.Tensor] = {}
        target, opposite = item.target, item.opposite
        amount = item.gamma * target.a95.double() * npti_factor(target.delta.double())
        for point, rows in _neuron_groups(plan, target, "NeuronEdit.target").items():
            boosts[point] = torch.zeros(d_mlp, dtype=torch.float64).index_add_(
                0, target.indices[rows], amount[rows]
            )
        for point, rows in _neuron_groups(plan, opposite, "NeuronEdit.opposite").items():
            # min(0, n) as one clamp against a per-neuron ceiling: 0 for silenced neurons,
            # +inf (no-op) elsewhere
            cap = torch.full((d_mlp,), float("inf"), dtype=torch.float64)
            caps[point] = cap.index_fill_(0, opposite.indices[rows], 0.0)
        for point in sorted(set(boosts) | set(caps)):
            mask = (item.keep, item.mask_seed + point.layer) if item.keep < 1.0 else None
            plan.push(point, item.positions, "npti", (boosts.get(point), caps.get(point), mask))
        return
    name = type(item).__name__
    values = item.values()
    for point, rows in _neuron_groups(plan, item.neurons, name).items():
        plan.push(point, item.positions, "set", (item.neurons.indices[rows], values[rows]))


@register_intervention(AddPerRow)
def _add_per_row_ops(plan: SteeringPlan, item: AddPerRow) -> None:
    for name in item.points:
        plan.push(plan.tm.adapter.resolve(name), "all", "rows", (item.source, name))


def _to(tensor: torch.Tensor | None, device: torch.device, dtype: torch.dtype) -> Any:
    return None if tensor is None else tensor.to(device=device, dtype=dtype)


def _op(kind: str, payload: Any, device: torch.device, dtype: torch.dtype, inplace: bool) -> Op:
    """One hot-path operation with its tensors already on ``device`` in ``dtype``."""
    if kind == "add":
        vec = _to(payload, device, dtype)

        def add(h: torch.Tensor) -> torch.Tensor:
            v = vec if vec.device == h.device else vec.to(h.device)
            return h.add_(v) if inplace and not h.requires_grad else h + v

        return add
    if kind == "project":
        direction = _to(payload, device, dtype)

        def project(h: torch.Tensor) -> torch.Tensor:
            u = direction if direction.device == h.device else direction.to(h.device)
            removed = (h @ u).unsqueeze(-1) * u
            return h.sub_(removed) if inplace and not h.requires_grad else h - removed

        return project
    if kind == "fn":
        return cast(Op, payload)
    if kind == "rows":  # AddPerRow: the source's current [batch, d_model] table, read per call
        source, name = payload

        def add_rows(h: torch.Tensor) -> torch.Tensor:
            table = source.table(name)
            if table is None:
                return h
            rows = (table if table.device == h.device else table.to(h.device))[:, None, :]
            return h.add_(rows) if inplace and not h.requires_grad else h + rows

        return add_rows
    if kind == "npti":
        boost, cap = (_to(t, device, dtype) for t in payload[:2])
        keep = payload[2]
        draws = None
        if keep is not None and boost is not None:
            draws = torch.Generator().manual_seed(int(keep[1]))

        def npti(a: torch.Tensor) -> torch.Tensor:
            in_place = inplace and not a.requires_grad
            if boost is not None:
                step = boost
                if draws is not None:  # NPTI's random mask, drawn afresh for every pass
                    kept = torch.rand(boost.shape, generator=draws) < keep[0]
                    step = boost * kept.to(device=boost.device, dtype=boost.dtype)
                a = a.add_(step) if in_place else a + step
            if cap is not None:
                a = a.clamp_(max=cap) if in_place else torch.minimum(a, cap)
            return a

        return npti
    indices = payload[0].to(device)
    values = _to(payload[1], device, dtype)

    def pin(a: torch.Tensor) -> torch.Tensor:
        if not inplace or a.requires_grad:
            a = a.clone()
        a[..., indices] = values
        return a

    return pin


def _hook(ops: list[tuple[Positions, Op]]) -> HookFn:
    def hook(hidden: torch.Tensor) -> torch.Tensor:
        # generate() with a KV cache feeds the prompt as one multi-token call and then
        # one token per call; that is the only per-call state we need
        prompt_pass = hidden.shape[1] > 1
        for positions, op in ops:
            if positions == "all" or (positions == "prompt") == prompt_pass:
                hidden = op(hidden)
        return hidden

    return hook


def direction_rows(tm: TraitModel, directions: Sequence[AddDirection]) -> dict[str, torch.Tensor]:
    """What ``directions`` add at each hook point, as one float32 ``[d_model]`` row per
    point (``{"resid[10]": ...}``): the same validation and fusion as
    :func:`compile_interventions`, stopped before the hooks, so a server can stack the
    rows of many requests into one per-row table (``traitlens.serve.steering.RowTable``)."""
    plan = SteeringPlan(tm)
    for item in directions:
        if not isinstance(item, AddDirection) or item.positions != "all":
            raise InterventionError(
                "per-row steering takes direction additions on all positions only, got "
                f"{type(item).__name__} on {item.positions!r} positions"
            )
        _add_vector_ops(plan, item)
    return {str(point): ops[0][2].float() for point, ops in sorted(plan.ops.items())}


def _compiler(item: Any) -> Compiler | None:
    """The compiler registered for ``item``'s kind (or the nearest kind it derives from)."""
    return next((COMPILERS[k] for k in type(item).__mro__ if k in COMPILERS), None)


def _as_list(interventions: Any) -> list[Any]:
    """One intervention or a sequence of them, each of a registered kind."""
    try:
        items = [interventions] if _compiler(interventions) else list(interventions)
    except TypeError:  # neither an intervention nor an iterable of them
        items = [interventions]
    for item in items:
        if _compiler(item) is None:
            kinds = ", ".join(kind.__name__ for kind in COMPILERS)
            raise InterventionError(
                f"not an intervention: {type(item).__name__}; use one of {kinds}, or "
                "register a kind of your own with register_intervention"
            )
    return items


def compile_interventions(
    tm: TraitModel, interventions: Intervention | Sequence[Intervention], *, inplace: bool = True
) -> list[tuple[HookPoint, HookFn]]:
    """Validate ``interventions`` against ``tm`` and turn them into ``(hook point, fn)`` pairs.

    Raises ArtifactError (vector from another model), InterventionError (width,
    neuron index) or HookPointError (layer out of range) before anything is
    installed.
    """
    plan = SteeringPlan(tm)
    for item in _as_list(interventions):
        cast(Compiler, _compiler(item))(plan, item)
    hooks: list[tuple[HookPoint, HookFn]] = []
    for point in sorted(plan.ops):
        device, dtype = plan.placement(point.layer)
        ops = [
            (pos, _op(kind, payload, device, dtype, inplace))
            for pos, kind, payload in plan.ops[point]
        ]
        hooks.append((point, _hook(ops)))
    return hooks


@contextmanager
def steering(
    tm: TraitModel,
    interventions: Intervention | Sequence[Intervention],
    *,
    inplace: bool = True,
) -> Iterator[list[HookPoint]]:
    """Apply ``interventions`` to every forward pass inside the block; yields the hook points.

    ``with steering(tm, [AddDirection(e_vec, 4, layers=range(10, 20))]): tm.model(...)``
    works for plain forward passes and for ``tm.model.generate`` alike. Hooks
    are always removed on exit, including when the block raises; contexts nest.

    Ops edit the hooked tensor in place (no extra activation-sized allocation
    per hook, which matters for long prefills on big models; on the embedded
    model on CPU the two are indistinguishable, see ``benchmarks/steer_overhead.py
    --compare-inplace``). A hook registered *before* this context that keeps a
    reference to the same tensor without copying it will therefore see the
    steered value. ``inplace=False`` makes every op allocate a new tensor.
    """
    hooks = compile_interventions(tm, interventions, inplace=inplace)
    with hooks_installed(tm.adapter, list(hooks)) as points:
        yield points


def _as_prompts(prompts: Sequence[Any] | str, system: str | None) -> list[Any]:
    if isinstance(prompts, str):
        prompts = [prompts]
    return [Prompt(user=p, system=system) if isinstance(p, str) else p for p in prompts]


def generate_steered(
    tm: TraitModel,
    prompts: Sequence[Any] | str,
    interventions: Intervention | Sequence[Intervention],
    *,
    system: str | None = None,
    **generate_kwargs: Any,
) -> list[str]:
    """Answers to ``prompts`` (strings, or objects with ``system`` and ``user``) under
    ``interventions``: batched, left-padded, KV cache on, greedy or seeded sampling,
    chat template applied — :func:`traitlens.models.generation.generate_answers`
    inside :func:`steering`."""
    items = _as_prompts(prompts, system)
    with steering(tm, interventions):
        return generate_answers(tm, items, **generate_kwargs)


def compare_steering(
    tm: TraitModel,
    prompts: Sequence[Any] | str,
    interventions: Intervention | Sequence[Intervention],
    *,
    system: str | None = None,
    **generate_kwargs: Any,
) -> list[tuple[str, str]]:
    """``(unsteered, steered)`` answer pairs for each prompt, same decoding settings."""
    items = _as_prompts(prompts, system)
    plain = generate_answers(tm, items, **generate_kwargs)
    steered = generate_steered(tm, items, interventions, **generate_kwargs)
    return list(zip(plain, steered, strict=True))
