r"""Calibrate a photomultiplier from uniform frames; writes its alpha, gain, dark noise.

  python experiments/calibrate_pmt.py --input=stack.npy --output=pmt.json --plot

--input: .npy, .npz (``images``) or .tif stack of frames of a uniform fluorescent sample,
one frame per laser power; a frame with the laser off may be among them (it gives the
dark offset). The PMT model (sl2pm's; docs/spec.md, section 7): a frame of mean photon level e has
mean offset + 3e/alpha and variance (4/alpha)(mean - offset) + dark_sigma^2, a line that
is fitted by weighted least squares. The output JSON holds alpha (per output unit),
gain = 3/alpha (output units per photon), dark_sigma, offset, their standard errors, the
reduced chi-square, and per frame its mean, variance and whether it was used.

Robustness:
  laser-off frame: the lowest frame counts as laser-off when its skewness is consistent
    with zero (dark noise is Gaussian; photons make a frame skewed); its mean is the
    offset. Without one, pass --offset.
  saturated pixels: values piled up (>= 0.1% of a frame) at the stack's maximum or
    minimum are masked; a frame with more than 0.1% of them is left out of the fit.
    --saturation sets the ceiling by hand.
  non-uniform frames (structure beyond noise in 8x8-block means, > 5% of the variance)
    are an error: calibrate on a uniform sample.
"""

from absl import flags

from qdjax import cli, io
from qdjax.microscope import pmt_calibration

_INPUT = flags.DEFINE_string("input", None, "Uniform frames: .npy, .npz or .tif.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "JSON to write (PMT calibration).", required=True)
_DARK_FRAME = flags.DEFINE_integer(
  "dark_frame", None, "Index of the laser-off frame; default: found by its zero skewness."
)
_NO_DARK = flags.DEFINE_bool("no_dark_frame", False, "No frame is laser-off (give --offset).")
_OFFSET = flags.DEFINE_float("offset", None, "Dark output, when no frame is laser-off.")
_SATURATION = flags.DEFINE_float("saturation", None, "Digitiser ceiling; default: detected.")
_PLOT = flags.DEFINE_bool("plot", False, "Also draw the mean-variance line (<output>.png).")


def main(argv):
  cli.check_no_extra_args(argv)
  output = io.check_output_path(_OUTPUT.value, inputs=[_INPUT.value])
  if _PLOT.value:
    io.check_output_path(str(output)[: -len(output.suffix)] + ".png", inputs=[_INPUT.value, output])
  frames = io.open_frames(_INPUT.value)
  dark = None if _NO_DARK.value else ("auto" if _DARK_FRAME.value is None else _DARK_FRAME.value)
  result = pmt_calibration.calibrate_pmt(frames, dark, _OFFSET.value, _SATURATION.value)
  pmt_calibration.write_pmt(output, result, source=_INPUT.value)
  se = result.standard_errors
  print(
    f"alpha {result.alpha:.4g} +- {se['alpha']:.2g} per unit (gain {result.gain:.4g} "
    f"+- {se['gain']:.2g} per photon), dark sigma {result.dark_sigma:.4g} +- "
    f"{se['dark_sigma']:.2g}, offset {result.offset:.4g} +- {se['offset']:.2g}; "
    f"reduced chi2 {result.reduced_chi2:.2f} -> {output}"
  )
  if _PLOT.value:
    png = str(output)[: -len(output.suffix)] + ".png"
    pmt_calibration.plot_pmt(result, png)
    print(f"wrote {png}")


if __name__ == "__main__":
  cli.run(main)
