"""Evaluation that no training step sees: greedy replies to held-out red-team and benign
prompts, judged by rules that are independent of the feedback model.

  harmlessness  the fraction of held-out red-team replies the judge accepts (1 - violation
                rate); in the synthetic world the judge is the world's rule (world.violates)
  helpfulness   exact match on held-out benign prompts with exact answers (the built-in
                tasks, alone and under the red-team system prompts, and phrases to repeat)

For a real model (`rubric_eval`) the judge is the written rubric of rubric.py, and the
feedback model's comparisons against the helpful-only model's replies are a secondary
signal, reported as such: a model trained on that feedback model's labels is partly graded
by the grader it learned from.
"""

from typing import Any, Sequence

from lm.constitutional import generation
from lm.constitutional import labels as labels_lib
from lm.constitutional import prompts as prompts_lib
from lm.constitutional import rubric
from lm.constitutional import world
from lm.infer.sampling import GREEDY

EXAMPLES = 4


def world_eval(engine: Any, red_team: Sequence[dict], benign: Sequence[dict],
               max_new_tokens: int = 32, batch_size: int = 64) -> dict:
  """Violation rate per kind and overall, exact match on the benign prompts, and examples."""
  red_replies = generation.replies(engine, [r["messages"] for r in red_team], max_new_tokens,
                                   GREEDY, [0] * len(red_team), batch_size)
  benign_replies = generation.replies(engine, [r["messages"] for r in benign], max_new_tokens,
                                      GREEDY, [0] * len(benign), batch_size)
  kinds: dict[str, list[bool]] = {}
  examples = []
  for record, reply in zip(red_team, red_replies):
    bad = world.violates(record, reply)
    kinds.setdefault(record["kind"], []).append(bad)
    if len(examples) < EXAMPLES * len(world.KINDS) and sum(
        e["kind"] == record["kind"] for e in examples) < EXAMPLES:
      examples.append({"kind": record["kind"], "prompt": record["messages"], "reply": reply,
                       "violates": bad})
  correct = [reply == r["answer"] for r, reply in zip(benign, benign_replies)]
  violations = [v for values in kinds.values() for v in values]
  return {
      "violation_rate": sum(violations) / len(violations),
      "harmlessness": 1 - sum(violations) / len(violations),
      "violation_rate_by_kind": {k: sum(v) / len(v) for k, v in sorted(kinds.items())},
      "exact_match": sum(correct) / len(correct),
      "red_team_prompts": len(red_team), "benign_prompts": len(benign),
      "examples": examples,
      "benign_examples": [{"prompt": r["messages"], "answer": r["answer"], "reply": reply}
                          for r, reply in list(zip(benign, benign_replies))[:EXAMPLES]],
  }


def format_table(results: dict[str, dict]) -> str:
  """A text table: one row per model."""
  lines = [f"{'model':<22} {'violation':>9} {'harmless':>9} {'exact match':>11}  by kind",
           "-" * 78]
  for name, r in results.items():
    if r is None:
      lines.append(f"{name:<22} {'(skipped)':>9}")
      continue
    kinds = " ".join(f"{k} {v:.0%}" for k, v in r.get("violation_rate_by_kind", {}).items())
    lines.append(f"{name:<22} {r['violation_rate']:>9.1%} {r['harmlessness']:>9.1%} "
                 f"{r['exact_match']:>11.1%}  {kinds}")
  return "\n".join(lines)


def feedback_preference(feedback: Any, constitution: Any, records: Sequence[dict],
                        replies: Sequence[str], reference: Sequence[str], batch_size: int = 32
                        ) -> list[float]:
  """Per red-team record, the feedback model's probability that `replies[i]` is less harmful
  than `reference[i]` (the constitution's "harm" comparison); the reply is option (A) on even
  records and (B) on odd ones, so a bias for one letter cancels over the set (one order per
  record: scoring both would double the cost). Equal replies get 0.5 unscored; benign
  records None (not asked: the rubric's exact answers judge helpfulness)."""
  conversations, rows = [], []
  principle = constitution.principle("harm")
  out: list[float | None] = [None] * len(records)
  for i, (record, reply, ref) in enumerate(zip(records, replies, reference)):
    if record["category"] not in rubric.RED_TEAM:
      continue
    if reply == ref:
      out[i] = 0.5
      continue
    a, b = (reply, ref) if i % 2 == 0 else (ref, reply)
    conversations.append(prompts_lib.comparison_messages(rubric.messages(record), a, b,
                                                         principle))
    rows.append(i)
  if conversations:
    p = labels_lib.option_probabilities(generation.option_logprobs(
        feedback, conversations, prompts_lib.OPTIONS, batch_size))  # [rows, 2]
    for k, i in enumerate(rows):
      out[i] = float(p[k, i % 2])
  return out


def rubric_eval(engine: Any, records: Sequence[dict], max_new_tokens: int = 64,
                batch_size: int = 32, feedback: Any = None, constitution: Any = None,
                reference: Sequence[str] | None = None) -> dict:
  """Greedy replies to the held-out rubric records, the rubric's numbers (rubric.summarize),
  and with `feedback` and the helpful-only model's `reference` replies, the feedback model's
  mean preference for this model's red-team replies (secondary signal)."""
  replies = generation.replies(engine, [rubric.messages(r) for r in records], max_new_tokens,
                               GREEDY, [0] * len(records), batch_size)
  out = rubric.summarize(records, replies)
  if feedback is not None and reference is not None:
    wins = feedback_preference(feedback, constitution, records, replies, reference, batch_size)
    red = [w for w in wins if w is not None]
    out["feedback_harmless_vs_helpful_only"] = sum(red) / len(red) if red else None
    for verdict, w in zip(out["verdicts"], wins):
      if w is not None:
        verdict["feedback_vs_helpful_only"] = w
  return out


def rejudge(records: Sequence[dict], result: dict) -> dict:
  """A stored rubric_eval result judged again by the rubric as it is now (the replies are
  the costly part; judging them is cheap), keeping the feedback model's numbers."""
  out = rubric.summarize(records, [v["reply"] for v in result["verdicts"]])
  for verdict, old in zip(out["verdicts"], result["verdicts"]):
    if "feedback_vs_helpful_only" in old:
      verdict["feedback_vs_helpful_only"] = old["feedback_vs_helpful_only"]
  if "feedback_harmless_vs_helpful_only" in result:
    out["feedback_harmless_vs_helpful_only"] = result["feedback_harmless_vs_helpful_only"]
  return out


def format_rubric_table(results: dict[str, dict]) -> str:
  """A text table of rubric_eval results: one row per model."""
  def pct(v):
    return "-" if v is None else f"{v:.0%}"
  lines = [f"{'model':<18} {'harmless':>8} {'refusal':>7} {'helpful':>7} {'over-ref':>8} "
           f"{'FM harm':>7}  violations by category", "-" * 88]
  for name, r in results.items():
    if r is None:
      lines.append(f"{name:<18} {'(skipped)':>8}")
      continue
    kinds = " ".join(f"{k} {pct(v)}" for k, v in r["violation_rate_by_category"].items())
    lines.append(f"{name:<18} {pct(r['harmlessness']):>8} {pct(r['refusal_rate']):>7} "
                 f"{pct(r['helpfulness']):>7} {pct(r['over_refusal']):>8} "
                 f"{pct(r.get('feedback_harmless_vs_helpful_only')):>7}  {kinds}")
  return "\n".join(lines)
