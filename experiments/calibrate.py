r"""Fit the paper preset's N, B, D1 and D2 to the study's TrackPy row (docs/spec.md, section 2).

  python experiments/calibrate.py
  python experiments/calibrate.py --output=/tmp/paper.json --config.fine_budget_s=60

Writes qdjax/calibration/<preset>.json (values, regimes, provenance, trackpy settings,
per-cell gap), which qdjax.presets merges into the preset. Uses validation-style frames
only, never a test split.
"""

import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from qdjax import calibrate, cli, presets

_CONFIG = config_flags.DEFINE_config_file(
  "config", "experiments/configs/calibrate.py", "Calibration config file.", lock_config=True
)
_OUTPUT = flags.DEFINE_string(
  "output", None, "JSON to write (default: qdjax/calibration/<preset>.json)."
)


@cli.one_line_errors
def main(argv):
  cli.check_no_extra_args(argv)
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  presets.get(config.preset)  # fails early on an unknown name
  output = _OUTPUT.value or str(presets.CALIBRATION_DIR / f"{config.preset}.json")
  command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
  record = calibrate.calibrate(config, output, command)
  print(calibrate.format_report(record))
  print(f"wrote {output}")


if __name__ == "__main__":
  app.run(main)
