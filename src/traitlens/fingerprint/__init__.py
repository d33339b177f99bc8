"""What is a model's default personality, how reliable is that reading, and where is it blind?

Calibrates one contrastive axis per Big Five trait from the model's own answers
under opposite instructions, reads the model's uninstructed answers off those
axes (a profile in calibration-IQR units, with bootstrap CIs), and reports
test–retest reliability (ICC over sampling seeds), axis stability, dead zones
(including ones the model leaves only in one direction), drift along multi-turn
conversations and a side-by-side comparison of several models.
"""

from traitlens.fingerprint.axes import AxisFit, TraitAxes, crossfit, fit_axis, split_half_stability
from traitlens.fingerprint.config import (
    PROFILES,
    FingerprintConfig,
    profile,
    resolve_fingerprint_config,
)
from traitlens.fingerprint.pipeline import (
    ModelFingerprint,
    compare,
    fingerprint_model,
    load_fingerprint,
    run_fingerprint,
)
from traitlens.fingerprint.reliability import asymmetry, dead_zone
from traitlens.fingerprint.stats import d_prime, icc, iqr, iqr_normalize
from traitlens.fingerprint.texts import AXES, AXIS_NAMES, QuestionItem, resolve_axes

__all__ = [
    "AXES",
    "AXIS_NAMES",
    "PROFILES",
    "AxisFit",
    "FingerprintConfig",
    "ModelFingerprint",
    "QuestionItem",
    "TraitAxes",
    "asymmetry",
    "compare",
    "crossfit",
    "d_prime",
    "dead_zone",
    "fingerprint_model",
    "fit_axis",
    "icc",
    "iqr",
    "iqr_normalize",
    "load_fingerprint",
    "profile",
    "resolve_axes",
    "resolve_fingerprint_config",
    "run_fingerprint",
    "split_half_stability",
]
