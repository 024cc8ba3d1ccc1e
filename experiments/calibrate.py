r"""Fit the paper preset's N, B, D1 and D2 to the study's TrackPy row (docs/spec.md, section 2).

  python experiments/calibrate.py                     # writes ./paper_calibration.json
  python experiments/calibrate.py --install           # replaces the preset's calibration
  python experiments/calibrate.py --output=/tmp/paper.json --config.fine_fits=20

Writes the calibration record (values, regimes, provenance, trackpy settings, per-cell
gap). With --install it goes to qdjax/calibration/<preset>.json, which qdjax.sim.presets merges
into the preset; only then does the preset change. Uses validation-style frames only,
never a test split. The search's budget counts fits, so a command gives the same
calibration on any machine.
"""

import shlex
import sys

from absl import flags

from qdjax import cli
from qdjax.sim import presets

_CONFIG = cli.define_config(
  __file__,
  "calibrate",
  "Calibration config file (default: configs/calibrate.py beside this script); override "
  "its fields with --config.<field>=value.",
)
_OUTPUT = flags.DEFINE_string(
  "output", None, "JSON to write (default: ./<preset>_calibration.json)."
)
_INSTALL = flags.DEFINE_bool(
  "install",
  False,
  "Write qdjax/calibration/<preset>.json inside the package instead, replacing the "
  "calibration the preset loads.",
)


def main(argv):
  cli.check_no_extra_args(argv)
  config = _CONFIG.value
  presets.get(config.preset)  # fails early on an unknown name
  if _INSTALL.value and _OUTPUT.value:
    raise ValueError("give --output or --install, not both")
  if _INSTALL.value:
    output = str(presets.CALIBRATION_DIR / f"{config.preset}.json")
  else:
    output = _OUTPUT.value or f"{config.preset}_calibration.json"
  command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
  # Imported here, not at the top: --help and a bad flag exit without loading it.
  from qdjax.study import calibrate

  record = calibrate.calibrate(config, output, command)
  print(calibrate.format_report(record))
  print(f"wrote {output}")


if __name__ == "__main__":
  cli.run(main)
