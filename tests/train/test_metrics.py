import dataclasses
import io
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest

from lm.model import Decoder, presets
from lm.parallel import accelerators
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


def test_peak_flops_override_and_measured_cpu_peak():
  """On CPU the MFU denominator is the matmul rate measured in this process, not a guess: it
  agrees with a matmul timed here (of another size; factor 2 for the shared machine's noise)."""
  assert metrics_lib.peak_flops_per_device(123.0) == 123.0
  peak = metrics_lib.peak_flops_per_device()
  assert jax.devices()[0].platform == "cpu"
  assert peak == accelerators.measured_cpu_flops() / jax.local_device_count()
  n = 1536
  x = jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  matmul(x).block_until_ready()
  seconds = []
  for _ in range(3):
    start = time.perf_counter()
    matmul(x).block_until_ready()
    seconds.append(time.perf_counter() - start)
  achieved = 2 * n ** 3 / min(seconds) / jax.local_device_count()
  assert 0.5 < achieved / peak < 2.0, (achieved, peak)


def _xla_flops_per_token(config, seq_len: int, batch: int = 4) -> float:
  """XLA's count for the compiled forward + backward pass of `config` (unrolled, no remat)."""
  model = Decoder(config)
  params = jax.eval_shape(lambda: nn.unbox(state_lib.init_params(model, jax.random.key(0))))
  tokens = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)

  def loss(p, t):
    logits = model.apply({"params": p}, t)
    return optax.softmax_cross_entropy_with_integer_labels(logits, t).mean()

  cost = jax.jit(jax.grad(loss)).lower(params, tokens).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return cost["flops"] / (batch * seq_len)


@pytest.mark.parametrize("changes, seq_len", [
    (dict(), 128),
    (dict(d_model=128, d_ff=512, num_heads=4, num_kv_heads=4, mlp="gelu"), 128)])
def test_flops_per_token_matches_xla_cost_analysis(changes, seq_len):
  """The MFU numerator against XLA's count at two lengths, T and 2T. XLA's attention computes
  every one of the [T, T] scores, the masked half too, so the part of its count that grows
  with T must be twice the convention's (causal: half; within 10%: XLA also counts the
  softmax's elementwise work, ~14 FLOPs per score, 7% of the scores' matmuls at head_dim
  16), and what is left (the matmul weights) must agree within 5%, the rest being XLA's
  elementwise work (norms, activations), which the estimate leaves out."""
  config = dataclasses.replace(presets.get("tiny"), scan_layers=False, remat="none", **changes)
  xla = {t: _xla_flops_per_token(config, t) for t in (seq_len, 2 * seq_len)}
  ours = {t: state_lib.flops_per_token(config, t) for t in xla}
  xla_slope = (xla[2 * seq_len] - xla[seq_len]) / seq_len     # FLOPs per token per position
  ours_slope = (ours[2 * seq_len] - ours[seq_len]) / seq_len
  assert ours_slope == pytest.approx(xla_slope / 2, rel=0.1)
  assert ours[seq_len] - ours_slope * seq_len == pytest.approx(
      xla[seq_len] - xla_slope * seq_len, rel=0.05)


def test_flops_per_token_matches_maxtext_for_llama3_8b():
  """6 x (non-embedding parameters + output projection) + attention as MaxText's
  `calculate_tflops_training_per_device` writes it: 4 B T^2 N H per layer forward (scores
  and weighted sum), halved for the causal mask, x 3 for forward and backward."""
  config = presets.get("llama3-8b")
  layers, heads, head_dim, t = 32, 32, 128, 4096
  n_matmul = 8_030_261_248 - config.vocab_size * config.d_model - (2 * layers + 1) * 4096
  attention_per_step = 4 * t ** 2 * heads * head_dim / 2 * 3 * layers  # one row of T tokens
  assert state_lib.flops_per_token(config, t) == pytest.approx(
      6 * n_matmul + attention_per_step / t)
