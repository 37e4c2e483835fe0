"""Tests for lm/infer/engine.py: correctness against the full forward pass, batching with
mixed prompt lengths, determinism, stop tokens and strings, streaming, tensor parallelism.

All tests share the session's tiny engine (noise parameters, byte tokenizer) and a few
shape buckets, so the engine compiles a handful of programs in total.
"""

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from lm.infer.engine import Engine
from lm.infer.sampling import GREEDY, SamplingParams
from lm.model import Decoder, presets
from tests.infer import models

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPTS = ["Hello", "The fox", "a"]  # all in the prompt bucket of 8 tokens (bos included)
SAMPLED = SamplingParams(temperature=1.0, top_k=20, top_p=0.9)


def encode(engine, texts):
  return [engine.tokenizer.encode(t, add_bos=True) for t in texts]


@functools.cache
def _apply(config):
  return jax.jit(lambda params, tokens: Decoder(config).apply({"params": params}, tokens))


def full_forward_logprobs(engine, prompt, new_tokens):
  """log p of each row position from one forward pass over prompt + new tokens."""
  sequence = np.concatenate([prompt, new_tokens]).astype(np.int32)
  padded = np.zeros((1, 32), np.int32)  # one shape, one compile; later positions are unseen
  padded[0, :len(sequence)] = sequence
  logits = _apply(engine.config)(engine.params, padded)[0, :len(sequence)]
  return np.asarray(jax.nn.log_softmax(logits))[len(prompt) - 1:-1]  # [new, V]


@pytest.fixture(scope="module")
def greedy_batch(engine):
  prompts = encode(engine, PROMPTS)
  return prompts, engine.generate(prompts, max_new_tokens=[16, 9, 12], sampling=GREEDY,
                                  stop_token_ids=[])


def test_greedy_tokens_and_logprobs_equal_the_full_forward_pass(engine, greedy_batch):
  prompts, completions = greedy_batch
  for prompt, completion in zip(prompts, completions):
    reference = full_forward_logprobs(engine, prompt, completion.tokens)
    np.testing.assert_array_equal(completion.tokens, reference.argmax(-1))
    chosen = reference[np.arange(len(completion.tokens)), completion.tokens]
    np.testing.assert_allclose(completion.logprobs, chosen, atol=1e-4)


def test_per_row_max_tokens_and_prompt_lengths(greedy_batch):
  prompts, completions = greedy_batch
  assert [len(c.tokens) for c in completions] == [16, 9, 12]
  assert all(c.stop_reason == "max_tokens" for c in completions)
  assert [c.prompt_tokens for c in completions] == [len(p) for p in prompts]


def test_batched_rows_equal_rows_decoded_alone(engine, greedy_batch):
  prompts, completions = greedy_batch
  for prompt, n, batched in zip(prompts, [16, 9, 12], completions):
    [alone] = engine.generate([prompt], max_new_tokens=n, sampling=GREEDY, stop_token_ids=[])
    assert alone.tokens == batched.tokens
    np.testing.assert_allclose(alone.logprobs, batched.logprobs, atol=1e-5)


def test_greedy_is_deterministic_and_seeds_repeat(engine, greedy_batch):
  prompts, completions = greedy_batch
  again = engine.generate(prompts, max_new_tokens=[16, 9, 12], sampling=GREEDY,
                          stop_token_ids=[])
  assert [c.tokens for c in again] == [c.tokens for c in completions]
  sample = lambda seed: [c.tokens for c in engine.generate(
      prompts, max_new_tokens=16, sampling=SAMPLED, seed=seed, stop_token_ids=[])]
  first = sample(1)
  assert sample(1) == first
  assert sample(2) != first


def test_a_row_draws_the_same_whatever_shares_its_batch(engine):
  prompts = encode(engine, PROMPTS)
  together = engine.generate(prompts, max_new_tokens=16, sampling=SAMPLED, seed=[5, 7, 9],
                             stop_token_ids=[])
  [alone] = engine.generate(prompts[1:2], max_new_tokens=16, sampling=SAMPLED, seed=[7],
                            stop_token_ids=[])
  assert alone.tokens == together[1].tokens


def test_stop_token_ends_the_row_and_is_kept_out_of_the_text(engine, greedy_batch):
  prompts, completions = greedy_batch
  stop = completions[0].tokens[5]
  first = completions[0].tokens.index(stop)
  [c] = engine.generate(prompts[:1], max_new_tokens=16, sampling=GREEDY, stop_token_ids=[stop])
  assert c.stop_reason == "end_turn"
  assert c.tokens == completions[0].tokens[:first + 1]  # the stop token itself included
  assert c.text == engine.tokenizer.decode(c.tokens[:-1])


def test_stop_string_ends_generation(engine, greedy_batch):
  prompts, completions = greedy_batch
  text_bytes = [t for t in completions[0].tokens if t < 256]
  assert len(text_bytes) >= 8, "the greedy text is too short for this test"
  stop = engine.tokenizer.decode(text_bytes[4:6])
  [c] = engine.generate(prompts[:1], max_new_tokens=16, sampling=GREEDY, stop_token_ids=[],
                        stop_strings=[stop, "never appears \x00"])
  full_text = completions[0].text
  assert c.stop_reason == "stop_sequence" and c.stop_sequence == stop
  assert c.text == full_text[:full_text.index(stop)]
  # Generation ended right where the stop string was completed: the loop matched it.
  assert engine.tokenizer.decode(c.tokens).endswith(stop)
  assert len(c.tokens) < 16 and len(c.logprobs) == len(c.tokens)
  # Per-row stop strings: the other rows run to their max.
  rows = engine.generate(prompts, max_new_tokens=[16, 9, 12], sampling=GREEDY,
                         stop_token_ids=[], stop_strings=[[stop], [], []])
  assert rows[0].tokens == c.tokens
  assert [r.tokens for r in rows[1:]] == [r.tokens for r in completions[1:]]


class OtherSpelling:
  """The byte tokenizer, but stop strings encode to tokens the model never sees, so only the
  search of the decoded text can find them (as with a different BPE tokenization)."""

  def __init__(self, tokenizer):
    self.inner = tokenizer
    self.eos_id = tokenizer.eos_id

  def encode(self, text, add_bos=False):
    return np.full(len(text.encode()), 300, np.int32)

  def decode(self, ids):
    return self.inner.decode(ids)


def test_stop_string_found_only_in_the_text_still_cuts(engine, greedy_batch):
  prompts, completions = greedy_batch
  other = Engine(engine.config, engine.params, OtherSpelling(engine.tokenizer))
  text = completions[0].text
  stop = text[3:5]
  [c] = other.generate(prompts[:1], max_new_tokens=16, sampling=GREEDY, stop_token_ids=[],
                       stop_strings=[stop])
  assert c.stop_reason == "stop_sequence" and c.text == text[:text.index(stop)]
  assert engine.tokenizer.decode(c.tokens).endswith(stop)  # the fewest tokens holding it


def test_stream_yields_growing_prefixes_of_the_final_completion(engine, greedy_batch):
  prompts, completions = greedy_batch
  snapshots = list(engine.stream(prompts, max_new_tokens=[16, 9, 12], sampling=GREEDY,
                                 stop_token_ids=[], chunk_tokens=4))
  assert len(snapshots) >= 4
  final = snapshots[-1]
  assert [c.tokens for c in final] == [c.tokens for c in completions]
  for earlier, later in zip(snapshots, snapshots[1:]):
    for a, b in zip(earlier, later):
      assert b.tokens[:len(a.tokens)] == a.tokens
  assert snapshots[0][0].stop_reason is None


def test_cancelled_rows_stop_between_chunks_and_the_others_do_not_notice(engine, greedy_batch):
  prompts, completions = greedy_batch
  asked = []

  def cancelled():  # asked before each chunk: row 0 is cancelled from the second on
    asked.append(len(asked))
    return [len(asked) >= 2, False, False]

  *_, final = engine.stream(prompts, max_new_tokens=[16, 9, 12], sampling=GREEDY,
                            stop_token_ids=[], chunk_tokens=4, cancelled=cancelled)
  assert final[0].stop_reason == "cancelled"
  assert final[0].tokens == completions[0].tokens[:5]  # prefill's token and one chunk of 4
  assert final[1:] == completions[1:]
  # When every row is cancelled, decoding ends at once: no chunk runs after the prefill.
  *_, final = engine.stream(prompts, max_new_tokens=[16, 9, 12], sampling=GREEDY,
                            stop_token_ids=[], chunk_tokens=4, cancelled=lambda: [True] * 3)
  assert [len(c.tokens) for c in final] == [1, 1, 1]
  assert {c.stop_reason for c in final} == {"cancelled"}


def test_sliding_window_engine_matches_the_full_forward_pass():
  cfg = presets.get("tiny").replace(sliding_window=4)
  from lm.data.tokenizer import ByteTokenizer  # pylint: disable=import-outside-toplevel
  engine = Engine(cfg, models.noise_params(cfg), ByteTokenizer())
  prompts = encode(engine, ["sliding windows", "ab"])
  completions = engine.generate(prompts, max_new_tokens=12, sampling=GREEDY, stop_token_ids=[])
  for prompt, completion in zip(prompts, completions):
    reference = full_forward_logprobs(engine, prompt, completion.tokens)
    np.testing.assert_array_equal(completion.tokens, reference.argmax(-1))


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompts=[[]]), "empty"),
    (dict(prompts=[[1, 2]], max_new_tokens=0), "max_new_tokens"),
    (dict(prompts=[[1] * 500], max_new_tokens=20), "max_seq_len"),
    (dict(prompts=[[1, 9999]]), "vocab_size"),
    (dict(prompts=[[1], [2]], max_new_tokens=[3]), "entries"),
    (dict(prompts=[[1]], stop_strings="x"), "stop_strings"),
])
def test_bad_arguments_are_errors_that_say_why(engine, kwargs, message):
  with pytest.raises(ValueError, match=message):
    engine.generate(**kwargs)


def test_tensor_and_data_parallel_decoding_match_one_device(engine, workdir):
  """The same workdir decoded on 2 forced CPU devices: tensor-parallel (1, 1, 2) and
  data-parallel (2, 1, 1) meshes give the single device's tokens and log-probs."""
  prompts = encode(engine, PROMPTS[:2])
  expected = engine.generate(prompts, max_new_tokens=[12, 7], sampling=GREEDY,
                             stop_token_ids=[])
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  spec = {"workdir": workdir, "prompts": [p.tolist() for p in prompts], "max_new": [12, 7]}
  result = subprocess.run([sys.executable, "-m", "tests.infer.mesh_worker", json.dumps(spec)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-5000:]
  meshes = json.loads(result.stdout.split("RESULT ", 1)[1])
  assert set(meshes) == {"1x1x2", "2x1x1"}
  # [B, K, S, H]: kv heads split over tensor, rows over data.
  b, k, s, h = meshes["1x1x2"]["cache_shape"]
  assert meshes["1x1x2"]["cache_shard_shape"] == [b, k // 2, s, h]
  assert meshes["2x1x1"]["cache_shard_shape"] == [b // 2, k, s, h]
  for name, rows in meshes.items():
    for row, want in zip(rows["completions"], expected):
      assert row["tokens"] == want.tokens, name
      np.testing.assert_allclose(row["logprobs"], want.logprobs, atol=1e-4)


def test_set_params_takes_scanned_or_unrolled_parameters(engine, greedy_batch):
  prompts, completions = greedy_batch
  unrolled = engine.params
  try:
    for params in (unrolled, models.noise_params()):  # the engine's layout; a scanned stack
      engine.set_params(params)
      again = engine.generate(prompts, max_new_tokens=[16, 9, 12], sampling=GREEDY,
                              stop_token_ids=[])
      assert [c.tokens for c in again] == [c.tokens for c in completions]
  finally:
    engine.set_params(unrolled)


def test_lm_sample_starts_the_prompt_like_a_training_document(engine, workdir):
  """`lm sample --prompt=P` continues P as training framed it: a document opens with <bos>
  (the pipeline's Tokenize), so the greedy text is the engine's from those tokens."""
  from lm.data.pipeline import Tokenize  # pylint: disable=import-outside-toplevel
  text = "The fox"
  prompt = Tokenize(engine.tokenizer)(text)["inputs"]  # <bos> text, as training reads it
  assert prompt[0] == engine.tokenizer.bos_id
  [expected] = engine.generate([prompt], max_new_tokens=12, sampling=GREEDY)
  result = subprocess.run(
      [sys.executable, "-m", "lm", "sample", f"--workdir={workdir}", f"--prompt={text}",
       "--max_new_tokens=12", "--temperature=0"], cwd=ROOT, capture_output=True, text=True,
      timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout == text + expected.text + "\n"


def test_bfloat16_stored_parameters_round_the_weights_and_track_float32(engine, workdir):
  """`frozen_dtype="bfloat16"` stores the engine's copy in half the bytes, and changes nothing
  but the stored precision: its log-probs equal (to float noise) those of float32 weights
  rounded to bfloat16 and back, computed in float32. Against the float32 weights themselves
  they stay within 0.05 nats per token on average and 0.25 at most on this model (noise
  weights of std 0.2: logits far larger than a trained model's), 1e-3 relative summed."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  half = Engine.from_workdir(workdir, frozen_dtype="bfloat16")
  assert {x.dtype for x in jax.tree.leaves(half.params)} == {jnp.dtype(jnp.bfloat16)}
  assert (sum(x.nbytes for x in jax.tree.leaves(half.params)) * 2
          == sum(x.nbytes for x in jax.tree.leaves(engine.params)))
  rounded = jax.tree.map(lambda x: np.asarray(x).astype(jnp.bfloat16).astype(np.float32),
                         models.noise_params())
  rounded = Engine(models.TINY, rounded, engine.tokenizer)
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(0, 256, 8)) for _ in range(4)]
  continuations = [list(rng.integers(0, 256, 24)) for _ in range(4)]
  exact, got, want = (np.concatenate(e.score(prompts, continuations))
                      for e in (engine, half, rounded))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-6)
  error = np.abs(got - exact)
  assert error.mean() < 0.05 and error.max() < 0.25, (error.mean(), error.max())
  assert abs(got.sum() - exact.sum()) < 1e-3 * abs(exact.sum())
  assert error.max() > 0  # bfloat16 is not float32
