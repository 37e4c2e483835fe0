"""Scoring replies with a trained reward model: `lm.RewardModel(workdir)`.

    rm = lm.RewardModel("runs/reward_tasks")
    rm.score("Add: 2+2", "4")                         # one float
    rm.score_batch(["Add: 2+2"] * 2, ["4", "5"])      # [2] float32: one forward pass per batch

Each (prompt, reply) is rendered with the checkpoint's chat template exactly as the reward
stage renders a side of a pair (lm/stages/pairs.py) and scored where the stage read it: the
reply's last token, its end-of-turn token (or with reward.read_at="reply_end" the one before).
Rows are right-padded (the causal mask keeps padding out of every real position) to shapes
bucketed to powers of two, so a scorer in an RL loop compiles a handful of programs.
"""

import json
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from lm import config as config_lib
from lm.data import formats
from lm.data import tokenizer as tokenizer_lib
from lm.model.heads import RewardModel as RewardModule
from lm.parallel import mesh as mesh_lib
from lm.parallel import rules as rules_lib
from lm.train import checkpoint as checkpoint_lib
from lm.train import state as state_lib

Prompt = str | list[dict]


def _bucket(n: int, low: int = 8) -> int:
  return max(low, 1 << (max(n, 1) - 1).bit_length())


class RewardModel:
  """The newest checkpoint of a `stage="reward"` workdir, ready to score replies."""

  def __init__(self, workdir: str, batch_size: int = 64):
    config_path = epath.Path(workdir) / "config.json"
    if not config_path.exists():
      raise FileNotFoundError(f"{workdir} holds no config.json: is it a training run?")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    if config.stage != "reward":
      raise ValueError(f"{workdir} was trained with stage={config.stage!r}, not 'reward'")
    self.model_config = config_lib.model_config(config).replace(remat="none")
    self.tokenizer = tokenizer_lib.get(config.data.tokenizer)
    self.model = RewardModule(self.model_config)
    self.mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    # No ambient rules: built inside another run's mesh and rules (an RL stage's), unboxing
    # the abstract tree would constrain shapes to that mesh.
    with nn.logical_axis_rules(()):
      abstract, shardings = state_lib.abstract_params_and_shardings(
          self.model, self.mesh, rules_lib.DEFAULT_RULES)
    self.params = checkpoint_lib.restore_params(workdir, abstract, shardings)
    if self.params is None:
      raise FileNotFoundError(f"{workdir} holds no checkpoint yet")
    self.batch_size = batch_size
    self.read_at = config.reward.get("read_at", "end_of_turn")   # as the stage read it
    self._apply = jax.jit(lambda p, tokens, last: self.model.apply({"params": p}, tokens,
                                                                    last=last))

  def _row(self, prompt: Prompt, reply: str) -> tuple[np.ndarray, int]:
    # The prompt is validated as a pair's; the reply may be empty (an RL completion that ended
    # at once is scored too: its row is the end-of-turn token alone).
    messages, *_ = formats.preference_of({"prompt": prompt, "chosen": "-", "rejected": "-"})
    ids, mask = formats.render_reply(self.tokenizer, messages, reply)
    if len(ids) > self.model_config.max_seq_len:
      raise ValueError(f"prompt and reply have {len(ids)} tokens, more than "
                       f"model.max_seq_len={self.model_config.max_seq_len}")
    return ids, formats.read_position(mask, self.read_at)

  def score_batch(self, prompts: Sequence[Prompt], replies: Sequence[str]) -> np.ndarray:
    """The reward of each reply to its prompt: [N] float32."""
    if len(prompts) != len(replies):
      raise ValueError(f"score_batch got {len(prompts)} prompts and {len(replies)} replies")
    rows = [self._row(p, r) for p, r in zip(prompts, replies)]
    out = np.zeros(len(rows), np.float32)
    for start in range(0, len(rows), self.batch_size):
      chunk = rows[start:start + self.batch_size]
      length = min(_bucket(max(len(ids) for ids, _ in chunk)), self.model_config.max_seq_len)
      tokens = np.zeros((_bucket(len(chunk), 1), length), np.int32)
      last = np.zeros(tokens.shape[0], np.int32)
      for i, (ids, index) in enumerate(chunk):
        tokens[i, :len(ids)], last[i] = ids, index
      with jax.set_mesh(self.mesh), nn.logical_axis_rules(rules_lib.DEFAULT_RULES):
        scores = self._apply(self.params, jnp.asarray(tokens), jnp.asarray(last))
      out[start:start + len(chunk)] = np.asarray(scores)[:len(chunk)]
    return out

  def score(self, prompt: Prompt, reply: str) -> float:
    """The reward of one reply to `prompt` (a user message, or a message list)."""
    return float(self.score_batch([prompt], [reply])[0])
