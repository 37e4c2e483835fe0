"""Rollouts from the training state (lm/rl/rollout.py): the engine's decoding from scanned
parameters inside jit; log-probs that a training forward pass reproduces."""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from lm.data import tokenizer as tokenizer_lib
from lm.infer.engine import Engine
from lm.infer.sampling import SamplingParams
from lm.model import Decoder
from lm.parallel import mesh as mesh_lib
from lm.parallel import rules as rules_lib
from lm.rl import rollout
from tests.infer import models

# float32, scanned layers; learned positions, so that a position off by the padding shows
# (RoPE is blind to a shift shared by every token).
CFG = models.TINY.replace(positions="learned")
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8], [9] * 8, [3]]


@pytest.fixture(scope="module")
def setting():
  mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  params = jax.tree.map(np.asarray, models.noise_params(CFG))
  return mesh, params


@functools.lru_cache(maxsize=None)
def compiled(settings: rollout.Settings):
  return jax.jit(functools.partial(rollout.generate, CFG, settings))


def run(setting, layout="scanned", seed=1, stop_ids=()):
  mesh, params = setting
  settings = rollout.Settings(max_new_tokens=12, temperature=1.0, stop_ids=stop_ids,
                              layout=layout)
  prompts, start = rollout.left_pad(PROMPTS, 8)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules_lib.DEFAULT_RULES):
    return compiled(settings)(params, prompts, start, jax.random.key(seed))


def test_training_forward_log_probs_equal_the_rollouts(setting):
  """Acceptance: rollout log-probs recomputed by a training forward pass (positions from the
  first real token, the left padding in its own segment) equal the engine's, float32."""
  mesh, params = setting
  out = run(setting)
  model = Decoder(CFG)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules_lib.DEFAULT_RULES):
    logps = rollout.completion_logprobs(
        lambda p, t, **kw: model.apply({"params": p}, t, **kw), params,
        rollout.training_rows(out), out.prompt_len)
  mask = np.asarray(out.mask)
  assert mask.sum() == 4 * 12
  np.testing.assert_allclose(np.asarray(logps) * mask, np.asarray(out.logprobs) * mask,
                             atol=1e-4)
  assert np.asarray(out.logprobs).min() < -0.5  # sampled, not only the likeliest tokens


def test_scanned_and_unrolled_layouts_sample_the_same_tokens(setting):
  scanned, unrolled = run(setting, "scanned"), run(setting, "unrolled")
  np.testing.assert_array_equal(np.asarray(scanned.tokens), np.asarray(unrolled.tokens))
  np.testing.assert_allclose(np.asarray(scanned.logprobs), np.asarray(unrolled.logprobs),
                             atol=1e-5)


def test_the_key_fixes_the_rollout(setting):
  a, b, c = run(setting, seed=1), run(setting, seed=1), run(setting, seed=2)
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  assert (np.asarray(a.completions) != np.asarray(c.completions)).mean() > 0.5


def test_a_rollout_is_what_the_engine_generates_with_the_same_row_seeds(setting):
  """The same decoding as lm/infer/engine.py: per-row seeds drawn from the key give the
  engine's completions (which it pads to other shapes)."""
  mesh, params = setting
  out = run(setting, seed=3)
  seeds = [int(s) for s in np.asarray(jax.random.bits(jax.random.key(3), (4,), np.uint32))]
  engine = Engine(CFG, params, tokenizer_lib.get("byte"), mesh=mesh)
  completions = engine.generate(PROMPTS, max_new_tokens=12, sampling=SamplingParams(1.0),
                                seed=seeds, stop_token_ids=[])
  assert [c.tokens for c in completions] == np.asarray(out.completions).tolist()


def test_a_stop_token_ends_the_completion_and_its_text(setting):
  free = run(setting)
  stop = int(np.asarray(free.completions)[0, 4])  # row 0's fifth token
  out = run(setting, stop_ids=(stop,))
  length = np.asarray(out.length)
  assert length[0] <= 5 and np.asarray(out.completions)[0, length[0] - 1] == stop
  assert np.asarray(out.mask)[0].sum() == length[0]
  assert (np.asarray(out.completions)[0, length[0]:] == 0).all()
  tokenizer = tokenizer_lib.get("byte")
  host = jax.device_get(out)
  texts = rollout.completion_texts(tokenizer, np.asarray(host.completions), host.length,
                                   host.reason)
  assert texts[0] == tokenizer.decode(np.asarray(out.completions)[0, :length[0] - 1].tolist())


def test_a_prompt_longer_than_the_columns_is_named():
  with pytest.raises(ValueError, match="rl.max_prompt_len=4"):
    rollout.left_pad([[1] * 5], 4)
