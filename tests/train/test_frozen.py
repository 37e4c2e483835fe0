"""Frozen parameters (a reference model, a LoRA base): a stage's `partition` keeps part of the
model out of the optimizer, in the train state beside the trainable part; they are
written once (workdir/frozen, not in every checkpoint), restored, never updated, and `lm plan`
counts them."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from lm import config as config_lib
from lm import stages
from lm.model import Decoder
from lm.stages import pretrain
from lm.train import loop
from lm.train import state as state_lib


class Stage(pretrain.Stage):
  """Pre-training with the token embedding frozen (it is registered for `lm plan` below)."""

  name = "frozen_embedding"

  def partition(self, params):
    return {k: v for k, v in params.items() if k != "embed"}, {"embed": params["embed"]}

  def loss(self, apply, params, frozen, batch):
    return pretrain.loss_fn(apply, {**params, **frozen}, batch, self.z_loss)

  def eval_sums(self, apply, params, frozen, batch):
    return super().eval_sums(apply, {**params, **frozen}, None, batch)


def read_state(workdir: str, step: int) -> dict:
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(os.path.join(workdir, "checkpoints", str(step), "state"))


def read_frozen(workdir: str) -> dict:
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(os.path.join(workdir, "frozen"))


def test_frozen_parameters_stay_out_of_the_optimizer_and_survive_resume(make_config, tmp_path):
  """Also `model.frozen_dtype="bfloat16"`: the frozen tree is stored (and written) as the
  initial float32 values rounded to bfloat16; what is trained stays float32."""
  config = make_config(train__steps=2, train__checkpoint_every=2, model__frozen_dtype="bfloat16")
  workdir = str(tmp_path)
  loop.train_and_evaluate(config, workdir, Stage)
  model = Decoder(config_lib.model_config(config))  # initialised as the loop does: jitted
  initial = jax.jit(lambda key: nn.unbox(state_lib.init_params(model, key)))(
      jax.random.key(config.seed))
  initial = jax.tree.map(np.asarray, initial)
  saved = read_state(workdir, 2)
  assert saved.get("frozen") is None  # written once, beside the checkpoints
  frozen = read_frozen(workdir)["embed"]["embedding"]
  assert frozen.dtype == jnp.bfloat16
  np.testing.assert_array_equal(frozen, initial["embed"]["embedding"].astype(jnp.bfloat16))
  assert "embed" not in saved["params"]
  assert {x.dtype for x in jax.tree.leaves(saved["params"])} == {np.dtype(np.float32)}
  assert not np.array_equal(saved["params"]["lm_head"], initial["lm_head"])  # trained
  embedding_shape = initial["embed"]["embedding"].shape
  assert embedding_shape not in {x.shape for x in jax.tree.leaves(saved["opt_state"])}
  # Resume: the frozen tree is restored and still never updated.
  loop.train_and_evaluate(make_config(train__steps=3, train__checkpoint_every=1,
                                      model__frozen_dtype="bfloat16"), workdir, Stage)
  resumed = read_state(workdir, 3)
  np.testing.assert_array_equal(read_frozen(workdir)["embed"]["embedding"], frozen)
  assert not np.array_equal(resumed["params"]["lm_head"], saved["params"]["lm_head"])


def test_plan_counts_frozen_parameters(make_config, monkeypatch):
  from lm import plan as plan_lib  # pylint: disable=import-outside-toplevel
  monkeypatch.setitem(stages.STAGES, "frozen_embedding", __name__)
  whole = plan_lib.plan(make_config(), compile_step=False)
  config = make_config()
  config.unlock()
  config.stage = "frozen_embedding"
  frozen = plan_lib.plan(config, compile_step=False)
  embedding = 4 * frozen.model.vocab_size * frozen.model.d_model
  assert frozen.num_frozen * 4 == frozen.frozen == embedding
  assert frozen.params == whole.params - embedding
  assert frozen.optimizer_state == whole.optimizer_state - 2 * embedding  # AdamW: mu, nu
  assert frozen.total == whole.total - 3 * embedding  # no gradient, no moments
  assert "frozen" in plan_lib.format_plan(frozen)


def test_a_bfloat16_frozen_tree_takes_half_the_bytes_in_the_plan(make_config, monkeypatch):
  """model.frozen_dtype="bfloat16": 2 bytes per frozen parameter, the trained ones and the
  optimizer state unchanged; and a DPO reference (a whole model) halves the same way."""
  from lm import plan as plan_lib  # pylint: disable=import-outside-toplevel
  monkeypatch.setitem(stages.STAGES, "frozen_embedding", __name__)
  plans = {}
  for stage in ("frozen_embedding", "dpo"):
    for dtype in ("float32", "bfloat16"):
      config = make_config(model__frozen_dtype=dtype)
      config.unlock()
      config.stage = stage
      plans[stage, dtype] = plan_lib.plan(config, compile_step=False)
  for stage in ("frozen_embedding", "dpo"):
    full, half = plans[stage, "float32"], plans[stage, "bfloat16"]
    assert half.num_frozen == full.num_frozen > 0
    assert half.frozen == 2 * half.num_frozen and full.frozen == 2 * half.frozen
    assert (half.params, half.optimizer_state) == (full.params, full.optimizer_state)
    assert "(bfloat16)" in plan_lib.format_plan(half)
  model = plans["frozen_embedding", "bfloat16"].model
  assert plans["frozen_embedding", "bfloat16"].num_frozen == model.vocab_size * model.d_model
  assert plans["dpo", "bfloat16"].num_frozen == plans["dpo", "bfloat16"].num_params  # a twin
