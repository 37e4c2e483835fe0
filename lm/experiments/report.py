"""`lm report`: every run of a sweep workdir -> a CSV, a Markdown table and PNG plots.

Reads each run's metrics.jsonl (lm/train/metrics.py), config.json and sweep_run.json
(lm/experiments/sweep.py); runs of one group (the same overrides but the seed) become one
row, mean ± sample standard deviation over their seeds. The sweep file's `REPORT` options,
saved in `<workdir>/sweep.json`, choose the extra plot:
  x:        what the final eval loss is plotted against: a config path that the sweep varies
            ("train.lr"), "params" (non-embedding parameters) or "tokens" (trained on)
  hue:      a config path drawn as one line per value (default: none)
  fit:      "power_law": fits L = a * x^(-alpha) by least squares in log-log space over every
            run, and reports alpha with its standard error
  curves_x: "step" (default) or "tokens" for the loss curves; curves_log: log-log axes
  baseline: a group; the table adds each group's final eval loss minus the baseline's, paired
            by seed
"""

import csv
import dataclasses
import io
import json
import math
import os
from typing import Any

import numpy as np

from lm.experiments import sweep as sweep_lib

# Parameters that Kaplan et al. (2020) leave out of N: token and position embeddings and the
# output projection (tied to the token embedding in their models).
EMBEDDING_LEAVES = ("embed", "position_embedding", "lm_head")


@dataclasses.dataclass
class RunResult:
  name: str
  group: str
  overrides: dict
  seed: int
  params: int                 # all parameters
  non_embedding_params: int
  tokens: int                 # trained on: steps x batch x sequence length
  final_eval_loss: float
  best_eval_loss: float
  final_bits_per_byte: float
  tokens_per_sec: float       # mean over logged steps after the first (which compiled)
  wall_seconds: float         # every invocation of the run by lm sweep, summed
  steps: int
  finished: bool
  curve: list[tuple[int, float]]       # (step, train loss)
  eval_curve: list[tuple[int, float]]  # (step, eval loss)


def read_metrics(path: str) -> list[dict]:
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:  # a line cut short by a kill
        continue
  return records


def count_parameters(config_json: dict) -> tuple[int, int]:
  """(all, non-embedding) parameters of the run's model, from its abstract initialisation."""
  # pylint: disable=import-outside-toplevel
  import jax
  import flax.linen as nn
  import ml_collections
  from lm import config as config_lib
  from lm.model import Decoder
  from lm.train import state as state_lib
  model_config = config_lib.model_config(ml_collections.ConfigDict(config_json))
  params = nn.unbox(state_lib.abstract_boxed_params(Decoder(model_config)))
  total = embedding = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    total += int(leaf.size)
    if str(getattr(path[0], "key", path[0])) in EMBEDDING_LEAVES:
      embedding += int(leaf.size)
  return total, total - embedding


def _get(config_json: dict, key: str, default: Any = None) -> Any:
  node = config_json
  for part in key.split("."):
    if not isinstance(node, dict) or part not in node:
      return default
    node = node[part]
  return node


def load_run(run_dir: str, param_cache: dict) -> RunResult | None:
  """The run in `run_dir`, or None when it has no metrics yet."""
  metrics_path = os.path.join(run_dir, "metrics.jsonl")
  config_path = os.path.join(run_dir, "config.json")
  if not (os.path.exists(metrics_path) and os.path.exists(config_path)):
    return None
  with open(config_path) as f:
    config_json = json.load(f)
  record = sweep_lib.read_record(run_dir) or {}
  overrides = record.get("overrides", {})
  records = read_metrics(metrics_path)
  evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
  bpb = [r["eval_bits_per_byte"] for r in records if "eval_bits_per_byte" in r]
  curve = [(r["step"], r["loss"]) for r in records if "loss" in r]
  speeds = [r["tokens_per_sec"] for r in records if "tokens_per_sec" in r][1:]
  model_key = json.dumps(config_json.get("model", {}), sort_keys=True)
  if model_key not in param_cache:
    param_cache[model_key] = count_parameters(config_json)
  params, non_embedding = param_cache[model_key]
  t = config_json["train"]
  nan = float("nan")
  return RunResult(
      name=os.path.basename(run_dir), group=record.get("group", sweep_lib.group_of(overrides)),
      overrides=overrides, seed=int(config_json.get("seed", 0)), params=params,
      non_embedding_params=non_embedding,
      tokens=int(t["steps"] * t["batch_size"] * t["seq_len"]),
      final_eval_loss=evals[-1][1] if evals else nan,
      best_eval_loss=min(v for _, v in evals) if evals else nan,
      final_bits_per_byte=bpb[-1] if bpb else nan,
      tokens_per_sec=float(np.mean(speeds)) if speeds else nan,
      wall_seconds=float(record.get("wall_seconds", nan)), steps=int(t["steps"]),
      finished=bool(record.get("finished", False)), curve=curve, eval_curve=evals)


def load_runs(workdir: str) -> tuple[list[RunResult], dict]:
  """(every run with metrics, in the sweep's order where sweep.json lists it; the REPORT
  options)."""
  sweep_path = os.path.join(workdir, sweep_lib.SWEEP_FILE)
  order, options = [], {}
  if os.path.exists(sweep_path):
    with open(sweep_path) as f:
      saved = json.load(f)
    order = [r["name"] for r in saved["runs"]]
    options = saved.get("report", {})
  names = sorted(d for d in os.listdir(workdir) if os.path.isdir(os.path.join(workdir, d)))
  names.sort(key=lambda n: order.index(n) if n in order else len(order))
  cache: dict = {}
  runs = [r for r in (load_run(os.path.join(workdir, n), cache) for n in names) if r]
  if not runs:
    raise ValueError(f"--workdir={workdir} holds no run with metrics.jsonl and config.json")
  return runs, options


# --- Tables -----------------------------------------------------------------------------------

def mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (n - 1); the deviation is nan for one value."""
  values = [v for v in values if not math.isnan(v)]
  if not values:
    return float("nan"), float("nan")
  std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
  return float(np.mean(values)), std


SUMMARY = [  # (column, RunResult field, digits)
    ("final eval loss", "final_eval_loss", 4), ("best eval loss", "best_eval_loss", 4),
    ("eval bits/byte", "final_bits_per_byte", 4), ("tokens/s", "tokens_per_sec", 0),
    ("wall s", "wall_seconds", 0)]


def groups(runs: list[RunResult]) -> dict[str, list[RunResult]]:
  grouped: dict[str, list[RunResult]] = {}
  for run in runs:
    grouped.setdefault(run.group, []).append(run)
  return grouped


def summary_rows(runs: list[RunResult]) -> list[dict[str, Any]]:
  """One row per group: its runs, parameters, tokens, and mean/std of each SUMMARY field."""
  rows = []
  for group, members in groups(runs).items():
    row = {"group": group, "runs": len(members),
           "finished": sum(r.finished for r in members),
           "params": members[0].params, "non_embedding_params": members[0].non_embedding_params,
           "tokens": members[0].tokens}
    for _, field, _ in SUMMARY:
      row[field], row[field + "_std"] = mean_std([getattr(r, field) for r in members])
    rows.append(row)
  return rows


def add_paired_deltas(rows: list[dict[str, Any]], runs: list[RunResult], baseline: str) -> None:
  """Adds to each row the final eval loss minus the `baseline` group's, run by run between
  runs of one seed (same data order), mean and std over the seeds both have: the seed-to-seed
  spread of the loss itself cancels."""
  base = {r.seed: r.final_eval_loss for r in runs if r.group == baseline}
  if not base:
    raise ValueError(f"REPORT baseline={baseline!r} is not a group of these runs")
  by_group = groups(runs)
  for row in rows:
    deltas = [r.final_eval_loss - base[r.seed] for r in by_group[row["group"]]
              if r.seed in base]
    row["delta"], row["delta_std"] = mean_std(deltas)


def _pm(mean: float, std: float, digits: int) -> str:
  if math.isnan(mean):
    return "–"
  text = f"{mean:,.{digits}f}"
  return text if math.isnan(std) else f"{text} ± {std:,.{digits}f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
  paired = "delta" in rows[0]
  head = ["run", "seeds", "params (non-emb.)", "tokens"] + [c for c, _, _ in SUMMARY]
  if paired:
    head.insert(5, "Δ final vs base, same seed")
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in rows:
    seeds = f"{row['runs']}" + ("" if row["finished"] == row["runs"]
                                else f" ({row['runs'] - row['finished']} unfinished)")
    cells = [row["group"], seeds, f"{row['params']:,} ({row['non_embedding_params']:,})",
             f"{row['tokens']:,}"]
    cells += [_pm(row[f], row[f + "_std"], d) for _, f, d in SUMMARY]
    if paired:
      cells.insert(5, _pm(row["delta"], row["delta_std"], 4).replace("-", "−"))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


CSV_FIELDS = ["name", "group", "seed", "params", "non_embedding_params", "tokens", "steps",
              "final_eval_loss", "best_eval_loss", "final_bits_per_byte", "tokens_per_sec",
              "wall_seconds", "finished"]


def runs_csv(runs: list[RunResult]) -> str:
  """One line per run, its overrides as columns after the fixed ones."""
  keys = sorted({k for r in runs for k in r.overrides} - {"seed", sweep_lib.LABEL})
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(CSV_FIELDS + keys)
  for r in runs:
    writer.writerow([getattr(r, f) for f in CSV_FIELDS] + [r.overrides.get(k, "") for k in keys])
  return out.getvalue()


# --- Fits -------------------------------------------------------------------------------------

@dataclasses.dataclass
class PowerLaw:
  """L = a * x^(-alpha), fitted as log L = log a - alpha log x."""
  alpha: float
  alpha_stderr: float
  a: float
  points: int

  def __call__(self, x):
    return self.a * np.power(x, -self.alpha)


def fit_power_law(x: list[float], loss: list[float]) -> PowerLaw:
  """Least squares on log-log points; the standard error of alpha from the residuals (n - 2
  degrees of freedom), so it needs at least 3 points."""
  lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(loss, float))
  if len(lx) < 3 or len(set(lx.tolist())) < 2:
    raise ValueError(f"a power-law fit needs at least 3 points at 2 or more x values, not "
                     f"{len(lx)}")
  (slope, intercept), cov = np.polyfit(lx, ly, 1, cov=True)
  return PowerLaw(alpha=float(-slope), alpha_stderr=float(np.sqrt(cov[0, 0])),
                  a=float(np.exp(intercept)), points=len(lx))


def x_value(run: RunResult, x: str) -> float:
  if x == "params":
    return float(run.non_embedding_params)
  if x == "tokens":
    return float(run.tokens)
  value = run.overrides.get(x)
  return float(value) if isinstance(value, (int, float)) else float("nan")


# --- The whole report -------------------------------------------------------------------------

def write_report(workdir: str, output: str | None = None) -> dict[str, Any]:
  """results.csv (a line per run), results.md (a row per group) and the plots, in `output`
  (default: `workdir`); returns {"table", "files", "fit"}."""
  from lm.experiments import plots  # pylint: disable=import-outside-toplevel
  output = output or workdir
  os.makedirs(output, exist_ok=True)
  runs, options = load_runs(workdir)
  rows = summary_rows(runs)
  if options.get("baseline"):
    add_paired_deltas(rows, runs, options["baseline"])
  table = markdown_table(rows)
  files = [os.path.join(output, "results.csv"), os.path.join(output, "results.md")]
  with open(files[0], "w") as f:
    f.write(runs_csv(runs))
  title = os.path.basename(os.path.normpath(workdir))
  plot_files, fit = plots.draw_all(runs, options, output, title)
  fit_line = ""
  if fit is not None:
    fit_line = (f"\nPower law over {fit.points} runs: L = {fit.a:.4g} * "
                f"{options['x']}^-alpha, alpha = {fit.alpha:.4f} ± {fit.alpha_stderr:.4f} "
                "(standard error)\n")
  with open(files[1], "w") as f:
    f.write(table + fit_line)
  return {"table": table + fit_line, "files": files + plot_files, "fit": fit}
