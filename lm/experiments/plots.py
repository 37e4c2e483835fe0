"""The PNG plots of `lm report`, drawn with matplotlib (the `plot` extra) off screen."""

import math
import os

import numpy as np

from lm.experiments import report as report_lib


def _pyplot():
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ValueError("lm report draws its plots with matplotlib: pip install -e '.[plot]'") from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def loss_curves(runs: list[report_lib.RunResult], path: str, title: str, x: str = "step",
                log: bool = False) -> None:
  """Training loss (thin) and eval loss (dots) of every run, one colour per group."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, (group, members) in enumerate(report_lib.groups(runs).items()):
    colour = colours[i % len(colours)]
    for j, run in enumerate(members):
      scale = run.tokens / run.steps if x == "tokens" else 1
      if run.curve:
        steps, losses = zip(*run.curve)
        ax.plot(np.asarray(steps) * scale, losses, color=colour, alpha=0.35, lw=0.8)
      if run.eval_curve:
        steps, losses = zip(*run.eval_curve)
        ax.plot(np.asarray(steps) * scale, losses, "o-", color=colour, ms=3, lw=1.2,
                label=group if j == 0 else None)
  ax.set_xlabel("tokens trained on" if x == "tokens" else "step")
  ax.set_ylabel("loss (nats/token): train (thin), eval (dots)")
  if log:
    ax.set_xscale("log")
    ax.set_yscale("log")
  ax.set_title(title)
  ax.legend(fontsize=7, ncol=2)
  ax.grid(alpha=0.3, which="both")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def metric_vs_x(runs: list[report_lib.RunResult], path: str, title: str, x: str,
                hue: str | None = None, fit: report_lib.PowerLaw | None = None,
                references: dict[str, float] | None = None) -> None:
  """Final eval loss against `x`: every run as a small dot, the mean over seeds with its
  standard deviation as a bar, one line per value of `hue`; the fitted power law dashed."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  lines: dict[str, list[report_lib.RunResult]] = {}
  for run in runs:
    lines.setdefault(str(run.overrides.get(hue, "")) if hue else "", []).append(run)
  xs_all = []
  for label, members in lines.items():
    by_x: dict[float, list[float]] = {}
    for run in members:
      value = report_lib.x_value(run, x)
      if not math.isnan(value) and not math.isnan(run.final_eval_loss):
        by_x.setdefault(value, []).append(run.final_eval_loss)
    if not by_x:
      continue
    xs = sorted(by_x)
    xs_all += xs
    means = [np.mean(by_x[v]) for v in xs]
    stds = [np.std(by_x[v], ddof=1) if len(by_x[v]) > 1 else 0.0 for v in xs]
    bar = ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3,
                      label=f"{hue}={label}" if hue else None)
    for v in xs:
      ax.plot([v] * len(by_x[v]), by_x[v], ".", color=bar[0].get_color(), alpha=0.4, ms=4)
  if fit is not None and xs_all:
    grid = np.geomspace(min(xs_all), max(xs_all), 50)
    ax.plot(grid, fit(grid), "k--", lw=1,
            label=f"fit: L = {fit.a:.3g} x^-({fit.alpha:.3f} ± {fit.alpha_stderr:.3f})")
  for name, alpha in (references or {}).items():
    if fit is not None and xs_all:  # a slope for comparison, through the fit's middle point
      mid = math.sqrt(min(xs_all) * max(xs_all))
      grid = np.geomspace(min(xs_all), max(xs_all), 50)
      ax.plot(grid, fit(mid) * (grid / mid) ** -alpha, ":", lw=1,
              label=f"slope of {name}: alpha = {alpha}")
  xlabel = {"params": "non-embedding parameters", "tokens": "tokens trained on"}.get(x, x)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("final eval loss (nats/token)")
  if xs_all and (fit is not None or max(xs_all) / max(min(xs_all), 1e-30) > 10):
    ax.set_xscale("log")
  if fit is not None:
    from matplotlib import ticker  # pylint: disable=import-outside-toplevel
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.2f"))
    ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.2f"))
  ax.set_title(title)
  if hue or fit is not None:
    ax.legend(fontsize=7)
  ax.grid(alpha=0.3, which="both")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def draw_all(runs: list[report_lib.RunResult], options: dict, output: str,
             title: str) -> tuple[list[str], report_lib.PowerLaw | None]:
  """Every plot the options ask for, into `output`; returns (the files, the fit if any)."""
  files = [os.path.join(output, "loss_curves.png")]
  loss_curves(runs, files[0], title, options.get("curves_x", "step"),
              options.get("curves_log", False))
  fit = None
  x = options.get("x")
  if x:
    if options.get("fit") == "power_law":
      points = [(report_lib.x_value(r, x), r.final_eval_loss) for r in runs]
      points = [(a, b) for a, b in points if not (math.isnan(a) or math.isnan(b))]
      fit = report_lib.fit_power_law(*zip(*points))
    name = x.rsplit(".", 1)[-1]
    files.append(os.path.join(output, f"eval_loss_vs_{name}.png"))
    metric_vs_x(runs, files[-1], title, x, options.get("hue"), fit,
                options.get("references"))
  return files, fit
