"""The static background read from the movie (qdjax.tracks.background), on movies of the
NumPy simulator that shares no code with qdjax (experiments/independent_sim.py)."""

import numpy as np
import pandas as pd
import pytest

from qdjax.localize import locator
from qdjax.sim import presets
from qdjax.tracks import background, tracking

SIZE, FRAMES = 64, 60
STILL_QD = (20.3, 40.7)  # x, y px of a QD that never moves
STILL_PEAK = 30.0  # its peak, photons


def movie(seed, **options):
  import independent_sim

  defaults = dict(size=SIZE, frames=FRAMES, qds=6, diffusion_um2_s=0.2, peak=14.0, margin_px=6.0)
  return independent_sim.movie(seed, **{**defaults, **options})


def with_still_qd(frames, seed):
  """The frames with an immobile QD added (Poisson counts of a Gaussian spot, sd 2 px)."""
  rows, cols = np.mgrid[:SIZE, :SIZE]
  spot = STILL_PEAK * np.exp(
    -((cols - STILL_QD[0]) ** 2 + (rows - STILL_QD[1]) ** 2) / (2 * 2.0**2)
  )
  rng = np.random.default_rng(seed)
  return frames + rng.poisson(spot, frames.shape).astype(np.float32)


def qd_positions(truth):
  """Every QD position a localiser could report: the movie's QDs and the still one."""
  still = pd.DataFrame({"frame": np.arange(FRAMES), "x": STILL_QD[0], "y": STILL_QD[1]})
  return pd.concat([truth[["frame", "x", "y"]], still], ignore_index=True)


def test_a_still_texture_is_taken_out_and_a_still_qd_is_not():
  frames, truth, _ = movie(1, texture_cv=0.5)
  frames = with_still_qd(frames, 1)
  qds = qd_positions(truth)
  found = background.estimate(frames, qds, radius_px=6.0)
  assert found.applied and found.correlation > 0.6, found
  flat = background.Flattened(frames, found)[:]
  # Away from the QDs, the movie's mean image is flat after, and textured before.
  far = background.registration.background_mask(np.arange(FRAMES), (SIZE, SIZE), qds, 6.0)
  far = far.min(axis=0) > 0
  before, after = frames.mean(0)[far], flat.mean(0)[far]
  assert after.std() / after.mean() < 0.4 * before.std() / before.mean()
  # The still QD keeps its spot: it was left out of the median, not subtracted with it.
  x, y = round(STILL_QD[0]), round(STILL_QD[1])
  assert flat[:, y, x].mean() - np.median(after) > 0.8 * STILL_PEAK


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_flat_background_is_left_as_it_is(seed):
  """Without texture the halves' medians are independent noise: r far below 1/3."""
  frames, truth, _ = movie(seed)
  found = background.estimate(frames, truth, radius_px=6.0)
  assert not found.applied and abs(found.correlation) < background.MIN_CORRELATION, found
  assert background.estimate(frames, truth, radius_px=6.0, apply=True).applied


def test_flattened_frames_are_read_lazily_and_equal_the_frames_less_the_background():
  frames, truth, _ = movie(3, texture_cv=0.5)
  found = background.estimate(frames, truth, radius_px=6.0)
  view = background.Flattened(frames, found)
  assert len(view) == FRAMES and view.shape == frames.shape and view.ndim == 3
  expected = frames[5:9] - found.image + found.image.mean()
  np.testing.assert_allclose(view[5:9], expected, rtol=1e-5, atol=1e-4)
  with pytest.raises(ValueError, match="a movie must be"):
    background.estimate(frames[0])


def test_track_movie_localises_a_textured_movie_flattened():
  """On a still texture the default model takes bright tissue for QDs; localised less the
  background read from the movie, most of those false detections are gone."""
  frames, truth, interval = movie(4, texture_cv=0.5, qds=8)
  preset = presets.get("paper")
  locate = locator.make("model")

  def false_share(result):
    kept = result.detections
    cut = result.summary["min_score"]
    kept = kept if cut is None else kept[kept["score"] >= cut]
    near = kept.merge(truth[["frame", "x", "y"]], on="frame", suffixes=("", "_qd"))
    near["d"] = np.hypot(near["x"] - near["x_qd"], near["y"] - near["y_qd"])
    close = near.groupby(["frame", "x", "y"])["d"].min() <= 2.0
    return 1 - close.mean()

  shares = {}
  for option in (None, False):
    result = tracking.track_movie(
      frames, locate, preset, frame_interval_s=interval, background=option,
      tissue=False, motion_types=False,
    )  # fmt: skip
    shares[option] = false_share(result)
    assert (result.summary["background"] is None) == (option is False)
  assert result.background is None
  assert shares[None] < 0.5 * shares[False], shares
