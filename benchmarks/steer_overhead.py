"""Steering overhead on the embedded model: plain vs steered batched generation.

Generates the same left-padded batch (KV cache on, greedy) plainly and under a
multi-layer intervention — ``AddDirection`` on 8 layers plus an NPTI
``NeuronEdit`` on 2 layers (100 boosted + 100 silenced neurons per layer) —
alternating the two (and which goes first) in one process, and prints the
median wall-time ratio. Every run produces exactly ``--max-new-tokens`` tokens
(``min_new_tokens`` is pinned), so steering cannot change the amount of work
by moving the end-of-sequence token.

Wall time on a shared machine is noisy, so it also prints the median of paired
ratios, the ratio of process CPU time, and the time of the hooks alone per
decoding step (timed without the model) as a share of a plain step.

    python benchmarks/steer_overhead.py [--prompts 8] [--max-new-tokens 24] [--repeats 7]
                                        [--threads N] [--compare-inplace]

``--compare-inplace`` also times the same steering with out-of-place ops
(``steering(..., inplace=False)``), the measurement behind the in-place default.

Last line: ``steer_overhead_ratio=<steered/plain median wall time>``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

# the everyday questions both benchmarks send (benchmarks/serve.py imports them)
QUESTIONS = [
    "How would you like to spend your Saturday evening?",
    "A friend invites you to a cooking class. How do you respond?",
    "Describe your ideal vacation.",
    "What do you do when a coworker takes credit for your idea?",
    "How do you prepare for an important exam?",
    "What would you do at a party where you know nobody?",
    "How do you react when plans change at the last minute?",
    "Tell me about a hobby you enjoy.",
]


def _batch(tm, n: int):
    from traitlens.models.batching import left_pad

    texts = (QUESTIONS * (n // len(QUESTIONS) + 1))[:n]
    sequences = [tm.format(None, text).input_ids for text in texts]
    ids, attn, _ = left_pad(sequences, tm.tokenizer.pad_token_id, tm.device)
    return ids, attn


def _interventions(tm, seed: int = 0) -> list:
    from traitlens.neurons.selected import SelectedNeurons
    from traitlens.steer import AddDirection, NeuronEdit, TraitVector

    generator = torch.Generator().manual_seed(seed)
    layers = list(range(8, 16))
    vector = TraitVector.from_directions(
        tm.identity,
        {layer: torch.randn(tm.identity.d_model, generator=generator) for layer in layers},
        spread={layer: 3.0 for layer in layers},
    )

    per_layer = 100
    chosen = torch.randperm(tm.identity.d_mlp, generator=generator)[: 2 * per_layer]

    def neurons(indices: torch.Tensor) -> SelectedNeurons:  # the same neurons in layers 10, 12
        return SelectedNeurons(
            layers=torch.tensor([10] * per_layer + [12] * per_layer),
            indices=torch.cat([indices, indices]),
            delta=torch.full((2 * per_layer,), 0.3),
            a95=torch.full((2 * per_layer,), 0.5),
        )

    target, opposite = neurons(chosen[:per_layer]), neurons(chosen[per_layer:])
    return [AddDirection(vector, 2.0), NeuronEdit(target, opposite, gamma=1.0)]


def _generate(tm, ids, attn, max_new_tokens: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one greedy generation of exactly
    ``max_new_tokens`` tokens."""
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        tm.model.generate(
            input_ids=ids,
            attention_mask=attn,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tm.tokenizer.pad_token_id,
            use_cache=True,
        )
    return time.perf_counter() - wall, time.process_time() - cpu


def _hook_cost(tm, interventions, batch: int, repeats: int = 2000) -> float:
    """Seconds the installed hooks add to one decoding step, timed on their own
    (no model): a noise-free estimate of the overhead that wall times can confirm."""
    from traitlens.steer import compile_interventions

    hooks = compile_interventions(tm, interventions)
    width = {"resid": tm.identity.d_model, "mlp_act": tm.identity.d_mlp}
    inputs = [torch.randn(batch, 1, width[point.kind]) for point, _ in hooks]
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(repeats):
            for (_, fn), hidden in zip(hooks, inputs, strict=True):
                fn(hidden)
        return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--compare-inplace", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from traitlens.models import load_model
    from traitlens.steer import steering

    tm = load_model(device="cpu", dtype="float32")
    ids, attn = _batch(tm, args.prompts)
    interventions = _interventions(tm)
    variants: dict[str, bool | None] = {"plain": None, "steered": True}
    if args.compare_inplace:
        variants["out-of-place"] = False
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}

    def run(name: str) -> tuple[float, float]:
        inplace = variants[name]
        if inplace is None:
            return _generate(tm, ids, attn, args.max_new_tokens)
        with steering(tm, interventions, inplace=inplace):
            return _generate(tm, ids, attn, args.max_new_tokens)

    for name in variants:  # warm-up: allocator, kernels, lazy imports
        run(name)
    names = list(variants)
    for repeat in range(args.repeats):
        # alternate which variant goes first, so a drift in machine load hits both alike
        for name in names if repeat % 2 == 0 else names[::-1]:
            seconds, cpu_seconds = run(name)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
        print(
            f"repeat {repeat + 1}/{args.repeats}: "
            + ", ".join(f"{name} {wall[name][-1]:.2f}s" for name in names),
            flush=True,
        )
    tokens = args.prompts * args.max_new_tokens
    plain, plain_cpu = statistics.median(wall["plain"]), statistics.median(cpu["plain"])
    print(
        f"batch {args.prompts} x {args.max_new_tokens} new tokens, torch threads "
        f"{torch.get_num_threads()}; AddDirection on 8 layers + NeuronEdit on 2 layers "
        "(100 boosted + 100 silenced neurons each)"
    )
    for name in names:
        median = statistics.median(wall[name])
        print(
            f"{name:>12}: median wall {median:.3f}s ({tokens / median:.1f} tok/s), "
            f"median CPU {statistics.median(cpu[name]):.3f}s"
        )
    pairwise = statistics.median(s / p for s, p in zip(wall["steered"], wall["plain"], strict=True))
    step = plain / (args.max_new_tokens + 1)
    hook = _hook_cost(tm, interventions, args.prompts)
    print(f"median of paired wall ratios: {pairwise:.4f}")
    print(f"cpu_time_ratio={statistics.median(cpu['steered']) / plain_cpu:.4f}")
    print(
        f"hooks alone: {hook * 1e6:.0f} µs per decoding step = {100 * hook / step:.2f}% of a "
        f"plain step ({step * 1e3:.1f} ms)"
    )
    if args.compare_inplace:
        print(f"out_of_place_ratio={statistics.median(wall['out-of-place']) / plain:.4f}")
    print(f"steer_overhead_ratio={statistics.median(wall['steered']) / plain:.4f}")


if __name__ == "__main__":
    main()
