"""Run a prompt set through the model and reduce hidden states on the fly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from traitlens.artifact_io import check_writable
from traitlens.capture.artifacts import Activations, NeuronStats
from traitlens.capture.reducers import POOLINGS, StreamingQuantile, pooling_weights
from traitlens.errors import DataError
from traitlens.models.batching import last_logits_kwargs, left_pad, length_sorted_batches
from traitlens.models.chat import SPANS, FormattedPrompt
from traitlens.models.hooks import HookFn, hooks_installed
from traitlens.models.loading import TraitModel
from traitlens.progress import track
from traitlens.provenance import claim, provenance, record, saved_key


class ChatPrompt(Protocol):
    """Anything with a system (persona/instruction) text and a user question."""

    @property
    def system(self) -> str | None: ...

    @property
    def user(self) -> str: ...


@dataclass(frozen=True)
class Prompt:
    """A minimal ChatPrompt for ad-hoc use."""

    user: str
    system: str | None = None
    id: str = ""


def _prompt_id(prompt: ChatPrompt, index: int) -> str:
    return str(getattr(prompt, "id", "") or index)


def capture(
    tm: TraitModel,
    prompts: Sequence[ChatPrompt],
    *,
    answers: Sequence[str] | None = None,
    span: str = "question",
    poolings: Sequence[str] = POOLINGS,
    kinds: Sequence[str] = ("resid",),
    layers: Sequence[int] | None = None,
    groups: Sequence[str] | None = None,
    neuron_stats: bool = True,
    neuron_span: str | None = None,
    decay_half_life: float = 4.0,
    batch_size: int = 16,
    out_dir: str | Path | None = None,
    progress: bool = True,
    run_dir: str | Path | None = None,
    stage: str = "capture",
    upstream: Mapping[str, str | None] | None = None,
    force: bool = False,
) -> Activations:
    """Pooled hidden states per prompt and layer, plus per-group neuron statistics.

    ``span`` picks the tokens pooled: ``question`` (the user turn, default — the
    persona's own words are excluded so probes cannot just read them),
    ``answer`` (needs ``answers``: the assistant text appended after the
    generation prompt), ``prompt_end`` (template tokens after the question),
    ``system`` or ``all``. ``neuron_span`` (default: same as ``span``) picks
    the tokens counted for ``mlp_act`` statistics, accumulated separately per
    ``groups[i]`` label (e.g. ``"E|high"``). With ``out_dir``, a finished
    capture of the same inputs is loaded instead of recomputed; one made from
    other inputs is never overwritten unless ``force`` (see
    :func:`traitlens.provenance.claim`; ``run_dir``/``stage`` name the run manifest
    entry, default ``out_dir``/"capture"; ``upstream`` the keys it was made from).
    ``batch_size`` is not part of the key: results are batch-invariant (tested).
    Memory is O(prompts × layers × d_model + groups × layers × d_mlp).
    """
    if not prompts:
        raise DataError("capture got an empty prompt set; pass at least one prompt")
    if span not in SPANS:
        raise DataError(f"unknown span {span!r}; use one of {', '.join(SPANS)}")
    neuron_span = neuron_span or span
    if neuron_span not in SPANS:
        raise DataError(f"unknown neuron_span {neuron_span!r}; use one of {', '.join(SPANS)}")
    if "answer" in (span, neuron_span) and answers is None:
        raise DataError("span 'answer' needs answers: generate them first (generate_answers)")
    if answers is not None and len(answers) != len(prompts):
        raise DataError(f"got {len(answers)} answers for {len(prompts)} prompts; pass one each")
    if groups is not None and len(groups) != len(prompts):
        raise DataError(f"got {len(groups)} group labels for {len(prompts)} prompts")
    for name in poolings:
        if name not in POOLINGS:
            raise DataError(f"unknown pooling {name!r}; use one of {', '.join(POOLINGS)}")
    layer_list = (
        list(range(tm.n_layers))
        if layers is None
        else [tm.adapter.resolve(f"resid[{layer}]").layer for layer in layers]
    )
    for kind in kinds:
        if kind not in ("resid", "attn_out"):
            raise DataError(f"pooled capture supports kinds resid and attn_out, not {kind!r}")
    group_labels = list(groups) if groups is not None else ["all"] * len(prompts)
    group_names = sorted(set(group_labels))
    config: dict[str, Any] = {
        "span": span,
        "neuron_span": neuron_span,
        "poolings": list(poolings),
        "kinds": list(kinds),
        "layers": layer_list,
        "decay_half_life": decay_half_life,
        "neuron_stats": neuron_stats,
        "chat_format": tm.formatter.mode,
    }
    rows = [
        {
            "id": _prompt_id(p, i),
            "system": p.system,
            "user": p.user,
            "answer": None if answers is None else answers[i],
            "group": group_labels[i],
        }
        for i, p in enumerate(prompts)
    ]
    prov = provenance(
        stage,
        model=tm.identity,
        config={"n_prompts": len(rows), **config},
        data=rows,
        upstream=upstream,
    )
    manifest_dir = Path(run_dir) if run_dir is not None else out_dir
    if out_dir is not None:
        exists, saved = saved_key(Path(out_dir) / "activations.json")
        assert manifest_dir is not None
        if claim(
            manifest_dir,
            stage,
            prov,
            saved,
            exists=exists,
            force=force,
            what=f"{stage} activations",
        ):
            return Activations.load(out_dir, expect=tm.identity)
        check_writable(Path(out_dir))
    config["cache_key"] = prov.key
    config["provenance"] = prov.to_dict()

    formatted = [
        tm.format(p.system, p.user, None if answers is None else answers[i])
        for i, p in enumerate(prompts)
    ]
    result = _run_capture(
        tm,
        formatted,
        group_labels,
        group_names,
        span,
        neuron_span,
        tuple(poolings),
        tuple(kinds),
        layer_list,
        neuron_stats,
        decay_half_life,
        batch_size,
        progress,
    )
    pooled, stats = result
    activations = Activations(
        identity=tm.identity,
        prompt_ids=[str(r["id"]) for r in rows],
        layers=layer_list,
        pooled=pooled,
        config=config,
        neuron_stats=None
        if stats is None
        else NeuronStats(
            identity=tm.identity, groups=group_names, layers=layer_list, config=config, **stats
        ),
    )
    if out_dir is not None:
        assert manifest_dir is not None
        activations.save(out_dir)
        record(manifest_dir, stage, prov)
    return activations


def _span_mask(items: list[FormattedPrompt], name: str, width: int) -> torch.Tensor:
    """[batch, seq] bool mask of each prompt's span, in left-padded coordinates."""
    mask = torch.zeros((len(items), width), dtype=torch.bool)
    for row, item in enumerate(items):
        start, end = item.span(name)
        offset = width - len(item.input_ids)
        mask[row, offset + start : offset + end] = True
    return mask


QUANTILE_SAMPLE = 128


def _quantile_rows(mask: torch.Tensor) -> torch.Tensor:
    """Flat indices of (at most QUANTILE_SAMPLE) span tokens used for the a95 histogram.

    A systematic sample (every k-th span token) keeps the histogram's cost
    bounded per batch; firing counts and sums still use every token.
    """
    rows = mask.reshape(-1).nonzero().squeeze(-1)
    step = max(1, -(-rows.numel() // QUANTILE_SAMPLE))
    return rows[::step]


def _run_capture(
    tm: TraitModel,
    formatted: list[FormattedPrompt],
    group_labels: list[str],
    group_names: list[str],
    span: str,
    neuron_span: str,
    poolings: tuple[str, ...],
    kinds: tuple[str, ...],
    layers: list[int],
    with_neurons: bool,
    decay_half_life: float,
    batch_size: int,
    progress: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    device, n = tm.device, len(formatted)
    d_model, d_mlp = tm.identity.d_model, tm.identity.d_mlp
    n_groups, n_layers = len(group_names), len(layers)
    # layer-major buffers: each hook writes one contiguous [P, batch, d] block with a
    # single index_copy_ (advanced-index assignment into [n, L, d] cost ~3 ms a call)
    buffers = {kind: torch.zeros((len(poolings), n_layers, n, d_model)) for kind in kinds}
    positive = torch.zeros((n_groups, n_layers, d_mlp), dtype=torch.float64, device=device)
    total = torch.zeros_like(positive)
    tokens = torch.zeros(n_groups, dtype=torch.float64, device=device)
    quantiles = [StreamingQuantile(d_mlp, device=device) for _ in layers] if with_neurons else []
    group_of = torch.tensor([group_names.index(g) for g in group_labels])

    # per-batch state the hooks read: set once per batch, already on the device and
    # in the model dtype, so no hook converts anything
    state: dict[str, Any] = {}

    def pool_hook(kind: str, column: int) -> HookFn:
        def hook(hidden: torch.Tensor) -> None:
            vectors = torch.einsum("pbs,bsd->pbd", state["weights"], hidden)
            buffers[kind][:, column].index_copy_(1, state["rows"], vectors.float().cpu())

        return hook

    def neuron_hook(column: int) -> HookFn:
        def hook(acts: torch.Tensor) -> None:
            flat = acts.reshape(-1, acts.shape[-1])  # [batch*seq, d_mlp]
            gmask = state["group_mask"]  # [G, batch*seq]
            positive[:, column] += (gmask @ (flat > 0).to(flat.dtype)).double()
            total[:, column] += (gmask @ flat).double()
            quantiles[column].update(flat.index_select(0, state["quantile_rows"]).float())

        return hook

    hooks: list[tuple[str, HookFn]] = []
    for column, layer in enumerate(layers):
        for kind in kinds:
            hooks.append((f"{kind}[{layer}]", pool_hook(kind, column)))
        if with_neurons:
            hooks.append((f"mlp_act[{layer}]", neuron_hook(column)))

    batches = length_sorted_batches([len(f.input_ids) for f in formatted], batch_size)
    skip_logits = last_logits_kwargs(tm.model)
    with torch.inference_mode(), hooks_installed(tm.adapter, hooks):
        for batch in track(batches, len(batches), "capturing", progress):
            items = [formatted[i] for i in batch]
            ids, attn, pos = left_pad(
                [f.input_ids for f in items], tm.tokenizer.pad_token_id, device
            )
            width = ids.shape[1]
            span_mask = _span_mask(items, span, width)
            state["rows"] = torch.tensor(batch)
            weights = pooling_weights(span_mask, poolings, decay_half_life)
            state["weights"] = weights.to(device=device, dtype=tm.dtype)
            if with_neurons:
                nmask = _span_mask(items, neuron_span, width)
                onehot = torch.nn.functional.one_hot(group_of[batch], n_groups).T.bool()
                group_mask = (onehot[:, :, None] & nmask[None]).reshape(n_groups, -1)
                state["group_mask"] = group_mask.to(device=device, dtype=tm.dtype)
                state["quantile_rows"] = _quantile_rows(nmask).to(device)
                tokens += group_mask.sum(1).double().to(device)
            tm.model(
                input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False, **skip_logits
            )
    pooled = {
        f"{kind}.{pooling}": buffers[kind][index].permute(1, 0, 2).contiguous()
        for kind in kinds
        for index, pooling in enumerate(poolings)
    }
    if not with_neurons:
        return pooled, None
    a95 = torch.stack([q.quantile(0.95) for q in quantiles])
    stats = {"positive": positive.cpu(), "tokens": tokens.cpu(), "total": total.cpu(), "a95": a95}
    return pooled, stats
