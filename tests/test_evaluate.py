"""evaluate.py and calibrate.py end to end on tiny configs, and their bad-input errors."""

import json

import numpy as np
import pytest
from conftest import assert_one_line_error

from qdjax import evaluate


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
  markdown = (out / "table.md").read_text()
  assert "| TrackPy |" in markdown and "| mle (qdjax) |" in markdown
  assert "| Keypoint R-CNN (paper) |" in result.stdout
  assert (out / "pr_curves.png").stat().st_size > 1000
  assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporaries


@pytest.mark.parametrize(
  "args, needle",
  [
    (["--methods=trackpy,sl2pm"], "sl2pm"),
    (["--scale=0"], "scale"),
    (["--methods=model", "--workdir=/nonexistent/run"], "/nonexistent/run"),
    (["--config.preset=nature2023"], "nature2023"),
    (["--methods=mle", "--config.mle_score=mass"], "score"),
    (["stray"], "unexpected"),
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

  from qdjax import inference, presets

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
