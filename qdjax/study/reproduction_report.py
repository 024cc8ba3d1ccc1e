"""The reproduction map's report: its figures and summary.md, drawn from the measured
``qdjax.study.reproduction.Results`` (measuring the grid: ``qdjax.study.reproduction``; reading it
against the study: ``qdjax.study.reproduction_rows``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qdjax import io
from qdjax.study.reproduction import LEVEL_FREE, Results
from qdjax.study.reproduction_rows import blur_floor_limits, fit_rows, implied_sigma_px, row_gaps


def _level_label(level) -> str:
  n, b = level
  return f"N={n:g}, B={b:.2g}"


def plot_auc(results: Results, path) -> None:
  """One heat map per method and epsilon: AUC over (photon level, D)."""
  from qdjax import plotting

  plt = plotting.plt
  methods = results.methods
  grid = results.grid
  fig, axes = plt.subplots(
    len(methods),
    len(grid.epsilons),
    figsize=(3.6 * len(grid.epsilons), 0.45 * len(grid.levels) * len(methods) + 1.6),
    squeeze=False,
  )
  for r, method in enumerate(methods):
    for c, eps in enumerate(grid.epsilons):
      ax = axes[r, c]
      values = results.auc[method][:, :, c]
      if method in LEVEL_FREE:
        values = values[:1]
      ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
      for (i, j), v in np.ndenumerate(values):
        ax.text(
          j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k"
        )
      ax.set_xticks(range(len(grid.diffusion)), [f"{d:g}" for d in grid.diffusion], fontsize=7)
      labels = ["any N, B"] if method in LEVEL_FREE else [_level_label(x) for x in grid.levels]
      ax.set_yticks(range(len(labels)), labels, fontsize=7)
      ax.set_title(f"{method}, epsilon {eps:g} px", fontsize=9)
      if r == len(methods) - 1:
        ax.set_xlabel("D (um^2/s)", fontsize=8)
  fig.tight_layout()
  io.save_figure(fig, path, dpi=110)
  plt.close(fig)


def plot_reproduction(results: Results, path, network_method: str = "model") -> None:
  """Where each study row is reproduced: worst-epsilon |gap| per regime, matches boxed.

  Top: tuned trackpy against the study's TrackPy row. Bottom: ``network_method`` against
  the study's network row, with the D beyond which even the blur floor cannot reach it.
  """
  from qdjax import plotting

  plt = plotting.plt
  grid = results.grid
  panels = [("trackpy", "TrackPy")]
  if network_method in results.auc:
    panels.append((network_method, "network"))
  fig, axes = plt.subplots(
    len(panels), 3, figsize=(13, 0.5 * len(grid.levels) * len(panels) + 1.8), squeeze=False
  )
  limits = blur_floor_limits(results)
  image = None
  for r, (method, row) in enumerate(panels):
    if method not in results.auc:
      continue
    gap, match = row_gaps(results, method, row)
    worst = np.max(np.abs(gap), axis=-1)  # [L, D, 3]
    for k in range(3):
      ax = axes[r, k]
      image = ax.imshow(worst[:, :, k], vmin=0, vmax=0.5, cmap="magma_r", aspect="auto")
      for (i, j), v in np.ndenumerate(worst[:, :, k]):
        ax.text(
          j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v > 0.3 else "k"
        )
        if match[i, j, k]:
          ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="c", lw=2))
      if row == "network" and limits[k] is not None:
        x = grid.diffusion.index(limits[k]) + 0.5
        ax.axvline(x, color="c", ls="--", lw=1.2)
      ax.set_xticks(range(len(grid.diffusion)), [f"{d:g}" for d in grid.diffusion], fontsize=7)
      labels = [_level_label(x) for x in grid.levels] if k == 0 else []
      ax.set_yticks(range(len(grid.levels)), labels or [""] * len(grid.levels), fontsize=7)
      who = "trackpy (tuned)" if method == "trackpy" else method
      ax.set_title(f"{who} vs study {row} row, D{k + 1}", fontsize=9)
      if r == len(panels) - 1:
        ax.set_xlabel("D (um^2/s)", fontsize=8)
  if image is not None:
    fig.colorbar(image, ax=axes, shrink=0.8, label="worst-epsilon |AUC - study|")
  fig.suptitle(
    "Cyan box: all three epsilons within 2 standard errors of the study's row. "
    "Dashed: largest D at which the blur floor still reaches the network row.",
    fontsize=9,
  )
  io.save_figure(fig, path, dpi=110)
  plt.close(fig)


def summary_markdown(results: Results) -> str:
  """The map's findings as Markdown: AUC tables, matches, row fits, blur-floor limits."""
  grid = results.grid
  lines = [
    f"# Reproduction map (preset `{grid.preset}` geometry; {grid.test_frames} test frames "
    f"per cell, seed {grid.seed})",
    "",
    "Photon levels: "
    + "; ".join(_level_label(x) for x in grid.levels)
    + ". B = N/15 (in vivo) except the preset's own fit.",
    "",
  ]
  for method in results.methods:
    record = results.records[method]
    source = record.get("source")
    lines += [
      f"## {method}"
      + (f" ({source})" if source else "")
      + ": AUC at epsilon "
      + ", ".join(f"{e:g}" for e in grid.epsilons)
      + f" px ({record['seconds']:.0f} s)",
      "",
      "| N, B | " + " | ".join(f"D={d:g}" for d in grid.diffusion) + " |",
      "|---|" + "---|" * len(grid.diffusion),
    ]
    levels = range(1) if method in LEVEL_FREE else range(len(grid.levels))
    for i in levels:
      label = "any" if method in LEVEL_FREE else _level_label(grid.levels[i])
      cells = [
        "/".join(f"{v:.2f}" for v in results.auc[method][i, j]) for j in range(len(grid.diffusion))
      ]
      lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
  for method, row in (("trackpy", "TrackPy"), ("model", "network"), ("blur_floor", "network")):
    if method not in results.auc:
      continue
    _, match = row_gaps(results, method, row)
    lines.append(f"## Cells where {method} reproduces the study's {row} row")
    lines.append("")
    for k in range(3):
      found = [
        f"({_level_label(grid.levels[i])}, D={grid.diffusion[j]:g})"
        for i, j in zip(*np.nonzero(match[:, :, k]), strict=True)
        if method not in LEVEL_FREE or i == 0
      ]
      lines.append(f"- D{k + 1} row: " + (", ".join(found) if found else "none"))
    lines.append("")
  if "trackpy" in results.auc:
    lines += ["## Best D1/D2/D3 per photon level, tuned trackpy vs the study's TrackPy row", ""]
    lines += ["| N, B | D3 = 10 D1: D1/D2/D3 | max gap | D3 free: D1/D2/D3 | max gap |"]
    lines += ["|---|---|---|---|---|"]
    fixed = {f.level: f for f in fit_rows(results, ratio=10.0)}
    free = {f.level: f for f in fit_rows(results, ratio=None)}
    for level in grid.levels:
      a, b = fixed.get(level), free.get(level)
      cell_a = f"{'/'.join(f'{d:.2g}' for d in a.regimes)} | {a.max_abs_gap:.2f}" if a else "- | -"
      cell_b = f"{'/'.join(f'{d:.2g}' for d in b.regimes)} | {b.max_abs_gap:.2f}" if b else "- | -"
      lines.append(f"| {_level_label(level)} | {cell_a} | {cell_b} |")
    lines.append("")
  if "blur_floor" in results.auc:
    limits = blur_floor_limits(results)
    lines.append("## Blur floor against the study's network row")
    lines.append("")
    floor = results.auc["blur_floor"][0]
    sigmas = [implied_sigma_px(a, grid.epsilons[0]) for a in floor[:, 0]]
    centroid = [c.get("centroid_within") for c in results.records["blur_floor"]["cells"]]
    if all(c is not None for c in centroid):
      lines.append(
        "Fraction of QDs whose noise-free image centroid (background removed) lies within "
        "epsilon = "
        + ", ".join(f"{e:g}" for e in grid.epsilons)
        + " px: "
        + "; ".join(
          f"D={d:g}: " + "/".join(f"{v:.2f}" for v in c)
          for d, c in zip(grid.diffusion, centroid, strict=True)
        )
        + "."
      )
      lines.append("")
    lines.append(
      "Per-axis sigma implied by the blur floor's epsilon-1 AUC: "
      + ", ".join(f"D={d:g}: {s:.2f}" for d, s in zip(grid.diffusion, sigmas, strict=True))
      + " px (the network row implies 0.87, 0.97, 1.29 px at D1, D2, D3)."
    )
    by_centroid = blur_floor_limits(results, centroid=True)
    for k in range(3):
      lim, lim_c = limits[k], by_centroid[k]
      lines.append(
        f"- network D{k + 1} row reached (within tolerance or above) by the noise-free "
        "detector up to "
        + (f"D = {lim:g}" if lim is not None else "no D of the map")
        + ", by the noise-free centroid's fraction within epsilon up to "
        + (f"D = {lim_c:g}" if lim_c is not None else "no D of the map")
        + " um^2/s"
      )
    lines.append("")
  lines += [f"note: {n}" for n in results.notices]
  return "\n".join(lines) + "\n"


def write_report(results: Results, output_dir) -> dict[str, Path]:
  """summary.md, auc.png and reproduction.png into ``output_dir`` (atomically)."""
  output_dir = Path(output_dir)
  paths = {
    "markdown": output_dir / "summary.md",
    "auc_figure": output_dir / "auc.png",
    "figure": output_dir / "reproduction.png",
  }
  io.write_text(paths["markdown"], summary_markdown(results))
  if results.methods:
    plot_auc(results, paths["auc_figure"])
  if "trackpy" in results.auc:
    plot_reproduction(results, paths["figure"])
  return {k: p for k, p in paths.items() if p.exists()}
