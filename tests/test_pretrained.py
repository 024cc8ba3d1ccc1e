"""The shipped model: it loads without training code, finds QDs, and locate uses it."""

import csv
import json

import numpy as np
import pytest
import tifffile

from qdjax import data, inference, metrics, presets

pytestmark = pytest.mark.skipif(
  not (inference.PRETRAINED_DIR / inference.WEIGHTS).exists(), reason="no shipped weights"
)

# Well below the measured values (results/paper_table.md: AUC at 3 px on test_d1..3), so that only a
# broken model, decoder or coordinate convention fails.
AUC_FLOOR_3PX = {"test_d1": 0.80, "test_d2": 0.65, "test_d3": 0.45}


@pytest.fixture(scope="module")
def locator():
  return inference.load(model="paper")


def test_shipped_directory_records_its_provenance():
  config = json.loads((inference.PRETRAINED_DIR / inference.CONFIG).read_text())
  text = json.dumps(config)
  assert "train.py" in text and "seed" in text and "paper" in text
  size = sum(p.stat().st_size for p in inference.PRETRAINED_DIR.iterdir())
  assert size < 5e6


@pytest.mark.parametrize("split", sorted(AUC_FLOOR_3PX))
def test_shipped_model_beats_a_floor_on_a_small_test_set(locator, split):
  frames = data.load_split(presets.get("paper"), split, seed=7, scale=0.12)
  found = locator(frames["images"])
  assert len(found) == len(frames["images"])
  auc = metrics.auc(found, frames["keypoints"], frames["present"], 3.0)
  assert auc > AUC_FLOOR_3PX[split], auc


def test_any_frame_size_and_empty_frames(locator):
  preset = presets.get("paper")
  big = data.generate(preset.sim_params(regime=1, height=40, width=53), 64, seed=3)
  found = locator(big["images"])
  best = np.array([f[0, :2] if len(f) else [np.nan, np.nan] for f in found])
  err = np.hypot(*(best - big["keypoints"][:, 0]).T)
  assert np.nanmedian(err) < 1.5
  # A crop of 8 x 12 around nothing but background, and a constant frame.
  crop = big["images"][:4, :8, :12]
  assert len(locator(crop)) == 4
  flat = np.full((2, 24, 25), 3.0, np.float32)
  for detections in locator(flat):
    assert detections.shape[1] == 3 and np.all(np.isfinite(detections))
  # Empty frames score below frames with a QD.
  empty = data.generate(preset.sim_params(regime=1, num_particles=0), 200, seed=4)["images"]
  with_qd = data.generate(preset.sim_params(regime=1), 200, seed=4)["images"]
  top = lambda fs: np.array([f[0, 2] if len(f) else 0.0 for f in fs])
  assert np.median(top(locator(empty))) < np.median(top(locator(with_qd)))


def test_locate_script_model_npy_and_tif_agree(tmp_path, script):
  frames = data.generate(presets.get("paper").sim_params(regime=2), 20, seed=11)
  np.save(tmp_path / "f.npy", frames["images"])
  tifffile.imwrite(tmp_path / "f.tif", frames["images"])
  tables = []
  for name in ("f.npy", "f.tif"):
    out = tmp_path / f"{name}.csv"
    result = script(
      "locate.py", f"--input={tmp_path / name}", f"--output={out}", "--min_score=0.01"
    )
    assert result.returncode == 0, result.stderr
    with open(out, newline="") as f:
      tables.append(list(csv.DictReader(f)))
  assert tables[0] == tables[1] and tables[0]
  frames_seen = [int(r["frame"]) for r in tables[0]]
  assert frames_seen == sorted(frames_seen)
  assert all(float(r["score"]) >= 0.01 for r in tables[0])
