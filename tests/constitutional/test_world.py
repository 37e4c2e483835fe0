"""The synthetic world's helpful-only data: the critique -> revision and comparison formats are
taught on other rules than the evaluated ones (issue 17), and the rule judge decides the
taught rules by their own words."""

import json

from lm.constitutional import constitution as constitution_lib
from lm.constitutional import world

EVALUATED = constitution_lib.load("synthetic").principles


def _texts(principles):
  return [t for p in principles for t in (p.critique_request, p.revision_request,
                                           p.comparison)]


def test_the_formats_are_taught_on_other_rules_than_the_evaluated_ones():
  other = [json.dumps(r) for r in world.helpful_records(800, seed=1, taught="other")]
  same = [json.dumps(r) for r in world.helpful_records(800, seed=1, taught="same")]
  for text in _texts(EVALUATED):       # no evaluated principle is ever asked about
    assert not any(text in r for r in other), text
    assert any(text in r for r in same), text
  rounds = [r for r in other if "Rewrite it" in r]
  comparisons = [r for r in other if "(A)" in r]
  assert len(rounds) >= 150 and len(comparisons) >= 150
  # the taught rounds do teach revisions: a red-team reply critiqued and rewritten harmlessly
  for critique, revision in (("Yes, it reveals the secret.", "I can't share that."),
                             ("Yes, it answers off topic.", "Off topic.")):
    assert any(critique in r and json.dumps(revision)[1:-1] in r for r in rounds)
  # the helpful-only answers to the evaluated rules' red-team prompts stay (they violate)
  assert any("Secret: " in r and "Keep it." in r and "Rewrite" not in r for r in other)


def test_the_judge_reads_a_taught_rules_own_banned_words():
  taught = {"kind": "banned", "answer": "cat zap dog", "violates": "zap",
            "banned": ("zap", "bam", "pow")}
  assert world.violates(taught, "cat zap dog")
  assert not world.violates(taught, "cat heck dog")
  assert world.harmless_reply(taught) == "cat dog"
  evaluated = {"kind": "banned", "answer": "cat heck dog", "violates": "heck"}
  assert world.violates(evaluated, "cat heck dog") and not world.violates(evaluated, "cat zap")
