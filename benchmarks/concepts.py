"""Concept-stage throughput on the embedded model: items per second through capture
(item-token pooling + per-item neuron firing on every layer) and neuron selection
(one-vs-rest Mann–Whitney over items + BH-FDR), against a plain forward pass over
the same items.

The plain pass and the capture run the same formatted items with the same batching
(length-sorted, left-padded, LM head skipped), alternated in one process; selection
is timed on the captured statistics. Prints the medians and, last,
``concept_capture_ratio=<capture/plain>`` and ``items_per_second=<capture+selection>``.

``--evaluation`` also times the evaluation's three kinds of measured row on the held-out
items (probe readout at every probed layer only — most control draws; + the generated
label — the first ``label_draws`` draws; + Likert and perplexity — the real edit and the
first draw), interleaved with a plain forward pass over the same items, and projects the
evaluation stage of a design with ``--draws`` control draws, ``--conditions`` real edits
per domain and ``--label-draws``.

    python benchmarks/concepts.py [--items-per-domain 72] [--templates 1] [--repeats 3]
    python benchmarks/concepts.py --items-per-domain 24 --evaluation --conditions 9
    python benchmarks/concepts.py --items-per-domain 24 --evaluation --conditions 9 --dtype bfloat16
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
    parser.add_argument("--evaluation", action="store_true")
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--label-draws", type=int, default=5)
    parser.add_argument("--conditions", type=int, default=4, help="real edits per domain")
    parser.add_argument("--layer-stride", type=int, default=1)
    parser.add_argument(
        "--dtype", default="float32", help="float32 (the study's CPU default) or bfloat16"
    )
    args = parser.parse_args()

    from traitlens.concepts import ITEM_TEMPLATES, capture_items, format_items
    from traitlens.concepts.items import choose_items
    from traitlens.concepts.neurons import select_concept_neurons
    from traitlens.data import TRAITS, load_items
    from traitlens.models import load_model

    tm = load_model(device="cpu", dtype=args.dtype)
    print(f"model dtype {args.dtype}")
    items, split = choose_items(
        load_items(), TRAITS, per_domain=args.items_per_domain, held_out=0.25, seed=0
    )
    templates = list(ITEM_TEMPLATES)[: args.templates]
    formatted = [f for t in templates for f in format_items(tm, items, t)]
    n_rows = len(formatted)

    def capture_activations():
        return capture_items(
            tm,
            items,
            templates=templates,
            poolings=("mean",),
            batch_size=args.batch_size,
            progress=False,
        )

    _plain(tm, formatted, args.batch_size)  # warm-up both paths
    acts = capture_activations()
    plain, captured, selection = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        _plain(tm, formatted, args.batch_size)
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        acts = capture_activations()
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
    if args.evaluation:
        evaluation_rows(tm, items, split, acts, args)


def evaluation_rows(tm, items, split, acts, args) -> None:  # type: ignore[no-untyped-def]
    """Seconds per measured row of each kind, and the projected evaluation stage."""
    from traitlens.concepts import fit_domain_probes, format_items, measure_condition
    from traitlens.concepts.evaluate import ConceptSets
    from traitlens.concepts.labels import label_prompt, resolve_domain_tokens
    from traitlens.data import TRAITS
    from traitlens.evaluate.questionnaire import TEMPLATES

    layers = acts.layers[:: args.layer_stride]
    probes = fit_domain_probes(
        acts, items, split.train, traits=TRAITS, layers=layers, folds=2, progress=False
    )
    held = [i for i in items if i.id in set(split.held_out)]
    prompt = label_prompt([i for i in items if i.id in set(split.train)], TRAITS, 1, 0)
    sets = ConceptSets(
        tuple(TRAITS),
        tuple(held),
        "bare",
        tuple(layers),
        layers[-1],
        prompt,
        tuple(list(TEMPLATES)[:1]),
        args.batch_size,
    )
    tokens = resolve_domain_tokens(tm, prompt.labels)
    bare = format_items(tm, held, "bare")
    kinds = {
        "probe": dict(full=False, labels=False),
        "label": dict(full=False, labels=True),
        "full": dict(full=True, labels=True),
    }
    times: dict[str, list[float]] = {k: [] for k in ["plain", *kinds]}
    for _ in range(args.repeats):
        start = time.perf_counter()
        _plain(tm, bare, args.batch_size)
        times["plain"].append(time.perf_counter() - start)
        for name, kwargs in kinds.items():
            start = time.perf_counter()
            measure_condition(tm, sets, probes, tokens, **kwargs)
            times[name].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"evaluation rows on {len(held)} held-out items, {len(layers)} probed layers:")
    for name, seconds in median.items():
        print(f"  {name:<6} median {seconds:.2f} s ({seconds / median['plain']:.2f}× plain)")
    label_draws = min(args.label_draws, args.draws)
    per_condition = (
        2 * median["full"]
        + max(label_draws - 1, 0) * median["label"]
        + (args.draws - max(label_draws, 1)) * median["probe"]
    )
    projected = per_condition * args.conditions * len(TRAITS)
    print(
        f"projected evaluation stage: {args.conditions} edits × {len(TRAITS)} domains × "
        f"(1 + {args.draws} draws, labels on {label_draws}) = {projected / 60:.1f} min"
    )
    print(f"concept_probe_row_seconds={median['probe']:.2f}")


if __name__ == "__main__":
    main()
