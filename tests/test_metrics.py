"""The metric on hand-computed cases, and the Cramer-Rao bound against published values."""

import math

import numpy as np
import pytest

from qdjax.evaluation import metrics
from qdjax.sim import presets


def one_qd(points):
  """keypoints [n, 1, 2] and present [n, 1] for one QD per frame (None: empty frame)."""
  keypoints = np.array([[p if p is not None else (np.nan, np.nan)] for p in points], float)
  present = np.array([[p is not None] for p in points])
  return keypoints, present


def det(*rows):
  return np.array(rows, float).reshape(-1, 3)


def test_perfect_set_has_auc_one():
  keypoints, present = one_qd([(3.0, 4.0), (10.5, 2.25), (7.0, 7.0)])
  detections = [det((x, y, s)) for (x, y), s in zip(keypoints[:, 0], (0.2, 0.9, 0.5), strict=True)]
  for epsilon in (1.0, 2.0, 3.0):
    assert metrics.auc(detections, keypoints, present, epsilon) == 1.0


def test_half_missed_gives_half():
  keypoints, present = one_qd([(3.0, 4.0), (10.0, 2.0), (7.0, 7.0), (5.0, 5.0)])
  detections = [det((3.0, 4.0, 0.9)), det(), det((7.2, 7.0, 0.8)), det()]
  assert metrics.auc(detections, keypoints, present, 1.0) == pytest.approx(0.5)


def test_duplicates_are_false_positives_and_lower_precision():
  keypoints, present = one_qd([(5.0, 5.0), (12.0, 9.0)])
  # Sorted: 0.9 TP, 0.8 duplicate FP, 0.7 TP. Precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1;
  # the envelope is 1 then 2/3, so AUC = 1/2 * 1 + 1/2 * 2/3.
  detections = [det((5.0, 5.0, 0.9), (5.1, 5.0, 0.8)), det((12.0, 9.0, 0.7))]
  m = metrics.match(metrics.Detections.from_list(detections), keypoints, present, 1.0)
  assert m.true_positive.tolist() == [True, False, True]
  assert metrics.auc(detections, keypoints, present, 1.0) == pytest.approx(0.5 + 1 / 3)
  assert metrics.auc([det((5.0, 5.0, 0.9)), det((12.0, 9.0, 0.7))], keypoints, present, 1.0) == 1


def test_detection_at_exactly_epsilon_is_a_true_positive():
  keypoints, present = one_qd([(5.0, 5.0)])
  at_five = [det((8.0, 9.0, 1.0))]  # a 3-4-5 triangle: distance exactly 5
  assert metrics.auc(at_five, keypoints, present, 5.0) == 1.0
  assert metrics.auc(at_five, keypoints, present, np.nextafter(5.0, 0)) == 0.0
  assert metrics.auc([det((6.0, 5.0, 1.0))], keypoints, present, 1.0) == 1.0


def test_detections_in_empty_frames_are_false_positives():
  keypoints, present = one_qd([(5.0, 5.0), None])
  # The FP in the empty frame ranks first: precision 0 at recall 0, then 1/2 at recall 1.
  detections = [det((5.0, 5.0, 0.5)), det((3.0, 3.0, 0.9))]
  m = metrics.match(metrics.Detections.from_list(detections), keypoints, present, 3.0)
  assert m.true_positive.tolist() == [False, True]
  assert m.num_ground_truth == 1
  assert metrics.auc(detections, keypoints, present, 3.0) == pytest.approx(0.5)
  # A frame with no ground truth and no detection changes nothing.
  assert metrics.auc([det((5.0, 5.0, 0.5)), det()], keypoints, present, 3.0) == 1.0


def test_several_qds_per_frame_match_nearest_unmatched():
  keypoints = np.array([[[2.0, 2.0], [10.0, 10.0], [20.0, 5.0], [np.nan, np.nan]]])
  present = np.array([[True, True, True, False]])
  detections = [
    det(
      (20.5, 5.0, 0.95),  # QD 2
      (3.0, 2.0, 0.9),  # QD 0
      (2.5, 2.0, 0.8),  # nearest is QD 0, already matched; QD 1 is too far: FP
      (9.0, 11.0, 0.7),  # QD 1, at sqrt(2)
      (6.0, 6.0, 0.6),  # nothing within 3 px: FP
    )
  ]
  m = metrics.match(metrics.Detections.from_list(detections), keypoints, present, 3.0)
  assert m.true_positive.tolist() == [True, True, False, True, False]
  np.testing.assert_allclose(m.error[[0, 1, 3]], [[0.5, 0.0], [1.0, 0.0], [-1.0, 1.0]])
  assert np.isnan(m.error[[2, 4]]).all()
  # Between two QDs, a detection takes the nearer one.
  m = metrics.match(
    metrics.Detections.from_list([det((5.0, 5.0, 1.0))]), keypoints[:, :2], present[:, :2], 20.0
  )
  np.testing.assert_allclose(m.error[0], [3.0, 3.0])


def test_tied_scores_are_one_threshold_whatever_their_order():
  keypoints, present = one_qd([(5.0, 5.0), (9.0, 9.0)])
  hit, miss = det((5.0, 5.0, 1.0)), det((15.0, 15.0, 1.0))
  # One tie is one point (recall 1/2, precision 1/2): AUC 1/4 in either frame order.
  # Taking the tied detections one by one would give 1/2 with the hit first.
  assert metrics.auc([hit, miss], keypoints, present, 1.0) == pytest.approx(0.25)
  assert metrics.auc([miss, hit], keypoints[::-1], present[::-1], 1.0) == pytest.approx(0.25)
  # A lower-scored hit adds (recall 1, precision 2/3); the envelope lifts the tie's point
  # to 2/3 as well.
  both = [hit, np.concatenate([miss, det((9.0, 9.0, 0.5))])]
  assert metrics.auc(both, keypoints, present, 1.0) == pytest.approx(2 / 3)


def test_rmse_and_bias_of_matched_detections():
  keypoints, present = one_qd([(5.0, 5.0), (9.0, 9.0), (1.0, 1.0)])
  detections = [det((6.0, 5.0, 0.9)), det((9.0, 8.0, 0.8)), det((10.0, 10.0, 0.7))]
  report = metrics.report(detections, keypoints, present, 2.0)
  # Errors (1, 0) and (0, -1); the third detection is 9 px off and not matched.
  assert report.localisation.num_matched == 2
  assert report.localisation.rmse_px == pytest.approx(1.0)
  assert report.localisation.bias_px == pytest.approx((0.5, -0.5))
  empty = metrics.report([det(), det(), det()], keypoints, present, 2.0)
  assert empty.auc == 0.0 and math.isnan(empty.localisation.rmse_px)
  assert empty.jaccard.fn == 3 and empty.jaccard.jaccard == 0.0


def test_jaccard_at_the_best_f1_threshold():
  keypoints, present = one_qd([(1.0, 1.0), (5.0, 5.0), (9.0, 9.0), (13.0, 13.0), (17.0, 17.0)])
  far = (30.0, 30.0)
  detections = [
    det((1.0, 1.0, 0.9)),
    det((5.0, 5.0, 0.8)),
    det((*far, 0.7)),
    det((13.0, 13.0, 0.6)),
    det((*far, 0.5)),
  ]
  # 5 ground truths. Thresholds: TP/FP = 1/0, 2/0, 2/1, 3/1, 3/2 -> F1 = 2/6, 4/7, 4/8,
  # 6/9, 6/10. Best: 3 TP, 1 FP, 2 FN at 0.6, Jaccard 3/6.
  j = metrics.report(detections, keypoints, present, 1.0).jaccard
  assert (j.tp, j.fp, j.fn, j.threshold) == (3, 1, 2, 0.6)
  assert j.f1 == pytest.approx(6 / 9)
  assert j.jaccard == pytest.approx(0.5)


def test_crlb_without_background_is_the_pixelated_shot_noise_limit():
  # b -> 0: var = sa^2 / N with sa^2 = s^2 + a^2 / 12.
  c = metrics.crlb(100.0, 0.0, 2.0, 1.0)
  assert c.variance_px2 == pytest.approx((4 + 1 / 12) / 100)
  assert metrics.crlb(100.0, 1e-9, 2.0, 1.0).variance_px2 == pytest.approx(c.variance_px2, rel=1e-6)
  assert c.rmse_px == pytest.approx(math.sqrt(2 * c.variance_px2))
  # a -> 0 (no background): the continuous limit s^2 / N.
  assert metrics.crlb(250.0, 0.0, 1.5, 1e-6).variance_px2 == pytest.approx(1.5**2 / 250)


def test_crlb_matches_published_values():
  # tau = 1 turns the integral into int_0^1 ln t / (1 + t) dt = -pi^2 / 12 (Gradshteyn &
  # Ryzhik 4.231.1), so the bound is sa^2 / N / (1 - pi^2 / 12).
  s, a = 2.0, 1.0
  sa2 = s**2 + a**2 / 12
  n = 2 * math.pi * sa2 * 3.0 / a**2  # b = 3 per pixel
  c = metrics.crlb(n, 3.0, s, a)
  assert c.tau == pytest.approx(1.0)
  assert c.variance_px2 == pytest.approx(sa2 / n / (1 - math.pi**2 / 12), rel=1e-9)
  # Rieger & Stallinga (2014, ChemPhysChem 15:664) approximate Mortensen's factor by
  # 1 + 4 tau + sqrt(2 tau / (1 + 4 tau)), within a few percent over the whole range.
  for tau in (0.01, 0.1, 0.5, 2.0, 10.0, 100.0):
    b = tau * n * a**2 / (2 * math.pi * sa2)
    c = metrics.crlb(n, b, s, a)
    approx = sa2 / n * (1 + 4 * tau + math.sqrt(2 * tau / (1 + 4 * tau)))
    assert c.variance_px2 == pytest.approx(approx, rel=0.04), tau
  # More background never helps.
  variances = [metrics.crlb(n, b, s, a).variance_px2 for b in (0.0, 0.5, 2.0, 8.0)]
  assert variances == sorted(variances)


def test_crlb_for_the_paper_preset_counts_the_simulated_spot():
  params = presets.get("paper").sim_params(diffusion=0.0, peak_photons=3.0, background_photons=4.0)
  ntot = metrics.static_spot_photons(params)
  # N times the PSF integral over pixels: 2 pi (sxy / a)^2 for a spot far from the edges.
  assert ntot == pytest.approx(3.0 * 2 * math.pi * 2.0**2, rel=2e-3)
  c = metrics.crlb_for_params(params)
  assert c.total_photons == pytest.approx(ntot)
  assert c.sigma_px == pytest.approx(2.0) and c.background_photons == 4.0


def test_crlb_rejects_bad_input():
  with pytest.raises(ValueError, match="Ntot"):
    metrics.crlb(0.0, 1.0, 2.0)
  with pytest.raises(ValueError):
    metrics.crlb(10.0, -1.0, 2.0)
