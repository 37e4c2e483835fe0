"""Parity with Hugging Face transformers (PyTorch, CPU) for every supported family.

For each family a tiny random model is built and saved by transformers, loaded by lm, and
compared: logits on random batches with and without left padding, 32 greedy tokens, and the
export back to HF, which transformers must load to the same tensors and logits. Then: a
bfloat16 checkpoint, unsupported options, a load sharded over 8 CPU devices (subprocess),
and the command line (convert both ways, fine-tuning with --config.init_from).
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers

from lm.interop import hf
from lm.interop import hf_export
from lm.model import Decoder
from tests.interop import hf_models

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BATCH, LENGTH, PROMPT, NEW_TOKENS = 3, 24, 8, 32
PARITY = {}  # family -> max |logit difference|, printed at the end (pytest -s)


def hf_logits(model, tokens: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
  kwargs = {}
  if mask is not None:
    kwargs = {"attention_mask": torch.tensor(mask),
              "position_ids": torch.tensor(np.maximum(np.cumsum(mask, axis=1) - 1, 0))}
  with torch.no_grad():
    return model(torch.tensor(tokens), **kwargs).logits.float().numpy()


class Loaded:
  """One family: the HF model, its directory, and lm's config, params and jitted forward."""

  def __init__(self, name, directory, hf_model):
    self.name, self.directory, self.hf_model = name, directory, hf_model
    self.config, self.params = hf.load(directory)
    model = Decoder(self.config)
    self.forward = jax.jit(lambda p, t, pos=None, seg=None: model.apply(
        {"params": p}, t, positions=pos, segment_ids=seg))

  def logits(self, tokens, positions=None, segment_ids=None) -> np.ndarray:
    return np.asarray(self.forward(self.params, jnp.asarray(tokens), positions, segment_ids))


@pytest.fixture(scope="module", params=sorted(hf_models.CONFIGS))
def family(request, tmp_path_factory) -> Loaded:
  name = request.param
  model = hf_models.make_model(name)
  directory = str(tmp_path_factory.mktemp(name))
  # Llama and Gemma as several shards with an index, the others as one file.
  hf_models.save(model, directory, max_shard_size="40KB" if name in ("llama", "gemma") else None)
  return Loaded(name, directory, model)


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture(scope="module", autouse=True)
def parity_report():
  """Prints the measured differences after the module (visible with pytest -s)."""
  yield
  if PARITY:
    print("\nmax |logit difference| lm vs transformers:",
          {k: f"{v:.2e}" for k, v in sorted(PARITY.items())})


def test_config_maps_the_family_switches(family):
  c, hf_config = family.config, family.hf_model.config
  assert (c.num_layers, c.vocab_size) == (2, hf_models.VOCAB)
  expected = {"gpt2": dict(positions="learned", use_bias=True, tie_embeddings=True),
              "llama": dict(rope_scaling="llama3", rope_original_max_len=16, num_kv_heads=2),
              "mistral": dict(sliding_window=8, num_kv_heads=2),
              "qwen2": dict(attention_bias=True, tie_embeddings=True),
              "gemma": dict(norm_plus_one=True, scale_embeddings=True, head_dim=24,
                            mlp="geglu")}[family.name]
  assert {k: getattr(c, k) for k in expected} == expected
  assert hf.family_for(c).model_type == hf_config.model_type


def test_logits_match(family, rng):
  tokens = rng.integers(0, hf_models.VOCAB, (BATCH, LENGTH))
  theirs = hf_logits(family.hf_model, tokens)
  diff = np.abs(family.logits(tokens) - theirs).max()
  PARITY[family.name] = max(PARITY.get(family.name, 0.0), float(diff))
  assert diff < 1e-4
  # Llama 3.1 scaling and Mistral's window change these logits: the comparison sees them.
  switch = {"llama": {"rope_scaling": "none"}, "mistral": {"sliding_window": 0}}.get(family.name)
  if switch:
    plain = Decoder(family.config.replace(**switch)).apply({"params": family.params}, tokens)
    assert np.abs(np.asarray(plain) - theirs).max() > 1e-3


def test_logits_match_with_left_padding(family, rng):
  tokens = rng.integers(0, hf_models.VOCAB, (BATCH, LENGTH))
  lengths = np.array([LENGTH, LENGTH - 5, LENGTH - 13])
  mask = (np.arange(LENGTH)[None, :] >= (LENGTH - lengths)[:, None]).astype(np.int32)
  tokens = np.where(mask, tokens, 0)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  ours = family.logits(tokens, positions, mask)
  theirs = hf_logits(family.hf_model, tokens, mask)
  real = mask.astype(bool)
  diff = np.abs(ours[real] - theirs[real]).max()
  PARITY[family.name] = max(PARITY.get(family.name, 0.0), float(diff))
  assert diff < 1e-4


def test_greedy_continuations_are_identical(family, rng):
  prompt = rng.integers(0, hf_models.VOCAB, PROMPT).tolist()
  ours, theirs = list(prompt), list(prompt)
  bucket = np.zeros((1, PROMPT + NEW_TOKENS), np.int32)  # one shape: one compilation
  for _ in range(NEW_TOKENS):
    bucket[0, :len(ours)] = ours
    ours.append(int(np.argmax(family.logits(bucket)[0, len(ours) - 1])))
    theirs.append(int(np.argmax(hf_logits(family.hf_model, np.array([theirs]))[0, -1])))
  assert ours == theirs


def test_export_is_loaded_by_transformers(family, tmp_path, rng):
  hf_export.save(str(tmp_path), family.config, family.params, max_shard_bytes=64 << 10)
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), attn_implementation="eager").eval()
  assert type(reloaded) is type(family.hf_model)
  original = family.hf_model.state_dict()
  for name, tensor in reloaded.state_dict().items():
    assert torch.equal(tensor, original[name]), name
  tokens = rng.integers(0, hf_models.VOCAB, (BATCH, LENGTH))
  np.testing.assert_allclose(hf_logits(reloaded, tokens), family.logits(tokens), atol=1e-4)


def test_bfloat16_checkpoint_loads_exactly(tmp_path):
  model = hf_models.make_model("llama", seed=1, dtype=torch.bfloat16)
  hf_models.save(model, str(tmp_path / "bf16"))
  config, params = hf.load(str(tmp_path / "bf16"))
  hf_export.save(str(tmp_path / "back"), config, params)
  from safetensors.torch import load_file  # pylint: disable=import-outside-toplevel
  back = load_file(str(tmp_path / "back" / "model.safetensors"))
  for name, tensor in model.state_dict().items():
    assert torch.equal(back[name], tensor.float()), name


def test_original_gpt2_names_and_buffers(tmp_path):
  """openai-community/gpt2 stores `h.0.attn.c_attn.weight` (no `transformer.`) and the causal
  mask buffers `h.0.attn.bias`; both are understood."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  model = hf_models.make_model("gpt2")
  _, expected = hf.load(hf_models.save(model, str(tmp_path / "saved")))
  tensors = {name.removeprefix("transformer."): tensor.numpy()
             for name, tensor in model.state_dict().items() if name != "lm_head.weight"}
  tensors.update({f"h.{i}.attn.bias": np.tril(np.ones((1, 1, 8, 8), np.float32))
                  for i in range(2)})
  save_file(tensors, str(tmp_path / "model.safetensors"))
  with open(tmp_path / "config.json", "w", encoding="utf-8") as f:
    json.dump(model.config.to_dict(), f)
  _, params = hf.load(str(tmp_path))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unscanned_layout_holds_the_same_layers(tmp_path):
  directory = hf_models.save(hf_models.make_model("mistral"), str(tmp_path))
  _, stacked = hf.load(directory)
  config, unscanned = hf.load(directory, scan_layers=False)
  for i in range(config.num_layers):
    jax.tree.map(lambda a, b, i=i: np.testing.assert_array_equal(np.asarray(a)[i], np.asarray(b)),
                 stacked["layers"], unscanned[f"layers_{i}"])
  with pytest.raises(ValueError, match="num_layers"):
    hf.load(directory, num_layers=3)


def write_config(directory, **changes) -> str:
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    json.dump(changes, f)
  return str(directory)


@pytest.mark.parametrize("family_name, changes, message", [
    ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, "'linear'"),
    ("llama", {"rope_parameters": None, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
     "'dynamic'"),
    ("llama", {"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ("llama", {"attention_bias": True}, "attention_bias=True"),
    ("qwen2", {"use_sliding_window": True}, "use_sliding_window=True"),
    ("gemma", {"model_type": "gemma2"}, "soft-capping"),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ("llama", {"model_type": "mamba"}, "model_type='mamba'"),
])
def test_unsupported_options_are_named(tmp_path, family_name, changes, message):
  config = hf_models.CONFIGS[family_name]().to_dict()
  config.update(changes)
  with pytest.raises(ValueError, match="config.json") as error:
    hf.model_config(write_config(tmp_path, **config))
  assert message in str(error.value)


def test_pickle_checkpoints_are_refused(tmp_path):
  directory = write_config(tmp_path, **hf_models.CONFIGS["llama"]().to_dict())
  (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
  config = hf.model_config(directory)
  with pytest.raises(FileNotFoundError, match="pickle"):
    hf.load_params(directory, config, None)


def test_load_sharded_over_8_devices(tmp_path):
  """Each device's block is read on its own, and the placement follows lm's rules."""
  directory = hf_models.save(hf_models.make_model("llama"), str(tmp_path), max_shard_size="40KB")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  result = subprocess.run([sys.executable, "-m", "tests.interop.shard_worker", directory],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-4000:]
  report = json.loads(result.stdout.split("REPORT ", 1)[1])
  assert report["devices"] == 8
  leaves = report["leaves"]
  assert leaves["layers/attention/query"]["spec"] == [None, "fsdp", "tensor", None]
  assert leaves["layers/attention/key"]["spec"] == [None, "fsdp", "tensor", None]
  assert leaves["embed/embedding"]["spec"] == ["tensor", "fsdp"]
  assert leaves["lm_head"]["spec"] == ["fsdp", "tensor"]
  for path, leaf in leaves.items():
    ways = leaf["ways"]
    assert all(np.prod(s) * ways == np.prod(leaf["shape"]) for s in leaf["shard_shapes"]), path
    # No read was larger than one device's block.
    assert leaf["largest_read"] <= np.prod(leaf["shape"]) // ways, path
    assert leaf["equal_to_single_device_load"], path
  assert report["max_logit_diff"] < 1e-4


def lm_cli(*args, timeout=300):
  result = subprocess.run([sys.executable, "-m", "lm", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, f"lm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
  return result


def test_cli_convert_round_trip_and_fine_tune(tmp_path):
  """convert --from_hf, train from hf:DIR, convert --to_hf; tokenizer files travel along."""
  model = hf_models.make_model("qwen2", seed=2)
  tokenizer = hf_models.make_tokenizer("metaspace")
  source = hf_models.save(model, str(tmp_path / "hf"), tokenizer)
  workdir, exported = str(tmp_path / "imported"), str(tmp_path / "exported")

  lm_cli("convert", f"--from_hf={source}", f"--workdir={workdir}")
  assert {"config.json", "params", "tokenizer", "hf_config.json"} <= set(os.listdir(workdir))
  lm_cli("convert", f"--workdir={workdir}", f"--to_hf={exported}")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
  for name, tensor in reloaded.state_dict().items():
    assert torch.equal(tensor, model.state_dict()[name]), name
  reloaded_tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
  messages = [{"role": "user", "content": "hello world"}]
  assert (reloaded_tokenizer.apply_chat_template(messages, tokenize=False)
          == tokenizer.apply_chat_template(messages, tokenize=False))

  # Fine-tune from the HF directory: the first loss is the imported model's loss on batch 0.
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(" ".join(hf_models.TEXTS[:1] * 200))
  run = str(tmp_path / "run")
  cache = str(tmp_path / "cache")
  lm_cli("train", "--config=configs/tiny.py", f"--workdir={run}",
         f"--config.init_from=hf:{source}", f"--config.data.source=text:{corpus}",
         f"--config.data.cache_dir={cache}", "--config.train.steps=2",
         "--config.train.batch_size=4", "--config.train.seq_len=32",
         "--config.train.log_every=1", "--config.data.eval_documents=1")
  with open(os.path.join(run, "metrics.jsonl"), encoding="utf-8") as f:
    first_loss = next(m["loss"] for m in map(json.loads, f) if m.get("step") == 1)
  with open(os.path.join(run, "config.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["data"]["tokenizer"] == f"hf:{source}"
  assert saved["model"]["attention_bias"] and saved["model"]["tie_embeddings"]

  from lm.data import pipeline, sources  # pylint: disable=import-outside-toplevel
  from lm.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  run_config = ml_collections.ConfigDict(saved)
  batches = pipeline.train_batches(sources.open_source(run_config.data).train,
                                   tokenizer_lib.get(f"hf:{source}"), run_config, slice(0, 4))
  batch = next(batches)
  batches.close()
  assert (batch["segment_ids"] == 1).all()  # one document fills every row: HF needs no mask
  with torch.no_grad():
    logits = model(torch.tensor(batch["inputs"], dtype=torch.long)).logits
    expected = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), torch.tensor(batch["targets"].reshape(-1),
                                                            dtype=torch.long)).item()
  assert first_loss == pytest.approx(expected, rel=1e-5)

  # lm workdirs are sources too: the import (params/) and the run (its newest checkpoint).
  from lm import config as config_lib  # pylint: disable=import-outside-toplevel
  from lm.interop import convert  # pylint: disable=import-outside-toplevel
  from lm.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.base_config()
  config.init_from = workdir
  resolved = convert.resolve(config_lib.lock(config))
  assert resolved.data.tokenizer == f"hf:{workdir}/tokenizer"
  model_config = config_lib.model_config(resolved)
  shardings = hf.param_shardings(model_config, mesh_lib.make_mesh({"data": -1, "fsdp": 1,
                                                                   "tensor": 1}))
  for a, b in zip(jax.tree.leaves(convert.load_params(workdir, model_config, shardings)),
                  jax.tree.leaves(hf.load_params(source, model_config, shardings))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  config.model.num_layers = 3
  with pytest.raises(ValueError, match=r"model.num_layers=3 \(the checkpoint has 2\)"):
    convert.resolve(config)

  convert.export_hf(run, str(tmp_path / "finetuned"))
  finetuned = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "finetuned"))
  trained = convert.load_params(run, model_config, shardings)
  assert not torch.equal(finetuned.state_dict()["lm_head.weight"],
                         model.state_dict()["lm_head.weight"])
  tokens = batch["inputs"][:2]
  ours = Decoder(model_config).apply({"params": trained}, tokens)
  np.testing.assert_allclose(hf_logits(finetuned.eval(), tokens), np.asarray(ours), atol=1e-4)
