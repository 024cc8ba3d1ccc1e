"""fit_microscope: known parameters recovered from simulated PMT frames; the preset file
round trip; bad input. (The full-size accuracy run is ``bench.py --what=fit``.)"""

import json

import numpy as np
import pytest
from conftest import assert_one_line_error

from qdjax.microscope import fit, pmt_calibration
from qdjax.sim import data, presets

# Adam steps of the refused fits: each refusal is a check made after the fit, against frames
# simulated where it stopped; these frames are refused for the same reason after 20 steps as
# after 100.
REFUSED_STEPS = 20
TRUTH = {
  "peak_photons": 16.0,
  "background_photons": 1.2,
  "sigma_xy_um": 0.21,
  "diffusion_um2_s": 2.5,
}


@pytest.fixture(scope="module")
def pmt_frames():
  params = presets.get("invivo").sim_params(**TRUTH)
  assert np.allclose(params.diffusion_um2_s, TRUTH["diffusion_um2_s"])  # one D, not a range
  frames = data.generate(params, 300, seed=77)["images"]
  pmt = {k: float(getattr(params, k)) for k in pmt_calibration.PMT_KEYS.values()}
  return frames, pmt


@pytest.fixture(scope="module")
def fitted(pmt_frames):
  """One fit, shared: from the preset's start (D2 = 20, eight times the truth's D)."""
  frames, pmt = pmt_frames
  return fit.fit_microscope_file(
    frames,
    presets.get("invivo"),
    pmt,
    source="sim.npy",
    progress=False,
    num_simulated=128,
    steps=100,
  )


@pytest.mark.parametrize("name", list(TRUTH))
def test_fit_recovers_each_known_parameter(fitted, name):
  estimate, se = fitted[name], fitted["standard_errors"][name]
  # Within 4 standard errors of the truth in log (a biased estimator, or an error bar too
  # small, fails this; D fitted to frames of a wider D range sat 6 se_log above), and each
  # identifiable from 300 frames (se under 50 %, D's error bar ~45 % with 128 simulated
  # frames), and N, B, sxy to better than 10 %.
  assert abs(np.log(estimate / TRUTH[name])) < 4 * se / estimate, (name, estimate, se)
  assert fitted["fit"]["identifiable"][name], (name, se)
  if name != "diffusion_um2_s":
    assert se < 0.1 * TRUTH[name], (name, se)


def test_a_correct_fit_passes_every_check(fitted):
  """The refusals of ``fit.check_fit`` leave a fit of the right model alone: its J is
  unremarkable for chi-square on 3 dof, its noise the PMT's, its spots far above noise,
  no second spot."""
  record = fitted["fit"]
  assert record["j_p_value"] > fit.J_LEVEL, record["j_statistic"]
  assert abs(record["noise_z"]) < 3, record["noise_z"]
  assert record["spot_z"] > 10, record["spot_z"]
  assert abs(record["second_spot_z"]) < 3, record["second_spot_z"]


def _refused(frames, pmt, needle):
  with pytest.raises(ValueError, match=needle) as error:
    fit.fit_microscope_file(
      frames, presets.get("invivo"), pmt, progress=False, num_simulated=128, steps=REFUSED_STEPS
    )
  assert "\n" not in str(error.value)
  return str(error.value)


def test_pmt_frames_fitted_as_photons_are_refused_and_the_message_names_pmt(pmt_frames):
  frames, _ = pmt_frames
  assert "give their PMT calibration" in _refused(frames, None, "noise is not the detector model's")


def test_frames_of_several_qds_are_refused(pmt_frames):
  _, pmt = pmt_frames
  params = presets.get("invivo").sim_params(**TRUTH, num_particles=(3, 3))
  frames = data.generate(params, 300, seed=78)["images"]
  assert "single QDs" in _refused(frames, pmt, "more than one spot")


def test_frames_without_a_spot_are_refused(pmt_frames):
  _, pmt = pmt_frames
  # A QD that emits nothing: frames of background and PMT noise alone, drawn by the
  # fixture's compiled simulator (no QD at all would be another program).
  params = presets.get("invivo").sim_params(**{**TRUTH, "peak_photons": 0.0})
  frames = data.generate(params, 300, seed=79)["images"]
  _refused(frames, pmt, "no spot")


def test_fitted_record_round_trips_as_a_preset(fitted, pmt_frames, tmp_path):
  frames, pmt = pmt_frames
  record = fitted
  assert "fitted by experiments/fit_microscope.py" in record["provenance"]["peak_photons"]
  path = tmp_path / "scope.json"
  presets.write_file(path, record)
  loaded = presets.get(str(path))
  params = loaded.sim_params(regime=1)
  assert params.detector == "pmt"
  for name in ("peak_photons", "background_photons", "sigma_xy_um", "pmt_alpha"):
    assert params.to_dict()[name] == pytest.approx(record.get(name, pmt.get(name)), rel=1e-6)
  assert loaded.regimes[0] == pytest.approx(record["diffusion_um2_s"])
  again = data.generate(params, len(frames), seed=1)  # the fixture's shapes: no new compile
  assert again["images"].shape == frames.shape
  assert json.loads(data.params_json(params, loaded))["provenance"]["preset_file"]


def test_fit_microscope_script_end_to_end_and_bad_input(pmt_frames, tmp_path, script):
  frames, pmt = pmt_frames
  stack = tmp_path / "frames.npy"
  np.save(stack, frames[:30])
  pmt_path = tmp_path / "pmt.json"
  pmt_path.write_text(json.dumps({k: pmt[name] for k, name in pmt_calibration.PMT_KEYS.items()}))
  out = tmp_path / "scope.json"
  args = [f"--input={stack}", "--preset=invivo", f"--pmt={pmt_path}", f"--output={out}"]
  # The fixture's PMT values (to the last bit: they are constants of the compiled programs)
  # and number of simulated frames: the script loads the fit's programs that the fixture
  # compiled from the persistent compilation cache instead of compiling them again. Enough
  # steps to converge (steps are cheap once compiled): a fit stopped far from its minimum is
  # refused by its J statistic.
  result = script("fit_microscope.py", *args, "--num_simulated=128", "--steps=100", timeout=1800)
  assert result.returncode == 0, result.stderr
  record = json.loads(out.read_text())
  for name in fit.FITTED:
    assert name in record and name in record["standard_errors"] and record["provenance"][name]
  presets.get(str(out))  # a valid preset file
  before = out.read_text()

  def bad(needle, **change):
    options = dict(zip(["input", "preset", "pmt", "output"], args, strict=True))
    options.update({k: f"--{k}={v}" for k, v in change.items()})
    result = script("fit_microscope.py", *options.values(), "--steps=1")
    assert_one_line_error(result, needle)
    assert out.read_text() == before  # nothing already written is lost

  nan_stack = tmp_path / "nan.npy"
  with_nan = frames[:20].copy()
  with_nan[3, 2, 2] = np.nan
  np.save(nan_stack, with_nan)
  bad("frame 3 has NaN", input=nan_stack)
  single = tmp_path / "single.npy"
  np.save(single, frames[0])
  bad("got 1", input=single)
  negative = tmp_path / "neg.json"
  negative.write_text(json.dumps({"alpha": -0.44, "dark_sigma": 8.1, "offset": 0.0}))
  bad("pmt_alpha must be > 0", pmt=negative)
  unknown = tmp_path / "unknown.json"
  unknown.write_text(json.dumps({"peak_photons": 3.0, "lens": "60x"}))
  bad("unknown key 'lens'", preset=unknown)
  small = tmp_path / "small.npy"
  np.save(small, frames[:20, :8, :8])
  bad("frames of 8x8 px are too small", input=small)
  zero = tmp_path / "zero.npy"
  np.save(zero, np.zeros((20, 24, 25), np.float32))
  bad("no spot", input=zero)


def test_fit_bench_runs_quick(fitted):
  """``bench.py --what=fit --quick``'s run, after the fixture's fit: with the fixture's number
  of simulated frames and PMT (the preset's), and 300 observed frames as the fixture's, the
  programs are the ones compiled."""
  from benchmarks import fit as fit_bench

  record = fit_bench.run(quick=True, num_simulated=128)
  assert record["fit_options"] == {"steps": 10, "num_simulated": 128}
  (row,) = record["sets"]
  assert set(fit_bench.TARGETS) <= set(row)
  assert all(np.isfinite(row[name]["estimate"]) for name in fit_bench.TARGETS)
  json.dumps(record)  # what bench.py writes


def test_calibrate_pmt_script_refuses_a_non_uniform_stack(tmp_path, script):
  rng = np.random.default_rng(0)
  stack = rng.normal(100, 10, (4, 64, 64)) * np.arange(1, 5)[:, None, None]
  stack[2] += np.linspace(0, 80, 64)[None, :]  # an illumination gradient
  path = tmp_path / "uniform.npy"
  np.save(path, stack)
  result = script("calibrate_pmt.py", f"--input={path}", f"--output={tmp_path / 'pmt.json'}")
  assert_one_line_error(result, "frame 2 is not uniform")
