"""Named, frozen parameter sets with one line of provenance per value (docs/spec.md,
sections 2 and 7).

Anywhere a preset name is accepted, a path to a JSON *preset file* is accepted too
(``get('microscope.json')``; see ``load_file`` for its keys).

The ``paper`` preset reconstructs the 2023 study. Values the study states are fixed;
values it omits follow the reconstruction rule of docs/spec.md, section 2. The fitted
values (N, B, D1, D2 and any freed start-range or sigma_z) come from
``experiments/calibrate.py``, which writes ``qdjax/calibration/<preset>.json``; when that
file exists its values and provenance override the first-probe defaults below, so a new
calibration drops in without a code change.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the simulator (and jax) load when a preset makes parameters, not before
  from qdjax.sim import simulate
  from qdjax.sim import tissue as tissue_lib

CALIBRATION_DIR = Path(__file__).parents[1] / "calibration"


@dataclasses.dataclass(frozen=True)
class Preset:
  """A named parameter set.

  Attributes:
    name: preset name.
    values: spec-named simulation values (without ``diffusion_um2_s``).
    regimes: D1, D2, D3 in um^2/s, the three test experiments.
    train_diffusion: (lo, hi) um^2/s, log-uniform range for training.
    epsilons_px: the metric's distance thresholds.
    split_sizes: frames per split at the study's sizes.
    provenance: one line per value: where it comes from.
    calibration: the calibration record (fit, per-cell gap), or None.
    blinking_s: (mean on, mean off) dwell times of a movie's QDs, s; off = 0: no blinking.
    tissue: ``tissue.make_params`` values of the preparation's tissue motion and structured
      background (docs/spec.md, section 1, "Tissue"); empty: none known.
    tissue_on: whether movies and frames of this preset have them unless told
      (``tissue_params``).
  """

  name: str
  values: types.MappingProxyType
  regimes: tuple[float, float, float]
  train_diffusion: tuple[float, float]
  epsilons_px: tuple[float, ...]
  split_sizes: types.MappingProxyType
  provenance: types.MappingProxyType
  calibration: types.MappingProxyType | None = None
  blinking_s: tuple[float, float] = (1.0, 0.0)
  tissue: types.MappingProxyType = dataclasses.field(
    default_factory=lambda: types.MappingProxyType({})
  )
  tissue_on: bool = False

  def tissue_params(self, on: bool | None = None, **overrides) -> tissue_lib.Tissue:
    """The preset's tissue motion and background (``tissue.make_params``).

    Args:
      on: use the preset's ``tissue`` values; None: ``tissue_on``. Off: no motion and the
        flat background, except for what ``overrides`` set.
      **overrides: ``tissue.make_params`` values that replace the preset's.
    """
    on = self.tissue_on if on is None else on
    from qdjax.sim import tissue as tissue_lib

    return tissue_lib.make_params(**{**(dict(self.tissue) if on else {}), **overrides})

  def sim_params(self, diffusion=None, regime: int | None = None, **overrides) -> simulate.Params:
    """Validated simulation Params.

    Args:
      diffusion: D in um^2/s, or a (lo, hi) log-uniform range. Default: the training range.
      regime: 1, 2 or 3 takes that experiment's D (instead of ``diffusion``).
      **overrides: any spec-named value; ``diffusion_um2_s`` is taken as ``diffusion``.
    """
    if "diffusion_um2_s" in overrides:
      if diffusion is not None or regime is not None:
        raise ValueError("give diffusion_um2_s, diffusion or regime, not two of them")
      diffusion = overrides.pop("diffusion_um2_s")
    if regime is not None:
      if diffusion is not None:
        raise ValueError("give diffusion or regime, not both")
      if regime not in (1, 2, 3):
        raise ValueError(f"regime must be 1, 2 or 3, got {regime}")
      diffusion = self.regimes[regime - 1]
    if diffusion is None:
      diffusion = self.train_diffusion
    from qdjax.sim import simulate

    return simulate.make_params(**{**self.values, **overrides, "diffusion_um2_s": diffusion})

  def to_dict(self) -> dict[str, Any]:
    """The JSON record written with every dataset: values, regimes, epsilons, provenance."""
    return {
      "preset": self.name,
      **dict(self.values),
      "regimes": list(self.regimes),
      "train_diffusion": list(self.train_diffusion),
      "epsilons_px": list(self.epsilons_px),
      "blink_on_s": self.blinking_s[0],
      "blink_off_s": self.blinking_s[1],
      "provenance": dict(self.provenance),
    }


def _paper() -> Preset:
  values = {
    "height": 24,
    "width": 25,
    "pixel_size_um": 0.1,
    "dwell_s": 2e-6,
    "retrace_s": 1.1e-3,
    "substeps": 1,
    "sigma_xy_um": 0.2,
    "sigma_z_um": 0.6,
    "peak_photons": 3.0,
    "background_photons": 4.0,
    "margin_px": 2.0,
    "z_range_um": 0.3,
    "num_particles": (1, 1),
    "detector": "poisson",
  }
  regimes = (0.3, 1.5, 3.0)
  provenance = {
    "height": "stated: 24 px tall (paper 4.1)",
    "width": "stated: 25 px wide (paper 4.1)",
    "pixel_size_um": "reconstructed: 0.1 um (spec section 2 rule; the value was lost in "
    "conversion)",
    "dwell_s": "stated: 2 per pixel, unit inferred as us (paper 4.6.1)",
    "retrace_s": "stated: 1.1 ms (paper 4.6.1)",
    "substeps": "numerical: K=1 with the exact erf integral over the beam sweep; a QD moves "
    "<= 4 nm per 2 us dwell at D=3, so K=1 matches K=64 (tests/test_simulate.py)",
    "sigma_xy_um": "reconstructed: 0.2 um (spec section 2 rule; measured in vivo, Kutuzov 2018)",
    "sigma_z_um": "reconstructed: 0.6 um (spec section 2 rule)",
    "peak_photons": "first probe (spec section 2): N=3, pending calibrate.py",
    "background_photons": "first probe (spec section 2): B=4, pending calibrate.py",
    "margin_px": "first probe (spec section 2): 2 px, not stated by the study",
    "z_range_um": "first probe (spec section 2): +-0.3 um, not stated by the study",
    "num_particles": "stated: exactly 1 QD per image (paper 4.1)",
    "detector": "stated: Poisson shot noise, PMT excess and read noise neglected (paper 3)",
    "regimes": "first probe (spec section 2): D1=0.3, D2=1.5, D3=10*D1 (ratio stated), pending "
    "calibrate.py",
    "train_diffusion": "derived: log-uniform over [D1/2, 2*D3], covering the three regimes",
    "epsilons_px": "reconstructed: 1, 2, 3 px = 0.1, 0.2, 0.3 um (spec section 2 rule)",
    "split_sizes": "stated: 29838 train, tests 2570/2410/1870 (paper 4.1); validation ours",
    "pmt_alpha": "unused (Poisson detector); default: sl2pm's calibration, 0.44 per a.u.",
    "pmt_dark_sigma": "unused (Poisson detector); default: sl2pm's calibration, 8.1 a.u.",
    "pmt_offset": "unused (Poisson detector); default: sl2pm's calibration, -2.74 a.u.",
    "tissue": "none: no tissue motion and the flat background B, as the study's simulated "
    "frames (spec section 1)",
  }
  return _calibrated("paper", values, regimes, provenance)


def _calibrated(name: str, values: dict, regimes, provenance: dict) -> Preset:
  """The preset with ``calibration/<name>.json`` (from experiments/calibrate.py) merged in."""
  calibration = None
  path = CALIBRATION_DIR / f"{name}.json"
  if path.exists():
    calibration = json.loads(path.read_text())
    values.update(calibration.get("values", {}))
    if "regimes" in calibration:
      regimes = tuple(float(d) for d in calibration["regimes"])
    provenance.update(calibration.get("provenance", {}))
  if "num_particles" in values:
    values["num_particles"] = tuple(values["num_particles"])
  return Preset(
    name=name,
    values=types.MappingProxyType(values),
    regimes=regimes,
    train_diffusion=(regimes[0] / 2, regimes[2] * 2),
    epsilons_px=(1.0, 2.0, 3.0),
    split_sizes=types.MappingProxyType(
      {"train": 29838, "validation": 2000, "test_d1": 2570, "test_d2": 2410, "test_d3": 1870}
    ),
    provenance=types.MappingProxyType(provenance),
    calibration=None if calibration is None else types.MappingProxyType(calibration),
  )


# In vivo QD frames (docs/spec.md, section 9): a fitted spot of total T = 90-160 photons and
# standard deviation 1.0-1.5 px (blur included) on a background of 0.6-1.2 photons per pixel.
INVIVO_SPOT_TOTAL = (90.0, 160.0)
INVIVO_SPOT_SD_PX = (1.0, 1.5)
INVIVO_BACKGROUND = (0.6, 1.2)


# Tissue motion and background of an anaesthetised mouse's brain under a cranial window
# (docs/spec.md, section 1, "Tissue"). Available to the invivo preset but off by default:
# turned on, every invivo movie and frame would change, and with them the invivo
# benchmarks, calibrations and shipped models made without it.
INVIVO_TISSUE = {
  "breathing_um": (0.0, 1.0, 0.5),
  "breathing_hz": 1.5,
  "heartbeat_um": (0.0, 0.25, 0.25),
  "heartbeat_hz": 8.0,
  "drift_um_s": (0.01, 0.01, 0.0),
  "texture_cv": 0.5,
  "texture_um": 0.4,
  "texture_z_um": 0.95,
}
_OFF = "off by default (Preset.tissue_params(on=True), simulate.py --tissue)"
INVIVO_TISSUE_PROVENANCE = {
  "tissue": f"{_OFF}: turned on it would change every invivo movie and frame, and the "
  "benchmarks, calibrations and models made from them",
  "tissue.breathing_hz": "measured: 1.5 Hz (90/min), just below the 94-163/min of a mouse "
  "(Loyola University Chicago, Comparative Medicine, mouse anaesthesia notes), since "
  "anaesthesia slows breathing",
  "tissue.heartbeat_hz": "measured: 8 Hz (480/min); mice under isoflurane kept 463-489 "
  "beats/min (PLoS ONE 11:e0154936, 2016, Fig 2); mouse range 325-780/min (Loyola)",
  "tissue.breathing_um": "first probe: (0, 1, 0.5) um half peak-to-peak, mostly along one "
  "in-plane axis and z; Dombeck et al. 2007 (Neuron 56:43) saw brain motion limited to "
  "~2-5 um in running awake mice, mostly in the focal plane; anaesthetised breathing is "
  "taken as smaller",
  "tissue.heartbeat_um": "first probe: (0, 0.25, 0.25) um; heartbeat micromotion limits in "
  "vivo two-photon imaging (Paukert & Bergles 2012, J Physiol), its size here not measured",
  "tissue.drift_um_s": "first probe: 0.01 um/s in x and y (0.6 um per minute)",
  "tissue.texture_cv": "first probe: relative sd 0.5 of the autofluorescent background",
  "tissue.texture_um": "first probe: 0.4 um correlation length, about twice the PSF's sxy",
  "tissue.texture_z_um": "derived: 0.95 um = sqrt(0.4^2 + 2 x 0.6^2): the background is the "
  "tissue seen through the excitation volume (sz 0.6 um), which lengthens its correlation "
  "along z",
}


def _invivo() -> Preset:
  """The study's frame and timing at the photon levels and PMT of real in vivo frames."""
  paper = _paper()
  sigma_xy = paper.values["sigma_xy_um"]
  # The least blurred in vivo spot (sd 1.0 px) is the PSF itself: a = sxy / 1.0 px.
  pixel = sigma_xy / INVIVO_SPOT_SD_PX[0]
  # A spot's total is conserved by blur: T = N * 2 pi (sxy/a)^2 for the dwell-averaged PSF.
  total = sum(INVIVO_SPOT_TOTAL) / 2
  peak = round(total / (2 * math.pi * (sigma_xy / pixel) ** 2), 1)
  background = round(sum(INVIVO_BACKGROUND) / 2, 2)
  values = {
    **paper.values,
    "pixel_size_um": pixel,
    "peak_photons": peak,
    "background_photons": background,
    "detector": "pmt",
    "pmt_alpha": 0.44,
    "pmt_dark_sigma": 8.1,
    "pmt_offset": -2.74,
  }
  regimes = (1.0, 5.0, 10.0)
  provenance = {
    **{k: f"as paper: {paper.provenance[k]}" for k in paper.provenance},
    "pixel_size_um": f"derived: {pixel:g} um, so that the PSF (sxy {sigma_xy} um) is the "
    f"least blurred in vivo spot's sd, {INVIVO_SPOT_SD_PX[0]} px (spec section 9: 1.0-1.5 px); at "
    "the paper's 0.1 um a static spot would be 2 px wide, wider than any in vivo spot",
    "peak_photons": f"derived: N = T / (2 pi (sxy/a)^2) = {peak:g} with T = {total:g}, the "
    f"middle of the in vivo spot totals {INVIVO_SPOT_TOTAL[0]:g}-{INVIVO_SPOT_TOTAL[1]:g} "
    "photons (spec section 9); blurred to sd 1.0-1.5 px its amplitude is ~9-20 photons, as the "
    "in vivo 11-16",
    "background_photons": f"measured: {background:g}, the middle of the in vivo "
    f"{INVIVO_BACKGROUND[0]:g}-{INVIVO_BACKGROUND[1]:g} photons per pixel (spec section 9)",
    "detector": "measured: in vivo frames are PMT output (sl2pm, spec sections 7 and 9)",
    "pmt_alpha": "measured: 0.44 per a.u., sl2pm's calibration stack (gain 3/alpha = 6.8 a.u. "
    "per photon; experiments/calibrate_pmt.py on tests/data/sl2pm agrees); sl2pm's in vivo "
    "QD tutorial used 0.452",
    "pmt_dark_sigma": "measured: 8.1 a.u., sl2pm's calibration stack (the in vivo tutorial "
    "used 8.5)",
    "pmt_offset": "measured: -2.74 a.u., mean of the calibration stack's laser-off frame",
    "epsilons_px": "as paper: the study's 1, 2, 3 px (0.2, 0.4, 0.6 um at this pixel size)",
    "regimes": "placeholder D1=1, D2=5, D3=10*D1, pending experiments/calibrate.py "
    "--config=experiments/configs/calibrate_invivo.py --install",
    **INVIVO_TISSUE_PROVENANCE,
  }
  preset = _calibrated("invivo", values, regimes, provenance)
  return dataclasses.replace(preset, tissue=types.MappingProxyType(dict(INVIVO_TISSUE)))


def config_overrides(overrides, preset: Preset) -> dict[str, Any]:
  """spec-named values from a config's ``overrides`` block (None keeps the preset's);
  ``min_particles``/``max_particles`` combine into ``num_particles``."""
  values = {k: v for k, v in overrides.items() if v is not None}
  lo = values.pop("min_particles", None)
  hi = values.pop("max_particles", None)
  if lo is not None or hi is not None:
    base = preset.values["num_particles"]
    values["num_particles"] = (base[0] if lo is None else lo, base[1] if hi is None else hi)
  return values


def overrides_config():
  """The ``overrides`` block of the simulate and train configs.

  Every spec-named value a run may set, each None (keep the preset's) until given, e.g.
  ``--config.overrides.peak_photons=5``.
  """
  from ml_collections import config_dict

  overrides = config_dict.ConfigDict()
  overrides.height = config_dict.placeholder(int)  # frame rows, px
  overrides.width = config_dict.placeholder(int)  # frame columns, px
  overrides.pixel_size_um = config_dict.placeholder(float)  # pixel size a, um
  overrides.dwell_s = config_dict.placeholder(float)  # pixel dwell, s
  overrides.retrace_s = config_dict.placeholder(float)  # line retrace, s
  overrides.substeps = config_dict.placeholder(int)  # samples per dwell K
  overrides.sigma_xy_um = config_dict.placeholder(float)  # lateral PSF sd, um
  overrides.sigma_z_um = config_dict.placeholder(float)  # axial PSF sd, um
  overrides.peak_photons = config_dict.placeholder(float)  # N, photons per dwell at focus
  overrides.background_photons = config_dict.placeholder(float)  # B, photons per pixel
  overrides.margin_px = config_dict.placeholder(float)  # start margin, px
  overrides.z_range_um = config_dict.placeholder(float)  # start z in [-z, z], um
  overrides.min_particles = config_dict.placeholder(int)  # fewest QDs per frame
  overrides.max_particles = config_dict.placeholder(int)  # most QDs per frame
  overrides.detector = config_dict.placeholder(str)  # 'poisson' or 'pmt' (spec section 7)
  overrides.pmt_alpha = config_dict.placeholder(float)  # PMT Gamma rate, 1/output unit
  overrides.pmt_dark_sigma = config_dict.placeholder(float)  # PMT dark-noise sd, output units
  overrides.pmt_offset = config_dict.placeholder(float)  # PMT dark-noise mean, output units
  return overrides


OVERRIDES_HELP = (
  "--config.overrides.<name>=value, <name> one of "
  + ", ".join(overrides_config().keys())
  + " (unset: the preset's value)"
)

_BUILDERS = {"paper": _paper, "invivo": _invivo}
NAMES = tuple(_BUILDERS)


def get(name: str) -> Preset:
  """The preset called ``name``, or the preset file at path ``name`` (``*.json``).

  Raises:
    ValueError: for an unknown name (listing the known ones) or a bad preset file.
    FileNotFoundError: for a missing preset file.
  """
  name = str(name)
  if name in _BUILDERS:
    return _BUILDERS[name]()
  if name.lower().endswith(".json") or Path(name).is_file():
    return load_file(name)
  raise ValueError(
    f"unknown preset {name!r}; known presets: {', '.join(NAMES)}, or a JSON preset file"
  )


# --- preset files ---------------------------------------------------------------------


@functools.cache
def file_values() -> tuple[str, ...]:
  """The spec-named values a preset file may set (sections 1 and 7): the simulator's
  parameters but D and the tissue (``FILE_EXTRAS`` are its other keys)."""
  from qdjax.sim import simulate

  skip = ("diffusion_um2_s", "tissue")
  return tuple(f.name for f in dataclasses.fields(simulate.Params) if f.name not in skip)


FILE_EXTRAS = (
  "preset",  # a name for the record (default: the file's name)
  "base",  # the named preset whose values fill in what the file leaves out (default paper)
  "diffusion_um2_s",  # D, or [lo, hi]: sets regimes/train_diffusion the file leaves out
  "regimes",  # [D1, D2, D3] um^2/s
  "train_diffusion",  # [lo, hi] um^2/s
  "epsilons_px",  # the metric's distance thresholds, px
  "blink_on_s",  # a movie's QDs blink: mean on dwell, s (default 1)
  "blink_off_s",  # mean off dwell, s (default 0: no blinking)
  "provenance",  # {name: where the value comes from}
  "standard_errors",  # {name: standard error of a fitted value}
  "fit",  # a fit's record (fit_microscope.py): kept as written
)


def _file_error(path, message: str) -> ValueError:
  return ValueError(f"preset file {path}: {message}")


def _positive_numbers(path, key, value, count=None) -> tuple[float, ...]:
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    value = [value]
  if not isinstance(value, list) or (count is not None and len(value) != count):
    want = f"a list of {count} numbers" if count else "a list of numbers"
    raise _file_error(path, f"{key} must be {want}, got {value!r}")
  out = []
  for v in value:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
      raise _file_error(path, f"{key} must hold finite numbers > 0, got {v!r}")
    out.append(float(v))
  return tuple(out)


def load_file(path) -> Preset:
  """A preset from a JSON file (docs/spec.md, section 7).

  Keys: any spec-named value of sections 1 and 7 (``peak_photons``, ``pmt_alpha``, ...),
  and optionally ``diffusion_um2_s``, ``regimes``, ``train_diffusion``, ``epsilons_px``,
  ``provenance``, ``standard_errors``, ``fit``, ``preset`` (a name) and ``base`` (a named
  preset, default ``paper``, whose values and provenance fill in what the file leaves
  out). A single ``diffusion_um2_s`` D with no ``regimes`` makes all three regimes D and
  trains on [D/2, 2D]; a range [lo, hi] sets ``train_diffusion``. The file's provenance
  lines replace the base's, and a ``preset_file`` line names the file and its SHA-256.

  Raises:
    FileNotFoundError: missing file.
    ValueError: unreadable JSON, an unknown key or a bad value, naming it.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no such preset file: {path}")
  raw = path.read_bytes()
  try:
    record = json.loads(raw)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise _file_error(path, f"not valid JSON ({e})") from None
  if not isinstance(record, dict):
    raise _file_error(path, "must hold a JSON object of named values")
  unknown = sorted(set(record) - set(file_values()) - set(FILE_EXTRAS))
  if unknown:
    raise _file_error(
      path,
      f"unknown key {unknown[0]!r}; known: spec-named values ({', '.join(file_values())}) "
      f"and {', '.join(FILE_EXTRAS)}",
    )
  base_name = record.get("base", "paper")
  if base_name not in _BUILDERS:
    raise _file_error(path, f"base must be one of {', '.join(NAMES)}, got {base_name!r}")
  base = _BUILDERS[base_name]()
  values = dict(base.values)
  values.update({k: record[k] for k in file_values() if k in record})
  if isinstance(values.get("num_particles"), list):
    values["num_particles"] = tuple(values["num_particles"])
  regimes, train = base.regimes, None
  if "diffusion_um2_s" in record:
    d = _positive_numbers(path, "diffusion_um2_s", record["diffusion_um2_s"])
    if len(d) == 1:
      regimes, train = (d[0],) * 3, (d[0] / 2, d[0] * 2)
    elif len(d) == 2 and d[0] <= d[1]:
      train = d
    else:
      raise _file_error(path, f"diffusion_um2_s must be D or [lo, hi], got {d}")
  if "regimes" in record:
    regimes = _positive_numbers(path, "regimes", record["regimes"], 3)
  if "train_diffusion" in record:
    train = _positive_numbers(path, "train_diffusion", record["train_diffusion"], 2)
    if train[0] > train[1]:
      raise _file_error(path, f"train_diffusion must have lo <= hi, got {list(train)}")
  if train is None:
    train = base.train_diffusion if "regimes" not in record else (regimes[0] / 2, regimes[2] * 2)
  epsilons = base.epsilons_px
  if "epsilons_px" in record:
    epsilons = _positive_numbers(path, "epsilons_px", record["epsilons_px"])
  blinking = list(base.blinking_s)
  for i, key in enumerate(("blink_on_s", "blink_off_s")):
    if key in record:
      value = record[key]
      ok = isinstance(value, (int, float)) and not isinstance(value, bool)
      if not ok or not math.isfinite(value) or value < 0:
        raise _file_error(path, f"{key} must be a finite number >= 0, got {value!r}")
      blinking[i] = float(value)
  if blinking[1] > 0 and blinking[0] <= 0:
    raise _file_error(path, f"blink_on_s must be > 0 when QDs blink, got {blinking[0]}")
  for key in ("provenance", "standard_errors", "fit"):
    if key in record and not isinstance(record[key], dict):
      raise _file_error(path, f"{key} must be a JSON object, got {record[key]!r}")
  for key, line in record.get("provenance", {}).items():
    if not isinstance(line, str):
      raise _file_error(path, f"provenance of {key!r} must be a string, got {line!r}")
  for key, se in record.get("standard_errors", {}).items():
    if isinstance(se, bool) or not isinstance(se, (int, float)) or not se >= 0:
      raise _file_error(path, f"standard error of {key!r} must be a number >= 0, got {se!r}")
  provenance = dict(base.provenance)
  for key in record:
    if key in file_values() or key in ("diffusion_um2_s", "regimes", "train_diffusion"):
      provenance[key if key != "diffusion_um2_s" else "regimes"] = "set by the preset file"
    elif key in ("epsilons_px", "blink_on_s", "blink_off_s"):
      provenance[key] = "set by the preset file"
  provenance.update(record.get("provenance", {}))
  provenance["preset_file"] = f"{path} (sha256 {hashlib.sha256(raw).hexdigest()[:16]})"
  preset = Preset(
    name=str(record.get("preset", path.stem)),
    values=types.MappingProxyType(values),
    regimes=tuple(regimes),
    train_diffusion=tuple(train),
    epsilons_px=tuple(epsilons),
    split_sizes=base.split_sizes,
    blinking_s=tuple(blinking),
    tissue=base.tissue,
    tissue_on=base.tissue_on,
    provenance=types.MappingProxyType(provenance),
    calibration=types.MappingProxyType(
      {k: record[k] for k in ("standard_errors", "fit") if k in record}
    ),
  )
  try:
    for regime in (1, 2, 3):
      preset.sim_params(regime=regime)
    preset.sim_params(diffusion=preset.train_diffusion)
  except ValueError as e:
    raise _file_error(path, str(e)) from None
  return preset


def write_file(path, record: dict) -> None:
  """Writes a preset file atomically, after checking that it loads back.

  Raises:
    ValueError: if ``record`` is not a valid preset file (nothing is written then).
  """
  from qdjax import io

  text = json.dumps(record, indent=1, sort_keys=True) + "\n"
  with io.atomic_path(path) as tmp:
    tmp.write_text(text)
    load_file(tmp)
