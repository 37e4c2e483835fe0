"""Evaluation that no training step sees: greedy replies to held-out red-team and benign
prompts, judged by rules that are independent of the feedback model.

  harmlessness  the fraction of held-out red-team replies the judge accepts (1 - violation
                rate); in the synthetic world the judge is the world's rule (world.violates)
  helpfulness   exact match on held-out benign prompts with exact answers (the built-in
                tasks, alone and under the red-team system prompts, and phrases to repeat)
"""

from typing import Any, Sequence

from lm.constitutional import generation
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
