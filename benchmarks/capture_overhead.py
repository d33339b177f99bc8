"""Capture overhead on the embedded model: plain forward vs full capture.

Runs the same batches (same formatting, tokenization, left padding and length
bucketing) plainly and with full capture — pooled ``resid`` on every layer
(mean, last, decay) plus ``mlp_act`` firing counts, sums and the streaming a95
on every layer — alternating the two in one process, and prints the median
wall-time ratio. Then measures peak RSS in fresh subprocesses at 1× and 4× the
number of tokens, to show the reducers' memory does not grow with tokens.

    python benchmarks/capture_overhead.py [--prompts 64] [--repeats 5]

Last line: ``overhead_ratio=<captured/plain median wall time>``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def _prompts(n: int) -> list:
    from traitlens.data import build_contrastive_set

    prompts = build_contrastive_set(n_personas_per_pole=4, n_questions=8, seed=0)
    # round-robin over trait|pole groups, so 1x and 4x the prompts hold the same groups
    # (the reducers' size depends on the number of groups, not on tokens)
    groups: dict[str, list] = {}
    for p in prompts:
        groups.setdefault(f"{p.trait}|{p.pole}", []).append(p)
    order = [
        g[i] for i in range(max(map(len, groups.values()))) for g in groups.values() if i < len(g)
    ]
    return (order * (n // len(order) + 1))[:n]


def _plain(tm, prompts, batch_size: int) -> None:
    plain_forward(tm, [tm.format(p.system, p.user) for p in prompts], batch_size)


def plain_forward(tm, formatted, batch_size: int) -> None:
    """The reference: the same formatted prompts, batching, padding and skipped LM head as
    capture, with no hooks (the concept benchmark compares against it too)."""
    from traitlens.models.batching import last_logits_kwargs, left_pad, length_sorted_batches

    batches = length_sorted_batches([len(f.input_ids) for f in formatted], batch_size)
    with torch.inference_mode():
        for batch in batches:
            ids, attn, pos = left_pad(
                [formatted[i].input_ids for i in batch], tm.tokenizer.pad_token_id, tm.device
            )
            tm.model(
                input_ids=ids,
                attention_mask=attn,
                position_ids=pos,
                use_cache=False,
                **last_logits_kwargs(tm.model),
            )


def _captured(tm, prompts, batch_size: int):
    from traitlens.capture import capture_activations

    groups = [f"{p.trait}|{p.pole}" for p in prompts]
    return capture_activations(
        tm, prompts, span="all", groups=groups, batch_size=batch_size, progress=False
    )


def memory_child(n_prompts: int, batch_size: int) -> None:
    """Run one capture in this fresh process and print its peak RSS."""
    from traitlens.models import load_model

    tm = load_model(device="cpu", dtype="float32")
    prompts = _prompts(n_prompts)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    act = _captured(tm, prompts, batch_size)
    stats = act.neuron_stats
    state = sum(t.numel() * t.element_size() for t in act.pooled.values())
    assert stats is not None
    reducer = sum(t.numel() * t.element_size() for t in (stats.positive, stats.total))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tokens = int(stats.tokens.sum())
    print(
        json.dumps(
            {
                "tokens": tokens,
                "peak_rss_mb": peak / 1024,
                "rss_growth_during_capture_mb": (peak - before) / 1024,
                "pooled_mb": state / 2**20,
                "neuron_reducer_mb": reducer / 2**20,
                "naive_storage_mb": tokens
                * tm.n_layers
                * (tm.identity.d_mlp + tm.identity.d_model)
                * 4
                / 2**20,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.batch_size)
        return

    from traitlens.models import load_model

    torch.set_num_threads(max(1, torch.get_num_threads()))
    tm = load_model(device="cpu", dtype="float32")
    prompts = _prompts(args.prompts)
    _plain(tm, prompts, args.batch_size)  # warm-up both paths
    act = _captured(tm, prompts, args.batch_size)
    tokens = int(act.neuron_stats.tokens.sum()) if act.neuron_stats is not None else 0
    plain_times, captured_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        _plain(tm, prompts, args.batch_size)
        plain_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        _captured(tm, prompts, args.batch_size)
        captured_times.append(time.perf_counter() - start)
    plain, captured = statistics.median(plain_times), statistics.median(captured_times)
    print(
        f"model={tm.identity.name} prompts={len(prompts)} tokens={tokens} "
        f"layers={tm.n_layers} threads={torch.get_num_threads()}"
    )
    print(
        f"plain_median_s={plain:.3f} captured_median_s={captured:.3f} "
        f"(runs: plain {[round(t, 2) for t in plain_times]}, "
        f"captured {[round(t, 2) for t in captured_times]})"
    )
    for factor in (1, 4):
        out = (
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--memory-child",
                    str(args.prompts * factor),
                    "--batch-size",
                    str(args.batch_size),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        info = json.loads(out)
        print(
            f"memory {factor}x tokens: tokens={info['tokens']} "
            f"peak_rss_mb={info['peak_rss_mb']:.0f} "
            f"rss_growth_during_capture_mb={info['rss_growth_during_capture_mb']:.0f} "
            f"neuron_reducer_mb={info['neuron_reducer_mb']:.1f} "
            f"pooled_outputs_mb={info['pooled_mb']:.1f} "
            f"(storing every token would need {info['naive_storage_mb']:.0f} MB)"
        )
    print(f"overhead_ratio={captured / plain:.3f}")


if __name__ == "__main__":
    main()
