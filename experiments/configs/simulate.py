"""Settings of experiments/simulate.py: a preset and optional overrides of its values.

Override any spec-named value, e.g. ``--config.overrides.peak_photons=5``. Unset (None)
overrides keep the preset's value.
"""

from ml_collections import config_dict

from qdjax.sim import presets


def get_config():
  config = config_dict.ConfigDict()
  config.preset = "paper"  # preset name or JSON preset file (qdjax.sim.presets)
  config.overrides = presets.overrides_config()  # spec-named values, None keeps the preset's
  return config
