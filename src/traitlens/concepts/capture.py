"""Capture over item tokens: pooled states and per-item neuron firing, one row per
(item, template).

The statement's own tokens are pooled (span ``item``), never the instruction
around it, so a probe cannot decode a domain from a template's words; the
per-neuron statistic is the share of the statement's tokens on which the
neuron fires, so that *items* are the statistical unit of neuron selection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from traitlens.artifact_io import Artifact, ModelIdentity, Saved, fields_of
from traitlens.capture.capture import ItemFiring, pool_formatted, resolve_layers, span_lengths
from traitlens.concepts.config import INSTRUCTED, ITEM_TEMPLATES
from traitlens.concepts.items import ItemLike
from traitlens.concepts.labels import LabelPrompt
from traitlens.errors import DataError
from traitlens.models.chat import FormattedPrompt
from traitlens.models.loading import TraitModel
from traitlens.provenance import Job, Provenance, computed, provenance


def format_items(
    tm: TraitModel,
    items: Sequence[ItemLike],
    template: str,
    label_prompt: LabelPrompt | None = None,
) -> list[FormattedPrompt]:
    """Each item as the user turn under ``template``, with span ``item`` on the statement.

    ``instructed``: each item inside ``label_prompt``'s conversation (k-shot turns, the
    question with the options rotated by the item's position), as the label readout asks it.
    """
    if template == INSTRUCTED:
        if label_prompt is None:
            raise DataError("the instructed context needs the label prompt to place items in")
        return [
            label_prompt.formatted(tm, item.text, label_prompt.rotation(n))
            for n, item in enumerate(items)
        ]
    if template not in ITEM_TEMPLATES:
        raise DataError(
            f"unknown item template {template!r}; use one of {', '.join(ITEM_TEMPLATES)}"
        )
    pattern = ITEM_TEMPLATES[template]
    return [
        tm.format(None, pattern.format(text=item.text), marks={"item": item.text}) for item in items
    ]


@dataclass
class ItemActivations(
    Artifact,
    stem="item_activations",
    kind_name="item_activations",
    what="item activations file",
    check_kind=True,
):
    """Rows = (item, template). ``pooled["<pooling>"]``: ``[R, L, d_model]`` residual
    stream pooled over the statement tokens; ``rates``: ``[R, L, d_mlp]`` share of
    the statement's tokens with ``mlp_act > 0``; ``a95``: ``[L, d_mlp]``."""

    identity: ModelIdentity
    item_ids: list[str]
    templates: list[str]
    layers: list[int]
    pooled: dict[str, torch.Tensor]
    rates: torch.Tensor
    a95: torch.Tensor
    n_tokens: list[int]
    provenance: dict[str, Any] = field(default_factory=dict)
    # [R, L, d_mlp] mean mlp_act over the statement's tokens (DPN-LE's statistic); None in
    # captures written before it existed
    means: torch.Tensor | None = None

    @property
    def key(self) -> str | None:
        return self.provenance.get("key")

    def rows(self, item_ids: Sequence[str], template: str | None = None) -> list[int]:
        """Row indices of these items (all templates, or one), in the order given."""
        wanted = {i: n for n, i in enumerate(item_ids)}
        found = [
            (wanted[i], r)
            for r, (i, t) in enumerate(zip(self.item_ids, self.templates, strict=True))
            if i in wanted and (template is None or t == template)
        ]
        return [r for _, r in sorted(found)]

    def layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise DataError(
                f"layer {layer} was not captured (have {self.layers[0]}..{self.layers[-1]})"
            )
        return self.layers.index(layer)

    def item_rates(self, item_ids: Sequence[str]) -> torch.Tensor:
        """``[len(item_ids), L, d_mlp]`` firing shares averaged over templates (one value
        per item, so an item shown under three templates still counts once)."""
        return self._per_item(self.rates, item_ids)

    def item_means(self, item_ids: Sequence[str]) -> torch.Tensor:
        """``[len(item_ids), L, d_mlp]`` mean activations averaged over templates."""
        if self.means is None:
            raise DataError(
                "this capture has no per-item mean activations (written by an earlier "
                "traitlens); rerun the capture stage (its key now covers them) to use DPN-LE"
            )
        return self._per_item(self.means, item_ids)

    def _per_item(self, values: torch.Tensor, item_ids: Sequence[str]) -> torch.Tensor:
        order = {i: n for n, i in enumerate(item_ids)}
        sums = torch.zeros((len(item_ids), *values.shape[1:]), dtype=torch.float32)
        counts = torch.zeros(len(item_ids))
        for row, item in enumerate(self.item_ids):
            if item in order:
                sums[order[item]] += values[row].float()
                counts[order[item]] += 1
        return sums / counts.clamp(min=1)[:, None, None]

    def _meta(self) -> dict[str, Any]:
        return {
            **fields_of(self, ("item_ids", "templates", "layers", "n_tokens")),
            "poolings": list(self.pooled),
            "provenance": self.provenance,
        }

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {
            **{f"pooled.{k}": v for k, v in self.pooled.items()},
            "rates": self.rates,
            "a95": self.a95,
            **({} if self.means is None else {"means": self.means}),
        }

    @classmethod
    def _from_saved(cls, saved: Saved) -> ItemActivations:
        meta, tensors = saved.meta, saved.tensors
        return cls(
            saved.identity,
            list(meta["item_ids"]),
            list(meta["templates"]),
            list(meta["layers"]),
            {p: tensors[f"pooled.{p}"] for p in meta["poolings"]},
            tensors["rates"],
            tensors["a95"],
            list(meta["n_tokens"]),
            dict(meta.get("provenance") or {}),
            tensors.get("means"),
        )


def capture_provenance(
    tm: TraitModel,
    items: Sequence[ItemLike],
    *,
    templates: Sequence[str],
    poolings: Sequence[str],
    layers: Sequence[int],
    upstream: Mapping[str, str | None] | None = None,
    label_prompt: LabelPrompt | None = None,
) -> Provenance:
    context = {} if label_prompt is None else {"instructed": label_prompt.describe()}
    return provenance(
        "concepts.capture",
        model=tm.identity,
        config={
            "templates": {t: ITEM_TEMPLATES.get(t, INSTRUCTED) for t in templates},
            **context,
            "poolings": list(poolings),
            "layers": list(layers),
            "chat_format": tm.formatter.mode,
            "a95": "exact",
            "means": "mean mlp_act over the statement's tokens",
        },
        data=[[i.id, i.trait, i.text] for i in items],
        upstream=upstream,
    )


def items_capture_job(
    tm: TraitModel,
    items: Sequence[ItemLike],
    *,
    templates: Sequence[str] = ("bare",),
    poolings: Sequence[str] = ("mean",),
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    upstream: Mapping[str, str | None] | None = None,
    progress: bool = True,
    label_prompt: LabelPrompt | None = None,
) -> Job[ItemActivations]:
    """Pool every item's statement tokens under each template and count neuron firing.

    Template ``instructed`` (with ``label_prompt``) reads each item inside the label
    question, the context the label readout uses.

    This builds the job (``upstream``: the keys the items came from, part of the key);
    :func:`capture_items` computes it.
    """
    if not items:
        raise DataError("capture_items got no items; load an item bank first")
    bad = [t for t in templates if t not in ITEM_TEMPLATES and t != INSTRUCTED]
    if bad or not templates:
        raise DataError(f"unknown item templates {bad}; use some of {', '.join(ITEM_TEMPLATES)}")
    if (INSTRUCTED in templates) != (label_prompt is not None):
        raise DataError(
            "template 'instructed' and label_prompt go together: pass the label prompt the "
            "items are read in, with templates=('instructed',)"
        )
    layer_list = resolve_layers(tm, layers)
    prov = capture_provenance(
        tm,
        items,
        templates=templates,
        poolings=poolings,
        layers=layer_list,
        upstream=upstream,
        label_prompt=label_prompt,
    )

    return Job(
        ItemActivations,
        "concepts.capture",
        prov,
        lambda: _capture(
            tm, items, templates, poolings, layer_list, batch_size, progress, prov, label_prompt
        ),
        tm.identity,
        "item activations",
    )


capture_items = computed(items_capture_job, "capture_items")


def _capture(
    tm: TraitModel,
    items: Sequence[ItemLike],
    templates: Sequence[str],
    poolings: Sequence[str],
    layer_list: list[int],
    batch_size: int,
    progress: bool,
    prov: Provenance,
    label_prompt: LabelPrompt | None = None,
) -> ItemActivations:
    formatted: list[FormattedPrompt] = []
    ids: list[str] = []
    names: list[str] = []
    for template in templates:
        formatted += format_items(tm, items, template, label_prompt)
        ids += [i.id for i in items]
        names += [template] * len(items)
    lengths = span_lengths(formatted, "item")
    firing = ItemFiring(len(formatted), len(layer_list), tm.identity.d_mlp, tm.device, sum(lengths))
    pooled = pool_formatted(
        tm,
        formatted,
        span="item",
        poolings=poolings,
        layers=layer_list,
        batch_size=batch_size,
        progress=progress,
        neurons=firing,
    )
    stats = firing.result()
    return ItemActivations(
        tm.identity,
        ids,
        names,
        layer_list,
        {p: pooled[f"resid.{p}"] for p in poolings},
        stats["rates"],
        stats["a95"],
        lengths,
        prov.to_dict(),
        stats["means"],
    )
