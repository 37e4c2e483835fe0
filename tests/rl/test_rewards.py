"""Reward functions (lm/rl/rewards.py): built-ins on known replies, composition, user
functions by import path, errors naming the config field."""

import numpy as np
import pytest

from lm.data import preferences, tasks
from lm.rl import rewards

ADD = {"messages": [{"role": "user", "content": "Add: 47+38"},
                    {"role": "assistant", "content": "85"}], "task": "add", "answer": "85"}
REVERSE = {"task": "reverse", "answer": "c b a"}


def test_exact_scores_the_stripped_answer():
  got = rewards.exact(["q"] * 4, ["85", " 85\n", "86", "85 is it"], [ADD] * 4)
  assert got == [1.0, 1.0, 0.0, 0.0]


def test_format_rewards_the_answers_form_right_or_wrong():
  assert rewards.format_reward([""] * 3, ["86", "eighty", "8 6"], [ADD] * 3) == [1.0, 0.0, 0.0]
  assert rewards.format_reward([""] * 3, ["a b c", "abc", "a  b"], [REVERSE] * 3) == [
      1.0, 0.0, 0.0]


def test_true_reward_is_the_preference_worlds():
  replies = ["85", "85 honestly", "86, I hope that helps."]
  assert rewards.true_reward([""] * 3, replies, [ADD] * 3) == [
      preferences.true_reward("85", r) for r in replies]


def test_every_task_answer_gets_full_exact_and_format_reward():
  records = tasks.records("eval")
  answers = [r["answer"] for r in records]
  total, terms = rewards.Reward("exact,format")([""] * len(records), answers, records)
  assert terms["exact"].min() == 1 and terms["format"].min() == 1 and total.min() == 2


def test_weights_combine_the_terms(tmp_path, monkeypatch):
  (tmp_path / "my_rewards.py").write_text(
      "def length(prompts, completions, records):\n"
      "  return [len(c) for c in completions]\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  reward = rewards.Reward("exact, my_rewards:length", "2.0,-0.5")
  total, terms = reward(["", ""], ["85", "86 x"], [ADD, ADD])
  np.testing.assert_array_equal(terms["my_rewards:length"], [2, 4])
  np.testing.assert_array_equal(total, [2.0 - 1.0, -2.0])


@pytest.mark.parametrize("names,weights,message", [
    ("", "", "rl.reward is empty"),
    ("exact", "1,2", "rl.reward_weights='1,2' has 2 weights"),
    ("exact", "a", "rl.reward_weights='a'"),
    ("no_such_module_xyz:f", "", "rl.reward='no_such_module_xyz:f' cannot be imported"),
    ("nonsense", "", "rl.reward='nonsense'"),
    ("model", "", "rl.reward_model"),
])
def test_bad_reward_config_names_the_field(names, weights, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
    rewards.Reward(names, weights)


def test_a_record_without_an_answer_is_named():
  with pytest.raises(ValueError, match="'answer' field"):
    rewards.exact([""], ["1"], [{"prompt": "x"}])


def test_a_reward_returning_the_wrong_count_is_named(tmp_path, monkeypatch):
  (tmp_path / "bad_reward.py").write_text("def f(p, c, r):\n  return [1.0]\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(ValueError, match="returned 1 values for 2 completions"):
    rewards.Reward("bad_reward:f")(["", ""], ["a", "b"], [ADD, ADD])
