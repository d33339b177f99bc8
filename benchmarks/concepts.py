"""Concept-stage throughput on the embedded model: items per second through capture
(item-token pooling + per-item neuron firing on every layer) and neuron selection
(one-vs-rest Mann–Whitney over items + BH-FDR), against a plain forward pass over
the same items.

The plain pass and the capture run the same formatted items with the same batching
(length-sorted, left-padded, LM head skipped), alternated in one process; selection
is timed on the captured statistics. Prints the medians and, last,
``concept_capture_ratio=<capture/plain>`` and ``items_per_second=<capture+selection>``.

    python benchmarks/concepts.py [--items-per-domain 72] [--templates 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capture_overhead import plain_forward as _plain  # noqa: E402  (the same reference pass)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items-per-domain", type=int, default=72)
    parser.add_argument("--templates", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from traitlens.concepts import ITEM_TEMPLATES, capture_items, format_items
    from traitlens.concepts.items import choose_items
    from traitlens.concepts.neurons import select_concept_neurons
    from traitlens.data import TRAITS, load_items
    from traitlens.models import load_model

    tm = load_model(device="cpu", dtype="float32")
    items, split = choose_items(
        load_items(), TRAITS, per_domain=args.items_per_domain, held_out=0.25, seed=0
    )
    templates = list(ITEM_TEMPLATES)[: args.templates]
    formatted = [f for t in templates for f in format_items(tm, items, t)]
    n_rows = len(formatted)

    def capture():
        return capture_items(
            tm,
            items,
            templates=templates,
            poolings=("mean",),
            batch_size=args.batch_size,
            progress=False,
        )

    _plain(tm, formatted, args.batch_size)  # warm-up both paths
    acts = capture()
    plain, captured, selection = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        _plain(tm, formatted, args.batch_size)
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        acts = capture()
        captured.append(time.perf_counter() - start)
        start = time.perf_counter()
        select_concept_neurons(acts, items, split.train, traits=TRAITS)
        selection.append(time.perf_counter() - start)
    p, c, s = (statistics.median(x) for x in (plain, captured, selection))
    tokens = sum(acts.n_tokens)
    print(f"rows (item × template): {n_rows}; statement tokens {tokens}; layers {tm.n_layers}")
    print(f"plain forward  median {p:.2f} s  ({n_rows / p:.1f} rows/s)")
    print(f"capture        median {c:.2f} s  ({n_rows / c:.1f} rows/s)")
    print(f"selection      median {s:.2f} s  ({len(split.train)} training items × 5 domains)")
    print(f"concept_capture_ratio={c / p:.3f}")
    print(f"items_per_second={n_rows / (c + s):.1f}")


if __name__ == "__main__":
    main()
