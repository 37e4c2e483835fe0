"""The planner: per-device sizes on meshes that are not here, its activation formula against
what JAX saves, its totals against XLA's memory analysis on 8 CPU devices, and `lm plan`."""

import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax._src.ad_checkpoint import saved_residuals  # what print_saved_residuals prints

from lm import config as config_lib
from lm.model import Decoder, presets
from lm import plan as plan_lib
from lm.stages import pretrain
from lm.train import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_config(preset: str, fsdp: int = -1, data: int = 1, tensor: int = 1,
                batch_size: int = 256, seq_len: int = 4096, grad_accum: int = 1,
                optimizer: str = "adamw", **model):
  config = config_lib.base_config()
  config.model.preset = preset
  for name, value in model.items():
    config.model[name] = value
  config.train.batch_size, config.train.seq_len = batch_size, seq_len
  config.train.grad_accum, config.train.optimizer = grad_accum, optimizer
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = data, fsdp, tensor
  return config_lib.lock(config)


def small_config(remat: str, mesh=(1, 8, 1)):
  """Parameters, optimizer state and activations all matter: 4.2M parameters, 2 x 128
  tokens per device."""
  return make_config("tiny", *mesh[1:2], data=mesh[0], tensor=mesh[2], batch_size=16,
                     seq_len=128, d_model=256, num_layers=4, vocab_size=512, d_ff=1024,
                     remat=remat)


@pytest.mark.parametrize("preset, accelerator, chips", [
    ("llama3-8b", "v5p-128", 64), ("llama3-70b", "v5p-512", 256)])
def test_big_models_on_big_slices(preset, accelerator, chips):
  plan = plan_lib.plan(make_config(preset, remat="full", dtype="bfloat16"), accelerator)
  assert plan.num_devices == chips and plan.mesh == {"data": 1, "fsdp": chips, "tensor": 1}
  assert plan.compiled is None  # not the local devices
  published = presets.PUBLISHED_PARAM_COUNTS[preset]
  assert plan.num_params == published
  # Fully sharded: every chip holds 1/chips of the float32 parameters, except the norm
  # scales (2L + 1 of [D]), which every chip holds whole.
  norms = (2 * plan.model.num_layers + 1) * plan.model.d_model
  assert plan.params * chips == 4 * (published - norms) + 4 * norms * chips
  assert plan.gradients == plan.params
  assert plan.optimizer_state == pytest.approx(2 * plan.params, rel=1e-6)  # AdamW: mu, nu
  assert plan.micro_batch == 256 // chips
  assert plan.flops_per_step == pytest.approx(
      state_lib.flops_per_token(plan.model, 4096) * 256 * 4096)
  assert plan.compute_seconds == pytest.approx(
      plan.flops_per_step / (459e12 * chips))
  assert plan.fits and 0 < plan.activations.total < plan.accelerator.hbm_bytes
  text = plan_lib.format_plan(plan)
  assert f"{chips} x TPU v5p" in text and "fits in HBM: yes" in text and "40% MFU" in text


def test_many_slices_add_the_dcn_bound_and_keep_per_device_memory():
  """4 x v5p-256 (4 x 128 chips, 32 hosts each): per-device memory is that of FSDP over 128
  chips, with the batch 4 times larger; the gradients cross the DCN once per step."""
  one = plan_lib.plan(make_config("llama3-70b", fsdp=128, batch_size=128, remat="full",
                                  dtype="bfloat16"), "v5p-256")
  config = make_config("llama3-70b", fsdp=-1, batch_size=512, remat="full", dtype="bfloat16")
  config.mesh.dcn_data = 4
  four = plan_lib.plan(config, "v5p-256", num_slices=4)
  assert four.num_devices == 512 and four.mesh == {"data": 4, "fsdp": 128, "tensor": 1}
  assert (four.params, four.optimizer_state, four.activations.total) == (
      one.params, one.optimizer_state, one.activations.total)
  assert one.dcn_traffic == 0 and one.dcn_seconds == 0
  # Ring all-reduce of the float32 gradients over 4 slices, 2 x 3/4 of them, split over a
  # slice's 32 hosts, at 50 Gbit/s per chip x 4 chips per host (cloud.google.com/tpu/docs/v5p).
  gradients = 4 * presets.PUBLISHED_PARAM_COUNTS["llama3-70b"]
  assert four.dcn_traffic == pytest.approx(2 * 3 / 4 * gradients / 32)
  assert four.dcn_seconds == pytest.approx(four.dcn_traffic / (4 * 50e9 / 8))
  text = plan_lib.format_plan(four)
  assert "4 slices x 128 x TPU v5p" in text and "DCN bound: 529.2 ms" in text


def test_dcn_fsdp_gathers_weights_across_slices():
  config = make_config("llama3-8b", fsdp=-1, batch_size=256, remat="full", dtype="bfloat16")
  config.mesh.dcn_data, config.mesh.dcn_fsdp = 2, 2
  plan = plan_lib.plan(config, "v5p-128", num_slices=4)
  assert plan.mesh == {"data": 2, "fsdp": 128, "tensor": 1}
  g, hosts = 4 * presets.PUBLISHED_PARAM_COUNTS["llama3-8b"], 16
  # the all-reduce of half the gradients over 2 slices; over the other 2: 3 bfloat16 weight
  # gathers (remat) and the gradient reduce-scatter
  expected = (2 * 1 / 2 * g / 2 + 1 / 2 * (3 * g * 2 / 4 + g)) / hosts
  assert plan.dcn_traffic == pytest.approx(expected)


@pytest.mark.parametrize("kwargs, dcn, message", [
    (dict(accelerator="v5p-256", num_slices=4), 1,
     "mesh.dcn_data * mesh.dcn_fsdp = 1 but there are 4 slices"),
    (dict(accelerator="v5p-256"), 2, "mesh.dcn_data * mesh.dcn_fsdp = 2 but there is 1 slice"),
    (dict(accelerator="v5p-256", num_devices=128, num_slices=2), 2,
     "--num_devices=128 contradicts --accelerator='v5p-256' (256 chips in 2 slices)"),
    (dict(accelerator="v5p", num_devices=63, num_slices=2), 2,
     "--num_slices=2 does not divide the 63 devices"),
])
def test_slices_and_dcn_axes_must_agree(kwargs, dcn, message):
  config = make_config("llama3-8b", fsdp=-1)
  config.mesh.dcn_data = dcn
  with pytest.raises(ValueError, match=re.escape(message)):
    plan_lib.plan(config, **kwargs)


def test_long_context_fits_with_splash_and_the_chunked_loss():
  """Issue 18's acceptance: llama3-8b at seq 8192 on a v5p-64 and llama3-70b at seq 4096 on a
  v5p-256 fit with the presets' defaults (bf16, remat full, loss_chunk 512, splash on TPU);
  with the XLA kernel and whole logits the same runs need 2,584 GiB (remat dots, float32)
  and 138 GiB (remat full, bfloat16) per chip, the "before" of the README."""
  eight = plan_lib.plan(make_config("llama3-8b", seq_len=8192), "v5p-64")
  assert eight.attention == "splash" and eight.fits
  assert eight.total / 2 ** 30 == pytest.approx(42.4, abs=0.1)
  seventy = plan_lib.plan(make_config("llama3-70b", seq_len=4096), "v5p-256")
  assert seventy.attention == "splash" and seventy.fits
  before = dict(attention="xla", loss_chunk=0)
  dots = plan_lib.plan(make_config("llama3-8b", seq_len=8192, remat="dots", dtype="float32",
                                   **before), "v5p-64")
  full = plan_lib.plan(make_config("llama3-8b", seq_len=8192, **before), "v5p-64")
  assert round(dots.total / 2 ** 30) == 2584 and round(full.total / 2 ** 30) == 138
  assert not dots.fits and not full.fits
  # The difference is the [B, N, T, T] scores (bf16 and f32; a log-sum-exp per head instead)
  # and all chunks but one of the logits.
  scores = full.micro_batch * 8192 * 32 * 8192  # [B, N, T, T] per device, one block
  assert full.activations.block_backward - eight.activations.block_backward == pytest.approx(
      scores * (2 + 4) - 4 * full.micro_batch * 8192 * 32, rel=1e-6)  # bf16 + f32 scores
  chunks = 8192 // 512
  assert (full.activations.output_backward - eight.activations.output_backward
          == pytest.approx(8 * full.micro_batch * 8192 * 128256 * (1 - 1 / chunks), rel=1e-6))


def test_kernel_follows_the_target():
  config = make_config("llama3-8b", fsdp=-1, seq_len=4096)
  assert plan_lib.plan(config, "v5p-128").attention == "splash"
  assert plan_lib.plan(config, "h100", 64).attention == "cudnn"
  assert plan_lib.plan(make_config("llama3-8b", seq_len=4096, dtype="float32"), "h100",
                       64).attention == "xla"


def test_tensor_parallelism_splits_heads_and_mlp():
  fsdp = plan_lib.plan(make_config("llama3-70b", fsdp=64), "v5p", 64)
  mixed = plan_lib.plan(make_config("llama3-70b", fsdp=8, tensor=8), "v5p", 64)
  assert mixed.params == pytest.approx(fsdp.params, rel=1e-2)
  assert mixed.micro_batch == 8 * fsdp.micro_batch  # only 8 ways of data parallelism


def test_adafactor_state_is_factored_and_replicated():
  adamw = plan_lib.plan(make_config("llama3-8b", optimizer="adamw"), "v5p-128")
  adafactor = plan_lib.plan(make_config("llama3-8b", optimizer="adafactor"), "v5p-128")
  assert adafactor.optimizer_state < adamw.optimizer_state / 10
  # Its rows and columns are not parameter-shaped, so every chip holds all of them: at
  # least a row and a column of each MLP matrix, in every layer.
  assert adafactor.optimizer_state > 4 * 32 * (4096 + 14336) * 3


def test_grad_accum_shrinks_activations_and_doubles_gradients():
  one = plan_lib.plan(make_config("llama3-8b", remat="full"), "v5p-128")
  four = plan_lib.plan(make_config("llama3-8b", remat="full", grad_accum=4), "v5p-128")
  assert four.micro_batch == one.micro_batch // 4
  assert four.gradients == 2 * one.gradients
  assert four.activations.saved == pytest.approx(one.activations.saved / 4)
  assert four.activations.total < one.activations.total / 2
  assert four.flops_per_step == one.flops_per_step


@pytest.mark.parametrize("kwargs, message", [
    (dict(accelerator="v5p", num_devices=63), "mesh.fsdp=-1 cannot fill 63 devices: the other"),
    (dict(accelerator="v5p-64", num_devices=64), "--num_devices=64 contradicts"),
    (dict(accelerator="v5p-7"), "multiple of 2"),
    (dict(accelerator="tpu9"), "--accelerator='tpu9' is not one of"),
])
def test_bad_targets_name_the_flag_or_field(kwargs, message):
  with pytest.raises(ValueError, match=message):
    plan_lib.plan(make_config("llama3-8b", fsdp=-1, tensor=2), **kwargs)


def test_bad_meshes_and_batches_name_the_config_field():
  with pytest.raises(ValueError, match=r"mesh.data \* mesh.fsdp \* mesh.tensor = 8 but"):
    plan_lib.plan(make_config("llama3-8b", fsdp=8), "v5p", 64)
  with pytest.raises(ValueError, match="train.batch_size=256 / train.grad_accum=1 must be"):
    plan_lib.plan(make_config("llama3-8b", fsdp=512), "v5p", 512)


def test_indivisible_layouts_are_noted():
  # 8 kv heads on 16-way tensor parallelism: training refuses it; the plan rounds up.
  plan = plan_lib.plan(make_config("llama3-70b", fsdp=4, tensor=16), "v5p", 64)
  assert any("num_kv_heads=8" in note for note in plan.notes)


def _jax_residuals(config, batch: int, seq_len: int):
  """Bytes per block per token that JAX's autodiff saves, and the weight-shaped ones."""
  model = Decoder(config)
  params = nn.unbox(state_lib.abstract_boxed_params(model))
  params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), params)
  tokens = jnp.zeros((batch, seq_len), jnp.int32)
  data = {"inputs": tokens, "targets": tokens, "loss_mask": jnp.ones((batch, seq_len))}
  apply = lambda p, t, **kw: model.apply({"params": p}, t, **kw)
  activations = weights = 0
  for aval, source in saved_residuals(lambda p: pretrain.loss_fn(apply, p, data)[0], params):
    stacked = aval.ndim > 2 and aval.shape[0] == config.num_layers
    if "output of scan" not in source or not stacked:
      continue
    size = aval.size * aval.dtype.itemsize
    if batch in aval.shape[1:] or batch * seq_len in aval.shape[1:]:
      # [L, B, T, ...], or [L, B * T, ...] where a matmul flattened the tokens; scores come as
      # [L, K, B, G, T, S]
      activations += size
    elif aval.shape[1] > 1:  # a weight matrix (not the [L, 1, 1, D] norm scales)
      weights += size
  return activations / (config.num_layers * batch * seq_len), weights / config.num_layers


FAMILIES = {  # distinct sizes so shapes tell activations from weights: L 3, B 5, T 24, D 64
    "llama": dict(),
    "gemma": dict(mlp="geglu", num_kv_heads=1, head_dim=32, tie_embeddings=True,
                  norm_plus_one=True, scale_embeddings=True),
    "gpt2": dict(mlp="gelu", norm="layernorm", use_bias=True, positions="learned",
                 tie_embeddings=True, num_kv_heads=4),
}


@pytest.mark.parametrize("family, remat, dtype", [
    ("llama", "none", "float32"), ("llama", "none", "bfloat16"), ("llama", "dots", "bfloat16"),
    ("llama", "dots_no_batch", "bfloat16"), ("llama", "full", "bfloat16"),
    ("gemma", "none", "bfloat16"), ("gemma", "dots", "float32"),
    ("gpt2", "none", "bfloat16"), ("gpt2", "dots_no_batch", "float32")])
def test_saved_activations_match_what_jax_saves(family, remat, dtype):
  shape = dict(d_model=64, num_heads=4, num_kv_heads=2, d_ff=96, vocab_size=160, num_layers=3)
  config = presets.get("tiny").replace(**{**shape, **FAMILIES[family]}, remat=remat,
                                       dtype=dtype)
  per_token, weights = _jax_residuals(config, batch=5, seq_len=24)
  c = config
  formula = plan_lib.saved_per_token(c, remat, c.d_model, c.num_heads, c.num_kv_heads,
                                     c.d_ff, 24)
  assert formula == pytest.approx(per_token, rel=1e-6)
  layer = nn.unbox(state_lib.abstract_boxed_params(Decoder(c))["layers"])
  matrices = sum(x.size // c.num_layers for path, x in jax.tree_util.tree_leaves_with_path(layer)
                 if x.ndim >= 3 and not path[-1].key.endswith("bias"))  # matmul weights
  expected = matrices * c.compute_dtype.itemsize if remat == "none" and dtype != "float32" else 0
  assert weights == expected


def test_analytic_memory_matches_xla_on_8_cpu_devices():
  """Compiles the real step for two remat policies in a process with 8 CPU devices."""
  child = ("import json; from tests.test_plan import small_config; "
           "from lm import plan as plan_lib\n"
           "out = {}\n"
           "for remat in ('none', 'full'):\n"
           "  p = plan_lib.plan(small_config(remat))\n"
           "  c = p.compiled\n"
           "  out[remat] = dict(analytic=p.total, compiled=c.total, state=p.params + "
           "p.optimizer_state, arguments=c.argument, temp_analytic=p.gradients + "
           "p.activations.total, temp=c.temp, text=plan_lib.format_plan(p))\n"
           "print(json.dumps(out))\n")
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  result = subprocess.run([sys.executable, "-c", child], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  out = json.loads(result.stdout.strip().splitlines()[-1])
  for remat, r in out.items():
    print(f"remat {remat}:\n{r['text']}")
    assert r["analytic"] == pytest.approx(r["compiled"], rel=0.2), remat
    assert r["state"] == pytest.approx(r["arguments"], rel=0.02), remat
    assert r["temp_analytic"] == pytest.approx(r["temp"], rel=0.2), remat
  # Remat is what the plan is for: it must see the same saving XLA sees.
  assert out["full"]["analytic"] < 0.6 * out["none"]["analytic"]
  assert out["full"]["compiled"] < 0.6 * out["none"]["compiled"]


def test_chunked_loss_saving_matches_xla_on_8_cpu_devices():
  """A logits-heavy model (vocab 8192, d 64): the plan's total and its saving from
  model.loss_chunk=64 against XLA's memory analysis of the compiled step."""
  child = ("import json; from tests.test_plan import make_config; "
           "from lm import plan as plan_lib\n"
           "out = {}\n"
           "for chunk in (0, 64):\n"
           "  p = plan_lib.plan(make_config('tiny', 8, batch_size=16, seq_len=256, d_model=64, "
           "num_layers=1, vocab_size=8192, d_ff=256, loss_chunk=chunk))\n"
           "  out[chunk] = dict(analytic=p.total, compiled=p.compiled.total)\n"
           "print(json.dumps(out))\n")
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  result = subprocess.run([sys.executable, "-c", child], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  out = json.loads(result.stdout.strip().splitlines()[-1])
  print(out)
  # Measured: analytic 51.9 / 26.8 MB, compiled 46.4 / 21.7 MB (chunk 0 / 64): the plan errs
  # high, by up to 25% once the logits no longer dominate; the saving agrees to 2%.
  for chunk, r in out.items():
    assert r["compiled"] <= r["analytic"] <= 1.25 * r["compiled"], chunk
  analytic_saving = out["0"]["analytic"] - out["64"]["analytic"]
  compiled_saving = out["0"]["compiled"] - out["64"]["compiled"]
  assert analytic_saving > 0.4 * out["0"]["analytic"]
  assert compiled_saving == pytest.approx(analytic_saving, rel=0.1)


def test_lm_plan_command():
  flags = ["--config=configs/tiny.py", "--config.model.preset=llama3-70b",
           "--config.model.remat=full", "--config.model.dtype=bfloat16",
           "--config.train.batch_size=256", "--config.train.seq_len=4096",
           "--config.mesh.data=1", "--config.mesh.fsdp=-1"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  run = lambda *extra: subprocess.run([sys.executable, "-m", "lm", "plan", *flags, *extra],
                                      cwd=ROOT, env=env, text=True, capture_output=True,
                                      timeout=120, check=False)
  result = run("--accelerator=v5p-512")
  assert result.returncode == 0, result.stderr
  for text in ("256 x TPU v5p", "parameters (float32)", "optimizer state (adamw)",
               "activations (remat full, bfloat16)", "total", "fits in HBM: yes",
               "FLOPs per step", "at 40% MFU"):
    assert text in result.stdout
  result = run("--accelerator=v5p", "--num_devices=100", "--config.mesh.fsdp=64")
  assert result.returncode == 2
  assert "mesh.data * mesh.fsdp * mesh.tensor = 64 but there are 100 devices" in result.stderr
  result = run("--accelerator=v5p-256", "--num_slices=4", "--config.mesh.dcn_data=4",
               "--config.train.batch_size=512")
  assert result.returncode == 0, result.stderr
  assert "4 slices x 128 x TPU v5p (mesh data=4 fsdp=128 tensor=1)" in result.stdout
  assert "DCN bound: 529.2 ms per step across 4 slices" in result.stdout
  result = run("--accelerator=v5p-256", "--num_slices=4")
  assert result.returncode == 2
  assert "mesh.dcn_data * mesh.dcn_fsdp = 1 but there are 4 slices" in result.stderr
