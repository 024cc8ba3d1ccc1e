"""PMT calibration (docs/spec.md, section 7): the real sl2pm stack, simulated stacks with
known truth, robustness and bad input."""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_one_line_error

from qdjax.microscope import pmt_calibration
from qdjax.sim import detector

SL2PM = Path(__file__).parent / "data" / "sl2pm" / "pmt_calibration_stack.npy"
TRUTH = {"alpha": 0.5, "dark_sigma": 6.0, "offset": 3.0}
LEVELS = (0.0, 2.0, 5.0, 15.0, 40.0)  # photons per pixel; the first is laser-off


@jax.jit
def _stacks(key):
  """[30 stacks, 5 levels, 48, 48] PMT output at TRUTH."""
  n = 30 * len(LEVELS)
  expected = jnp.broadcast_to(jnp.tile(jnp.array(LEVELS), 30)[:, None, None], (n, 48, 48))
  out = detector.pmt_batch(
    jax.random.split(key, n), expected, TRUTH["alpha"], TRUTH["dark_sigma"], TRUTH["offset"]
  )
  return out.reshape(30, len(LEVELS), 48, 48)


@pytest.fixture(scope="module")
def stacks():
  return np.asarray(_stacks(jax.random.key(0)), np.float64)


def test_real_sl2pm_stack_agrees_with_the_published_calibration():
  """sl2pm's tutorial: alpha 0.44, dark sigma 8.1 a.u., offset -2.74 a.u.

  alpha: the published value has two digits (+-0.005); ours has a standard error of 0.0025.
  dark sigma: the published 8.1 is the intercept of an unweighted line, whose own standard
  error is 0.29 a.u. (np.polyfit's covariance on these five points); ours weights each
  variance by its sampling error, so the laser-off frame pins it at sqrt(its variance),
  8.24. They agree within the published fit's error.
  """
  result = pmt_calibration.calibrate_pmt(np.load(SL2PM))
  assert result.dark_frame == 0
  assert abs(result.alpha - 0.44) < 0.005 + 2 * result.standard_errors["alpha"]
  assert abs(result.gain - 6.84) < 0.05 + 2 * result.standard_errors["gain"]
  assert abs(result.dark_sigma - 8.1) < 0.29 + 0.05
  assert result.offset == pytest.approx(-2.74, abs=0.005)
  assert result.reduced_chi2 < 3  # the PMT model's line fits the real frames
  assert all(f["used"] for f in result.frames)


def test_simulated_stacks_recovered_with_error_bars_that_cover_the_truth(stacks):
  z = {name: [] for name in TRUTH}
  for stack in stacks:
    result = pmt_calibration.calibrate_pmt(stack)
    assert result.dark_frame == 0
    for name, truth in TRUTH.items():
      z[name].append((getattr(result, name) - truth) / result.standard_errors[name])
  for name, values in z.items():
    values = np.asarray(values)
    # 30 stacks: the mean z is within 3/sqrt(30) of 0 if unbiased; a standard error of the
    # right size gives z a spread near 1 (not 0.3 or 3).
    assert abs(values.mean()) < 3 / math.sqrt(len(values)), (name, values)
    assert 0.5 < values.std() < 1.6, (name, values)
    assert np.mean(np.abs(values) < 2) > 0.8, (name, values)


def test_laser_off_frame_found_anywhere_and_required(stacks):
  stack = stacks[0][::-1]  # laser-off frame last
  result = pmt_calibration.calibrate_pmt(stack)
  assert result.dark_frame == len(LEVELS) - 1
  with pytest.raises(ValueError, match="no laser-off frame"):
    pmt_calibration.calibrate_pmt(stack[:-1])
  given = pmt_calibration.calibrate_pmt(stack[:-1], dark_frame=None, offset=TRUTH["offset"])
  assert abs(given.alpha - TRUTH["alpha"]) < 4 * given.standard_errors["alpha"]


def test_saturated_pixels_are_masked_or_their_frame_left_out(stacks):
  stack = stacks[1].copy()
  ceiling = np.quantile(stack[-1], 0.8)  # the brightest frame: 20% clipped
  clipped = np.minimum(stack, ceiling)
  result = pmt_calibration.calibrate_pmt(clipped)
  assert [f["used"] for f in result.frames] == [True, True, True, True, False]
  for name, truth in TRUTH.items():
    assert abs(getattr(result, name) - truth) < 4 * result.standard_errors[name], name
  # Without the rule the clipped frame bends the line: a bad fit, alpha far off.
  naive = pmt_calibration.calibrate_pmt(clipped, saturation=clipped.max() + 1)
  assert naive.reduced_chi2 > 10 and abs(naive.alpha / TRUTH["alpha"] - 1) > 0.15


@pytest.mark.parametrize(
  "change, needle",
  [
    (lambda s: s[:1], "at least 2"),
    (lambda s: np.where(np.arange(48) == 5, np.nan, s), "frame 0 has NaN"),
    (lambda s: s + np.linspace(0, 60, 48)[None, None, :], "not uniform"),
    (lambda s: np.repeat(s[2:3], 3, axis=0), "different laser powers"),
  ],
)
def test_bad_stacks_are_one_line_errors(stacks, change, needle):
  with pytest.raises(ValueError, match=needle) as info:
    pmt_calibration.calibrate_pmt(change(stacks[2]))
  assert "\n" not in str(info.value)


def test_calibrate_pmt_script_end_to_end(tmp_path, script):
  out = tmp_path / "pmt.json"
  result = script("calibrate_pmt.py", f"--input={SL2PM}", f"--output={out}", "--plot")
  assert result.returncode == 0, result.stderr
  record = json.loads(out.read_text())
  for key in ("alpha", "gain", "dark_sigma", "offset", "standard_errors"):
    assert key in record
  assert record["alpha"] == pytest.approx(0.44, abs=0.01)
  assert (tmp_path / "pmt.png").stat().st_size > 1000
  assert pmt_calibration.load_pmt(out)["pmt_alpha"] == pytest.approx(record["alpha"])
  # Bad input: a single frame; nothing already written is lost.
  single = tmp_path / "one.npy"
  np.save(single, np.load(SL2PM)[1])
  result = script("calibrate_pmt.py", f"--input={single}", f"--output={out}")
  assert_one_line_error(result, "at least 2")
  assert json.loads(out.read_text())["alpha"] == record["alpha"]


def test_pmt_file_with_a_bad_alpha_is_refused(tmp_path):
  path = tmp_path / "pmt.json"
  path.write_text(json.dumps({"alpha": -0.44, "dark_sigma": 8.1, "offset": 0.0}))
  with pytest.raises(ValueError, match="pmt_alpha must be > 0"):
    pmt_calibration.load_pmt(path)
  path.write_text(json.dumps({"alpha": 0.44, "offset": 0.0}))
  with pytest.raises(ValueError, match="dark_sigma"):
    pmt_calibration.load_pmt(path)
