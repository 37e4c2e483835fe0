"""lm report: tables from real runs and from written metrics, the power-law fit, the plots."""

import csv
import io
import json
import math
import os

import numpy as np
import pytest
import scipy.stats

from lm import config as config_lib
from lm.experiments import report as report_lib
from lm.experiments import sweep as sweep_lib

PNG = b"\x89PNG\r\n\x1a\n"
# The tiny preset by hand: embeddings 512 x 64 and a 64 x 512 output layer; per layer q, o
# 64 x 64, k, v 64 x 32 (2 KV heads of 16), SwiGLU 3 x 64 x 256, two norms of 64; a final norm.
TINY_NON_EMBEDDING = 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 256 + 2 * 64) + 64
TINY_PARAMS = TINY_NON_EMBEDDING + 2 * 512 * 64


def test_report_of_real_runs(swept, tmp_path):
  workdir, runs, *_ = swept
  result = report_lib.write_report(workdir, str(tmp_path))
  for name in ("results.csv", "results.md", "loss_curves.png"):
    assert os.path.exists(tmp_path / name)
  assert (tmp_path / "loss_curves.png").read_bytes()[:8] == PNG
  rows = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
  assert [r["name"] for r in rows] == ["a", "b"]
  for row, run in zip(rows, runs):
    with open(os.path.join(run.workdir, "metrics.jsonl")) as f:
      evals = [json.loads(line) for line in f if "eval_loss" in line]
    assert float(row["final_eval_loss"]) == evals[-1]["eval_loss"]
    assert float(row["final_bits_per_byte"]) == evals[-1]["eval_bits_per_byte"]
    assert (int(row["params"]), int(row["non_embedding_params"])) == (TINY_PARAMS,
                                                                       TINY_NON_EMBEDDING)
    assert int(row["tokens"]) == 6 * 8 * 32 and row["finished"] == "True"
    assert float(row["wall_seconds"]) == sweep_lib.read_record(run.workdir)["wall_seconds"]
  # "b" was interrupted and resumed: the same final loss as "a", uninterrupted.
  assert rows[0]["final_eval_loss"] == rows[1]["final_eval_loss"]
  table = (tmp_path / "results.md").read_text()
  assert table == result["table"]
  assert f"| a | 1 | {TINY_PARAMS:,} ({TINY_NON_EMBEDDING:,}) | 1,536 | " in table


def write_run(workdir, name, overrides, eval_losses, model=None, wall=10.0, steps=300):
  """A run directory as training and lm sweep leave it: config.json, metrics.jsonl,
  sweep_run.json."""
  config = config_lib.base_config()
  config.model.preset = "tiny"
  config.train.steps = steps
  for key, value in {**(model or {}), **overrides}.items():
    if key != "label":
      *parents, leaf = key.split(".")
      node = config
      for part in parents:
        node = node[part]
      node[leaf] = value
  run_dir = os.path.join(workdir, name)
  os.makedirs(run_dir)
  with open(os.path.join(run_dir, "config.json"), "w") as f:
    f.write(config.to_json())
  with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
    for i, loss in enumerate(eval_losses):
      step = (i + 1) * steps // len(eval_losses)
      f.write(json.dumps({"step": step, "loss": loss + 0.1, "tokens_per_sec": 1000.0 * (i + 1)})
              + "\n")
      f.write(json.dumps({"step": step, "eval_loss": loss,
                          "eval_bits_per_byte": loss / math.log(2)}) + "\n")
  sweep_lib.write_record(run_dir, {"overrides": overrides, "group": sweep_lib.group_of(overrides),
                                   "finished": True, "wall_seconds": wall})


def test_mean_and_sample_std_over_seeds(tmp_path):
  for seed, final in enumerate([2.0, 2.1, 2.3]):
    write_run(str(tmp_path), f"x__seed-{seed}", {"label": "x", "seed": seed},
              [3.0, 2.5, final], wall=10.0 * (seed + 1))
  write_run(str(tmp_path), "y__seed-0", {"label": "y", "seed": 0}, [2.5, 1.9, 2.0])
  runs, _ = report_lib.load_runs(str(tmp_path))
  [x, y] = report_lib.summary_rows(runs)
  # By hand: mean 6.4 / 3; deviations -2/15, -1/30, 1/6; squares 7/150, over n - 1 = 2.
  assert x["final_eval_loss"] == pytest.approx(6.4 / 3)
  assert x["final_eval_loss_std"] == pytest.approx(math.sqrt(7 / 300))
  assert x["wall_seconds"] == pytest.approx(20.0) and x["wall_seconds_std"] == pytest.approx(10.0)
  assert x["tokens_per_sec"] == pytest.approx(2500.0)  # the first logged rate (compile) left out
  assert y["best_eval_loss"] == 1.9 and y["final_eval_loss"] == 2.0
  assert math.isnan(y["final_eval_loss_std"])
  # Paired with "x" by seed: y's seed 0 against x's seed 0 only.
  report_lib.add_paired_deltas([x, y], runs, "x")
  assert x["delta"] == 0.0 and y["delta"] == 0.0 and math.isnan(y["delta_std"])
  write_run(str(tmp_path), "y__seed-2", {"label": "y", "seed": 2}, [2.5, 2.0])
  runs, _ = report_lib.load_runs(str(tmp_path))
  rows = report_lib.summary_rows(runs)
  report_lib.add_paired_deltas(rows, runs, "x")
  assert rows[1]["delta"] == pytest.approx(((2.0 - 2.0) + (2.0 - 2.3)) / 2)
  assert rows[1]["delta_std"] == pytest.approx(0.3 / math.sqrt(2))
  table = report_lib.markdown_table([x, y])
  assert "| x | 3 |" in table and "| 2.1333 ± 0.1528 | " in table
  assert "| y | 1 |" in table and "| 2.0000 | 0.0000 | 1.9000 |" in table


def test_power_law_fit_matches_scipy_and_recovers_the_exponent():
  x = np.array([3e4, 1e5, 3e5, 1e6, 3e6])
  exact = report_lib.fit_power_law(x, 5.0 * x ** -0.12)
  assert exact.alpha == pytest.approx(0.12) and exact.a == pytest.approx(5.0)
  assert exact.alpha_stderr == pytest.approx(0.0, abs=1e-9)
  noisy_loss = 5.0 * x ** -0.12 * np.array([1.02, 0.97, 1.01, 1.03, 0.98])
  fit = report_lib.fit_power_law(x, noisy_loss)
  reference = scipy.stats.linregress(np.log(x), np.log(noisy_loss))
  assert fit.alpha == pytest.approx(-reference.slope)
  assert fit.alpha_stderr == pytest.approx(reference.stderr)
  with pytest.raises(ValueError, match="at least 3 points"):
    report_lib.fit_power_law([1e4, 1e5], [2.0, 1.0])


def test_plots_against_a_swept_value_and_parameters(tmp_path):
  workdir = str(tmp_path / "runs")
  for d in (32, 64, 128):
    model = {"model.d_model": d, "model.num_heads": d // 16, "model.num_kv_heads": d // 16}
    for opt in ("adamw", "adafactor"):
      write_run(workdir, f"d{d}-{opt}", {"train.optimizer": opt, "train.lr": d * 1e-4, **model},
                [4.0, 3.0 * d ** -0.1])
  with open(os.path.join(workdir, sweep_lib.SWEEP_FILE), "w") as f:
    json.dump({"runs": [], "report": {"x": "params", "fit": "power_law",
                                      "references": {"Kaplan": 0.076}}}, f)
  result = report_lib.write_report(workdir, str(tmp_path / "out"))
  assert (tmp_path / "out" / "eval_loss_vs_params.png").read_bytes()[:8] == PNG
  runs, _ = report_lib.load_runs(workdir)
  n = [r.non_embedding_params for r in runs]
  reference = scipy.stats.linregress(np.log(n), np.log([r.final_eval_loss for r in runs]))
  assert result["fit"].alpha == pytest.approx(-reference.slope)
  assert f"alpha = {result['fit'].alpha:.4f}" in result["table"]
  with open(os.path.join(workdir, sweep_lib.SWEEP_FILE), "w") as f:
    json.dump({"runs": [], "report": {"x": "train.lr", "hue": "train.optimizer"}}, f)
  result = report_lib.write_report(workdir, str(tmp_path / "out2"))
  assert (tmp_path / "out2" / "eval_loss_vs_lr.png").read_bytes()[:8] == PNG
  assert result["fit"] is None and "alpha" not in result["table"]
