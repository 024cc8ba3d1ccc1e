"""Tissue motion read from the background (qdjax.tracks.registration), on movies of the
NumPy simulator that shares no code with qdjax (experiments/independent_sim.py)."""

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from qdjax.sim import presets
from qdjax.tracks import registration, tracking

SIZE, FRAMES = 64, 60


def movie(seed, **options):
  import independent_sim

  defaults = dict(size=SIZE, frames=FRAMES, qds=6, diffusion_um2_s=0.2, peak=14.0, margin_px=6.0)
  return independent_sim.movie(seed, motion_table=True, **{**defaults, **options})


def timing(interval):
  line = SIZE * 2e-6 + 1.1e-3
  return registration.Timing(interval, line, 2e-6)


def true_trace(found, motion):
  """The true displacement (x, y) px at the strips' times, less its median."""
  true = np.stack(
    [np.interp(found.time_s, motion["time_s"], motion[c]) for c in ("dx_px", "dy_px")], -1
  )
  return true - np.median(true, 0)


def test_strip_shifts_find_a_known_subpixel_shift():
  """A noise-free texture moved by (2.4, -1.7) px: every strip reads that shift, searched
  everywhere or near a prior."""
  rng = np.random.default_rng(0)
  pad = 8
  canvas = np.exp(0.6 * ndimage.gaussian_filter(rng.normal(size=(48 + 2 * pad,) * 2), 2.0) * 3)
  moved = ndimage.shift(canvas, (-1.7, 2.4), order=3, mode="nearest")[pad:-pad, pad:-pad]
  frames = jnp.asarray(moved[None] * 40, jnp.float32)
  valid = jnp.ones_like(frames)
  reference = jnp.asarray(canvas * 40, jnp.float32)
  far = registration.strip_shifts(frames, valid, reference, None, lines=8, reach=pad, pad=pad)[0]
  prior = jnp.full((1, 6, 2), jnp.asarray([2, -2]), jnp.int32)
  near = registration.strip_shifts(frames, valid, reference, prior, lines=8, reach=2, pad=pad)[0]
  for shift in (np.asarray(far)[0], np.asarray(near)[0]):
    # Edge strips see part of the canvas beyond the interpolated one: the middle four.
    np.testing.assert_allclose(shift[1:-1], [[2.4, -1.7]] * 4, atol=0.12)


def test_breathing_is_read_from_a_textured_background():
  """0.5 um breathing (5 px, mostly y) and a 0.2 um heartbeat over a texture of relative
  sd 0.5: corrected, and the trace follows the true motion to a fraction of a pixel."""
  frames, truth, interval, motion = movie(1, breathing_um=0.5, heartbeat_um=0.2, texture_cv=0.5)
  found = registration.estimate(frames, timing(interval), exclude=truth, exclude_radius_px=6)
  assert found.applied, found.reason
  true = true_trace(found, motion)
  error = found.shift_px - np.median(found.shift_px, 0) - true
  rms = np.sqrt(np.mean(error**2, 0))
  assert true[:, 1].std() > 3
  assert (rms < 0.6).all(), rms
  assert found.table(0.1)["dy_um"].abs().max() > 0.3
  # Resampled onto the tissue's grid, frames 3 apart (another breathing phase) agree.
  flat = registration.unwarp(frames, found)

  def agreement(images):
    smooth = [ndimage.gaussian_filter(image, 2.0) for image in images]
    return np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in
                    zip(smooth[:-3], smooth[3:], strict=True)])  # fmt: skip

  assert agreement(flat) > agreement(frames) + 0.1, (agreement(flat), agreement(frames))


def test_no_correction_without_motion_or_without_texture():
  """Texture without motion: nothing common to the frame's halves. Motion on a flat
  background with the QDs not even masked: the QDs alone cannot fake tissue motion."""
  frames, truth, interval, _ = movie(2, texture_cv=0.5)
  still = registration.estimate(frames, timing(interval), exclude=truth, exclude_radius_px=6)
  assert not still.applied, still.reason
  frames, _, interval, _ = movie(3, breathing_um=0.5, diffusion_um2_s=0.05)
  plain = registration.estimate(frames, timing(interval))
  assert not plain.applied, plain.reason


def test_correct_takes_out_the_motion_at_each_detections_time():
  line, interval = 1e-3, 0.1
  time = np.arange(0, 1, 0.01)
  shift = np.stack([np.sin(2 * np.pi * time), 3 * time], -1)
  motion = registration.TissueMotion(
    frame=np.zeros(len(time), int), line=np.zeros(len(time)), time_s=time, shift_px=shift,
    se_px=np.zeros_like(shift), noise_px=np.zeros(2), rms_px=shift.std(0), p_value=0.0,
    applied=True, reason="", timing=registration.Timing(interval, line, 0.0),
  )  # fmt: skip
  detections = pd.DataFrame({"frame": [2, 5], "x": [10.0, 20.0], "y": [30.0, 40.0]})
  out = registration.correct(detections, motion)
  t = np.array([2 * interval + 30 * line, 5 * interval + 40 * line])
  np.testing.assert_allclose(out["x"], [10, 20] - np.sin(2 * np.pi * t), atol=1e-3)
  np.testing.assert_allclose(out["y"], [30, 40] - 3 * t, atol=1e-3)


def test_the_tracks_correct_a_registration_that_reads_the_motion_at_the_wrong_scale():
  """QDs diffusing in a tissue that breathes along y; the registration reads y 0.9 times
  too small and x as pure noise. Corrected with it, the tracks' D is inflated; the gain
  fitted from their steps is 1/0.9 within 3 standard errors on y and near 0 on x (noise
  is not followed), and the pipeline with it gives the D of the same tracks without motion
  within 2 %."""
  rng = np.random.default_rng(0)
  interval, line, qds, frames, d_px2 = 0.15, 1e-3, 12, 200, 5.0  # D in px^2 per s
  time = np.arange(0, frames * interval, interval / 12)  # 12 strips a frame
  true = np.stack([np.zeros_like(time), 8 * np.sin(2 * np.pi * 1.5 * time)], -1)
  read = true * [0.0, 0.9] + rng.normal(0, [0.3, 0.05], true.shape)
  motion = registration.TissueMotion(
    frame=(time // interval).astype(int), line=np.zeros(len(time)), time_s=time,
    shift_px=read, se_px=np.zeros_like(read), noise_px=np.zeros(2), rms_px=read.std(0),
    p_value=0.0, applied=True, reason="", timing=registration.Timing(interval, line, 0.0),
  )  # fmt: skip
  start = rng.uniform(20, 80, (1, qds, 2))
  tissue = start + np.cumsum(rng.normal(0, np.sqrt(2 * d_px2 * interval), (frames, qds, 2)), 0)
  frame = np.repeat(np.arange(frames), qds)
  xy = tissue.reshape(-1, 2)
  seen = xy
  for _ in range(4):  # seen on the line it was displaced to
    at = frame * interval + seen[:, 1] * line
    seen = xy + np.stack([np.interp(at, time, true[:, a]) for a in (0, 1)], -1)
  detections = pd.DataFrame({"frame": frame, "x": seen[:, 0], "y": seen[:, 1], "score": 1.0})
  corrected = registration.correct(detections, motion)
  linked = corrected.assign(particle=np.tile(np.arange(qds), frames))
  gain, se = tracking.tissue_gain(linked, detections[["x", "y"]] - corrected[["x", "y"]])
  assert abs(gain[1] - 1 / 0.9) < 3 * se[1] and se[1] < 0.02, (gain, se)
  assert gain[0] < 0.3, (gain, se)
  analysis = tracking.analysis_for(presets.get("paper"), 100, 100, interval)  # 0.1 um px
  options = dict(motion_types=False, drift=False, max_diffusion=1.0)
  floor = detections.assign(x=xy[:, 0], y=xy[:, 1])  # the tissue's frame: no motion at all
  ratio = {
    name: tracking.track_detections(
      found, frames, 100, 100, analysis, tissue=trace, **options
    ).summary["ensemble"]["D_um2_s"]
    / (d_px2 * 0.01)
    for name, found, trace in (
      ("scaled", detections, motion),
      ("as read", corrected, None),
      ("floor", floor, None),
    )
  }
  assert abs(ratio["scaled"] / ratio["floor"] - 1) < 0.02, ratio
  assert ratio["as read"] / ratio["floor"] > 1.15, ratio


@pytest.mark.parametrize("seed", [4])
def test_corrected_tracks_give_back_d(seed):
  """The true positions where a localiser sees them (with the tissue's motion), linked and
  estimated by the pipeline: 0.5 um breathing inflates D several-fold; corrected, D is
  back within 0.75-1.25 of the truth."""
  frames, truth, interval, _ = movie(seed, qds=10, frames=80, breathing_um=0.5, texture_cv=0.5)
  preset = presets.get("paper")
  analysis = tracking.analysis_for(preset, SIZE, SIZE, interval)
  inside = truth[truth["x"].between(0, SIZE - 1) & truth["y"].between(0, SIZE - 1)]
  detections = inside[["frame", "x", "y"]].assign(score=1.0).reset_index(drop=True)
  found = tracking.tissue_motion(
    frames, detections, registration.timing_for(preset, SIZE, SIZE, interval),
    pixel_size_um=0.1, spot_sigma_px=2.0,
  )  # fmt: skip
  assert found.applied, found.reason
  ratios = {}
  for name, tissue in (("corrected", found), ("uncorrected", None)):
    result = tracking.track_detections(
      detections, 80, SIZE, SIZE, analysis, tissue=tissue, motion_types=False, drift=False
    )
    ratios[name] = result.summary["ensemble"]["D_um2_s"] / 0.2
  assert ratios["uncorrected"] > 2, ratios
  assert 0.75 < ratios["corrected"] < 1.25, ratios


def frames_through_z(seed, n=32, size=64, px_um=0.2, photons=2.0, z_um=1.2, shift_px=5):
  """``n`` frames (Poisson counts) of a 3D log-normal texture (relative sd 0.5, correlation
  0.4 um in the plane and 0.95 um along z), each at its own random depth within ``z_um``
  of the middle and its own in-plane shift; and the depths."""
  rng = np.random.default_rng(seed)
  modes = 64
  wave = rng.normal(size=(modes, 3)) / np.array([0.4, 0.4, 0.95])
  phase = rng.uniform(0, 2 * np.pi, modes)
  depth = rng.uniform(-z_um, z_um, n)
  yy, xx = np.mgrid[:size, :size] * px_um
  s = np.sqrt(np.log1p(0.5**2))
  frames = []
  for z in depth:
    dx, dy = rng.uniform(-shift_px, shift_px, 2) * px_um
    angle = (xx[..., None] + dx) * wave[:, 0] + (yy[..., None] + dy) * wave[:, 1]
    field = np.sqrt(2 / modes) * np.cos(angle + z * wave[:, 2] + phase).sum(-1)
    frames.append(rng.poisson(photons * np.exp(s * field - s**2 / 2)))
  return np.asarray(frames, np.float32), depth


def test_the_reference_starts_from_a_frame_from_the_middle_of_the_depths():
  """Tissue moving along z shows each frame another plane of its texture: the frame the
  reference starts from is one most like the others, from the middle of the depths. Over
  12 movies its depth ranks in the closest third to the middle on average; a frame drawn at
  random ranks in the middle (0.5, sd of the mean 0.08)."""
  ranks = []
  for seed in range(12):
    frames, depth = frames_through_z(seed)
    start = registration._most_typical(frames, np.ones_like(frames), 8)
    ranks.append(np.mean(np.abs(depth) < abs(depth[start])))
  assert np.mean(ranks) < 0.3, ranks


def test_the_first_and_last_strips_are_checked_by_their_neighbours():
  """A wrong shift at either end of the movie is replaced by its neighbours' (the median's
  window mirrored there), as one in the middle is."""
  shift = np.zeros((3, 4, 2))
  shift[0, 0], shift[1, 2], shift[-1, -1] = (9.0, -7.0), (8.0, 8.0), (-6.0, 5.0)
  np.testing.assert_array_equal(registration._smoothed(shift), np.zeros_like(shift))


def texture_through_z(seed, depths, size=64, px_um=0.2, photons=2.0):
  """Expected counts [len(depths), size, size] of a 3D log-normal texture (relative sd 0.5,
  correlation 0.4 um in the plane and 0.95 um along z) at the given depths, um."""
  rng = np.random.default_rng(seed)
  modes = 64
  wave = rng.normal(size=(modes, 3)) / np.array([0.4, 0.4, 0.95])
  phase = rng.uniform(0, 2 * np.pi, modes)
  yy, xx = np.mgrid[:size, :size] * px_um
  angle = xx[..., None] * wave[:, 0] + yy[..., None] * wave[:, 1] + phase
  s = np.sqrt(np.log1p(0.5**2))
  field = [np.sqrt(2 / modes) * np.cos(angle + z * wave[:, 2]).sum(-1) for z in depths]
  return photons * np.exp(s * np.asarray(field) - s**2 / 2)


def test_the_textures_change_with_depth_is_found_and_fitted_beside_the_shift():
  """Frames of a texture seen 0-1 um from the middle of the depths, each moved by a known
  shift: the leading depth mode found from their differences follows the depth, and with
  it 8-line strips of far frames are read closer to their shifts than without it."""
  pad, size = 6, 64
  depths = np.linspace(-1.0, 1.0, 41)
  rng = np.random.default_rng(3)
  canvas = texture_through_z(0, depths, size=size + 2 * pad)  # the tissue at each depth
  frames = canvas[:, pad:-pad, pad:-pad]
  reference = canvas.mean(0)
  blocks, valid = [frames.astype(np.float32)], [np.ones((len(depths), size, size), np.float32)]
  modes = registration._depth_modes(blocks, valid, [np.zeros((len(depths), size, 2))],
                                    reference, pad, 1)  # fmt: skip
  weight = (canvas - reference).reshape(len(depths), -1) @ modes[0].ravel()
  assert abs(np.corrcoef(weight, depths)[0, 1]) > 0.9
  # Far frames (|z| >= 0.8 um), Poisson counts, moved by known shifts within 3 px.
  far = np.flatnonzero(np.abs(depths) >= 0.8)
  true = rng.integers(-3, 4, (len(far), 2))
  moved = np.stack([canvas[i, pad - dy : pad - dy + size, pad - dx : pad - dx + size]
                    for i, (dx, dy) in zip(far, true, strict=True)])  # fmt: skip
  counts = jnp.asarray(rng.poisson(moved), jnp.float32)
  errors = {}
  reference = jnp.asarray(reference, jnp.float32)
  for name, m in (("plain", None), ("depth", jnp.asarray(modes))):
    found, _ = registration.strip_shifts(
      counts, jnp.ones_like(counts), reference, None, lines=8, reach=pad, pad=pad, modes=m
    )
    errors[name] = float(np.sqrt(np.mean((np.asarray(found) - true[:, None, :]) ** 2)))
  assert errors["depth"] < 0.8 * errors["plain"], errors
