"""trackpy and MLE baselines: accuracy against ground truth and the Cramer-Rao bound."""

import os

import numpy as np
import pytest

from qdjax.evaluation import metrics
from qdjax.localize import locator, mle
from qdjax.localize import trackpy as trackpy_baseline
from qdjax.sim import data, presets

# One frame count for every simulated set, so the simulator compiles once.
SIMULATED = 400


def static_frames(n, seed, peak_photons, background_photons):
  """n frames of one static, in-focus QD well inside the frame (D = 0)."""
  params = presets.get("paper").sim_params(
    diffusion=0.0,
    peak_photons=peak_photons,
    background_photons=background_photons,
    margin_px=6.0,
    z_range_um=0.0,
  )
  frames = data.generate(params, SIMULATED, seed, chunk=SIMULATED)
  return params, {k: v[:n] for k, v in frames.items()}


def brightest(per_frame):
  return np.array([d[np.argmax(d[:, 2]), :2] if len(d) else (np.nan, np.nan) for d in per_frame])


def test_trackpy_is_sub_pixel_on_a_bright_static_spot():
  _, frames = static_frames(24, 1, 200.0, 1.0)
  per_frame = locator.make("trackpy", trackpy_settings={"diameter": 9}, workers=1)(frames["images"])
  assert all(d.shape == (1, 3) for d in per_frame)
  error = brightest(per_frame) - frames["keypoints"][:, 0]
  # Pixel-level rounding would give errors up to 0.5 px and an rms near 0.3 px.
  assert np.abs(error).max() < 0.25
  assert np.sqrt(np.mean(error**2)) < 0.1


def test_trackpy_handles_empty_and_blank_frames():
  locate = trackpy_baseline.Locator(workers=1)
  assert locate(np.zeros((0, 24, 25), np.float32)) == []
  blank = np.zeros((2, 24, 25), np.float32)  # trackpy warns: counted as no detections
  flat = np.full((1, 24, 25), 4.0, np.float32)
  for images in (blank, flat):
    out = locate(images)
    assert len(out) == len(images)
    assert all(d.shape == (0, 3) for d in out)
  noise = np.random.default_rng(0).poisson(4.0, (3, 24, 25)).astype(np.float32)
  assert all(d.ndim == 2 and d.shape[1] == 3 for d in locate(noise))
  with pytest.raises(ValueError, match="diameter"):
    trackpy_baseline.Settings(diameter=4)


def test_trackpy_minmass_is_a_cut_on_the_score():
  _, frames = static_frames(8, 2, 3.0, 4.0)
  images = frames["images"]
  raw = trackpy_baseline.locate_frames(images, 7, 64.0, -np.inf, workers=1)
  masses = np.sort(np.concatenate([d[:, 2] for d in raw]))
  assert len(masses) >= 10  # several features per frame at this SNR
  # A cut at one of the masses themselves: trackpy keeps mass > minmass, so that feature
  # goes (a >= cut would keep it), as do the lighter ones.
  minmass = float(masses[len(masses) // 2])
  cut = trackpy_baseline.locate_frames(images, 7, 64.0, minmass, workers=1)
  filtered = trackpy_baseline.filter_minmass(raw, minmass)
  kept = sum(len(d) for d in filtered)
  assert 0 < kept == int(np.sum(masses > minmass)) < len(masses)
  for a, b in zip(filtered, cut, strict=True):
    np.testing.assert_array_equal(a, b)


def test_trackpy_worker_pool_keeps_frames_in_order(monkeypatch):
  """The pool (used from 2 * MIN_FRAMES_PER_WORKER frames on) gives the same detections,
  frame by frame, as one process: several chunks, the last one short."""
  _, frames = static_frames(200, 6, 20.0, 2.0)
  images = frames["images"]
  serial = trackpy_baseline.locate_frames(images, 7, 64.0, 0.0, workers=1)
  monkeypatch.setattr(trackpy_baseline, "MIN_FRAMES_PER_WORKER", 50)
  with trackpy_baseline.Locator(trackpy_baseline.Settings(7, 0.0, 64.0), workers=2) as locate:
    pooled = locate(images)
    assert locate.pool.running  # the pool ran (200 frames: 4 chunks of 64)
    workers = [p.pid for p in locate.pool._pool._pool]
  assert not locate.pool.running  # closed with its locator: no worker left
  for pid in workers:
    assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid), pid
  assert len(pooled) == len(images)
  for a, b in zip(serial, pooled, strict=True):
    np.testing.assert_array_equal(a, b)
  # And each frame's brightest feature is its own QD.
  error = np.hypot(*(brightest(pooled) - frames["keypoints"][:, 0]).T)
  assert np.all(error < 1.0), error.max()


def _is_zombie(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] == "Z"
  except FileNotFoundError:
    return True


def test_mle_recovers_known_parameters_within_the_crlb():
  config = mle.Config()
  true = np.array([2.0, 100.0, 12.3, 11.7, 2.5, 1.6, 0.5], np.float32)
  lam = np.asarray(mle.spot(true, 24, 25))
  n = 400
  images = np.random.default_rng(3).poisson(lam, (n, 24, 25)).astype(np.float32)
  result = mle.fit(images, config)
  assert result.valid.all()
  est = result.params.astype(np.float64)
  # The orientation is defined modulo pi.
  est[:, 6] = true[6] + (est[:, 6] - true[6] + np.pi / 2) % np.pi - np.pi / 2
  crlb = np.sqrt(np.diag(np.linalg.inv(np.asarray(mle.fisher_information(true, 24, 25, config)))))
  # Unbiased to within 4 standard errors of the mean, and as precise as the bound allows
  # (the sample sd of n = 400 is within +-11% of the true sd at 3 sigma).
  np.testing.assert_array_less(
    np.abs(est.mean(0) - true), 4 * crlb / np.sqrt(n) + 1e-3 * np.abs(true)
  )
  ratio = est.std(0) / crlb
  assert np.all((ratio > 0.85) & (ratio < 1.2)), ratio


def test_mle_reaches_the_crlb_at_moderate_signal_and_d0():
  params, frames = static_frames(400, 5, 20.0, 2.0)
  per_frame = mle.Locator()(frames["images"])
  assert sum(len(d) for d in per_frame) == len(per_frame)
  error = brightest(per_frame) - frames["keypoints"][:, 0]
  rmse = np.sqrt(np.mean(np.sum(error**2, axis=1)))
  bound = metrics.crlb_for_params(params).rmse_px
  # 400 frames give the RMSE to about +-4% (1 sigma): 1.5x is far outside the noise, and
  # so is beating the bound by 20%.
  assert 0.8 * bound < rmse < 1.5 * bound, (rmse, bound)


def test_mle_chunks_keep_each_fit_with_its_frame():
  """10 frames in chunks of 4 (the last one padded) fit as each frame does alone, and each
  fit is its own frame's QD."""
  _, frames = static_frames(10, 8, 200.0, 1.0)
  config = mle.Config(chunk=4)
  together = mle.fit(frames["images"], config)
  assert together.params.shape == (10, 7) and together.valid.all()
  for i in range(10):
    alone = mle.fit(frames["images"][i : i + 1], config)
    # Background, amplitude and position (a round spot's orientation is ill-defined).
    np.testing.assert_allclose(alone.params[0, :4], together.params[i, :4], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(alone.llr[0], together.llr[i], rtol=1e-4)
  error = together.params[:, 2:4] - frames["keypoints"][:, 0]
  assert np.abs(error).max() < 0.3, error
  per_frame = mle.Locator(config)(frames["images"])
  np.testing.assert_allclose(brightest(per_frame), together.params[:, 2:4], atol=1e-6)


def test_mle_returns_nothing_for_degenerate_fits():
  rng = np.random.default_rng(0)
  nan_frame = rng.poisson(4.0, (24, 25)).astype(np.float32)
  nan_frame[3, 3] = np.nan
  images = np.stack([np.zeros((24, 25)), np.full((24, 25), 4.0), nan_frame]).astype(np.float32)
  assert all(d.shape == (0, 3) for d in mle.Locator()(images))
  assert mle.Locator()(np.zeros((0, 24, 25), np.float32)) == []
  with pytest.raises(ValueError, match="score"):
    locator.make("mle", score="mass")
  with pytest.raises(ValueError, match="unknown method"):
    locator.make("sl2pm")
