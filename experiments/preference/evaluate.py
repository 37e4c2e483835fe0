"""The true reward of a policy's greedy replies to the held-out prompts of the preference
world, and its KL divergence from a reference policy.

    python experiments/preference/evaluate.py POLICY_WORKDIR [REFERENCE_WORKDIR]

Prompts: the held-out questions of the built-in tasks (lm/data/tasks.py, 50 per task), never
seen in training. Reports, per task and overall, the mean true reward of the greedy reply
(lm/data/preferences.true_reward: +2 correct, -0.1 per extra word, -3 for a banned word),
exact match, and how often the reply starts with the right answer (`answer_right`). KL(policy || reference): one sampled reply (temperature 1) per prompt, the mean
over prompts of log pi(reply) - log ref(reply), summed over the reply's tokens (an unbiased
Monte Carlo estimate). With the policy's own held-out metrics (the last `eval_*` line of its
metrics.jsonl: a DPO run's rewards/accuracies, margins, logps) beside them. The true reward
is used here only, never in training.
"""

import json
import os
import sys

import numpy as np

from lm.data import preferences, tasks
from lm.eval import exact_match
from lm.infer import chat as chat_lib
from lm.infer.engine import Engine
from lm.infer.sampling import SamplingParams


MAX_NEW_TOKENS = 48  # room for the longest answer with a pleasantry and a banned word


def evaluate(policy_dir: str, reference_dir: str | None = None) -> dict:
  policy = Engine.from_workdir(policy_dir)
  records = tasks.records("eval")
  replies = exact_match.replies(policy, records, max_new_tokens=MAX_NEW_TOKENS)
  out: dict = {"tasks": {}}
  for name in tasks.TASK_NAMES:
    mine = [(r, reply) for r, reply in zip(records, replies) if r["task"] == name]
    out["tasks"][name] = {
        "true_reward": float(np.mean([preferences.true_reward(r["answer"], y) for r, y in mine])),
        "exact_match": float(np.mean([exact_match.is_correct(y, r["answer"]) for r, y in mine])),
        "answer_right": float(np.mean([preferences.answers(r["answer"], y) for r, y in mine]))}
  out["true_reward"] = float(np.mean([preferences.true_reward(r["answer"], y)
                                      for r, y in zip(records, replies)]))
  out["exact_match"] = float(np.mean([exact_match.is_correct(y, r["answer"])
                                      for r, y in zip(records, replies)]))
  out["answer_right"] = float(np.mean([preferences.answers(r["answer"], y)
                                       for r, y in zip(records, replies)]))
  out["examples"] = [[r["messages"][0]["content"], y] for r, y in zip(records[::50], replies[::50])]
  metrics_path = os.path.join(policy_dir, "metrics.jsonl")
  if os.path.exists(metrics_path):
    with open(metrics_path, encoding="utf-8") as f:
      held_out = [r for r in map(json.loads, filter(str.strip, f)) if "eval_loss" in r]
    if held_out:
      out["held_out_metrics"] = {k: v for k, v in held_out[-1].items()
                                 if k.startswith("eval_") or k == "step"}
  if reference_dir:
    reference = Engine.from_workdir(reference_dir)
    tokenizer = policy.tokenizer
    prompts = [chat_lib.render(tokenizer, exact_match.prompt_messages(r)) for r in records]
    sampled = policy.generate(prompts, max_new_tokens=MAX_NEW_TOKENS, sampling=SamplingParams(temperature=1.0),
                              seed=list(range(len(prompts))),
                              stop_token_ids=chat_lib.stop_token_ids(tokenizer))
    ref_logprobs = reference.score(prompts, [c.tokens for c in sampled])
    out["kl_to_reference"] = float(np.mean([np.sum(c.logprobs) - np.sum(r)
                                            for c, r in zip(sampled, ref_logprobs)]))
  return out


if __name__ == "__main__":
  print(json.dumps(evaluate(*sys.argv[1:3]), indent=1))
