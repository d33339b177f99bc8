"""The playground's "personality meter": where an answer sits along each trait axis.

For a prompt and an answer, one unsteered forward pass reads the hook points
the vectors live at (and stops at the deepest of them: no later layer, and no
vocabulary projection, is computed); the answer tokens' mean hidden state at each layer is
projected onto the trait's unit direction ``û[l]`` and divided by the layer's
spread, then averaged over the chosen layers. The value is in spread units and
*uncentred* (it includes the model's baseline position on the axis), so it is
meant for comparing two answers to the same prompt — unsteered vs steered —
not as an absolute score. This is the "unsteered model's own probes on the
generated text" judge of the evaluate stage, in its cheapest form.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch

from traitlens.models.batching import last_logits_kwargs
from traitlens.models.hooks import hooks_installed
from traitlens.models.loading import TraitModel
from traitlens.serve.steering import SteeringCatalog, SteeringError


class _Enough(Exception):
    """Raised by the last capture hook to end the forward pass at the deepest read layer."""


def trait_readout(
    tm: TraitModel,
    catalog: SteeringCatalog,
    prompt_ids: Sequence[int],
    answer_ids: Sequence[int],
    method: str | None = None,
    layers: str | Sequence[int] | None = None,
) -> dict[str, Any]:
    """``{"traits": {code: value}, "method", "layers", "units"}`` for one answer."""
    if not answer_ids:
        raise SteeringError("the answer is empty: there is nothing to read", "answer")
    method = method or catalog.default_method()
    if method not in catalog.methods:
        raise SteeringError(
            f"unknown method {method!r}; the loaded vectors offer {', '.join(catalog.methods)}",
            "method",
        )
    vectors = [v for v in catalog.vectors if v.method == method]
    chosen = catalog.select_layers(layers, method, [v.trait for v in vectors])
    start = len(prompt_ids)
    captured: dict[str, torch.Tensor] = {}
    points = sorted({f"{v.hook}[{layer}]" for v in vectors for layer in chosen})

    def grab(point: str, hidden: torch.Tensor) -> None:
        captured[point] = hidden[0, start:].double().mean(0)
        if len(captured) == len(points):
            raise _Enough  # every hooked layer is read: the rest of the pass is waste

    ids = torch.tensor([list(prompt_ids) + list(answer_ids)], device=tm.device)
    with (
        torch.inference_mode(),
        hooks_installed(tm.adapter, [(p, partial(grab, p)) for p in points]),
        contextlib.suppress(_Enough),
    ):
        # one position of logits, in case a model runs past the hooks (it never reads them)
        tm.model(input_ids=ids, use_cache=False, **last_logits_kwargs(tm.model))
    traits: dict[str, float] = {}
    for vector in vectors:
        values = []
        for layer in chosen:
            hidden = captured[f"{vector.hook}[{layer}]"].cpu()
            spread = float(vector.spread[vector.layer_index(layer)])
            values.append(float(hidden @ vector.direction(layer).double()) / max(spread, 1e-12))
        traits[vector.trait] = sum(values) / len(values)
    return {
        "object": "traitlens.readout",
        "traits": traits,
        "method": method,
        "layers": chosen,
        "units": "spread units (uncentred projection of the answer's mean hidden state)",
        "answer_tokens": len(answer_ids),
    }
