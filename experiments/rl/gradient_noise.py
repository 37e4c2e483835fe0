"""How much of one GRPO step's gradient carries over to other prompts, next to SFT's.

    python experiments/rl/gradient_noise.py [--start=/work/runs/sft_tasks] [--task=count]
        [--prompts=128] [--groups=8,16,64] [--batches=4]

From the SFT model, on `--batches` disjoint batches of `--prompts` training questions each,
computes the gradient of GRPO's policy loss (exact-match reward, advantages scaled by the
group std, token loss, no KL: the update direction of `stage="grpo"` at num_iterations 1)
and of SFT's loss (the reference answer's NLL) on the same questions, and prints cosines:

  grpo A vs grpo A'   same questions, other samples: how much is the questions' signal
  grpo A vs grpo B    disjoint questions: what one step's direction shares with another's
  sft  A vs sft  B    the same for SFT, which is known to raise held-out exact match
  grpo A vs sft  A    whether GRPO points where SFT does at all
  mean grpo vs mean sft   the average over the batches: the signal once noise is averaged

Each grpo number is for G completions per question, G from `--groups`; the rollouts of batch
i sample with key(i) (A' with key(1000)). Three batches give rough cosines:
experiments/rl/README.md reports both runs made.
"""

import argparse
import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# pylint: disable=wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from jax.flatten_util import ravel_pytree

from lm import config as config_lib
from lm.data import tasks as tasks_lib
from lm.data import tokenizer as tokenizer_lib
from lm.infer import chat as chat_lib
from lm.model import Decoder
from lm.parallel import mesh as mesh_lib
from lm.parallel import rules as rules_lib
from lm.rl import losses
from lm.rl import rewards as rewards_lib
from lm.rl import rollout as rollout_lib
from lm.train import checkpoint as checkpoint_lib
from lm.train import state as state_lib

PROMPT_LEN, NEW_TOKENS = 24, 8


def cosine(a: np.ndarray, b: np.ndarray) -> float:
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--start", default="/work/runs/sft_tasks")
  parser.add_argument("--task", default="count")
  parser.add_argument("--prompts", type=int, default=128)
  parser.add_argument("--groups", default="8,16,64")
  parser.add_argument("--batches", type=int, default=4)
  args = parser.parse_args()
  config = ml_collections.ConfigDict(json.loads(
      (epath.Path(args.start) / "config.json").read_text()))
  model_config = config_lib.model_config(config).replace(remat="none")
  tokenizer = tokenizer_lib.for_workdir(config.data.tokenizer, args.start)
  mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  model = Decoder(model_config)
  abstract, shardings = state_lib.abstract_params_and_shardings(model, mesh,
                                                                rules_lib.DEFAULT_RULES)
  params = nn.unbox(checkpoint_lib.restore_params(args.start, abstract, shardings))
  apply = lambda p, t, **kw: model.apply({"params": p}, t, **kw)
  stop = tuple(chat_lib.stop_token_ids(tokenizer))
  end = stop[-1]

  records = tasks_lib.records("train", tasks=[args.task])
  n = args.prompts
  batches = [records[i * n:(i + 1) * n] for i in range(args.batches)]

  def prompt_rows(batch):
    return rollout_lib.left_pad([chat_lib.render(tokenizer, r["messages"][:-1]) for r in batch],
                                PROMPT_LEN)

  def make_grad(loss_fn):
    def loss(p, rows, mask, weights):
      logps = rollout_lib.completion_logprobs(apply, p, rows, PROMPT_LEN)       # [B, N]
      return loss_fn(logps, mask, weights)
    return jax.jit(jax.grad(loss))

  def grad_of(grad_fn, rows, mask, weights):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules_lib.DEFAULT_RULES):
      return np.asarray(ravel_pytree(grad_fn(params, rows, mask, weights))[0], np.float64)

  def grpo_loss(logps, mask, advantages):
    pieces = losses.grpo_per_token(logps, jax.lax.stop_gradient(logps), None, advantages)
    total, weight = losses.aggregate(pieces["loss"], mask, "token", NEW_TOKENS)
    return total / weight

  def sft_loss(logps, mask, weights):
    del weights
    return -jnp.sum(logps * mask) / jnp.sum(mask)

  grpo_grad_fn, sft_grad_fn = make_grad(grpo_loss), make_grad(sft_loss)
  generate = {}

  def grpo_grad(batch, group, seed):
    prompts, start = prompt_rows(batch)
    prompts, start = np.repeat(prompts, group, 0), np.repeat(start, group, 0)
    settings = rollout_lib.Settings(max_new_tokens=NEW_TOKENS, stop_ids=stop, layout="unrolled")
    if settings not in generate:
      generate[settings] = jax.jit(functools.partial(rollout_lib.generate, model_config,
                                                     settings))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules_lib.DEFAULT_RULES):
      out = generate[settings](params, prompts, start, jax.random.key(seed))
    host = jax.device_get({"tokens": out.tokens, "length": out.length, "reason": out.reason})
    texts = rollout_lib.completion_texts(tokenizer, host["tokens"][:, PROMPT_LEN:],
                                         host["length"], host["reason"])
    reward = np.asarray(rewards_lib.exact([], texts, [r for r in batch for _ in range(group)]),
                        np.float32)
    advantages = np.asarray(losses.group_advantages(jnp.asarray(reward), group), np.float32)
    grad = grad_of(grpo_grad_fn, rollout_lib.training_rows(out), out.mask, advantages)
    zero_std = float((reward.reshape(-1, group).std(1) == 0).mean())
    return grad, float(reward.mean()), zero_std

  def sft_grad(batch):
    prompts, start = prompt_rows(batch)
    answers = np.zeros((len(batch), NEW_TOKENS), np.int32)
    mask = np.zeros((len(batch), NEW_TOKENS), np.float32)
    for i, r in enumerate(batch):
      ids = tokenizer.encode(r["answer"]) + [end]
      answers[i, :len(ids)], mask[i, :len(ids)] = ids, 1.0
    out = rollout_lib.Rollout(tokens=jnp.asarray(np.concatenate([prompts, answers], 1)),
                              start=jnp.asarray(start), logprobs=jnp.asarray(mask),
                              length=jnp.asarray(mask.sum(1).astype(np.int32)),
                              reason=jnp.zeros(len(batch), jnp.int32), prompt_len=PROMPT_LEN)
    return grad_of(sft_grad_fn, rollout_lib.training_rows(out), jnp.asarray(mask),
                   jnp.zeros(len(batch), jnp.float32))

  sft = [sft_grad(b) for b in batches]
  print(f"{args.task}, {n} questions per batch, {args.batches} disjoint batches")
  print(f"sft  A vs sft  B: {np.mean([cosine(sft[0], s) for s in sft[1:]]):+.3f}")
  for group in [int(g) for g in args.groups.split(",")]:
    grpo = [grpo_grad(b, group, seed=i) for i, b in enumerate(batches)]
    again = grpo_grad(batches[0], group, seed=1000)[0]
    grads = [g for g, _, _ in grpo]
    mean_grpo, mean_sft = np.mean(grads, 0), np.mean(sft, 0)
    print(f"G={group}: sampled exact match {np.mean([r for _, r, _ in grpo]):.3f}, groups with "
          f"one reward {np.mean([z for _, _, z in grpo]):.2f}")
    print("  per batch: reward " + " ".join(f"{r:.3f}" for _, r, _ in grpo)
          + " | |grpo| " + " ".join(f"{np.linalg.norm(g):.3g}" for g in grads)
          + " | |sft| " + " ".join(f"{np.linalg.norm(s):.3g}" for s in sft)
          + " | cos(grpo, sft) same batch " + " ".join(f"{cosine(g, s):+.3f}"
                                                        for g, s in zip(grads, sft)))
    print(f"  grpo A vs grpo A': {cosine(grads[0], again):+.3f}")
    print(f"  grpo A vs grpo B : {np.mean([cosine(grads[0], g) for g in grads[1:]]):+.3f}")
    print(f"  grpo A vs sft  A : {np.mean([cosine(g, s) for g, s in zip(grads, sft)]):+.3f}")
    print(f"  grpo A vs sft  B : {np.mean([cosine(grads[0], s) for s in sft[1:]]):+.3f}")
    print(f"  mean grpo vs mean sft: {cosine(mean_grpo, mean_sft):+.3f}", flush=True)


if __name__ == "__main__":
  main()
