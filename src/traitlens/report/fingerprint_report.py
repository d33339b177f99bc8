"""The fingerprint section of the report, or a standalone ``fingerprint.html``.

``fingerprint_section_html(run_dir)`` returns one self-contained ``<section>``
(figures embedded as base64 PNG) that the full report embeds;
``write_fingerprint_report(run_dir)`` wraps it into a complete single-file page
when the fingerprint stage is run on its own.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from traitlens.fingerprint.pipeline import load_fingerprint
from traitlens.fingerprint.reliability import DEAD_ZONE_THRESHOLDS, FOLLOW_THRESHOLD
from traitlens.report.fingerprint_figures import model_slug, save_figures

_PAGE_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #111;
       line-height: 1.45; padding: 0 1em; }
"""
# scoped to the section so it looks the same embedded in report.html or standalone
_SECTION_STYLE = """
section.fingerprint table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
section.fingerprint th, section.fingerprint td { border: 1px solid #999; padding: 3px 8px;
       text-align: right; }
section.fingerprint th:first-child, section.fingerprint td:first-child { text-align: left; }
section.fingerprint img { max-width: 100%; display: block; margin: 0.5em 0 1.2em; }
section.fingerprint .note { color: #444; font-size: 0.9em; }
section.fingerprint blockquote { border-left: 3px solid #999; margin: 0.3em 0; padding-left: 0.8em;
       color: #333; font-size: 0.9em; }
"""


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:+.{digits}f}" if digits and abs(value) < 1e6 else f"{value:.3g}"
    return html.escape(str(value))


def _with_ci(value: Any, ci: Any) -> str:
    if value is None:
        return "–"
    if not ci:
        return _fmt(value)
    return f"{_fmt(value)} [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _plain(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _profile_table(doc: dict[str, Any]) -> str:
    axes = doc["config"]["axes"]
    rows = []
    for model in doc["models"]:
        cells = [html.escape(model["model"]["name"])]
        for axis in axes:
            p = model["profile"][axis]
            cells.append(f"{_fmt(p['median'])} [{_fmt(p['ci'][0])}, {_fmt(p['ci'][1])}]")
        rows.append(cells)
    return _table(["model"] + [f"{a} ({doc['axis_names'][a]})" for a in axes], rows)


def _per_axis_rows(doc: dict[str, Any], cell: Any) -> list[list[str]]:
    rows = []
    for model in doc["models"]:
        for axis in doc["config"]["axes"]:
            rows.append([html.escape(f"{model['model']['name']} · {axis}"), *cell(model, axis)])
    return rows


def fingerprint_section_html(run_dir: str | Path) -> str:
    """The fingerprint results of ``run_dir`` as one self-contained HTML ``<section>``."""
    run = Path(run_dir)
    doc = load_fingerprint(run)
    figures = save_figures(doc, run / "fingerprint" / "figures")
    config = doc["config"]
    names = ", ".join(html.escape(m["model"]["name"]) for m in doc["models"])
    parts = [
        '<section class="fingerprint">',
        f"<style>{_SECTION_STYLE}</style>",
        "<h2>Behavioural fingerprint</h2>",
        f"<p>Models: {names}. Axes from answers the model wrote under opposite one-line "
        f"instructions (difference of means of the residual stream at layers "
        f"{', '.join(str(m['layers']) for m in doc['models'])}, "
        f"{html.escape(config['pooling'])} pooling over the answer tokens"
        + (
            ", encoded as generated, with the instruction in context"
            if config["instructed_context"]
            else ", re-encoded without the instruction"
        )
        + (", each dimension standardized" if config.get("standardize") else "")
        + "). Scores are in units of the calibration interquartile range: 0 is the middle "
        "of the calibrated range and ±0.5 is roughly where typical instructed answers lie, "
        "so profiles of different models share a scale.</p>",
        "<h3>Default profile</h3>",
        f"<p class='note'>Median over {config['seeds']} sampling seed(s) × neutral questions "
        "answered with no system prompt; 95% CIs from a bootstrap over questions.</p>",
        _profile_table(doc),
        _image(figures["profile_bars"], "profile bars"),
        _image(figures["profile_radar"], "profile radar"),
    ]
    comparison = doc.get("comparison")
    if comparison and comparison.get("differences"):
        rows = []
        for row in comparison["differences"]:
            cells = [html.escape(f"{row['model']} − {row['minus']}")]
            for axis in config["axes"]:
                d = row[axis]
                star = " *" if d["credible"] else ""
                cells.append(
                    f"{_fmt(d['difference'])} [{_fmt(d['ci'][0])}, {_fmt(d['ci'][1])}]{star}"
                )
            rows.append(cells)
        parts += [
            "<h3>Model differences</h3>",
            "<p class='note'>* the 95% CI excludes 0.</p>",
            _table(["difference"] + list(config["axes"]), rows),
        ]

    parts += [
        "<h3>Calibration (held out by question)</h3>",
        "<p class='note'>Every answer is scored by an axis fitted without its question. "
        "Accuracy: sign of the score matches the instructed pole; paired accuracy: the "
        "high-instructed answer to a question outscores the low-instructed one.</p>",
        _table(
            [
                "model · axis",
                "accuracy",
                "paired accuracy",
                "AUC",
                "d′ held-out",
                "d′ in-sample",
                "split-half cos",
                "answers",
            ],
            _per_axis_rows(
                doc,
                lambda m, a: [
                    _plain(m["calibration"][a]["accuracy"]),
                    _plain(m["calibration"][a].get("paired_accuracy")),
                    _plain(m["calibration"][a]["auc"]),
                    _fmt(m["calibration"][a]["d_prime"]),
                    _fmt(m["calibration"][a]["d_prime_in_sample"]),
                    _plain(m["calibration"][a]["stability"]),
                    str(m["calibration"][a]["n_answers"]),
                ],
            ),
        ),
        _image(figures["calibration"], "calibration quality"),
        "<h3>Reliability and dead zones</h3>",
        "<p class='note'>ICC over neutral questions × sampling seeds (ICC(2,1): absolute "
        "agreement; ICC(3,1): consistency). SNR = distance between pole medians / seed-to-seed "
        "SD of one answer. Dead-zone score = mean badness of accuracy, d′, stability and SNR, "
        "each ramped between "
        + "; ".join(f"{k}: {v[0]}→{v[1]}" for k, v in DEAD_ZONE_THRESHOLDS.items())
        + f". A direction 'follows' when its paired median shift is ≥ {FOLLOW_THRESHOLD}.</p>",
        _table(
            [
                "model · axis",
                "ICC(2,1)",
                "ICC(3,1)",
                "SNR",
                "dead-zone",
                "verdict",
                "more-X shift",
                "less-X shift",
                "asymmetry",
            ],
            _per_axis_rows(
                doc,
                lambda m, a: [
                    _plain(m["reliability"]["per_axis"][a]["icc2_1"]),
                    _plain(m["reliability"]["per_axis"][a]["icc3_1"]),
                    _plain(m["reliability"]["per_axis"][a]["snr"]),
                    _plain(m["dead_zones"][a]["score"]),
                    html.escape(m["dead_zones"][a]["verdict"]),
                    _with_ci(m["asymmetry"][a]["shift_up"], m["asymmetry"][a].get("shift_up_ci")),
                    _with_ci(
                        m["asymmetry"][a]["shift_down"], m["asymmetry"][a].get("shift_down_ci")
                    ),
                    html.escape(m["asymmetry"][a]["kind"] or "both"),
                ],
            ),
        ),
        "<p class='note'>Profile-level ICC(2,1) over axes × seeds: "
        + ", ".join(
            f"{html.escape(m['model']['name'])} {_plain(m['reliability']['profile']['icc2_1'])}"
            for m in doc["models"]
        )
        + "</p>",
        _image(figures["reliability"], "reliability"),
        _image(figures["dead_zones"], "dead zones"),
        _image(figures["instruction_shifts"], "instruction shifts"),
        "<h3>Drift along conversations</h3>",
    ]
    for model in doc["models"]:
        slug = model_slug(model["model"]["name"])
        rows = []
        for scenario, info in (model.get("drift") or {}).items():
            for axis, values in info["axes"].items():
                rows.append(
                    [
                        html.escape(f"{model['model']['name']} · {scenario} · {axis}"),
                        _fmt(values["slope_per_turn"], 3),
                        _fmt(values["conflict_shift"]),
                        _plain(values["range"]),
                    ]
                )
        if rows:
            parts.append(
                _table(
                    ["model · scenario · axis", "slope / turn", "conflict − other turns", "range"],
                    rows,
                )
            )
        parts.append(_image(figures[f"drift__{slug}"], "drift"))
    parts += [
        "<h3>Structure: how many dimensions, how entangled</h3>",
        _table(
            ["model", "components for 90%", "participation ratio", "answers"],
            [
                [
                    html.escape(m["model"]["name"]),
                    str(m["structure"].get("components_90", "–")),
                    _plain(m["structure"].get("participation_ratio")),
                    str(m["structure"]["n_answers"]),
                ]
                for m in doc["models"]
            ],
        ),
        _image(figures["pca"], "pca"),
    ]
    for model in doc["models"]:
        slug = model_slug(model["model"]["name"])
        parts.append(_image(figures[f"axis_geometry__{slug}"], "axis geometry"))
    parts += [
        "<h3>Length confound</h3>",
        "<p class='note'>"
        + (
            "Length was regressed out (pole as covariate) before scoring. "
            if config["regress_length"]
            else "Reported only; rerun with <code>--regress-length</code> to remove it. "
        )
        + "</p>",
        _table(
            [
                "model · axis",
                "r (baseline)",
                "r within pole",
                "tokens high",
                "tokens low",
                "tokens baseline",
            ],
            _per_axis_rows(
                doc,
                lambda m, a: [
                    _fmt(m["length"][a]["r_baseline"]),
                    _fmt(m["length"][a]["r_calibration_within_pole"]),
                    _plain(m["length"][a]["mean_tokens_high"], 1),
                    _plain(m["length"][a]["mean_tokens_low"], 1),
                    _plain(m["length"][a]["mean_tokens_baseline"], 1),
                ],
            ),
        ),
        _image(figures["length_confound"], "length confound"),
        "<h3>Example answers</h3>",
    ]
    for model in doc["models"]:
        parts.append(f"<h4>{html.escape(model['model']['name'])}</h4>")
        for example in model["examples"]["baseline"]:
            parts.append(
                f"<p><b>{html.escape(example['question'])}</b></p>"
                f"<blockquote>{html.escape(example['answer'])}</blockquote>"
            )
        for axis in config["axes"]:
            pair = model["examples"].get(axis, {})
            parts.append(
                f"<p>{axis} high:</p><blockquote>{html.escape(pair.get('high', ''))}"
                f"</blockquote><p>{axis} low:</p><blockquote>"
                f"{html.escape(pair.get('low', ''))}</blockquote>"
            )
    parts.append("</section>")
    return "\n".join(parts)


def write_fingerprint_report(run_dir: str | Path) -> Path:
    """Write ``RUN/fingerprint.html``: the section as a complete single-file page."""
    run = Path(run_dir)
    section = fingerprint_section_html(run)
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<title>traitlens fingerprint</title>"
        f"<style>{_PAGE_STYLE}</style></head><body>\n<h1>traitlens — behavioural fingerprint</h1>\n"
        f"{section}\n</body></html>\n"
    )
    path = run / "fingerprint.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
