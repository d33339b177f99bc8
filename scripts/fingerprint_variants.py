"""Which layer, pooling and encoding context give the most reliable axes for a model?

Re-encodes the calibration answers of a finished fingerprint run (no new
generation) at every other layer, with each pooling, with and without the
instruction in context, and prints held-out (leave-question-out) accuracy,
paired accuracy and split-half stability per axis. Use it to choose
``--layers`` / ``--pooling`` / ``--answer-only`` for a new model.

    python scripts/fingerprint_variants.py RUN/fingerprint/<model> --model <name>
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="RUN/fingerprint/<model> of a finished run")
    parser.add_argument("--model", default=None, help="the model the run used (default: embedded)")
    parser.add_argument("--every", type=int, default=2, help="layer stride")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch

    from traitlens.capture import POOLINGS, Prompt, capture_activations
    from traitlens.data.schema import POLES
    from traitlens.fingerprint.axes import crossfit, paired_accuracy, split_half_stability
    from traitlens.fingerprint.texts import POLE_INSTRUCTIONS
    from traitlens.models.loading import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    tm = load_model(args.model, device="cpu")
    rows = [json.loads(line) for line in (args.model_dir / "scores.jsonl").read_text().splitlines()]
    items = [r for r in rows if r["set"] == "calibration"]
    layers = list(range(0, tm.n_layers, args.every))
    print(f"{len(items)} calibration answers; layers {layers}")
    for context in ("answer-only", "instructed"):
        prompts = [
            Prompt(
                user=r["question"],
                system=POLE_INSTRUCTIONS[r["axis"]][POLES.index(r["pole"])]
                if context == "instructed"
                else None,
                id=r["id"],
            )
            for r in items
        ]
        acts = capture_activations(
            tm,
            prompts,
            answers=[r["answer"] for r in items],
            span="answer",
            poolings=POOLINGS,
            layers=layers,
            neuron_stats=False,
            progress=False,
            batch_size=8,
        )
        for pooling in POOLINGS:
            pooled = acts.get("resid", pooling).double().numpy()
            for column, layer in enumerate(layers):
                acc, paired, stab = [], [], []
                for axis in sorted({r["axis"] for r in items}):
                    mask = np.array([r["axis"] == axis for r in items])
                    high = np.array([r["pole"] == POLES[0] for r in items])[mask]
                    groups = [r["question_id"] for r in items if r["axis"] == axis]
                    x = pooled[mask][:, column : column + 1]
                    held = crossfit(x, high, groups, 5, 0).scores
                    acc.append(np.mean((held > 0) == high))
                    paired.append(paired_accuracy(held, high, groups))
                    cos = split_half_stability(x, high, groups, 10, 0)
                    stab.append(cos.mean() if cos.size else np.nan)
                print(
                    f"{context:11s} {pooling:5s} L{layer:<3d} acc {np.mean(acc):.2f} "
                    f"paired {np.mean(paired):.2f} stab {np.nanmean(stab):.2f}  "
                    f"per-axis paired {np.round(paired, 2)}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
