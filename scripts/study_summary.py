"""Headline numbers of a finished study, as Markdown tables (the figures quoted in the
README and the closing notes come from this script).

    python scripts/study_summary.py runs/full

Prints: best probe layer and held-out score per trait (with its control task); selected
neurons per trait and pole by depth third; per intervention the targeted success rate,
the readout shift on the target trait, questionnaire and forced-choice shifts, and the
perplexity ratio; the mean-difference spillover matrix; the dose–response table.

It also splits the questionnaire shift into its keyed part (the trait score) and the
shift of the *raw* answers (acquiescence): with balanced keying a uniform move of every
answer cancels in the trait score, and on a tiny model that is most of what moves.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _f(value: Any, digits: int = 2, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _raw_shift(run: Path, result: dict[str, Any], baseline: dict[str, Any], trait: str) -> float:
    """Mean change of the raw (un-keyed) 1–5 answer over the trait's items."""
    from traitlens.data import load_statements

    config = json.loads((run / "study_config.json").read_text())
    keyed = {s.id: s.keyed for s in load_statements(config.get("statements_file"))}
    # each measured row is stored under its input key (eval/rows/NAME--KEY.json)
    path = run / "eval" / "rows" / f"{result['name']}--{result['row_key'][:16]}.json"
    row = json.loads(path.read_text())["data"]
    base, new = baseline["questionnaire"].get(trait, {}), row["questionnaire"].get(trait, {})
    diffs = []
    for item, score in new.items():
        if item in base:
            sign = 1.0 if keyed.get(item, "+") == "+" else -1.0  # keyed = 6 − raw for "−"
            diffs.append(sign * (score - base[item]))
    return float(np.mean(diffs)) if diffs else math.nan


def _capability(result: dict[str, Any]) -> str:
    """Steered − unsteered multiple-choice accuracy with its paired CI ("—": not
    measured, e.g. persona-prompt rows, which leave the weights alone)."""
    change = result.get("capability_change")
    if not change:
        return "—"
    ci = change["ci"]
    low, high = _f(ci["low"], 2, sign=True), _f(ci["high"], 2, sign=True)
    return f"{_f(change['shift'], 3, sign=True)} [{low}, {high}]"


def main(run_dir: str) -> None:
    from traitlens.neurons import NeuronSet
    from traitlens.probe import ProbeSet

    run = Path(run_dir)
    evaluation = json.loads((run / "eval.json").read_text())
    baseline_key = evaluation["provenance"]["baseline"][:16]
    baseline = json.loads((run / "eval" / "rows" / f"baseline--{baseline_key}.json").read_text())
    baseline = baseline["data"]
    traits = evaluation["traits"]

    probes = ProbeSet.load(run).summary()
    rows = []
    for t in traits:
        b = probes["binary"][t]
        rows.append(
            [t, str(b["best_layer"]), f"{b['score']:.3f} ± {b['sd']:.3f}", _f(b["control"], 3)]
        )
    print("### Probes (binary high vs low, held-out questions and personas)\n")
    print(_table(["trait", "best layer", "accuracy", "control task"], rows))
    which = next(iter(probes.get("trait", {}).values()), None)
    if which:
        print(
            f"\n5-way which-trait probe: layer {which['best_layer']}, accuracy "
            f"{which['score']:.3f} (control {which['control']:.3f}, chance 0.2)"
        )

    neurons = NeuronSet.load(run)
    n_layers = len(neurons.layers)
    thirds = [(0, n_layers // 3), (n_layers // 3, 2 * n_layers // 3), (2 * n_layers // 3, n_layers)]
    rows = []
    for t in traits:
        for pole in ("high", "low"):
            layers = neurons.select(t, pole, "npti").layers.tolist()
            counts = [sum(lo <= layer < hi for layer in layers) for lo, hi in thirds]
            fdr = len(neurons.select(t, pole, "fdr"))
            rows.append([f"{t} {pole}", str(len(layers)), *map(str, counts), str(fdr)])
    print("\n### Selected neurons (NPTI δ rule; FDR-surviving in the last column)\n")
    print(_table(["trait pole", "δ rule", "early", "middle", "late", "FDR"], rows))

    print("\n### Interventions (held-out prompts; control = same-size random)\n")
    rows = []
    for r in evaluation["results"]:
        if r.get("dose"):
            continue
        t = r["trait"]
        success = r.get("success") or {}
        size = (
            f"{r.get('n_target', 0)}+{r.get('n_opposite', 0)} n."
            if r["method"] == "neurons"
            else _f(r.get("strength"), 1, sign=True)
            if "strength" in r
            else "persona"
        )
        rows.append(
            [
                f"{t} {r['pole']}",
                r["method"] + (" ctrl" if r["control"] else ""),
                size,
                f"{_f(success.get('rate'))} (n={success.get('n_eligible', '—')})",
                _f(success.get("boundary"), 2, sign=True),
                _f(r.get("target_readout_shift"), 1, sign=True),
                _f(r["questionnaire_shift"][t]["shift"], 3, sign=True),
                _f(_raw_shift(run, r, baseline, t), 3, sign=True),
                _f(r["forced_choice_shift"][t]["shift"], 3, sign=True),
                _f(r["perplexity_ratio"]),
                _capability(r),
            ]
        )
    print(
        _table(
            [
                "target",
                "method",
                "size",
                "success",
                "boundary",
                "readout Δ",
                "quest. Δ (keyed)",
                "raw answer Δ",
                "forced-choice Δ",
                "ppl ×",
                "capability Δ [95% CI]",
            ],
            rows,
        )
    )

    print("\n### Spillover: readout shift of every trait (mean_diff, real; rows = target)\n")
    rows = []
    for r in evaluation["results"]:
        if r["method"] == "mean_diff" and not r["control"] and not r.get("dose"):
            rows.append(
                [f"{r['trait']} {r['pole']}"]
                + [_f(r["readout_shift"][t]["shift"], 1, sign=True) for t in traits]
            )
    print(_table(["target", *traits], rows))

    print("\n### Dose–response\n")
    rows = []
    for r in evaluation["results"]:
        if not r.get("dose"):
            continue
        t = r["trait"]
        rows.append(
            [
                f"{t} {r['pole']}",
                r["method"],
                _f(r.get("strength", r.get("gamma")), 1),
                _f(r["readout_shift"][t]["shift"], 1, sign=True),
                _f(r["questionnaire_shift"][t]["shift"], 3, sign=True),
                _f(r["forced_choice_shift"][t]["shift"], 3, sign=True),
                _f(r["perplexity_ratio"]),
                _f(r.get("distinct_2")),
            ]
        )
    print(
        _table(
            ["target", "method", "strength/γ", "readout Δ", "quest. Δ", "fc Δ", "ppl ×", "d-2"],
            rows,
        )
    )
    base = evaluation["baseline"]
    print(
        f"\nUnsteered: perplexity {base['perplexity']:.2f}, label mass "
        f"{_f(base.get('label_mass'))}, capability {_f(base.get('capability'), 3)}; questionnaire "
        + ", ".join(f"{t} {base['questionnaire'][t]:.2f}" for t in traits)
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/study_summary.py RUN_DIR")
    main(sys.argv[1])
