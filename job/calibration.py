"""How well a run's confidence matches its accuracy, and temperature scaling.

Label smoothing's best-documented effect is on calibration (Müller, Kornblith and
Hinton 2019, "When does label smoothing help?"), measured there as expected
calibration error over 15 equal-width bins of top-1 confidence, as here. No Keras:
`lsjob report` recomputes all of it from predictions.npz.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import log_loss

BINS = 15
# Keras clips probabilities to this epsilon in its cross-entropy; val_nll is logged with
# the same clip on every backend (model.validation_nll), so test NLL matches it.
PROB_EPSILON = 1e-7
LOGIT_FLOOR = float(np.finfo(np.float32).tiny)
# Temperatures searched, as log T: 0.05 to 20 covers any network worth calibrating.
LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))


def clip_probs(probs: np.ndarray) -> np.ndarray:
    """Keep log finite for a confident miss; renormalise so rows stay distributions."""
    clipped = np.clip(np.asarray(probs, dtype=np.float64), PROB_EPSILON, 1.0)
    return clipped / clipped.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class, probabilities clipped as Keras clips them."""
    probs = clip_probs(probs)
    return float(log_loss(labels, probs, labels=np.arange(probs.shape[1])))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean over examples of the squared distance to the one-hot label."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def reliability_bins(probs: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Per equal-width confidence bin (lower, upper], BINS of them: count, mean confidence, accuracy."""
    bins = BINS
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    # Bin i holds confidences in (i/B, (i+1)/B], the convention of Guo et al. 2017.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    correct_sum = np.bincount(index, weights=correct, minlength=bins)
    return [
        {
            "lower": i / bins,
            "upper": (i + 1) / bins,
            "count": int(count[i]),
            "confidence": float(conf_sum[i] / count[i]) if count[i] else None,
            "accuracy": float(correct_sum[i] / count[i]) if count[i] else None,
        }
        for i in range(bins)
    ]


def ece_mce(table: list[dict]) -> tuple[float, float]:
    """Expected (count-weighted mean) and maximum |accuracy - confidence| over non-empty bins."""
    total = sum(b["count"] for b in table)
    gaps = [(b["count"], abs(b["accuracy"] - b["confidence"])) for b in table if b["count"]]
    if not total:
        return 0.0, 0.0
    return float(sum(n * g for n, g in gaps) / total), float(max(g for _, g in gaps))


def summary(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Everything calibration.json reports for one set of predictions."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    table = reliability_bins(probs, labels)
    ece, mce = ece_mce(table)
    return {
        "examples": int(len(labels)),
        "accuracy": float(np.mean(probs.argmax(axis=1) == labels)),
        "mean_confidence": float(np.mean(probs.max(axis=1))),
        "ece": ece,
        "mce": mce,
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
        "bins": table,
    }


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T), with log-probabilities standing in for the logits (same softmax).

    Floored at float32's smallest normal number, below which the saved float32 softmax
    holds nothing: PROB_EPSILON's floor would cap every gap between logits at 16 and fit
    too low a T for a confident model (3.1 where the logits give 4.0)."""
    p = np.asarray(probs, dtype=np.float64)
    logits = np.log(np.maximum(p, LOGIT_FLOOR)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises NLL on held-out predictions (Guo et al. 2017); one scalar,
    so accuracy is unchanged. Searched as log T, where the NLL is smooth and unimodal."""
    labels = np.asarray(labels, dtype=np.int64)
    result = minimize_scalar(
        lambda log_t: nll(apply_temperature(probs, float(np.exp(log_t))), labels),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(result.x))


def at_search_bound(temperature: float) -> bool:
    """Whether a fitted T sits at an end of the searched range, where the NLL may still fall
    beyond it: at the low end, held-out predictions (nearly) all right (a holdout too small or too
    easy); at the high end, predictions that carry next to nothing about the label, or a broken holdout."""
    return any(abs(np.log(temperature) - bound) < 1e-3 for bound in LOG_T_BOUNDS)
