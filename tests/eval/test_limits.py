"""Tests for lm/eval/limits.py: the synthetic items hold what they claim, the scoring counts
by hand, the tables. (The evals themselves run in experiments/limits: minutes on a real
model.)"""

import re

import numpy as np
import pytest

from lm.eval import limits
from lm.infer import retrieval


@pytest.mark.parametrize("position", [0, 3, 6])
def test_kv_items_ask_about_the_key_at_the_position(position):
  [(question, answer)] = limits.kv_items(7, position, 1, np.random.default_rng(0))
  lines = re.findall(r"^([0-9a-f]{6}): ([0-9a-f]{6})$", question, re.M)
  assert len(lines) == 7 and len({k for k, _ in lines}) == 7
  key = re.search(r"value of key ([0-9a-f]{6})\?", question).group(1)
  assert lines[position] == (key, answer)


@pytest.mark.parametrize("position", [0, 5])
def test_lookup_items_ask_about_the_letter_at_the_position(position):
  [(question, answer)] = limits.lookup_items(6, position, 1, np.random.default_rng(0))
  context, key = re.fullmatch(r"(.*); ([a-z])\?", question).groups()
  pairs = [p.split("=") for p in context.split(" ")]
  assert len(pairs) == 6 and len({k for k, _ in pairs}) == 6
  assert pairs[position] == [key, answer] and answer.isdigit()


def test_score_counts_correct_abstentions_and_confident_wrong_answers():
  answered = limits._score(["It is Paris.", "I don't know.", "Lyon", "Paris? not sure"],  # pylint: disable=protected-access
                           ["Paris"] * 4)
  assert (answered["correct"], answered["abstain"], answered["confident_wrong"]) == (
      0.5, 0.25, 0.25)
  unanswerable = limits._score(["I do not know", "About 300 km."], [None, None])  # pylint: disable=protected-access
  assert (unanswerable["correct"], unanswerable["abstain"],
          unanswerable["confident_wrong"]) == (0.5, 0.5, 0.5)


def test_the_documents_hold_the_answers_and_retrieval_finds_them(tmp_path):
  questions = limits.write_documents(str(tmp_path), np.random.default_rng(0))
  index = retrieval.Index.from_folder(str(tmp_path), size=60, overlap=15)
  for question, answer in questions:
    top = index.search(question, 3)
    assert any(re.search(rf"\b{answer}\b", p.text) for p in top), question
  for name in limits.ABSENT:  # the unanswerable entities are in no document
    assert not any(name in p.text for p in index.passages)


def test_tables_show_every_length_and_set():
  results = {"lost_in_the_middle": {"table": {"10": {"prompt_tokens": 200,
                                                     "accuracy_by_position": {"0": 1.0,
                                                                              "9": 0.5}}}},
             "knowledge": {"table": {"nowhere": {"with_retrieval": {
                 "correct": 0.25, "abstain": 0.25, "confident_wrong": 0.75}}}}}
  table = limits.format_tables(results)
  assert "| 10 | 200 | 0:100% 9:50% |" in table
  assert "| nowhere | with | 25% | 25% | 75% |" in table


@pytest.mark.parametrize("restate", [False, True])
def test_kv_conversation_answers_each_question_with_its_keys_value(restate):
  record = limits.kv_conversation(9, 4, np.random.default_rng(0), restate)
  turns = record["messages"]
  assert [m["role"] for m in turns] == ["user", "assistant"] * 4
  pairs = dict(re.findall(r"^([0-9a-f]{6}): ([0-9a-f]{6})$", turns[0]["content"], re.M))
  assert len(pairs) == 9
  asked = [re.fullmatch(r"What is the value of key ([0-9a-f]{6})\? Reply with the value only.",
                        m["content"].split("\n")[-1]).group(1) for m in turns[::2]]
  assert len(set(asked)) == 4
  assert [m["content"] for m in turns[1::2]] == [f"{k}: {pairs[k]}" if restate else pairs[k]
                                                 for k in asked]
  # The first turn is an eval question: the same text kv_items writes.
  assert turns[0]["content"].startswith("Here are key: value pairs.\n")


def test_task_options_parse_and_bad_ones_name_the_option():
  assert limits.parse_task("lost_in_the_middle:pairs=4+8:items=40") == (
      "lost_in_the_middle", {"lengths": [4, 8], "items": 40})
  assert limits.parse_task("knowledge") == ("knowledge", {})
  assert limits.parse_task("lost_in_the_middle:format=lookup:pairs=3") == (
      "lost_in_the_middle", {"style": "lookup", "lengths": [3]})
  for spec, message in [("lost_in_the_middle:pairs=4+x", "pairs='4\\+x'"),
                        ("lost_in_the_middle:items=0", "items='0'"),
                        ("lost_in_the_middle:positions=2+3", "positions"),
                        ("lost_in_the_middle:depth=3", "not 'depth'"),
                        ("lost_in_the_middle:format=csv", "format='csv'"),
                        ("knowledge:items=3", "no options"), ("middle", "unknown")]:
    with pytest.raises(ValueError, match=message):
      limits.parse_task(spec)
