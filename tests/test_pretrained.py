"""The shipped paper-preset models (``paper``, the full-accuracy ``base`` network, and
``paper_fast``, ``s4_light``): they load without training code, find QDs, and locate uses
them."""

import csv
import json

import numpy as np
import pytest
import tifffile

from qdjax.detect import inference
from qdjax.evaluation import metrics
from qdjax.sim import data, presets

pytestmark = pytest.mark.skipif(
  not (inference.PRETRAINED_DIR / inference.WEIGHTS).exists(), reason="no shipped weights"
)

# Test frames per split (the study's sizes times these). D1 gets twice as many: there the
# AUC at epsilon = 1 px is large enough for its floor to see a half-pixel shift.
SCALES = {"test_d1": 0.24, "test_d2": 0.12, "test_d3": 0.12}
# Floors sit this many binomial standard errors (at the test set's size) below the AUC the
# shipped model recorded on the matching validation split (config.json "validation").
# Measured (seed 7, base model of config.json): test_d1 AUC 0.339 / 0.927 / 0.988 at
# epsilon 1 / 2 / 3 px against floors 0.318 / 0.882 / 0.959; with every x shifted by
# +0.5 px, 0.268 / 0.861 / 0.988: the shift fails both the 1 px and the 2 px floor.
FLOOR_STANDARD_ERRORS = 2.5


PAPER_MODELS = ("paper", "paper_fast")


@pytest.fixture(scope="module", params=PAPER_MODELS)
def model_name(request):
  return request.param


@pytest.fixture(scope="module")
def locator(model_name):
  return inference.load(model=model_name)


@pytest.fixture(scope="module")
def located(locator):
  """{split: (frames, detections)} on small test sets (seed 7, not the study's seed 0)."""
  out = {}
  for split, scale in SCALES.items():
    frames = data.load_split(presets.get("paper"), split, seed=7, scale=scale)
    out[split] = frames, locator(frames["images"])
  return out


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_shipped_directory_records_its_provenance(name):
  directory = inference.pretrained_dir(name)
  config = json.loads((directory / inference.CONFIG).read_text())
  text = json.dumps(config)
  assert "train.py" in text and "seed" in text and "paper" in text
  size = sum(p.stat().st_size for p in directory.iterdir())
  assert size < 5e6


@pytest.mark.parametrize("split", sorted(SCALES))
def test_shipped_model_reaches_its_recorded_auc_on_a_small_test_set(locator, located, split):
  frames, found = located[split]
  n = len(frames["images"])
  assert len(found) == n
  recorded = locator.info["validation"]["auc_by_split"][f"val_d{split[-1]}"]
  for epsilon in presets.get("paper").epsilons_px:
    expected = recorded[f"{epsilon:g}"]
    floor = expected - FLOOR_STANDARD_ERRORS * np.sqrt(expected * (1 - expected) / n)
    auc = metrics.auc(found, frames["keypoints"], frames["present"], epsilon)
    assert auc > floor, (epsilon, auc, floor, expected)


@pytest.mark.parametrize("split", sorted(SCALES))
def test_shipped_model_is_unbiased(located, split):
  """The mean error of matched detections is zero within 4 standard errors (plus 0.05 px):
  a systematic shift of a fraction of a pixel, e.g. half a pixel, fails."""
  frames, found = located[split]
  report = metrics.report(found, frames["keypoints"], frames["present"], 3.0).localisation
  assert report.num_matched > 0.8 * len(found)
  standard_error = report.rmse_px / np.sqrt(2 * report.num_matched)  # per axis
  bound = 4 * standard_error + 0.05
  assert np.all(np.abs(report.bias_px) < bound), (report.bias_px, bound)


def test_any_frame_size_and_empty_frames(locator):
  preset = presets.get("paper")
  big = data.generate(preset.sim_params(regime=1, height=40, width=53), 64, seed=3)
  found = locator(big["images"])
  best = np.array([f[0, :2] if len(f) else [np.nan, np.nan] for f in found])
  err = np.hypot(*(best - big["keypoints"][:, 0]).T)
  # Every frame has its QD (margin 2 px). The top detection lands within 2 px of it in
  # 56 of the 64 frames (measured: 0.875, median error 0.97 px); the floor is 3 binomial
  # standard errors lower. A frame without detections counts as a miss, not a NaN to skip.
  rate = np.mean(err < 2.0)
  assert rate >= 0.75, rate
  assert np.median(np.where(np.isnan(err), np.inf, err)) < 1.5
  # A crop of 8 x 12 around nothing but background.
  crop = big["images"][:4, :8, :12]
  assert len(locator(crop)) == 4
  # Empty frames score below frames with a QD.
  empty = data.generate(preset.sim_params(regime=1, num_particles=0), 200, seed=4)["images"]
  with_qd = data.generate(preset.sim_params(regime=1), 200, seed=4)["images"]
  top = lambda fs: np.array([f[0, 2] if len(f) else 0.0 for f in fs])
  assert np.median(top(locator(empty))) < np.median(top(locator(with_qd)))


def test_flat_frames_yield_no_detections(locator):
  for shape in [(2, 24, 25), (1, 1, 1), (1, 8, 12)]:
    for value in (0.0, 3.0, 1000.0):
      assert all(len(d) == 0 for d in locator(np.full(shape, value, np.float32))), (shape, value)


def test_batches_and_chunks_do_not_change_a_frames_detections(locator, model_name):
  """locator(x)[i] == locator(x[i:i+1])[0] (eval mode: no batch statistics), with a chunk
  of 4 frames so that 10 frames take three chunks, the last one padded; and each frame's
  detections are its own QD's."""
  frames = data.generate(presets.get("paper").sim_params(regime=1, peak_photons=30.0), 10, 12)
  chunked = inference.load(model=model_name, chunk=4)
  together = chunked(frames["images"])
  assert len(together) == 10
  for i, detections in enumerate(together):
    alone = chunked(frames["images"][i : i + 1])[0]
    assert alone.shape == detections.shape
    np.testing.assert_allclose(alone, detections, rtol=1e-5, atol=1e-5)
    assert np.hypot(*(detections[0, :2] - frames["keypoints"][i, 0])) < 1.0
  for a, b in zip(locator(frames["images"]), together, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


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


def test_whole_field_finds_every_bright_qd(locator, model_name, request):
  if model_name == "paper_fast":
    # Measured: 10 of the 12 QDs are the 10 best detections, within 1 px; two as bright as
    # the others score 0.13 and 0.002 (20 photons is 8x the photon level it was trained on).
    reason = "paper_fast misses 2 of the 12 bright QDs; not yet explained"
    request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
  # 12 bright QDs on a 256 x 256 field: detections scale with the area (no fixed cap), so
  # the 12 best-scored detections must be the 12 QDs, each within 1 px. Slow QDs: such a
  # frame lasts 0.41 s, over which a QD at the paper's D1 wanders ~5 px, so its trajectory
  # centroid is not where the beam saw it; at 0.01 um^2/s it moves < 1 px.
  params = presets.get("paper").sim_params(
    diffusion=0.01, height=256, width=256, num_particles=(12, 12), peak_photons=20.0
  )
  field = data.generate(params, 1, seed=12)
  truth = field["keypoints"][0][field["present"][0]]
  assert len(truth) == 12
  gaps = np.hypot(*(truth[:, None] - truth[None]).transpose(2, 0, 1))
  assert gaps[~np.eye(12, dtype=bool)].min() > 6  # resolvable: spots are ~5 px wide
  found = locator(field["images"])[0]
  assert len(found) >= 12
  best = found[np.argsort(-found[:, 2])[:12], :2]
  distance = np.hypot(*(best[:, None] - truth[None]).transpose(2, 0, 1))
  assert (distance.min(axis=0) < 1.0).all(), distance.min(axis=0)
  assert (distance.min(axis=1) < 1.0).all(), distance.min(axis=1)
