r"""Fit the simulator to your microscope: N, B, sxy and D from frames of single QDs.

  python experiments/calibrate_pmt.py --input=uniform.tif --output=pmt.json
  python experiments/fit_microscope.py --input=qd_frames.tif --preset=invivo \
      --pmt=pmt.json --output=microscope.json
  python experiments/simulate.py --preset=microscope.json --regime=1 --output=f.npz

--input: .npy, .npz (``images``) or .tif stack of frames, each holding one diffusing QD
(the study's kind of frame, any size >= 9 x 9; ~1000 frames give N and B to a few %).
Values are PMT output when --pmt is given (a calibrate_pmt.py file), photons otherwise.
Geometry and timing (pixel size, dwell, retrace, sigma_z, start ranges) come from
--preset (a name or a preset file); the frame size from the frames.

Method: simulated moments. Summary statistics of each frame (background, spot photons
and peak, the spot's second moments along and across the lines, and the line-to-line
offsets of its centre) are averaged and matched by Adam steps through the differentiable
simulator with common random numbers. Standard errors from the GMM sandwich. Values with
a relative standard error above 50% are flagged as not identifiable from these frames.

A fit the one-QD model does not describe is refused (exit 2, one line naming the likely
cause): frames under 9 x 9 px or all of one value, noise that is not the detector's (PMT
output without --pmt), frames without a spot, frames with a second spot (several QDs per
frame), and a J statistic that rejects the model at the 1% level (chi-square on 3 degrees
of freedom).

Writes a preset file (usable wherever a preset name is) with the estimates, their
standard errors, the fit record and one provenance line per value.
"""

import os

from absl import flags

from qdjax import cli, io
from qdjax.microscope import fit, pmt_calibration
from qdjax.sim import presets

_INPUT = flags.DEFINE_string(
  "input", None, "Frames of single QDs: .npy, .npz or .tif.", required=True
)
_PRESET = flags.DEFINE_string("preset", "invivo", "Geometry and timing: a preset name or file.")
_PMT = flags.DEFINE_string(
  "pmt", None, "PMT calibration (calibrate_pmt.py JSON); frames in photons without it."
)
_OUTPUT = flags.DEFINE_string("output", None, "Preset file (JSON) to write.", required=True)
_NUM_SIMULATED = flags.DEFINE_integer(
  "num_simulated", 512, "Frames simulated per step.", lower_bound=16
)
_STEPS = flags.DEFINE_integer("steps", 200, "Adam steps.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the simulation's common random numbers.")


def main(argv):
  cli.check_no_extra_args(argv)
  # Every file read (frames, PMT calibration, a preset file) is an input not to write over.
  inputs = [_INPUT.value, _PMT.value]
  if os.path.isfile(_PRESET.value):
    inputs.append(_PRESET.value)
  output = io.check_output_path(_OUTPUT.value, inputs=[p for p in inputs if p is not None])
  preset = presets.get(_PRESET.value)
  pmt = None if _PMT.value is None else pmt_calibration.load_pmt(_PMT.value)
  frames = io.open_frames(_INPUT.value)
  record = fit.fit_microscope_file(
    frames,
    preset,
    pmt,
    source=_INPUT.value,
    pmt_source=_PMT.value,
    num_simulated=_NUM_SIMULATED.value,
    steps=_STEPS.value,
    seed=_SEED.value,
  )
  presets.write_file(output, record)
  se = record["standard_errors"]
  print(
    ", ".join(f"{k} {record[k]:.4g} +- {se[k]:.2g}" for k in fit.FITTED)
    + f"; J {record['fit']['j_statistic']:.3g} on {record['fit']['degrees_of_freedom']} dof"
    + f" -> {output}"
  )


if __name__ == "__main__":
  cli.run(main)
