import io
import json

import pytest

from lm.model import presets
from lm.train import metrics as metrics_lib
from lm.train import state as state_lib


def test_progress_line_has_every_field():
  stream = io.StringIO()
  progress = metrics_lib.ProgressLine(total_steps=100, stream=stream)
  progress.update(40, loss=2.345678, tokens_per_sec=12_345.0, mfu=0.123, seconds_per_step=2.0)
  line = stream.getvalue()
  assert line == "step 40/100 | loss 2.3457 | 12.3k tok/s | MFU 12.3% | ETA 2:00\n"


def test_metrics_writer_appends_json_lines(tmp_path):
  writer = metrics_lib.MetricsWriter(str(tmp_path))
  writer.write(10, {"loss": 2.5, "lr": 1e-3})
  writer.write(20, {"eval_loss": 2.0})
  writer.close()
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines == [{"step": 10, "loss": 2.5, "lr": 1e-3}, {"step": 20, "eval_loss": 2.0}]
  assert list(tmp_path.glob("events.out.tfevents.*"))


def test_peak_flops_override_and_cpu_estimate():
  assert metrics_lib.peak_flops_per_device(123.0) == 123.0
  assert metrics_lib.peak_flops_per_device() > 1e9


def test_flops_per_token_matches_6n_for_llama3_8b():
  """6 x (non-embedding parameters + output projection) + attention, the PaLM estimate."""
  config = presets.get("llama3-8b")
  n_matmul = 8_030_261_248 - config.vocab_size * config.d_model - (2 * 32 + 1) * 4096
  attention = 12 * 32 * 32 * 128 * 4096
  assert state_lib.flops_per_token(config, 4096) == pytest.approx(6 * n_matmul + attention)
