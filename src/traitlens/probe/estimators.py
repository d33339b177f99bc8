"""Linear probes as scikit-learn estimators: standardize, then a linear model.

Features are standardized *inside* the probe so that, under cross-validation,
the scaler only ever sees the training fold (a scaler fitted on all prompts
would leak test-fold statistics into training). Both probes expose their
weights in raw activation units (``coef_``, ``intercept_``) with the scaler
folded in, so a probe reads a trait off a hidden state with one dot product.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

FloatArray = NDArray[np.floating[Any]]


def _fold_scaler(
    coef: FloatArray, intercept: FloatArray, scaler: StandardScaler
) -> tuple[FloatArray, FloatArray]:
    """Express ``coef @ ((x - mean) / scale) + intercept`` as ``coef' @ x + intercept'``."""
    mean = np.asarray(scaler.mean_, dtype=np.float64)
    scale = np.asarray(scaler.scale_, dtype=np.float64)
    raw_coef = np.asarray(coef, dtype=np.float64) / scale
    raw_intercept = np.asarray(intercept, dtype=np.float64) - raw_coef @ mean
    return raw_coef, raw_intercept


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Standardized L2-regularized logistic regression (binary or multinomial).

    The binary case is the classic linear probe (Alain & Bengio 2016; Belinkov
    2022): its ``decision_function`` is the log-odds of the positive class
    (class ``classes_[1]``), which traitlens uses as a trait read-out in logit
    units. ``fit`` with a single class present is refused (sklearn would fail
    with a less helpful message).

    Hyperparameters: ``C`` (inverse L2 strength on standardized features),
    ``max_iter`` and ``tol`` for lbfgs — modest on purpose, since a probe is
    fitted for every layer × trait × fold and the problems are small.
    """

    def __init__(self, C: float = 0.1, max_iter: int = 200, tol: float = 1e-3) -> None:
        self.C = C
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X: ArrayLike, y: ArrayLike) -> LinearProbe:
        """Fit on ``X`` ``[n_samples, n_features]`` and labels ``y`` ``[n_samples]``."""
        features = np.asarray(X, dtype=np.float64)
        labels = np.asarray(y)
        if np.unique(labels).size < 2:
            raise ValueError(
                "LinearProbe.fit needs at least two classes in y; got only "
                f"{np.unique(labels).tolist()}"
            )
        self.scaler_ = StandardScaler().fit(features)
        self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=self.tol)
        self.model_.fit(self.scaler_.transform(features), labels)
        self.classes_ = self.model_.classes_
        self.coef_, self.intercept_ = _fold_scaler(
            self.model_.coef_, self.model_.intercept_, self.scaler_
        )
        self.n_features_in_ = features.shape[1]
        return self

    def decision_function(self, X: ArrayLike) -> FloatArray:
        """Logits: ``[n_samples]`` (log-odds of ``classes_[1]``) or ``[n_samples, n_classes]``."""
        check_is_fitted(self, "coef_")
        scores = np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict_proba(self, X: ArrayLike) -> FloatArray:
        check_is_fitted(self, "coef_")
        return np.asarray(self.model_.predict_proba(self.scaler_.transform(np.asarray(X))))

    def predict(self, X: ArrayLike) -> NDArray[Any]:
        scores = self.decision_function(X)
        index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(1)
        return np.asarray(self.classes_[index])


class RidgeProbe(RegressorMixin, BaseEstimator):
    """Standardized ridge regression, for continuous targets such as persona intensity.

    ``alpha`` is the L2 strength on standardized features; with far fewer
    prompts than hidden dimensions an unregularized fit would interpolate the
    training fold, so the default is deliberately strong. ``score`` is R².
    """

    def __init__(self, alpha: float = 100.0) -> None:
        self.alpha = alpha

    def fit(self, X: ArrayLike, y: ArrayLike) -> RidgeProbe:
        """Fit on ``X`` ``[n_samples, n_features]`` and targets ``y`` ``[n_samples]``."""
        features = np.asarray(X, dtype=np.float64)
        self.scaler_ = StandardScaler().fit(features)
        model = Ridge(alpha=self.alpha).fit(self.scaler_.transform(features), np.asarray(y))
        self.coef_, self.intercept_ = _fold_scaler(
            np.atleast_1d(model.coef_), np.atleast_1d(model.intercept_), self.scaler_
        )
        self.n_features_in_ = features.shape[1]
        return self

    def predict(self, X: ArrayLike) -> FloatArray:
        check_is_fitted(self, "coef_")
        return np.asarray(X, dtype=np.float64) @ self.coef_ + float(self.intercept_[0])
