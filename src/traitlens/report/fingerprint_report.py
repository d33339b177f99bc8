"""The fingerprint part of the report, or a standalone ``fingerprint.html``.

Rendered with the shared page helpers of :mod:`traitlens.report.html` (tables,
embedded figures, notes), so the fingerprint looks and reads like the rest of
the report. ``fingerprint_section_html(run_dir)`` returns the section's body
(titled blocks, figures embedded as base64 PNG) that the study report places in
its "Behavioural fingerprint" section; ``write_fingerprint_report(run_dir)``
wraps the same section into a complete single-file page when the fingerprint
stage is run on its own.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

from traitlens.fingerprint.pipeline import load_fingerprint
from traitlens.fingerprint.reliability import DEAD_ZONE_THRESHOLDS, FOLLOW_THRESHOLD
from traitlens.report.fingerprint_figures import model_slug, save_figures
from traitlens.report.html import Section, Table, quotes_html, subsection_html, write_page

Doc = dict[str, Any]
Row = dict[str, str]
TITLE = "Behavioural fingerprint"


def _signed(value: Any, digits: int = 2) -> str:
    """``+0.12`` — scores and differences carry their sign; ``–`` when undefined."""
    return "–" if value is None else f"{float(value):+.{digits}f}"


def _plain(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def _with_ci(value: Any, ci: Any) -> str:
    if value is None:
        return "–"
    return _signed(value) if not ci else f"{_signed(value)} [{_signed(ci[0])}, {_signed(ci[1])}]"


def _per_axis(doc: Doc, label: str, cells: Callable[[Doc, str], Row]) -> list[Row]:
    """One row per model and axis: ``{label: "model · axis", **cells(model, axis)}``."""
    return [
        {label: f"{model['model']['name']} · {axis}", **cells(model, axis)}
        for model in doc["models"]
        for axis in doc["config"]["axes"]
    ]


def _intro(doc: Doc) -> str:
    config = doc["config"]
    names = ", ".join(m["model"]["name"] for m in doc["models"])
    context = (
        ", encoded as generated, with the instruction in context"
        if config["instructed_context"]
        else ", re-encoded without the instruction"
    )
    return (
        f"Models: {names}. Axes from answers the model wrote under opposite one-line "
        "instructions (difference of means of the residual stream at layers "
        f"{', '.join(str(m['layers']) for m in doc['models'])}, {config['pooling']} pooling "
        f"over the answer tokens{context}"
        + (", each dimension standardized" if config.get("standardize") else "")
        + "). Scores are in units of the calibration interquartile range: 0 is the middle "
        "of the calibrated range and ±0.5 is roughly where typical instructed answers lie, "
        "so profiles of different models share a scale."
    )


def _profile(doc: Doc, figures: dict[str, Path]) -> list[Section]:
    axes = doc["config"]["axes"]
    rows = [
        {
            "model": m["model"]["name"],
            **{
                f"{a} ({doc['axis_names'][a]})": _with_ci(
                    m["profile"][a]["median"], m["profile"][a]["ci"]
                )
                for a in axes
            },
        }
        for m in doc["models"]
    ]
    sections = [
        Section(
            "fingerprint-profile",
            "Default profile",
            notes=[
                f"Median over {doc['config']['seeds']} sampling seed(s) × neutral questions "
                "answered with no system prompt; 95% CIs from a bootstrap over questions."
            ],
            figures=[
                (figures["profile_bars"], "Default profile per axis, with 95% CIs"),
                (figures["profile_radar"], "The same profile as a radar chart"),
            ],
            tables=[Table("Median score [95% CI]", rows)],
        )
    ]
    comparison = doc.get("comparison") or {}
    if comparison.get("differences"):
        differences = [
            {
                "difference": f"{row['model']} − {row['minus']}",
                **{
                    a: _with_ci(row[a]["difference"], row[a]["ci"])
                    + (" *" if row[a]["credible"] else "")
                    for a in axes
                },
            }
            for row in comparison["differences"]
        ]
        sections.append(
            Section(
                "fingerprint-differences",
                "Model differences",
                notes=["* the 95% CI excludes 0."],
                tables=[Table("Difference of median profiles [95% CI]", differences)],
            )
        )
    return sections


def _calibration(doc: Doc, figures: dict[str, Path]) -> Section:
    def cells(m: Doc, a: str) -> Row:
        c = m["calibration"][a]
        return {
            "accuracy": _plain(c["accuracy"]),
            "paired accuracy": _plain(c.get("paired_accuracy")),
            "AUC": _plain(c["auc"]),
            "d′ held-out": _signed(c["d_prime"]),
            "d′ in-sample": _signed(c["d_prime_in_sample"]),
            "split-half cos": _plain(c["stability"]),
            "answers": str(c["n_answers"]),
        }

    return Section(
        "fingerprint-calibration",
        "Calibration (held out by question)",
        notes=[
            "Every answer is scored by an axis fitted without its question. Accuracy: sign of "
            "the score matches the instructed pole; paired accuracy: the high-instructed "
            "answer to a question outscores the low-instructed one."
        ],
        figures=[(figures["calibration"], "Held-out accuracy and d′ per axis")],
        tables=[Table("Calibration quality", _per_axis(doc, "model · axis", cells))],
    )


def _reliability(doc: Doc, figures: dict[str, Path]) -> Section:
    def cells(m: Doc, a: str) -> Row:
        r, asym = m["reliability"]["per_axis"][a], m["asymmetry"][a]
        return {
            "ICC(2,1)": _plain(r["icc2_1"]),
            "ICC(3,1)": _plain(r["icc3_1"]),
            "SNR": _plain(r["snr"]),
            "dead-zone": _plain(m["dead_zones"][a]["score"]),
            "verdict": m["dead_zones"][a]["verdict"],
            "more-X shift": _with_ci(asym["shift_up"], asym.get("shift_up_ci")),
            "less-X shift": _with_ci(asym["shift_down"], asym.get("shift_down_ci")),
            "asymmetry": asym["kind"] or "both",
        }

    ramps = "; ".join(f"{k}: {v[0]}→{v[1]}" for k, v in DEAD_ZONE_THRESHOLDS.items())
    profile_icc = ", ".join(
        f"{m['model']['name']} {_plain(m['reliability']['profile']['icc2_1'])}"
        for m in doc["models"]
    )
    return Section(
        "fingerprint-reliability",
        "Reliability and dead zones",
        notes=[
            "ICC over neutral questions × sampling seeds (ICC(2,1): absolute agreement; "
            "ICC(3,1): consistency). SNR = distance between pole medians / seed-to-seed SD of "
            "one answer. Dead-zone score = mean badness of accuracy, d′, stability and SNR, "
            f"each ramped between {ramps}. A direction 'follows' when its paired median "
            f"shift is ≥ {FOLLOW_THRESHOLD}.",
            f"Profile-level ICC(2,1) over axes × seeds: {profile_icc}",
        ],
        figures=[
            (figures["reliability"], "Test–retest reliability (ICC(2,1)) per axis"),
            (figures["dead_zones"], "Dead-zone score per model and axis"),
            (figures["instruction_shifts"], "How far 'more X' and 'less X' move answers"),
        ],
        tables=[
            Table("Reliability, dead zones and asymmetry", _per_axis(doc, "model · axis", cells))
        ],
    )


def _drift(doc: Doc, figures: dict[str, Path]) -> Section:
    rows = [
        {
            "model · scenario · axis": f"{m['model']['name']} · {scenario} · {axis}",
            "slope / turn": _signed(values["slope_per_turn"], 3),
            "conflict − other turns": _signed(values["conflict_shift"]),
            "range": _plain(values["range"]),
        }
        for m in doc["models"]
        for scenario, info in (m.get("drift") or {}).items()
        for axis, values in info["axes"].items()
    ]
    return Section(
        "fingerprint-drift",
        "Drift along conversations",
        figures=[
            (figures[f"drift__{model_slug(m['model']['name'])}"], f"{m['model']['name']}: drift")
            for m in doc["models"]
        ],
        tables=[Table("Per-turn trend of each axis", rows)] if rows else [],
    )


def _structure(doc: Doc, figures: dict[str, Path]) -> Section:
    rows = [
        {
            "model": m["model"]["name"],
            "components for 90%": str(m["structure"].get("components_90", "–")),
            "participation ratio": _plain(m["structure"].get("participation_ratio")),
            "answers": str(m["structure"]["n_answers"]),
        }
        for m in doc["models"]
    ]
    geometry = [
        (
            figures[f"axis_geometry__{model_slug(m['model']['name'])}"],
            f"{m['model']['name']}: axis cosine vs projection correlation",
        )
        for m in doc["models"]
    ]
    return Section(
        "fingerprint-structure",
        "Structure: how many dimensions, how entangled",
        figures=[(figures["pca"], "Cumulative explained variance of the axis scores"), *geometry],
        tables=[Table("Dimensions the answers use", rows)],
    )


def _length(doc: Doc, figures: dict[str, Path]) -> Section:
    def cells(m: Doc, a: str) -> Row:
        length = m["length"][a]
        return {
            "r (baseline)": _signed(length["r_baseline"]),
            "r within pole": _signed(length["r_calibration_within_pole"]),
            "tokens high": _plain(length["mean_tokens_high"], 1),
            "tokens low": _plain(length["mean_tokens_low"], 1),
            "tokens baseline": _plain(length["mean_tokens_baseline"], 1),
        }

    regressed = doc["config"]["regress_length"]
    return Section(
        "fingerprint-length",
        "Length confound",
        notes=[
            "Length was regressed out (pole as covariate) before scoring."
            if regressed
            else "Reported only; rerun with --regress-length to remove it."
        ],
        figures=[(figures["length_confound"], "Correlation of each axis with answer length")],
        tables=[
            Table("Correlation with answer length (tokens)", _per_axis(doc, "model · axis", cells))
        ],
    )


def _examples(doc: Doc) -> Section:
    blocks = []
    for m in doc["models"]:
        quotes = [(e["question"], e["answer"]) for e in m["examples"]["baseline"]]
        for axis in doc["config"]["axes"]:
            pair = m["examples"].get(axis, {})
            quotes += [(f"{axis} {pole}:", pair.get(pole, "")) for pole in ("high", "low")]
        blocks.append(f"<h4>{html.escape(m['model']['name'])}</h4>\n{quotes_html(quotes)}")
    return Section("fingerprint-examples", "Example answers", raw_html="\n".join(blocks))


def fingerprint_sections(run_dir: str | Path) -> list[Section]:
    """The fingerprint results of ``run_dir`` as titled blocks (figures drawn on the way)."""
    run = Path(run_dir)
    doc = load_fingerprint(run)
    figures = save_figures(doc, run / "fingerprint" / "figures")
    return [
        Section("fingerprint-intro", "Method", paragraphs=[_intro(doc)]),
        *_profile(doc, figures),
        _calibration(doc, figures),
        _reliability(doc, figures),
        _drift(doc, figures),
        _structure(doc, figures),
        _length(doc, figures),
        _examples(doc),
    ]


def fingerprint_section_html(run_dir: str | Path) -> str:
    """The body of the report's fingerprint section: every block, self-contained HTML."""
    return "\n".join(subsection_html(s) for s in fingerprint_sections(run_dir))


def write_fingerprint_report(run_dir: str | Path) -> Path:
    """Write ``RUN/fingerprint.html``: the section as a complete single-file page."""
    run = Path(run_dir)
    section = Section("fingerprint", TITLE, raw_html=fingerprint_section_html(run))
    title = f"traitlens — {TITLE.lower()}"
    return write_page(run / "fingerprint.html", title, [section], subtitle=str(run.resolve()))
