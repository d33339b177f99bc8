"""Benchmark the neuron stage on the embedded model: streaming statistics vs storing tokens.

The neuron stage = generate short answers under each persona, capture the
``mlp_act`` firing statistics over the answer tokens with the streaming
capture (memory independent of the number of tokens), then select neurons
(NPTI δ rule + z-test + Benjamini–Hochberg). For comparison, a naive
implementation — inside this script only — stores every answer token's MLP
activations with hooks that append to lists, concatenates them and computes
δ (and a95) from the stored tensors, on the same prompts and answers.

Usage::

    python benchmarks/neurons.py               # 5 traits × 2 poles × 2 personas × 4 questions
    python benchmarks/neurons.py --large       # 5 × 2 × 6 × 24 = 1440 prompts, 48-token answers

The last line printed is ``neurons_seconds=<s> tokens=<n>`` (generation +
streaming capture + selection; model loading excluded). Each implementation
runs in its own child process so peak-memory figures do not contaminate each
other; peak memory is the growth of the process's peak RSS (VmHWM) over its
RSS after the model was loaded and run once (so the weights are paged in).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def read_peak_rss_mb() -> float:
    """Peak resident memory of this process since the last reset (Linux VmHWM), in MiB."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource  # not Linux: lifetime peak only

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run ``fn``; return its result, wall seconds and peak RSS growth (MiB) during it."""
    gc.collect()
    reset_peak_rss()
    before = current_rss_mb()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return result, seconds, read_peak_rss_mb() - before


def naive_neuron_stats(
    tm: Any, prompts: list[Any], answers: list[str], groups: list[str], batch_size: int
) -> tuple[Any, int]:
    """Store every answer token's mlp_act (hooks append to lists), then count.

    Returns NeuronStats built from the stored tensors and the bytes stored.
    """
    from traitlens.capture.artifacts import NeuronStats
    from traitlens.models.batching import left_pad, length_sorted_batches
    from traitlens.models.hooks import hooks_installed

    formatted = [tm.format(p.system, p.user, a) for p, a in zip(prompts, answers, strict=True)]
    names = sorted(set(groups))
    n_layers = tm.n_layers
    stored: dict[tuple[str, int], list[torch.Tensor]] = {
        (g, layer): [] for g in names for layer in range(n_layers)
    }
    state: dict[str, Any] = {}

    def hook(layer: int) -> Callable[[torch.Tensor], None]:
        def append(acts: torch.Tensor) -> None:
            for row, group in enumerate(state["groups"]):
                keep = state["mask"][row]
                stored[(group, layer)].append(acts[row, keep].float().cpu())

        return append

    batches = length_sorted_batches([len(f.input_ids) for f in formatted], batch_size)
    hooks = [(f"mlp_act[{layer}]", hook(layer)) for layer in range(n_layers)]
    with torch.inference_mode(), hooks_installed(tm.adapter, hooks):
        for batch in batches:
            items = [formatted[i] for i in batch]
            ids, attn, pos = left_pad(
                [f.input_ids for f in items], tm.tokenizer.pad_token_id, tm.device
            )
            width = ids.shape[1]
            mask = torch.zeros((len(items), width), dtype=torch.bool)
            for row, item in enumerate(items):
                start, end = item.span("answer")
                offset = width - len(item.input_ids)
                mask[row, offset + start : offset + end] = True
            state["mask"] = mask.to(tm.device)
            state["groups"] = [groups[i] for i in batch]
            tm.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False)

    stored_bytes = sum(t.numel() * t.element_size() for ts in stored.values() for t in ts)
    d_mlp = tm.identity.d_mlp
    positive = torch.zeros((len(names), n_layers, d_mlp), dtype=torch.float64)
    total = torch.zeros_like(positive)
    tokens = torch.zeros(len(names), dtype=torch.float64)
    a95 = torch.zeros((n_layers, d_mlp), dtype=torch.float64)
    for layer in range(n_layers):
        per_group = [torch.cat(stored[(g, layer)]) for g in names]
        for g, acts in enumerate(per_group):
            positive[g, layer] = (acts > 0).double().sum(0)
            total[g, layer] = acts.double().sum(0)
            tokens[g] = acts.shape[0]
        everything = torch.cat(per_group)
        k = max(1, int(round(0.95 * everything.shape[0])))
        a95[layer] = everything.kthvalue(k, dim=0).values.double()
    stats = NeuronStats(
        tm.identity,
        names,
        list(range(n_layers)),
        positive,
        tokens,
        total,
        a95,
        {"span": "answer", "neuron_span": "answer"},
    )
    return stats, stored_bytes


def run_phase(args: argparse.Namespace) -> None:
    """Child process: one implementation on the saved answers; prints a JSON result line.

    Each implementation runs in a fresh process so that its peak memory is not
    hidden by memory the other one already made the allocator keep.
    """
    from traitlens.capture import capture_activations
    from traitlens.models.loading import load_model
    from traitlens.neurons import prompts_per_group, select_neurons

    tm = load_model(device=args.device, dtype="float32")
    prompts = build_prompts(args)
    answers = json.loads(Path(args.answers).read_text())
    groups = [f"{p.trait}|{p.pole}" for p in prompts]
    counts = prompts_per_group(prompts)
    with torch.inference_mode():  # page in the (memory-mapped) weights before measuring
        tm.model(input_ids=torch.tensor([tm.format(prompts[0].system, prompts[0].user).input_ids]))

    def streaming() -> Any:
        activations = capture_activations(
            tm,
            prompts,
            answers=answers,
            span="answer",
            groups=groups,
            kinds=(),
            poolings=("mean",),
            batch_size=args.batch_size,
            progress=False,
        )
        select_neurons(activations.neuron_stats, prompt_counts=counts)
        return activations.neuron_stats, 0

    def naive() -> Any:
        stats, stored = naive_neuron_stats(tm, prompts, answers, groups, args.batch_size)
        select_neurons(stats, prompt_counts=counts)
        return stats, stored

    (stats, stored), seconds, peak = measured(streaming if args.phase == "streaming" else naive)
    stats.save(Path(args.out) / args.phase)
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "stored_bytes": stored}))


def build_prompts(args: argparse.Namespace) -> list[Any]:
    from traitlens.data import build_contrastive_set

    return build_contrastive_set(
        args.traits, n_personas_per_pole=args.personas, n_questions=args.questions, seed=0
    )


def child(args: argparse.Namespace, phase: str, answers: Path, out: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--answers",
        str(answers),
        "--out",
        str(out),
        "--personas",
        str(args.personas),
        "--questions",
        str(args.questions),
        "--traits",
        args.traits,
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
    ]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--personas", type=int, default=2, help="personas per trait pole")
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--traits", default="O,C,E,A,N")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--large", action="store_true", help="6 personas, 24 questions, 48 tokens")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--phase", choices=("streaming", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--answers", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.large:
        args.personas, args.questions, args.max_new_tokens = 6, 24, 48
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.phase:
        run_phase(args)
        return

    from traitlens.capture.artifacts import NeuronStats
    from traitlens.models.generation import generate_answers
    from traitlens.models.loading import load_model
    from traitlens.neurons import prompts_per_group, select_neurons

    tm = load_model(device=args.device, dtype="float32")
    prompts = build_prompts(args)
    print(
        f"model={tm.identity.name} prompts={len(prompts)} layers={tm.n_layers} "
        f"d_mlp={tm.identity.d_mlp} max_new_tokens={args.max_new_tokens} threads={args.threads}"
    )
    start = time.perf_counter()
    answers = generate_answers(
        tm,
        prompts,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        progress=False,
    )
    generate_seconds = time.perf_counter() - start
    del tm
    gc.collect()

    with tempfile.TemporaryDirectory(prefix="traitlens-bench-") as tmp:
        answers_path = Path(tmp) / "answers.json"
        answers_path.write_text(json.dumps(answers))
        stream = child(args, "streaming", answers_path, Path(tmp))
        stats = NeuronStats.load(Path(tmp) / "streaming")
        counts = prompts_per_group(prompts)
        neurons = select_neurons(stats, prompt_counts=counts)
        by_tokens = select_neurons(stats)
        n_groups, n_layers, d_mlp = stats.positive.shape
        state_mb = (2 * n_groups * n_layers * d_mlp * 8 + n_layers * d_mlp * 256 * 8) / 2**20
        tokens = int(stats.tokens.sum())
        print(f"generate_seconds={generate_seconds:.2f} answer_tokens={tokens}")
        print(
            f"streaming: seconds={stream['seconds']:.2f} "
            f"peak_rss_growth_mb={stream['peak_mb']:.1f} reducer_state_mb={state_mb:.1f}"
        )
        if not args.skip_naive:
            naive = child(args, "naive", answers_path, Path(tmp))
            naive_set = select_neurons(NeuronStats.load(Path(tmp) / "naive"), prompt_counts=counts)
            max_diff = float((naive_set.delta - neurons.delta).abs().max())
            mismatches = sum(
                int((naive_set.mask(t, p) != neurons.mask(t, p)).sum())
                for t in neurons.traits
                for p in ("high", "low")
            )
            print(
                f"naive: seconds={naive['seconds']:.2f} peak_rss_growth_mb={naive['peak_mb']:.1f} "
                f"stored_activations_mb={naive['stored_bytes'] / 2**20:.1f} "
                f"max_abs_delta_diff={max_diff:.2e} selection_mismatches={mismatches}"
            )
            print(
                f"ratio naive/streaming: time={naive['seconds'] / stream['seconds']:.2f}x "
                f"peak_memory={naive['peak_mb'] / max(stream['peak_mb'], 1e-9):.2f}x "
                "(stored tokens grow with the answers; the reducer state does not)"
            )

    for label, result in (("n=prompts", neurons), ("n=tokens", by_tokens)):
        summary = result.summary()["per_trait"]
        counts_text = " ".join(
            f"{t}+{row['high']['selected']}/{row['high']['npti']} "
            f"{t}-{row['low']['selected']}/{row['low']['npti']}"
            for t, row in summary.items()
        )
        print(f"selected/NPTI (|δ|≥{result.threshold}, BH {result.fdr}, {label}): {counts_text}")
    neurons_seconds = generate_seconds + stream["seconds"]
    print(f"neurons_seconds={neurons_seconds:.2f} tokens={tokens}")


if __name__ == "__main__":
    main()
