"""Run a prompt set through the model and reduce hidden states on the fly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import torch

from traitlens.capture.artifacts import Activations, NeuronStats
from traitlens.capture.reducers import (
    POOLINGS,
    ExactQuantile,
    StreamingQuantile,
    pooling_weights,
)
from traitlens.errors import DataError
from traitlens.models.batching import (
    MIN_SHARED_PREFIX,
    SharedPrefix,
    common_prefix_length,
    last_logits_kwargs,
    left_pad,
    length_sorted_batches,
)
from traitlens.models.chat import SPANS, FormattedPrompt
from traitlens.models.hooks import HookFn, hooks_installed
from traitlens.models.loading import TraitModel
from traitlens.progress import track
from traitlens.provenance import Job, Provenance, computed, provenance


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


def resolve_layers(tm: TraitModel, layers: Sequence[int] | None) -> list[int]:
    """Model layers to capture: all of them, or ``layers`` range-checked (negative ones
    count from the end), as the hook points resolve them."""
    if layers is None:
        return list(range(tm.n_layers))
    return [tm.adapter.resolve(f"resid[{layer}]").layer for layer in layers]


def _prompt_id(prompt: ChatPrompt, index: int) -> str:
    return str(getattr(prompt, "id", "") or index)


def capture_job(
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
    progress: bool = True,
    stage: str = "capture",
    upstream: Mapping[str, str | None] | None = None,
) -> Job[Activations]:
    """Pooled hidden states per prompt and layer, plus per-group neuron statistics (this
    builds the job; :func:`capture_activations` computes it).

    ``span``: the tokens pooled — ``question`` (the user turn, default: the persona's
    words are excluded so probes cannot just read them), ``answer`` (needs
    ``answers``, appended after the generation prompt), ``prompt_end``, ``system`` or
    ``all``; ``neuron_span`` (default ``span``): the tokens whose ``mlp_act`` is
    counted per ``groups[i]`` label (e.g. ``"E|high"``). ``stage`` names the run
    manifest's entry and ``upstream`` the keys the prompts were made from (both are in
    the key); ``batch_size`` is not keyed: results are batch-invariant (tested).
    :func:`~traitlens.provenance.persist` reuses or saves it in a run. Memory is
    O(prompts × layers × d_model + groups × layers × d_mlp).
    """
    neuron_span = _check_capture(prompts, span, neuron_span, answers, groups, poolings, kinds)
    group_labels = list(groups) if groups is not None else ["all"] * len(prompts)
    settings: dict[str, Any] = {
        "span": span,
        "neuron_span": neuron_span,
        "poolings": list(poolings),
        "kinds": list(kinds),
        "layers": resolve_layers(tm, layers),
        "decay_half_life": decay_half_life,
        "neuron_stats": neuron_stats,
        "chat_format": tm.formatter.mode,
        # a95 per neuron over every span token (top 5 % kept), not a shared histogram
        **({"a95": "exact"} if neuron_stats else {}),
    }
    rows, prov = _capture_key(tm, prompts, answers, group_labels, settings, stage, upstream)
    config = {**settings, "cache_key": prov.key, "provenance": prov.to_dict()}

    def compute() -> Activations:
        formatted = [
            tm.format(p.system, p.user, None if answers is None else answers[i])
            for i, p in enumerate(prompts)
        ]
        ids = [str(r["id"]) for r in rows]
        return _capture(tm, formatted, ids, group_labels, config, batch_size, progress)

    return Job(Activations, stage, prov, compute, tm.identity, f"{stage} activations")


capture_activations = computed(capture_job, "capture_activations")


def _capture_key(
    tm: TraitModel,
    prompts: Sequence[ChatPrompt],
    answers: Sequence[str] | None,
    group_labels: list[str],
    settings: dict[str, Any],
    stage: str,
    upstream: Mapping[str, str | None] | None,
) -> tuple[list[dict[str, Any]], Provenance]:
    """Per-prompt rows (what the key covers) and the capture's provenance."""
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
        config={"n_prompts": len(rows), **settings},
        data=rows,
        upstream=upstream,
    )
    return rows, prov


def _check_capture(
    prompts: Sequence[ChatPrompt],
    span: str,
    neuron_span: str | None,
    answers: Sequence[str] | None,
    groups: Sequence[str] | None,
    poolings: Sequence[str],
    kinds: Sequence[str],
) -> str:
    """Refuse bad capture arguments before any work; returns the neuron span."""
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
    for kind in kinds:
        if kind not in ("resid", "attn_out"):
            raise DataError(f"pooled capture supports kinds resid and attn_out, not {kind!r}")
    return neuron_span


def _capture(
    tm: TraitModel,
    formatted: list[FormattedPrompt],
    prompt_ids: list[str],
    group_labels: list[str],
    config: dict[str, Any],
    batch_size: int,
    progress: bool,
) -> Activations:
    layers = list(config["layers"])
    reducer = None
    if config["neuron_stats"]:
        n_tokens = sum(span_lengths(formatted, config["neuron_span"]))
        reducer = GroupFiring(group_labels, len(layers), tm.identity.d_mlp, tm.device, n_tokens)
    pooled = pool_formatted(
        tm,
        formatted,
        span=config["span"],
        poolings=config["poolings"],
        layers=layers,
        kinds=config["kinds"],
        decay_half_life=config["decay_half_life"],
        batch_size=batch_size,
        progress=progress,
        neurons=reducer,
        neuron_span=config["neuron_span"],
    )
    return Activations(
        identity=tm.identity,
        prompt_ids=prompt_ids,
        layers=layers,
        pooled=pooled,
        config=config,
        neuron_stats=None
        if reducer is None
        else NeuronStats(
            identity=tm.identity,
            groups=reducer.names,
            layers=layers,
            config=config,
            **reducer.result(),
        ),
    )


def span_lengths(formatted: Sequence[FormattedPrompt], span: str) -> list[int]:
    """Tokens in ``span`` of each prompt (their sum sizes an exact a95 quantile)."""
    return [stop - start for start, stop in (f.span(span) for f in formatted)]


def _span_free_prefix(formatted: Sequence[FormattedPrompt], spans: Sequence[str]) -> int:
    """Leading tokens all prompts share before any of ``spans`` starts (0 when too few to
    be worth a cache; ≥ 2 tokens stay per prompt, so each pass still reads as a prompt)."""
    shared = common_prefix_length([f.input_ids for f in formatted])
    starts = [f.span(name)[0] for f in formatted for name in spans]
    shared = min(shared, *starts, min(len(f.input_ids) for f in formatted) - 2)
    return shared if shared >= MIN_SHARED_PREFIX else 0


def _through_spans(prompt: FormattedPrompt, spans: Sequence[str]) -> FormattedPrompt:
    """``prompt`` cut after the last token of ``spans`` (≥ 2 tokens kept, so a pass over
    it still reads as a prompt pass to position-aware interventions)."""
    cut = max(2, *(prompt.span(name)[1] for name in spans))
    if cut >= len(prompt.input_ids):
        return prompt
    kept = {k: (a, min(b, cut)) for k, (a, b) in prompt.spans.items() if a < cut}
    return FormattedPrompt(prompt.text, prompt.input_ids[:cut], kept)


def _without_prefix(prompt: FormattedPrompt, shared: int) -> FormattedPrompt:
    spans = {k: (a - shared, b - shared) for k, (a, b) in prompt.spans.items() if a >= shared}
    return FormattedPrompt(prompt.text, prompt.input_ids[shared:], spans)


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


class GroupFiring:
    """Per-group firing counts, activation sums and a streaming a95 over span tokens.

    The persona design's statistics: tokens are pooled per group label (e.g.
    ``"E|high"``), so memory is groups × layers × d_mlp whatever the token count.
    """

    def __init__(
        self,
        group_labels: Sequence[str],
        n_layers: int,
        d_mlp: int,
        device: Any,
        n_span_tokens: int | None = None,
    ):
        self.names = sorted(set(group_labels))
        self.group_of = torch.tensor([self.names.index(g) for g in group_labels])
        shape = (len(self.names), n_layers, d_mlp)
        self.positive = torch.zeros(shape, dtype=torch.float64, device=device)
        self.total = torch.zeros_like(self.positive)
        self.tokens = torch.zeros(len(self.names), dtype=torch.float64, device=device)
        # with the span's token count known (and ≥ 1), a95 is exact per neuron, as in
        # ItemFiring; otherwise a histogram over sampled tokens
        self.exact = bool(n_span_tokens)
        self.quantiles: list[ExactQuantile] | list[StreamingQuantile] = (
            [ExactQuantile(d_mlp, int(n_span_tokens or 0), 0.95, device) for _ in range(n_layers)]
            if self.exact
            else [StreamingQuantile(d_mlp, device=device) for _ in range(n_layers)]
        )
        self._mask = torch.zeros(0)
        self._sample = torch.zeros(0, dtype=torch.long)

    def begin(self, rows: torch.Tensor, span_mask: torch.Tensor) -> None:
        """Set the batch's group × token mask (once per batch, already on the device)."""
        device = self.positive.device
        onehot = torch.nn.functional.one_hot(self.group_of[rows], len(self.names)).T.bool()
        group_mask = (onehot[:, :, None] & span_mask[None]).reshape(len(self.names), -1)
        # counts and sums in float32 whatever the model's dtype: a bfloat16 product rounds
        # a count of 300 tokens to a multiple of 2 (8 bits of mantissa)
        self._mask = group_mask.to(device=device, dtype=torch.float32)
        span_rows = span_mask.reshape(-1).nonzero().squeeze(-1)
        self._sample = (span_rows if self.exact else _quantile_rows(span_mask)).to(device)
        self.tokens += group_mask.sum(1).double().to(device)

    def __call__(self, acts: torch.Tensor, *, column: int) -> None:
        flat = acts.reshape(-1, acts.shape[-1])  # [batch*seq, d_mlp]
        self.positive[:, column] += (self._mask @ (flat > 0).float()).double()
        self.total[:, column] += (self._mask @ flat.float()).double()
        self.quantiles[column].update(flat.index_select(0, self._sample).float())

    def result(self) -> dict[str, torch.Tensor]:
        a95 = torch.stack([q.quantile(0.95) for q in self.quantiles])
        return {
            "positive": self.positive.cpu(),
            "tokens": self.tokens.cpu(),
            "total": self.total.cpu(),
            "a95": a95,
        }


class ItemFiring:
    """Per-prompt share of span tokens on which each neuron fires, plus a streaming a95.

    The concept design's statistics: the *item* is the statistical unit (a
    neuron's δ and its test are computed over items, not over tokens, so a long
    item does not count more than a short one). ``rates[n, L, d_mlp]`` is kept
    in float16 (a share in [0, 1] needs no more): 900 items × 30 layers × 1536
    neurons is 83 MB. ``means[n, L, d_mlp]`` is each neuron's mean activation over the
    prompt's span tokens (what DPN-LE's mean differences and Cohen's d use), float16 too:
    three significant digits are far finer than the differences it selects on.
    """

    def __init__(
        self, n: int, n_layers: int, d_mlp: int, device: Any, n_span_tokens: int | None = None
    ):
        self.rates = torch.zeros((n, n_layers, d_mlp), dtype=torch.float16)
        self.means = torch.zeros((n, n_layers, d_mlp), dtype=torch.float16)
        self.device = device
        # with the span's token count known, a95 is exact over every span token (NPTI's
        # 95th percentile per neuron); without it, a histogram over sampled tokens
        self.exact = n_span_tokens is not None
        self.quantiles: list[ExactQuantile] | list[StreamingQuantile] = (
            [ExactQuantile(d_mlp, n_span_tokens, 0.95, device) for _ in range(n_layers)]
            if n_span_tokens is not None
            else [StreamingQuantile(d_mlp, device=device) for _ in range(n_layers)]
        )
        self._rows = torch.zeros(0, dtype=torch.long)
        self._weights = torch.zeros(0)
        self._sample = torch.zeros(0, dtype=torch.long)

    def begin(self, rows: torch.Tensor, span_mask: torch.Tensor) -> None:
        device = self.device
        weights = span_mask.float() / span_mask.sum(1, keepdim=True).clamp(min=1)
        # float32 whatever the model's dtype (a bfloat16 share has 8 bits of mantissa)
        self._rows, self._weights = rows, weights.to(device=device, dtype=torch.float32)
        span_rows = span_mask.reshape(-1).nonzero().squeeze(-1)
        self._sample = (span_rows if self.exact else _quantile_rows(span_mask)).to(device)

    def __call__(self, acts: torch.Tensor, *, column: int) -> None:
        fired = (acts > 0).float()
        share = torch.einsum("bs,bsd->bd", self._weights, fired)
        self.rates[:, column].index_copy_(0, self._rows, share.half().cpu())
        mean = torch.einsum("bs,bsd->bd", self._weights, acts.float())
        self.means[:, column].index_copy_(0, self._rows, mean.half().cpu())
        flat = acts.reshape(-1, acts.shape[-1])
        self.quantiles[column].update(flat.index_select(0, self._sample).float())

    def result(self) -> dict[str, torch.Tensor]:
        a95 = torch.stack([q.quantile(0.95) for q in self.quantiles])
        return {"rates": self.rates, "a95": a95, "means": self.means}


NeuronReducer = GroupFiring | ItemFiring


def pool_formatted(
    tm: TraitModel,
    formatted: Sequence[FormattedPrompt],
    *,
    span: str,
    poolings: Sequence[str] = ("mean",),
    layers: Sequence[int] | None = None,
    kinds: Sequence[str] = ("resid",),
    decay_half_life: float = 4.0,
    batch_size: int = 16,
    progress: bool = False,
    neurons: NeuronReducer | None = None,
    neuron_span: str | None = None,
    share_prefix: bool = False,
    next_token_ids: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """The shared capture engine: pooled hidden states over one named span per prompt.

    Returns ``{"<kind>.<pooling>": [n, len(layers), d_model] float32}``; rows whose
    span is empty are zeros. Every design (persona prompts, concept items,
    fingerprint conversations) pools through here, so batching (length-sorted,
    left-padded, LM head skipped) and hook cost are the same everywhere. With
    ``neurons`` (a :class:`GroupFiring` or :class:`ItemFiring`), ``mlp_act`` over
    ``neuron_span`` (default ``span``) is reduced into it as batches stream by.

    ``share_prefix`` runs the tokens every prompt shares before its span (e.g. a chat
    template's default system prompt) once and reuses their KV cache: the same states
    up to float rounding, for a pass that is read many times (evaluation conditions).

    ``next_token_ids``: also return ``"next.logprobs"`` ``[n, len(ids)]``, the log-probs
    of those tokens after each prompt's last token, from the same forward pass (a label
    read in the context the states were pooled in, at no extra pass).
    """
    layer_list = resolve_layers(tm, layers)
    if next_token_ids is None:
        # a causal model's states over a span never depend on the tokens after it: those
        # (end of turn, assistant header, ...) are dropped instead of computed and ignored
        formatted = [_through_spans(f, (span, neuron_span or span)) for f in formatted]
    shared = _span_free_prefix(formatted, (span, neuron_span or span)) if share_prefix else 0
    prefix_ids = formatted[0].input_ids[:shared] if shared else []
    if shared:
        formatted = [_without_prefix(f, shared) for f in formatted]
    n, d_model = len(formatted), tm.identity.d_model
    # layer-major buffers: each hook writes one contiguous [P, batch, d] block with a
    # single index_copy_ (advanced-index assignment into [n, L, d] cost ~3 ms a call)
    buffers = {kind: torch.zeros((len(poolings), len(layer_list), n, d_model)) for kind in kinds}
    state: dict[str, torch.Tensor] = {}

    def pool(hidden: torch.Tensor, *, kind: str, column: int) -> None:
        if "prefix" in state:  # the shared prefix holds no span token
            return
        vectors = torch.einsum("pbs,bsd->pbd", state["weights"], hidden)
        buffers[kind][:, column].index_copy_(1, state["rows"], vectors.float().cpu())

    def count(acts: torch.Tensor, *, column: int) -> None:
        assert neurons is not None
        if "prefix" in state:
            return
        neurons(acts, column=column)

    # one function per hook kind, told which point it is called at (as TransformerLens
    # passes ``hook=``), instead of a closure factory per layer
    hooks: list[tuple[str, HookFn]] = []
    for column, layer in enumerate(layer_list):
        for kind in kinds:
            hooks.append((f"{kind}[{layer}]", partial(pool, kind=kind, column=column)))
        if neurons is not None:
            hooks.append((f"mlp_act[{layer}]", partial(count, column=column)))

    batches = length_sorted_batches([len(f.input_ids) for f in formatted], batch_size)
    skip_logits = last_logits_kwargs(tm.model)
    read = None if next_token_ids is None else torch.tensor(list(next_token_ids))
    next_logprobs = torch.zeros((n, 0 if read is None else len(read)))
    with torch.inference_mode(), hooks_installed(tm.adapter, hooks):
        state["prefix"] = torch.ones(())
        prefix = SharedPrefix(tm, prefix_ids, skip_logits)
        del state["prefix"]
        for batch in track(batches, len(batches), "capturing", progress):
            items = [formatted[i] for i in batch]
            ids, attn, pos = left_pad(
                [f.input_ids for f in items], tm.tokenizer.pad_token_id, tm.device
            )
            width = ids.shape[1]
            state["rows"] = torch.tensor(batch)
            weights = pooling_weights(
                _span_mask(items, span, width), tuple(poolings), decay_half_life
            )
            state["weights"] = weights.to(device=tm.device, dtype=tm.dtype)
            if neurons is not None:
                nmask = _span_mask(items, neuron_span or span, width)
                neurons.begin(state["rows"], nmask)
            out = prefix.run(ids, attn, pos)
            if read is not None:
                logits = out.logits[:, -1].float().cpu()
                next_logprobs[batch] = torch.log_softmax(logits, dim=-1)[:, read]
    pooled = {
        f"{kind}.{pooling}": buffers[kind][index].permute(1, 0, 2).contiguous()
        for kind in kinds
        for index, pooling in enumerate(poolings)
    }
    if read is not None:
        pooled["next.logprobs"] = next_logprobs
    return pooled
