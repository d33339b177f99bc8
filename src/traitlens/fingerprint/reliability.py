"""Where is an axis trustworthy? Dead-zone scores and asymmetric instruction following.

A *dead zone* is a trait the model does not represent (or express) in a way this
measurement can read: instructions to be high or low in it barely separate its
answers, the separation does not survive new questions, the direction changes
with the questions used to find it, or sampling noise swamps the calibrated
range. Each of the four symptoms is mapped to a badness in [0, 1] by a linear
ramp between a "fine" and a "useless" threshold and the score is their mean.
The thresholds are heuristics, recorded in the output so a reader can judge them.

An *asymmetric* dead zone is a trait the model moves along in one direction
only — it writes more extraverted answers when asked but not less extraverted
ones (or the reverse); it is detected from paired questions answered at
baseline, high-instructed and low-instructed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from traitlens.stats import bootstrap_ci

# (fine, useless) for each symptom; badness ramps linearly between them.
DEAD_ZONE_THRESHOLDS: dict[str, tuple[float, float]] = {
    "accuracy": (0.85, 0.5),  # held-out accuracy of the pole sign
    "d_prime": (1.5, 0.0),  # held-out d′ between the poles
    # split-half cosine of the axis direction. Half-sample mean differences in
    # d ≈ 500-2000 dimensions from ~10 questions stay far from 1 even for axes that
    # classify well (SmolLM2: cosine 0.45 at paired held-out accuracy 1.0), so the
    # ramp sits lower than intuition for "a stable vector" would put it.
    "stability": (0.6, 0.1),
    "snr": (2.0, 0.0),  # pole distance / seed-to-seed noise of a baseline answer
}
DEAD_ZONE_FLAG = 0.5  # mean badness at or above this: the axis is a dead zone
WEAK_FLAG = 0.25
# A shift of a quarter calibration IQR is the smallest move counted as "follows".
FOLLOW_THRESHOLD = 0.25


def _badness(value: float | None, fine: float, useless: float) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    fraction = (fine - value) / (fine - useless)
    return float(min(1.0, max(0.0, fraction)))


def dead_zone(
    accuracy: float | None, d_prime: float | None, stability: float | None, snr: float | None
) -> dict[str, Any]:
    """Combine the four symptoms into one score in [0, 1] and a verdict.

    Missing symptoms (e.g. no SNR with a single seed) are left out of the mean.
    """
    values = {"accuracy": accuracy, "d_prime": d_prime, "stability": stability, "snr": snr}
    components = {
        name: _badness(value, *DEAD_ZONE_THRESHOLDS[name]) for name, value in values.items()
    }
    present = [v for v in components.values() if v is not None]
    score = float(np.mean(present)) if present else float("nan")
    if not present:
        verdict = "unknown"
    elif score >= DEAD_ZONE_FLAG:
        verdict = "dead"
    elif score >= WEAK_FLAG:
        verdict = "weak"
    else:
        verdict = "ok"
    return {"score": score, "verdict": verdict, "components": components, "inputs": values}


def asymmetry(
    high: ArrayLike, low: ArrayLike, baseline: ArrayLike, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Paired shifts of instructed answers from baseline, per question, in IQR units.

    ``high[i]``, ``low[i]``, ``baseline[i]`` are scores of the same question i.
    ``shift_up`` = median(high − baseline), ``shift_down`` = median(baseline − low),
    each with a 95% bootstrap CI over questions (``*_ci``, BCa as
    :func:`traitlens.stats.bootstrap_ci`); a direction "follows"
    when its shift reaches :data:`FOLLOW_THRESHOLD`. ``index`` in [−1, 1] is
    (up − down) / (|up| + |down|): +1 only "more", −1 only "less". With few paired
    questions the CIs are wide: read a one-way verdict together with them.
    """
    h = np.asarray(high, dtype=np.float64)
    lo = np.asarray(low, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    keep = np.isfinite(h) & np.isfinite(lo) & np.isfinite(b)
    if keep.sum() == 0:
        return {
            "n_questions": 0,
            "shift_up": None,
            "shift_down": None,
            "shift_up_ci": None,
            "shift_down_ci": None,
            "index": None,
            "follows_up": None,
            "follows_down": None,
            "asymmetric": None,
            "kind": None,
        }
    ups, downs = h[keep] - b[keep], b[keep] - lo[keep]
    up, down = float(np.median(ups)), float(np.median(downs))
    # one seed for both: the same questions are resampled for "more" and "less"
    up_ci, down_ci = (
        bootstrap_ci(shifts, stat=np.median, n_boot=n_boot, seed=seed) for shifts in (ups, downs)
    )
    total = abs(up) + abs(down)
    follows_up, follows_down = up >= FOLLOW_THRESHOLD, down >= FOLLOW_THRESHOLD
    asymmetric = follows_up != follows_down
    kind = None
    if asymmetric:
        kind = "follows 'more' only" if follows_up else "follows 'less' only"
    elif not follows_up:
        kind = "follows neither"
    return {
        "n_questions": int(keep.sum()),
        "shift_up": up,
        "shift_down": down,
        "shift_up_ci": [up_ci.low, up_ci.high],
        "shift_down_ci": [down_ci.low, down_ci.high],
        "index": (up - down) / total if total > 0 else 0.0,
        "follows_up": bool(follows_up),
        "follows_down": bool(follows_down),
        "asymmetric": bool(asymmetric),
        "kind": kind,
    }


def seed_noise(table: ArrayLike) -> float:
    """Pooled within-target SD across raters of ``[n_targets, k_seeds]`` (ddof=1)."""
    array = np.asarray(table, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 2 or array.shape[0] == 0:
        return float("nan")
    return float(np.sqrt(np.mean(array.var(axis=1, ddof=1))))
