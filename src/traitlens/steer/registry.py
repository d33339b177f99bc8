"""The registry of direction estimators (neuron selection rules are registered in
:mod:`traitlens.neurons.rules`).

One dict per kind, filled by decorators, read by everything that lists or
dispatches methods: :func:`~traitlens.steer.trait_vector`, the ``traitlens
steer`` help and choices, and the study configuration's validation. A new
method is one function and one decorator line (steering-vectors passes an
aggregator function to one trainer; lm-evaluation-harness registers models
with ``@register_model``)::

    @register_method("median_diff", doc="difference of pole medians")
    def median_diff(x_high, x_low, context):
        raw = x_high.median(0).values - x_low.median(0).values
        return raw / raw.norm(), float(raw.norm())

A direction estimator gets the high- and low-pole rows of one layer
(``[n_high, d_model]``, ``[n_low, d_model]``, float64) and a
:class:`DirectionContext` with everything else a method may read, and returns
``(direction, norm)``: a ``[d_model]`` direction toward the high pole (it is
normalised again by the caller) and the size of the raw estimate, kept in the
artifact as ``norms``. What a method needs beyond the poles is declared at
registration (``needs``), so callers prepare it without knowing the method.

"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from traitlens.errors import DataError
from traitlens.registry import Names, check_name, lookup

if TYPE_CHECKING:
    pass

NEEDS: Mapping[str, str] = {
    "pairs": "high and low prompts answering the same question, paired (context.pairs); a "
    "trait without any pair is refused before estimating, and `span='auto'` reads such a "
    "method from question tokens, where both sides of a pair are the same tokens",
    "probe": "the probe stage's weights for the layer when the caller has them "
    "(context.probe_row, else None)",
}
"""What an estimator may declare it needs beyond the two poles' rows."""

PARAMS = ("ridge_alpha", "probe_c")
"""Settings an estimator may declare it reads; their values are recorded in the
vector's ``source`` so the artifact says how it was made."""


@dataclass(frozen=True, eq=False)
class DirectionContext:
    """Everything at one layer a direction estimator may read besides the two poles' rows.

    - ``x`` ``[n_rows, d_model]`` float64: every captured row (the rows the spread
      is measured on);
    - ``trait_rows``: rows of ``x`` holding the trait's prompts (every pole,
      neutral included), with their 1–5 ``intensities`` ``[len(trait_rows)]``;
    - ``pairs``: ``(i, j)`` with ``x_high[i]`` and ``x_low[j]`` answering the
      same question (:func:`~traitlens.steer.directions.pair_indices`);
    - ``probe_row`` ``[d_model]``: the probe stage's normal at ``layer`` (only for
      methods that need ``"probe"``, and only when the caller has probes);
    - ``ridge_alpha``, ``probe_c``: the estimator settings of the call.
    """

    layer: int
    x: torch.Tensor
    trait_rows: tuple[int, ...]
    intensities: torch.Tensor
    pairs: tuple[tuple[int, int], ...]
    probe_row: torch.Tensor | None = None
    ridge_alpha: float = 1.0
    probe_c: float = 1.0

    @property
    def x_trait(self) -> torch.Tensor:
        """``[len(trait_rows), d_model]``: the trait's rows, in ``intensities`` order."""
        return self.x[list(self.trait_rows)]


class DirectionFn(Protocol):
    def __call__(
        self, x_high: torch.Tensor, x_low: torch.Tensor, context: DirectionContext
    ) -> tuple[torch.Tensor, float]: ...


@dataclass(frozen=True)
class DirectionMethod:
    """A registered direction estimator and what it needs (see the module docstring)."""

    name: str
    estimate: DirectionFn
    needs: frozenset[str]
    params: tuple[str, ...]
    doc: str


DIRECTIONS: dict[str, DirectionMethod] = {}
"""Direction estimators by name, in registration order."""

METHODS = Names(DIRECTIONS)
"""Names of the registered direction estimators (``mean_diff``, ``pca``, ``regression``,
``probe``, then any registered later)."""


def register_method(
    name: str, *, needs: Iterable[str] = (), params: Iterable[str] = (), doc: str = ""
) -> Callable[[DirectionFn], DirectionFn]:
    """Decorator: register a direction estimator under ``name``.

    ``needs``: keys of :data:`NEEDS` the estimator relies on; ``params``: the
    settings of :data:`PARAMS` it reads (recorded in the vector's ``source``).
    Registering a name twice raises :class:`~traitlens.errors.DataError`.
    """
    needed, read = frozenset(needs), tuple(params)
    check_name(DIRECTIONS, name, "direction method")
    unknown = sorted(needed - set(NEEDS)) + [p for p in read if p not in PARAMS]
    if unknown:
        raise DataError(
            f"direction method {name!r} declares unknown needs/params {unknown}; needs are "
            f"{', '.join(NEEDS)}, params {', '.join(PARAMS)}"
        )

    def decorator(estimate: DirectionFn) -> DirectionFn:
        DIRECTIONS[name] = DirectionMethod(name, estimate, needed, read, doc)
        return estimate

    return decorator


def get_method(name: str) -> DirectionMethod:
    """The registered estimator ``name``; DataError listing the registered ones."""
    return lookup(DIRECTIONS, name, "direction method")
