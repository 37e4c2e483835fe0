"""Rewards for tests of the RL stages (`rl.reward="tests.stages.rl_rewards:letters"`): `letters`
is dense enough that a random tiny model's completions differ in it, so every step has a
gradient; `true_or_block` stops a run at a known step for a kill -9 test."""

import os
import threading

from lm.rl import rewards


def letters(prompts, completions, records):
  del prompts, records
  return [sum(ch.isalpha() for ch in c) / max(len(c), 1) for c in completions]


_calls = 0


def true_or_block(prompts, completions, records):
  """builtin:preferences' true reward; with LM_TEST_BLOCK_AT=N in the environment, the Nth
  call of the process (a step's scoring) never returns: a kill -9 test then kills the run at
  a known step, not wherever a polling loop happens to catch it."""
  global _calls  # pylint: disable=global-statement
  _calls += 1
  if _calls == int(os.environ.get("LM_TEST_BLOCK_AT", "0")):
    threading.Event().wait()
  return rewards.true_reward(prompts, completions, records)
