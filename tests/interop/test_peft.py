"""PEFT LoRA adapters <-> lm (lm/interop/peft.py): a random tiny Llama with a PEFT adapter
(random non-zero A and B on every projection) gives PEFT's logits in lm, adapted and merged;
an lm adapter written as PEFT loads in `peft` with the same logits."""

import copy

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch

from lm.interop import hf
from lm.interop import peft as peft_lib
from lm.model import Decoder, lora
from tests.interop import hf_models
from tests.interop.test_hf import hf_logits

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
  """(base HF directory, PEFT adapter directory, PEFT model, its logits on TOKENS)."""
  base = hf_models.make_model("llama")
  base_dir = hf_models.save(base, str(tmp_path_factory.mktemp("base")))
  model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
      r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0))
  torch.manual_seed(1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "lora_" in name:
        p.copy_(torch.randn_like(p) * 0.1)   # B too: the adapter changes the logits
  model.eval()
  adapter_dir = str(tmp_path_factory.mktemp("adapter"))
  model.save_pretrained(adapter_dir)
  return base, base_dir, adapter_dir, model


TOKENS = np.random.default_rng(0).integers(0, hf_models.VOCAB, (2, 16))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_peft_adapter_gives_peft_logits_adapted_and_merged(adapted, scan_layers):
  base, base_dir, adapter_dir, model = adapted
  config, params = hf.load(base_dir, scan_layers=scan_layers)
  spec, adapters = peft_lib.load_adapter(adapter_dir, config)
  assert (spec.rank, spec.scale) == (4, 2.0)
  theirs = hf_logits(model, TOKENS)
  assert np.abs(theirs - hf_logits(base, TOKENS)).max() > 1e-2  # the adapter matters
  ours = lora.adapt(Decoder(config), spec).apply(
      {"params": lora.join(adapters, params)}, jnp.asarray(TOKENS))
  assert np.abs(np.asarray(ours) - theirs).max() < 1e-4
  merged = Decoder(config).apply({"params": lora.merge(lora.join(adapters, params), spec)},
                                 jnp.asarray(TOKENS))
  merged_peft = hf_logits(copy.deepcopy(model).merge_and_unload(), TOKENS)
  assert np.abs(np.asarray(merged) - merged_peft).max() < 1e-4


def test_lm_adapter_written_as_peft_loads_in_peft(adapted, tmp_path):
  base, base_dir, _, _ = adapted
  config, params = hf.load(base_dir)
  spec = lora.LoraConfig(rank=2, alpha=6.0, targets=r"attention/(query|out)$|mlp/wi_up$")
  model = lora.adapt(Decoder(config), spec)
  init = model.init(jax.random.key(0), jnp.asarray(TOKENS))["params"]
  adapters, _ = lora.split(jax.tree.map(
      lambda x: jnp.asarray(np.random.default_rng(x.size).normal(0, 0.1, x.shape), jnp.float32),
      nn.unbox(init)))
  ours = model.apply({"params": lora.join(adapters, params)}, jnp.asarray(TOKENS))
  out = str(tmp_path / "exported")
  peft_lib.save_adapter(out, config, spec, adapters, base_model=base_dir)
  loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), out).eval()
  assert sorted(loaded.peft_config["default"].target_modules) == ["o_proj", "q_proj", "up_proj"]
  assert np.abs(np.asarray(ours) - hf_logits(loaded, TOKENS)).max() < 1e-4


def test_a_lora_run_exports_merged_and_as_peft_with_its_own_logits(make_config, tmp_path):
  """LoRA trained in lm on an imported Llama: `lm convert --to_hf` (merged) loads in
  transformers, `--adapter_only` in peft, and the engine's loader merges; all three give the
  logits of lm's adapted model."""
  from lm.interop import convert  # pylint: disable=import-outside-toplevel
  from lm.stages import train_and_evaluate  # pylint: disable=import-outside-toplevel
  from lm.train import checkpoint  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  base = hf_models.make_model("llama")
  base_dir = hf_models.save(base, str(tmp_path / "base"), hf_models.make_tokenizer())
  config = make_config(lora__rank=4, lora__alpha=8.0, train__lr=3e-2, train__steps=3,
                       lora__targets=r"attention/(query|value)$|mlp/wo$")
  config.init_from = f"hf:{base_dir}"
  workdir = str(tmp_path / "run")
  train_and_evaluate(config, workdir)

  saved = convert.read_workdir_config(workdir)
  model_config = convert.config_lib.model_config(saved)
  mesh = convert.mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  spec, adapters, params = checkpoint.restore_adapters(workdir, saved, model_config, mesh)
  ours = np.asarray(lora.adapt(Decoder(model_config), spec).apply(
      {"params": lora.join(adapters, params)}, jnp.asarray(TOKENS)))
  assert np.abs(ours - hf_logits(base, TOKENS)).max() > 1e-3   # the adapters trained

  convert.export_hf(workdir, str(tmp_path / "merged"))
  merged = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
  assert np.abs(ours - hf_logits(merged, TOKENS)).max() < 1e-4
  convert.export_hf(workdir, str(tmp_path / "adapter"), adapter_only=True)
  loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "adapter")).eval()
  assert np.abs(ours - hf_logits(loaded, TOKENS)).max() < 1e-4
  _, _, inference = checkpoint.load_for_inference(workdir)
  served = Decoder(model_config).apply({"params": inference}, jnp.asarray(TOKENS))
  assert np.abs(np.asarray(served) - ours).max() < 1e-4
