"""How far the old a95 (a 128-bin histogram per layer over at most 128 sampled tokens a
batch) was from each neuron's exact 95th percentile, on the embedded model.

Both reducers see the same forward passes over the same items (one capture with two
reducers hooked on ``mlp_act``); the exact one keeps the top 5 % of every neuron's
activations over every statement token. Prints the absolute and relative error of the
histogram estimate (median, 95th percentile, max over neurons) and, last,
``a95_median_relative_error=<value>``.

    python benchmarks/a95_error.py [--items-per-domain 24] [--templates 2]
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items-per-domain", type=int, default=24)
    parser.add_argument("--templates", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from traitlens.capture.capture import ItemFiring, pool_formatted
    from traitlens.concepts import ITEM_TEMPLATES, format_items
    from traitlens.concepts.items import choose_items
    from traitlens.data import TRAITS, load_items
    from traitlens.models import load_model

    tm = load_model(device="cpu", dtype="float32")
    items, _ = choose_items(
        load_items(), TRAITS, per_domain=args.items_per_domain, held_out=0.25, seed=0
    )
    formatted = [
        f for t in list(ITEM_TEMPLATES)[: args.templates] for f in format_items(tm, items, t)
    ]
    n_tokens = sum(b - a for a, b in (f.span("item") for f in formatted))
    layers, width = tm.n_layers, tm.identity.d_mlp
    old = ItemFiring(len(formatted), layers, width, tm.device)
    exact = ItemFiring(len(formatted), layers, width, tm.device, n_span_tokens=n_tokens)

    class Both:
        def begin(self, *a, **k):  # type: ignore[no-untyped-def]
            old.begin(*a, **k)
            exact.begin(*a, **k)

        def __call__(self, acts, *, column):  # type: ignore[no-untyped-def]
            old(acts, column=column)
            exact(acts, column=column)

    pool_formatted(
        tm,
        formatted,
        span="item",
        poolings=("mean",),
        batch_size=args.batch_size,
        neurons=Both(),  # type: ignore[arg-type]
    )
    a_old = old.result()["a95"].double().numpy()
    a_new = exact.result()["a95"].double().numpy()
    absolute = np.abs(a_old - a_new)
    relative = absolute / np.maximum(np.abs(a_new), 1e-3)
    print(f"{len(formatted)} rows, {n_tokens} statement tokens, {layers}×{width} neurons")
    for name, values in (("absolute", absolute), ("relative", relative)):
        print(
            f"  {name} error of the histogram a95: median {np.median(values):.4f}, "
            f"95th pct {np.percentile(values, 95):.4f}, max {values.max():.4f}"
        )
    print(f"  exact a95: median {np.median(a_new):.4f} (range {a_new.min():.3f}–{a_new.max():.3f})")
    print(f"a95_median_relative_error={np.median(relative):.4f}")


if __name__ == "__main__":
    main()
