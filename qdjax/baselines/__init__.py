"""Baseline localisers, each a callable ``images [n, h, w] -> list of n [k, 3] (x, y, score)``.

- ``trackpy``: ``trackpy.locate`` per frame, mass as the score (the study's method).
- ``mle``: Poisson maximum-likelihood fit of an anisotropic Gaussian spot plus background.

Coordinates follow SPEC section 1: the centre of pixel (row 0, column 0) is (0, 0),
x = column.
"""

from __future__ import annotations

NAMES = ("trackpy", "mle")


def make(name: str, preset=None, settings=None, workers=None, **mle_options):
  """A baseline as a callable.

  Args:
    name: 'trackpy' or 'mle'.
    preset: for trackpy without ``settings``: use the preset's calibrated settings when
      it has them (trackpy's defaults otherwise).
    settings: trackpy Settings (or a dict of them).
    workers: trackpy worker processes (None: by core count).
    **mle_options: fields of ``mle.Config`` (e.g. score='llr').

  Raises:
    ValueError: unknown name or bad settings.
  """
  if name == "trackpy":
    from qdjax.baselines import trackpy

    if settings is None and preset is not None and preset.calibration:
      settings = preset.calibration.get("trackpy_settings")
    if isinstance(settings, dict):
      settings = trackpy.Settings(**settings)
    return trackpy.Locator(settings, workers=workers)
  if name == "mle":
    from qdjax.baselines import mle

    return mle.Locator(mle.Config(**mle_options))
  raise ValueError(f"unknown baseline {name!r}; known: {', '.join(NAMES)}")
