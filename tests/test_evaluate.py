"""evaluate.py and calibrate.py end to end on tiny configs, and their bad-input errors."""

import json

import numpy as np
import pytest
from conftest import BAD_METHODS, assert_one_line_error

from qdjax.localize import locator
from qdjax.sim import data, presets
from qdjax.study import evaluate

# The study's test set sizes per regime (SPEC section 2).
STUDY_TEST_FRAMES = (2570, 2410, 1870)


def reference_auc(detections, keypoints, present, epsilon):
  """SPEC section 4, written out plainly: greedy matching in descending score order to the
  nearest unmatched ground truth of the same frame, then the all-point-interpolated area."""
  pooled = sorted(
    ((float(s), f, float(x), float(y)) for f, d in enumerate(detections) for x, y, s in d),
    key=lambda row: -row[0],
  )
  matched, hits = set(), []
  for _, f, x, y in pooled:
    distances = {
      q: np.hypot(x - keypoints[f, q, 0], y - keypoints[f, q, 1])
      for q in np.flatnonzero(present[f])
      if (f, q) not in matched
    }
    near = {q: d for q, d in distances.items() if d <= epsilon}
    if near:
      matched.add((f, min(near, key=near.get)))
    hits.append(bool(near))
  if not hits:
    return 0.0
  true_positives = np.cumsum(hits)
  precision = true_positives / np.arange(1, len(hits) + 1)
  recall = true_positives / present.sum()
  precision = np.maximum.accumulate(precision[::-1])[::-1]
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def test_evaluate_end_to_end_tiny(script, tmp_path):
  out = tmp_path / "ev"
  result = script(
    "evaluate.py",
    "--methods=trackpy,mle",
    "--scale=0.01",
    f"--output_dir={out}",
    "--config.trackpy_settings=auto",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  table = json.loads((out / "table.json").read_text())
  assert set(table["auc"]) == {"trackpy", "mle"}
  assert table["columns"][0] == "D1 e1" and len(table["columns"]) == 9
  assert table["study"]["TrackPy"] == [0.06, 0.42, 0.73, 0.04, 0.30, 0.61, 0.02, 0.19, 0.47]
  for row in table["auc"].values():
    assert len(row) == 9 and all(0 <= v <= 1 for v in row)
    # AUC cannot fall as epsilon grows (every match at a small radius holds at a larger).
    for k in range(3):
      assert row[3 * k] <= row[3 * k + 1] <= row[3 * k + 2]
  mle_d1 = table["methods"]["mle"]["d1"]
  assert mle_d1["frames"] == 26  # round(2570 * 0.01)
  assert mle_d1["epsilons"]["3"]["tp"] + mle_d1["epsilons"]["3"]["fn"] == 26
  assert table["crlb"]["rmse_px"] > 0
  # Every cell again, from frames drawn here for each regime's D and detections located
  # here: a swapped regime, a frame paired with another's truth or a wrong count fails.
  preset = presets.get("paper")
  assert table["regimes_um2_s"] == list(preset.regimes)
  used = {k: table["trackpy_settings"][k] for k in ("diameter", "minmass", "percentile")}
  methods = {
    "mle": locator.make("mle"),
    "trackpy": locator.make("trackpy", trackpy_settings=used, workers=1),
  }
  for k, study_frames in zip((1, 2, 3), STUDY_TEST_FRAMES, strict=True):
    params = preset.sim_params(diffusion=preset.regimes[k - 1])
    frames = data.generate(params, round(0.01 * study_frames), data.split_seed(0, f"test_d{k}"))
    for name, locate in methods.items():
      assert table["methods"][name][f"d{k}"]["frames"] == len(frames["images"])
      found = locate(frames["images"])
      for j, epsilon in enumerate(preset.epsilons_px):
        cell = table["auc"][name][3 * (k - 1) + j]
        expected = reference_auc(found, frames["keypoints"], frames["present"], epsilon)
        assert cell == pytest.approx(expected, abs=1e-4), (name, k, epsilon)
  markdown = (out / "table.md").read_text()
  assert "| TrackPy |" in markdown and "| mle (qdjax) |" in markdown
  assert "| Keypoint R-CNN (paper) |" in result.stdout
  assert (out / "pr_curves.png").stat().st_size > 1000
  assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporaries


@pytest.mark.parametrize(
  "args, needle",
  BAD_METHODS
  + [
    (["--scale=0"], "scale"),
    (["--config.preset=nature2023"], "nature2023"),
    (["--methods=mle", "--config.mle_score=mass"], "score"),
  ],
)
def test_evaluate_bad_input_is_one_line(script, tmp_path, args, needle):
  result = script("evaluate.py", f"--output_dir={tmp_path / 'ev'}", *args)
  assert_one_line_error(result, needle)


def test_calibrate_end_to_end_tiny(script, tmp_path):
  out = tmp_path / "paper.json"
  result = script(
    "calibrate.py",
    f"--output={out}",
    "--config.peak_photons_grid=3,",
    "--config.background_photons_grid=4,",
    "--config.coarse_scale=0.03",
    "--config.fine_scale=0.03",
    "--config.fine_fits=3",
    "--config.free_fits=3",
    "--config.diameters=7,",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads(out.read_text())
  assert {"values", "regimes", "provenance", "trackpy_settings", "gap", "max_abs_gap"} <= set(
    record
  )
  d1, d2, d3 = record["regimes"]
  assert 0.01 <= d1 <= d2 <= d3 and d3 == pytest.approx(10 * d1, rel=1e-2)
  assert {"peak_photons", "background_photons"} <= set(record["values"])
  for name in list(record["values"]) + ["regimes"]:
    assert "experiments/calibrate.py" in record["provenance"][name]
  gap = np.array(record["gap"])
  assert gap.shape == (9,)
  np.testing.assert_allclose(
    gap, np.array(record["trackpy_row"]) - np.array(record["study_row"]), atol=2e-4
  )
  assert record["max_abs_gap"] == pytest.approx(np.abs(gap).max(), abs=2e-4)
  assert record["trackpy_settings"]["diameter"] % 2 == 1
  assert "max |gap|" in result.stdout


def test_calibration_search_improves_on_its_start():
  """From a poor start (D1 near the top of its range: trackpy finds little), the fine
  search moves D1 and D2 to a strictly smaller worst-cell gap, every accepted move no
  worse than the one before."""
  import math

  from qdjax.study import calibrate

  preset = presets.get("paper")
  scores = calibrate.TrackpyScores(preset, 0, (7,), 64.0, 0.0, preset.epsilons_px)
  size = 12
  poor = calibrate.Candidate.of(peak_photons=3.0, background_photons=4.0, d1=2.5, d2=20.0)
  start = scores.fit(poor, size)
  coordinates = [
    calibrate.Coordinate("d1", math.log(1.3)),
    calibrate.Coordinate("d2", math.log(1.3)),
  ]
  best, history = calibrate.evolution_search(
    scores, start, coordinates, size, 12, (0.01, 3.0), (7,), seed=0, progress=False
  )
  assert history[-1]["fits"] == 12
  gaps = [h["max_abs_gap"] for h in history if "max_abs_gap" in h]
  assert gaps[0] == start.key[0] and len(gaps) >= 2
  assert np.all(np.diff(gaps) <= 0)
  assert best.key[0] < start.key[0] - 0.05, (best.key, start.key)
  # The reported gap is the one its values give when scored afresh.
  again = calibrate.TrackpyScores(preset, 0, (7,), 64.0, 0.0, preset.epsilons_px)
  np.testing.assert_allclose(again.fit(best.candidate, size).gap, best.gap)


def test_calibrate_bad_input_is_one_line(script, tmp_path):
  result = script("calibrate.py", f"--output={tmp_path / 'x.json'}", "--config.d1_range=3,0.1")
  assert_one_line_error(result, "d1_range")
  result = script("calibrate.py", f"--output={tmp_path / 'missing' / 'x.json'}")
  assert_one_line_error(result, "missing")


def test_parse_methods():
  assert evaluate.parse_methods("mle, trackpy,mle") == ["mle", "trackpy"]
  with pytest.raises(ValueError, match="empty"):
    evaluate.parse_methods(" , ")


def test_model_is_skipped_with_a_notice_without_weights_and_run_with_them(monkeypatch):
  from ml_collections import config_dict

  from qdjax.detect import inference
  from qdjax.sim import presets

  config = config_dict.ConfigDict({"methods": "model", "workdir": None, "model": "paper"})
  preset = presets.get("paper")

  def missing(workdir=None, model=None):
    raise FileNotFoundError("no pretrained weights shipped yet")

  monkeypatch.setattr(inference, "load", missing)
  methods, _, notices = evaluate.make_methods(config, preset, progress=False)
  assert methods == {} and len(notices) == 1
  assert notices[0].startswith("skipping model") and "\n" not in notices[0]

  def detector(images):
    return [np.array([[1.0, 2.0, 0.5]]) for _ in images]

  asked = []
  monkeypatch.setattr(
    inference, "load", lambda workdir=None, model=None: asked.append(model) or detector
  )
  methods, _, notices = evaluate.make_methods(config, preset, progress=False)
  assert methods == {"model": detector} and asked == ["paper"]
  assert notices == ["model: shipped 'paper'"]
