"""Calibration metrics against values worked out by hand, and temperature scaling."""

import math
import warnings

import numpy as np
import pytest

from job import calibration

# Four examples, two classes. Top-1 confidences 0.9, 0.6, 0.8, 0.55; the second and the
# fourth are misses. With 15 bins of width 1/15: 0.9 -> bin 13, 0.6 -> bin 8 (0.6 is its
# upper edge: bins are (lower, upper]), 0.8 -> bin 11, 0.55 -> bin 8.
PROBS = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.55, 0.45]])
LABELS = np.array([0, 0, 1, 1])


def test_bins_follow_the_lower_exclusive_upper_inclusive_convention():
    table = calibration.reliability_bins(PROBS, LABELS)
    assert len(table) == 15 and table[0]["lower"] == 0 and table[-1]["upper"] == 1
    filled = {i: b for i, b in enumerate(table) if b["count"]}
    assert sorted(filled) == [8, 11, 13]
    assert filled[8]["count"] == 2 and filled[8]["confidence"] == pytest.approx(0.575)
    assert filled[8]["accuracy"] == 0.0
    assert (filled[11]["accuracy"], filled[13]["accuracy"]) == (1.0, 1.0)
    assert table[0]["confidence"] is None and table[0]["accuracy"] is None


def test_ece_mce_nll_brier_by_hand():
    s = calibration.summary(PROBS, LABELS)
    # ECE: bin 8 holds 2 of 4 with gap 0.575, bin 11 gap 0.2, bin 13 gap 0.1.
    assert s["ece"] == pytest.approx(0.5 * 0.575 + 0.25 * 0.2 + 0.25 * 0.1)
    assert s["mce"] == pytest.approx(0.575)
    assert s["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.8) + math.log(0.45)) / 4)
    # Brier per example: sum over classes of (p - onehot)^2.
    per_example = [0.1**2 * 2, 0.6**2 * 2, 0.2**2 * 2, 0.55**2 * 2]
    assert s["brier"] == pytest.approx(sum(per_example) / 4)
    assert s["accuracy"] == 0.5 and s["mean_confidence"] == pytest.approx((0.9 + 0.6 + 0.8 + 0.55) / 4)
    assert s["examples"] == 4


def test_a_confident_miss_has_a_finite_nll():
    assert math.isfinite(calibration.nll(np.array([[1.0, 0.0]]), np.array([1])))


def test_perfectly_calibrated_predictions_lie_on_the_diagonal():
    # Confidence c, correct with probability c: every bin's accuracy is its confidence.
    rng = np.random.default_rng(0)
    n, k = 200_000, 10
    conf = rng.uniform(0.1, 1.0, n)
    labels = rng.integers(0, k, n)
    correct = rng.uniform(size=n) < conf
    predicted = np.where(correct, labels, (labels + rng.integers(1, k, n)) % k)
    probs = np.tile(((1 - conf) / (k - 1))[:, None], (1, k))
    probs[np.arange(n), predicted] = conf
    s = calibration.summary(probs, labels)
    for b in s["bins"]:
        if b["count"] > 1000:
            assert b["accuracy"] == pytest.approx(b["confidence"], abs=0.02)
    assert s["ece"] < 0.01


def test_temperature_scaling_recovers_the_temperature_that_made_predictions_overconfident():
    rng = np.random.default_rng(1)
    n, k = 20_000, 10
    logits = rng.normal(size=(n, k)) * 2.0
    calibrated = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(k, p=p) for p in calibrated])
    overconfident = calibration.apply_temperature(calibrated, 0.5)  # logits doubled
    temperature = calibration.fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(2.0, rel=0.05)
    rescaled = calibration.apply_temperature(overconfident, temperature)
    assert calibration.nll(rescaled, labels) < calibration.nll(overconfident, labels)
    assert calibration.summary(rescaled, labels)["ece"] < calibration.summary(overconfident, labels)["ece"]
    # One scalar: the predicted class, hence accuracy, never changes.
    assert (rescaled.argmax(axis=1) == overconfident.argmax(axis=1)).all()


@pytest.mark.parametrize("scale", [6, 10])
def test_the_temperature_of_a_very_confident_model_matches_the_one_its_logits_give(scale):
    # Probabilities far below the NLL's 1e-7 floor still carry the logits' gaps.
    rng = np.random.default_rng(1)
    n, k = 10_000, 10
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += 2.5
    logits *= scale
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = (np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)).astype(np.float32)  # as saved

    def nll_of_logits(t):
        z = logits / t
        z -= z.max(axis=1, keepdims=True)
        return np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(n), labels])

    from scipy.optimize import minimize_scalar

    best = minimize_scalar(lambda lt: nll_of_logits(np.exp(lt)), bounds=calibration.LOG_T_BOUNDS, method="bounded")
    assert calibration.fit_temperature(probs, labels) == pytest.approx(np.exp(best.x), rel=0.01)


def test_temperature_one_changes_nothing():
    np.testing.assert_allclose(calibration.apply_temperature(PROBS, 1.0), PROBS, atol=1e-12)


def test_a_temperature_at_either_end_of_the_search_is_flagged():
    # A fit pinned at either end is no optimum: too-timid predictions run into the lower end just as
    # uninformative ones run into the upper. calibration.json must say so for both, and not for T = 1.
    low, high = np.exp(calibration.LOG_T_BOUNDS)
    assert calibration.at_search_bound(low) and calibration.at_search_bound(high)
    assert not calibration.at_search_bound(1.0)
    # Always right, never confident: sharpening lowers the NLL all the way to the lower end.
    probs = np.full((50, 10), 0.09)
    labels = np.arange(50) % 10
    probs[np.arange(50), labels] = 0.19
    temperature = calibration.fit_temperature(probs, labels)
    assert temperature == pytest.approx(low, rel=1e-3) and calibration.at_search_bound(temperature)


# The report warns of a temperature at an end of the search; a real optimum near one is not flagged.
def test_a_temperature_near_but_not_at_an_end_of_the_search_is_not_flagged():
    low, high = np.exp(calibration.LOG_T_BOUNDS)
    assert not calibration.at_search_bound(low * 1.05) and not calibration.at_search_bound(high / 1.05)
    assert calibration.at_search_bound(low * 1.0005) and calibration.at_search_bound(high / 1.0005)


# The range the report's warning names, 0.05 to 20.
def test_temperatures_from_0_05_to_20_are_searched():
    np.testing.assert_allclose(np.exp(calibration.LOG_T_BOUNDS), (0.05, 20.0))
    # A model that needs sharpening by 1/T = 12.5 gets it: T = 0.08 lies inside the range.
    rng = np.random.default_rng(2)
    n, k = 20_000, 10
    logits = rng.normal(size=(n, k))
    calibrated = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(k, p=p) for p in calibrated])
    timid = calibration.apply_temperature(calibrated, 1 / 0.08)
    assert calibration.fit_temperature(timid, labels) == pytest.approx(0.08, rel=0.05)


# Clipped rows are still distributions, so a confident
# miss costs -log(1e-7 / (1 + 1e-7)) and scikit-learn is never handed rows that do not sum to 1
# (which it warns of on every call).
def test_clipped_probabilities_still_sum_to_one_and_the_nll_warns_of_nothing():
    clipped = calibration.clip_probs(np.array([[1.0, 0.0], [0.5, 0.5]]))
    np.testing.assert_allclose(clipped.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert calibration.nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-math.log(1e-7 / (1 + 1e-7)))


# A float32 confidence rounded a hair above 1 is
# still counted, in the last bin, not dropped from the table and the ECE.
def test_a_confidence_rounded_above_one_lands_in_the_last_bin():
    probs = np.array([[np.nextafter(1.0, 2.0), 0.0], [0.9, 0.1]])
    table = calibration.reliability_bins(probs, np.array([0, 0]))
    assert sum(b["count"] for b in table) == 2 and table[-1]["count"] == 1
