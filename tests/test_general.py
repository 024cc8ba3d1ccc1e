"""The general model's training distribution (qdjax.sim.prior), its training run end to end on
a tiny config, and how locate picks a shipped model."""

import json

import jax
import numpy as np
import pytest
from configs import general

from qdjax.detect import inference, train
from qdjax.localize import locator
from qdjax.sim import presets
from qdjax.sim import prior as prior_lib

# Small frames, so the one compiled draw is fast; 2 QD slots at 12 x 13.
PRIOR = prior_lib.Prior(frame_sizes=((12, 13), (20, 18)), particles_per_px=1 / 120)
SIZE = (12, 13)
FRAMES = 48


@pytest.fixture(scope="module")
def base():
  return presets.get("paper").sim_params()


@pytest.fixture(scope="module")
def batches(base):
  """Step 3 drawn twice, step 4, and the values drawn for step 3."""
  key = jax.random.key(11)
  draw = lambda step: jax.device_get(
    prior_lib.simulate_batch(jax.random.fold_in(key, step), PRIOR, base, *SIZE, FRAMES)
  )
  values = prior_lib.sample_values(jax.random.split(jax.random.fold_in(key, 3))[0], PRIOR, FRAMES)
  return draw(3), draw(3), draw(4), jax.device_get(values)


def test_values_stay_in_their_ranges_with_the_stated_distributions():
  n = 20000
  values = jax.device_get(prior_lib.sample_values(jax.random.key(0), PRIOR, n))
  # The mean of the uniform variable behind each draw is 1/2 with sd 1/sqrt(12 n).
  tolerance = 5 / np.sqrt(12 * n)
  for name in prior_lib.RANGES:
    lo, hi = getattr(PRIOR, name)
    v = values[name]
    assert v.shape == (n,)
    slack = 1e-6 * max(abs(lo), abs(hi))
    assert v.min() >= lo - slack and v.max() <= hi + slack, name
    if name in prior_lib.LOG_UNIFORM:
      u = np.log(v / lo) / np.log(hi / lo)
    else:
      u = (v - lo) / (hi - lo)
    assert abs(u.mean() - 0.5) < tolerance, (name, u.mean())
  np.testing.assert_allclose(
    values["background_photons"],
    values["peak_photons"] * values["background_ratio"] + values["background_extra"],
    rtol=1e-6,
  )
  # The ranges cover the paper preset's photon levels and the in vivo ones (spec section 9).
  paper = presets.get("paper").values
  assert PRIOR.peak_photons[0] < paper["peak_photons"] < 20 < PRIOR.peak_photons[1]
  ratio = paper["background_photons"] / paper["peak_photons"]
  assert PRIOR.background_ratio[0] < 0.05 and ratio < PRIOR.background_ratio[1]


def test_a_batch_depends_only_on_its_step_and_each_size_has_its_shapes(base, batches):
  first, again, other, _ = batches
  for name in ("counts", "keypoints", "present", "diffusion"):
    np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
  assert not np.array_equal(first.counts, other.counts)
  h, w = SIZE
  slots = PRIOR.max_particles(h, w)
  # 0 .. slots QDs per frame: empty frames and full ones both occur.
  counts = first.present.sum(axis=1)
  assert counts.min() == 0 and counts.max() == slots, counts
  x, y = first.keypoints[..., 0], first.keypoints[..., 1]
  assert np.all(np.isnan(x[~first.present]))
  inside = (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
  assert np.all(inside[first.present])
  # Steps cycle through the sizes; a larger frame holds more QD slots.
  assert [PRIOR.frame_size(s) for s in range(3)] == [(12, 13), (20, 18), (12, 13)]
  for size in PRIOR.frame_sizes:
    shapes = jax.eval_shape(
      lambda key, size=size: prior_lib.draw(key, PRIOR, base, *size, FRAMES), jax.random.key(0)
    )
    assert shapes.counts.shape == (FRAMES, *size)
    assert shapes.keypoints.shape == (FRAMES, PRIOR.max_particles(*size), 2)
  assert PRIOR.max_particles(20, 18) == 3 > slots == 2


def test_each_frame_is_drawn_with_its_own_values_and_detector(batches):
  pmt = np.asarray(prior_lib.is_pmt(PRIOR, FRAMES))
  assert 0 < pmt.sum() < FRAMES
  frames, _, _, values = batches
  np.testing.assert_allclose(frames.diffusion, values["diffusion_um2_s"], rtol=1e-6)
  # Far from every QD the expected image is the frame's own background B.
  floor = frames.expected.min(axis=(1, 2))
  close = np.isclose(floor, values["background_photons"], rtol=1e-3, atol=1e-3)
  assert close.mean() > 0.9, (floor, values["background_photons"])
  counts = frames.counts.reshape(FRAMES, -1)
  expected = frames.expected.reshape(FRAMES, -1)
  # Poisson frames are photon counts; PMT frames are offset + 3 e / alpha on average, with
  # variance 12 e / alpha^2 + dark^2 per pixel (spec section 7), each with its own frame's values.
  assert np.all(counts[~pmt] == np.round(counts[~pmt]))
  assert not np.all(counts[pmt] == np.round(counts[pmt]))
  alpha, dark, offset = (
    values[k][pmt, None] for k in ("pmt_alpha", "pmt_dark_sigma", "pmt_offset")
  )
  mean = offset + 3 * expected[pmt] / alpha
  var = 12 * expected[pmt] / alpha**2 + dark**2
  z = (counts[pmt] - mean).sum(axis=1) / np.sqrt(var.sum(axis=1))
  assert np.all(np.abs(z) < 5), z
  z_poisson = (counts[~pmt] - expected[~pmt]).sum(axis=1) / np.sqrt(expected[~pmt].sum(axis=1))
  assert np.all(np.abs(z_poisson) < 5), z_poisson
  # Frames are bright and dim: the photon levels span the prior's range.
  peak = values["peak_photons"]
  assert peak.min() < 3 and peak.max() > 15, peak


def test_bad_prior_values_are_one_line_errors():
  block = prior_lib.config()
  block.peak_photons = (5.0, 1.0)
  with pytest.raises(ValueError, match="prior.peak_photons"):
    prior_lib.from_config(block)
  block = prior_lib.config()
  block.frame_sizes = "24by25"
  with pytest.raises(ValueError, match="24by25"):
    prior_lib.from_config(block)
  with pytest.raises(ValueError, match="pmt_fraction"):
    prior_lib.Prior(pmt_fraction=1.5)
  assert prior_lib.from_config(prior_lib.config()) == prior_lib.Prior()


def test_general_config_trains_exports_and_locates_end_to_end(tmp_path):
  """experiments/configs/general.py, then export_pretrained and load: the GPU run, shrunk."""
  config = general.get_config()
  for name, value in {
    "num_steps": 2,
    "batch_size": 8,
    "warmup_steps": 1,
    "validation_size": 8,
    "validation_splits": "invivo:val_d1",  # another preset's split (PMT frames)
    "log_every": 1,
    "eval_every": 2,
    "checkpoint_every": 2,
    "progress": False,
  }.items():
    config[name] = value
  config.model.name = "tiny"
  config.prior.frame_sizes = "12x13"
  workdir = tmp_path / "general"
  result = train.train_and_evaluate(config, workdir)
  assert set(result["auc_by_split"]) == {"invivo:val_d1"}
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "loss" in r] == [1, 2]
  assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
  run = json.loads((workdir / "run.json").read_text())
  assert run["sim_params"]["prior"]["frame_sizes"] == [[12, 13]]
  shipped = inference.export_pretrained(workdir, tmp_path / "shipped")
  info = json.loads((shipped / inference.CONFIG).read_text())
  assert info["training_config"]["data"] == "prior"
  detector = inference.load(shipped)
  field = np.random.default_rng(0).poisson(2.0, (2, 40, 37)).astype(np.float32)
  assert len(detector(field)) == 2


def test_locate_picks_general_where_shipped_else_paper(tmp_path, monkeypatch, script):
  monkeypatch.setattr(inference, "PRETRAINED_ROOT", tmp_path)
  assert inference.default_model() == "paper"
  (tmp_path / "general").mkdir()
  (tmp_path / "general" / inference.WEIGHTS).write_bytes(b"")
  assert inference.default_model() == "general"
  assert inference.pretrained_dir("paper") == tmp_path / "paper"
  with pytest.raises(ValueError, match="'nope'"):
    inference.load(model="nope")
  with pytest.raises(ValueError, match="not both"):
    locator.make("model", workdir=str(tmp_path), model="paper")
  with pytest.raises(ValueError, match="model is for method 'model'"):
    locator.make("trackpy", model="paper")
  result = script("locate.py", "--model=bogus", "--input=x.npy", f"--output={tmp_path / 'o.csv'}")
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert "bogus" in result.stderr
