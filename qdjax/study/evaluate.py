"""The paper's table, reproduced: every method on the study-sized test sets.

Sections 3-5 of docs/spec.md.

``run(config)`` draws the three test splits (``data.load_split(preset, 'test_dk')``:
2570 / 2410 / 1870 frames at scale 1, fixed seeds), runs each method on them, and scores
every method with the one metric of ``qdjax.evaluation.metrics``. ``write_outputs`` writes the
section-3 table (Markdown and JSON, the study's rows beside ours), the localisation table
(RMSE and bias of matched detections, Jaccard at the best-F1 threshold, RMSE over the
Cramer-Rao bound) and the precision-recall curves.

A method is a ``qdjax.localize.locator.Locator``, built by ``locator.make``: ``images [n, h, w]
float32 -> list of n arrays [k, 3] (x, y, score)``. trackpy's
settings are tuned on the val_d1..3 splits (or taken from the calibration, which tuned
them on the same splits), never on a test split.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from qdjax import io
from qdjax.evaluation import metrics
from qdjax.localize import locator
from qdjax.sim import data, presets

# The study's table (docs/spec.md, section 3): AUC per regime (D1, D2, D3) at epsilon 1, 2, 3 px.
STUDY = {
  "TrackPy": ((0.06, 0.42, 0.73), (0.04, 0.30, 0.61), (0.02, 0.19, 0.47)),
  "Keypoint R-CNN (paper)": ((0.48, 0.91, 0.99), (0.41, 0.87, 0.98), (0.26, 0.72, 0.92)),
}
REGIMES = (1, 2, 3)


@dataclasses.dataclass(frozen=True)
class MethodReport:
  """One method on one regime's test set.

  Attributes:
    method: its name.
    regime: 1, 2 or 3.
    diffusion: the regime's D, um^2/s.
    epsilons: one metrics.EpsilonReport per epsilon, ascending.
    num_frames: test frames.
    seconds: wall time of locating them.
    rmse_over_crlb: RMSE of matches at the largest epsilon over the static CRLB's RMSE.
  """

  method: str
  regime: int
  diffusion: float
  epsilons: tuple[metrics.EpsilonReport, ...]
  num_frames: int
  seconds: float
  rmse_over_crlb: float

  def to_dict(self) -> dict:
    per_eps = {}
    for r in self.epsilons:
      per_eps[f"{r.epsilon_px:g}"] = {
        "auc": round(r.auc, 4),
        "rmse_px": _num(r.localisation.rmse_px),
        "bias_px": [_num(b) for b in r.localisation.bias_px],
        "matched": r.localisation.num_matched,
        "jaccard": round(r.jaccard.jaccard, 4),
        "best_f1": round(r.jaccard.f1, 4),
        "threshold": _num(r.jaccard.threshold),
        "tp": r.jaccard.tp,
        "fp": r.jaccard.fp,
        "fn": r.jaccard.fn,
        "detections": r.num_detections,
        "ground_truths": r.num_ground_truth,
      }
    return {
      "diffusion_um2_s": self.diffusion,
      "frames": self.num_frames,
      "seconds": round(self.seconds, 2),
      "rmse_over_crlb": _num(self.rmse_over_crlb),
      "epsilons": per_eps,
    }


def _num(x: float, digits: int = 4):
  """JSON-safe rounded float (NaN and inf become None)."""
  return round(float(x), digits) if np.isfinite(x) else None


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """Everything ``run`` measured.

  Attributes:
    preset: preset name.
    seed: the user seed of the test splits.
    scale: split size factor (1 = the study's sizes).
    regimes: (D1, D2, D3) um^2/s.
    epsilons_px: match radii.
    reports: one MethodReport per (method, regime), methods in run order.
    crlb: the static-QD bound at the preset's N, B, sxy and a.
    trackpy_settings: trackpy's settings and where they came from (or None).
    notices: one-line notes (e.g. a skipped method).
  """

  preset: str
  seed: int
  scale: float
  regimes: tuple[float, float, float]
  epsilons_px: tuple[float, ...]
  reports: tuple[MethodReport, ...]
  crlb: metrics.CramerRao
  trackpy_settings: dict | None
  notices: tuple[str, ...]

  @property
  def methods(self) -> list[str]:
    return list(dict.fromkeys(r.method for r in self.reports))

  def report(self, method: str, regime: int) -> MethodReport:
    return next(r for r in self.reports if r.method == method and r.regime == regime)

  def auc_row(self, method: str) -> list[float]:
    """[9] AUC at D1 e1, D1 e2, ..., D3 e3."""
    return [e.auc for k in REGIMES for e in self.report(method, k).epsilons]

  def columns(self) -> list[str]:
    return [f"D{k} e{e:g}" for k in REGIMES for e in self.epsilons_px]

  def table_markdown(self) -> str:
    """The section-3 table of docs/spec.md, the study's rows first."""
    head = "| method | " + " | ".join(self.columns()) + " |"
    lines = [head, "|---|" + "---|" * len(self.columns())]
    for name, rows in STUDY.items():
      cells = [v for row in rows for v in row]
      lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
    for method in self.methods:
      cells = self.auc_row(method)
      lines.append(f"| {method} (qdjax) | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
    return "\n".join(lines)

  def localisation_markdown(self) -> str:
    """RMSE/bias at the largest epsilon, Jaccard per epsilon, RMSE over the CRLB."""
    eps = self.epsilons_px
    head = (
      f"| method | regime | RMSE e{eps[-1]:g} (px) | bias x, y (px) | "
      + " | ".join(f"Jaccard e{e:g}" for e in eps)
      + " | RMSE / CRLB | ms / frame* |"
    )
    lines = [head, "|---|---|---|---|" + "---|" * len(eps) + "---|---|"]
    for r in self.reports:
      loc = r.epsilons[-1].localisation
      jac = " | ".join(f"{e.jaccard.jaccard:.2f}" for e in r.epsilons)
      lines.append(
        f"| {r.method} | D{r.regime} = {r.diffusion:g} | {loc.rmse_px:.2f} | "
        f"{loc.bias_px[0]:+.2f}, {loc.bias_px[1]:+.2f} | {jac} | {r.rmse_over_crlb:.2f} | "
        f"{1e3 * r.seconds / max(r.num_frames, 1):.2f} |"
      )
    c = self.crlb
    lines.append("\n*wall time per frame, including one-off compilation and process start-up.")
    lines.append(
      f"CRLB (static in-focus QD, Mortensen 2010): RMSE {c.rmse_px:.3f} px "
      f"(per axis {np.sqrt(c.variance_px2):.3f} px) at Ntot = {c.total_photons:.1f} photons, "
      f"b = {c.background_photons:g} per pixel, s = {c.sigma_px:g} px, tau = {c.tau:.2f}."
    )
    return "\n".join(lines)

  def markdown(self) -> str:
    sizes = ", ".join(
      f"D{r.regime}: {r.num_frames}" for r in self.reports if r.method == self.methods[0]
    )
    parts = [
      f"## AUC of precision-recall, preset `{self.preset}` "
      f"(seed {self.seed}, scale {self.scale:g}; "
      f"test frames {sizes}; D = " + " / ".join(f"{d:g}" for d in self.regimes) + " um^2/s)",
      "",
      self.table_markdown(),
      "",
      "## Localisation",
      "",
      self.localisation_markdown(),
    ]
    if self.trackpy_settings:
      parts += ["", f"trackpy settings: {self.trackpy_settings}"]
    parts += [f"note: {n}" for n in self.notices]
    return "\n".join(parts) + "\n"

  def to_json(self) -> dict:
    return {
      "preset": self.preset,
      "seed": self.seed,
      "scale": self.scale,
      "regimes_um2_s": list(self.regimes),
      "epsilons_px": list(self.epsilons_px),
      "columns": self.columns(),
      "study": {name: [v for row in rows for v in row] for name, rows in STUDY.items()},
      "auc": {m: [round(v, 4) for v in self.auc_row(m)] for m in self.methods},
      "methods": {
        m: {f"d{r.regime}": r.to_dict() for r in self.reports if r.method == m}
        for m in self.methods
      },
      "crlb": {
        "rmse_px": _num(self.crlb.rmse_px),
        "variance_px2": _num(self.crlb.variance_px2, 5),
        "total_photons": _num(self.crlb.total_photons, 2),
        "background_photons": self.crlb.background_photons,
        "sigma_px": self.crlb.sigma_px,
        "tau": _num(self.crlb.tau),
      },
      "trackpy_settings": self.trackpy_settings,
      "notices": list(self.notices),
    }


def parse_methods(text) -> list[str]:
  """'trackpy,mle' -> ['trackpy', 'mle'], checking every name; at least one."""
  names = locator.parse_methods(text)
  if not names:
    raise ValueError("methods is empty; give some of: " + ", ".join(locator.METHODS))
  return names


def load_model(workdir, model=None):
  """The detector from ``workdir`` (None: the shipped model ``model``, default
  ``inference.default_model()``), or (None, notice).

  Returns:
    (locator or None, notice or None).

  Raises:
    FileNotFoundError: ``workdir`` was given and does not exist.
  """
  if workdir and not Path(workdir).is_dir():
    raise FileNotFoundError(f"workdir does not exist: {workdir}")
  try:
    return locator.make("model", workdir=workdir or None, model=model), None
  except FileNotFoundError as e:
    if workdir:
      raise
    return None, f"skipping model: no --workdir and no shipped pretrained weights ({e})"


def trackpy_settings(config, preset, progress=True):
  """trackpy's settings, from the calibration or tuned on val_d1..3, and their source."""
  from qdjax.localize import trackpy as trackpy_baseline

  source = config.trackpy_settings
  if source not in ("auto", "preset", "tune"):
    raise ValueError(f"trackpy_settings must be auto, preset or tune, got {source!r}")
  calibrated = (preset.calibration or {}).get("trackpy_settings")
  if source == "preset" and not calibrated:
    raise ValueError(f"preset {preset.name!r} has no calibrated trackpy_settings")
  if source in ("auto", "preset") and calibrated:
    settings = trackpy_baseline.Settings(**calibrated)
    return settings, f"calibration of preset {preset.name!r} (tuned on val_d1..3 by calibrate.py)"
  sets = [data.load_split(preset, f"val_d{k}", config.seed, config.scale) for k in REGIMES]
  total = len(trackpy_baseline.Grid().diameters) * len(trackpy_baseline.Grid().percentiles)
  bar = tqdm(
    total=total * sum(len(s["images"]) for s in sets),
    desc="tune trackpy on val_d1..3",
    unit="frame",
    disable=not progress,
  )
  tuning = trackpy_baseline.tune(
    sets, preset.epsilons_px, workers=config.trackpy_workers, progress=bar
  )
  bar.close()
  frames = "/".join(str(len(s["images"])) for s in sets)
  return tuning.settings, f"tuned on val_d1..3 ({frames} frames, seed {config.seed})"


def make_methods(config, preset, progress=True):
  """name -> locator for the configured methods, settings and notices.

  Returns:
    (dict of ``locator.Locator``, trackpy settings record or None, list of notices).
  """
  methods, notices, tp_record = {}, [], None
  for name in parse_methods(config.methods):
    if name == "trackpy":
      settings, source = trackpy_settings(config, preset, progress)
      tp_record = {**settings.to_dict(), "source": source}
      methods[name] = locator.make(
        "trackpy", trackpy_settings=settings, workers=config.trackpy_workers
      )
    elif name == "mle":
      methods[name] = locator.make("mle", score=config.mle_score)
    else:
      model, notice = load_model(config.workdir, config.get("model"))
      if model is None:
        notices.append(notice)
      else:
        methods[name] = model
        from qdjax.detect import inference  # flax only where a model runs

        source = config.workdir or f"shipped {config.get('model') or inference.default_model()!r}"
        notices.append(f"model: {source}")
  return methods, tp_record, notices


def _check_detections(name, detections, n):
  if len(detections) != n:
    raise RuntimeError(f"method {name} returned {len(detections)} frames for {n}")
  return [np.asarray(d, np.float64).reshape(-1, 3) for d in detections]


def run(config, progress: bool = True) -> Evaluation:
  """Runs the configured methods on the three test splits and scores them.

  Args:
    config: see experiments/configs/evaluate.py (preset, seed, scale, methods, workdir,
      trackpy_settings, trackpy_workers, mle_score).
    progress: show progress bars.

  Raises:
    ValueError: bad settings (unknown preset or method, scale <= 0, ...).
  """
  if not config.scale > 0:
    raise ValueError(f"scale must be > 0, got {config.scale}")
  if config.seed < 0:
    raise ValueError(f"seed must be >= 0, got {config.seed}")
  preset = presets.get(config.preset)
  parse_methods(config.methods)
  methods, tp_record, notices = make_methods(config, preset, progress)
  crlb = metrics.crlb_for_params(preset.sim_params(regime=1))
  reports = []
  for k in REGIMES:
    test = data.load_split(
      preset,
      f"test_d{k}",
      config.seed,
      config.scale,
      progress=f"simulate test_d{k}" if progress else False,
    )
    n = len(test["images"])
    for name, method in methods.items():
      bar = tqdm(total=n, desc=f"{name} on test_d{k}", unit="frame", disable=not progress)
      start = time.perf_counter()
      detections = _check_detections(name, method(test["images"], progress=bar), n)
      seconds = time.perf_counter() - start
      bar.close()
      eps_reports = tuple(
        metrics.report(detections, test["keypoints"], test["present"], e)
        for e in preset.epsilons_px
      )
      rmse = eps_reports[-1].localisation.rmse_px
      reports.append(
        MethodReport(
          method=name,
          regime=k,
          diffusion=float(preset.regimes[k - 1]),
          epsilons=eps_reports,
          num_frames=n,
          seconds=seconds,
          rmse_over_crlb=rmse / crlb.rmse_px,
        )
      )
  return Evaluation(
    preset=preset.name,
    seed=config.seed,
    scale=float(config.scale),
    regimes=tuple(float(d) for d in preset.regimes),
    epsilons_px=tuple(preset.epsilons_px),
    reports=tuple(reports),
    crlb=crlb,
    trackpy_settings=tp_record,
    notices=tuple(notices),
  )


def plot_pr_curves(evaluation: Evaluation, path) -> None:
  """One panel per regime; a colour per method, a line style per epsilon (AUCs in the table)."""
  from qdjax import plotting

  plt = plotting.plt
  styles = ["-", "--", ":", "-."]
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  fig, axes = plt.subplots(1, len(REGIMES), figsize=(4.2 * len(REGIMES), 4.3), sharey=True)
  axes = np.atleast_1d(axes)
  for ax, k in zip(axes, REGIMES, strict=True):
    for i, method in enumerate(evaluation.methods):
      for j, e in enumerate(evaluation.report(method, k).epsilons):
        # The curve starts at recall 0 with the first point's precision.
        first = e.precision[:1] if len(e.precision) else [1.0]
        ax.plot(
          np.r_[0.0, e.recall],
          np.r_[first, e.precision],
          styles[j % len(styles)],
          color=colours[i % len(colours)],
          lw=1.2,
        )
    ax.set_title(f"D{k} = {evaluation.regimes[k - 1]:g} um^2/s")
    ax.set_xlabel("recall")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("precision")
  handles = [
    plt.Line2D([], [], color=colours[i % len(colours)], lw=2, label=m)
    for i, m in enumerate(evaluation.methods)
  ] + [
    plt.Line2D([], [], color="0.3", ls=styles[j % len(styles)], label=f"epsilon {e:g} px")
    for j, e in enumerate(evaluation.epsilons_px)
  ]
  fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  io.save_figure(fig, path, dpi=120)
  plt.close(fig)


def write_outputs(evaluation: Evaluation, output_dir) -> dict[str, Path]:
  """Writes table.md, table.json and pr_curves.png into ``output_dir`` (atomically)."""
  output_dir = Path(output_dir)
  paths = {
    "markdown": output_dir / "table.md",
    "json": output_dir / "table.json",
    "figure": output_dir / "pr_curves.png",
  }
  io.write_text(paths["markdown"], evaluation.markdown())
  io.write_text(paths["json"], json.dumps(evaluation.to_json(), indent=2) + "\n")
  plot_pr_curves(evaluation, paths["figure"])
  return paths
