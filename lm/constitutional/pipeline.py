"""`lm constitutional --config=configs/cai/x.py --workdir=runs/cai`: the whole of Constitutional
AI, each step in its own sub-workdir, each skippable (`cai.skip`) and resumable:

  helpful           (synthetic world, no cai.policy) the helpful-only model, trained here
  critique          initial replies, critique -> revision rounds     critique/records.jsonl
                    and SL-CAI's training data (finals + helpfulness) critique/sft.jsonl
  sft               SL-CAI: SFT of the helpful model on that data    sft/
  label             two samples per prompt from the SL-CAI model, AI-feedback soft labels
                                                                     label/records.jsonl
  preference_model  a reward model on the labels (+ helpfulness preferences)  preference_model/
  rl                the SL-CAI model optimized against it (GRPO)     rl/
  dpo               the shortcut: DPO of the SL-CAI model on the labelled pairs  dpo/
  evaluate          held-out red-team and benign prompts, rule-based judge  evaluate/

A step that finished wrote `<step>/done.json` (its summary and wall time) and is not run
again; a step killed midway resumes: the data commands skip the records already written,
the training steps restore their newest checkpoint. A summary table ends every run.
"""

import json
import os
import time
from typing import Any, Callable

from absl import logging
import ml_collections

from lm.constitutional import config as cai_config
from lm.constitutional import constitution as constitution_lib
from lm.constitutional import critique as critique_lib
from lm.constitutional import evaluate as evaluate_lib
from lm.constitutional import labels as labels_lib
from lm.constitutional import records as records_lib
from lm.constitutional import world


def _write_jsonl(path: str, records) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
  os.replace(tmp, path)
  return path


def red_team_prompts(config: ml_collections.ConfigDict, split: str, count: int
                     ) -> list[list[dict]]:
  """Prompts (message lists) of cai.prompts: the world's red-team ones, or a JSONL file's."""
  cai = config.cai
  if cai.prompts == "world":
    return [r["messages"] for r in world.red_team(split, count, seed=cai.seed)]
  if split == "eval":
    raise ValueError("held-out red-team prompts come from the synthetic world only; for a real "
                     "model, evaluate with experiments/constitutional/ (see its README)")
  if not os.path.exists(cai.prompts):
    raise FileNotFoundError(f"cai.prompts={cai.prompts!r}: no such file")
  out = []
  with open(cai.prompts, encoding="utf-8") as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      prompt = json.loads(line).get("prompt")
      if isinstance(prompt, str) and prompt:
        out.append([{"role": "user", "content": prompt}])
      elif isinstance(prompt, list) and prompt:
        out.append(prompt)
      else:
        raise ValueError(f"{cai.prompts}:{line_number}: field 'prompt' must be a string or "
                         "a list of messages")
  if len(out) < count:
    logging.warning("cai.prompts=%s holds %d prompts (cai.num_prompts=%d)", cai.prompts,
                    len(out), count)
  return out[:count]


def helpful_records(config: ml_collections.ConfigDict, count: int) -> list[dict]:
  """Helpfulness chat records (with their answers) of cai.helpful_data's training split."""
  cai = config.cai
  if cai.helpful_data == "world":
    return [world.with_reply(r, r["answer"]) for r in world.benign("train", count, cai.seed)]
  # pylint: disable=import-outside-toplevel
  from lm.data import sources
  data = config.sft.data.copy_and_resolve_references()
  data.unlock()
  data.source = cai.helpful_data
  return list(sources.open_source(data, ("messages",)).train)[:count]


class Pipeline:
  """The steps of one workdir; `run` does what is left of them."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    cai_config.validate(config)
    self.config, self.workdir = config, workdir
    self.cai = config.cai
    self.skip = cai_config.skipped(config)
    self.constitution = constitution_lib.load(self.cai.constitution)
    if "rl" not in self.skip and not _has_stage("grpo"):
      logging.warning("no GRPO stage in this tree (lm/stages): step rl is skipped")
      self.skip.add("rl")
    self.summaries: dict[str, Any] = {}
    self._engines: dict[str, Any] = {}

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  @property
  def policy(self) -> str:
    return self.cai.policy or self.path("helpful", "model")

  @property
  def feedback(self) -> str:
    return self.cai.feedback_model or self.policy

  def done(self, step: str) -> bool:
    return os.path.exists(self.path(step, "done.json"))

  def _finish(self, step: str, summary: dict, start: float) -> dict:
    summary = dict(summary, wall_seconds=round(time.time() - start, 1))
    with open(self.path(step, "done.json"), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=1)
    return summary

  def _train(self, step: str, source: str, init_from: str, **overrides) -> dict:
    """Trains the step's config on the JSONL file `source`, from `init_from`'s model;
    `overrides` set "section.field" values (e.g. rl.reward_model)."""
    # pylint: disable=import-outside-toplevel
    from lm import stages
    config = self.config[step].copy_and_resolve_references()
    config.unlock()
    config.init_from = init_from if step != "helpful" else config.init_from
    config.data.source = f"jsonl:{source}"
    for key, value in overrides.items():
      section, field = key.split(".")
      config[section][field] = value
    config.lock()
    metrics = stages.train_and_evaluate(config, self.path(step, "model"))
    return {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}

  # -- Steps ------------------------------------------------------------------------------

  def step_helpful(self) -> dict:
    if self.cai.policy:
      return {"note": f"cai.policy={self.cai.policy} given: not trained here"}
    data = self.path("helpful", "data.jsonl")
    if not os.path.exists(data):
      _write_jsonl(data, world.helpful_records(self.cai.world_records, seed=self.cai.seed,
                                               taught=self.cai.world_taught))
    return {"metrics": self._train("helpful", data, "")}

  def _engine(self, workdir: str):
    """The engine of `workdir`'s model, built once per run (its programs compile once)."""
    from lm.infer.engine import Engine  # pylint: disable=import-outside-toplevel
    if workdir not in self._engines:
      if not os.path.exists(os.path.join(workdir, "config.json")):
        raise FileNotFoundError(f"{workdir}: no model there (run the step that trains it, or "
                                "set cai.policy)")
      self._engines[workdir] = Engine.from_workdir(workdir)
    return self._engines[workdir]

  def step_critique(self) -> dict:
    prompts = red_team_prompts(self.config, "train", self.cai.num_prompts)
    records = critique_lib.run(self._engine(self.policy), self.constitution, prompts,
                               self.path("critique", "records.jsonl"),
                               critique_lib.Settings.from_config(self.cai))
    helpful = helpful_records(self.config, int(len(records) * self.cai.helpful_ratio) + 1)
    sft = critique_lib.sft_records(records, helpful, self.cai.helpful_ratio, self.cai.seed)
    _write_jsonl(self.path("critique", "sft.jsonl"), sft)
    changed = sum(r["final"] != r["initial"] for r in records)
    summary = {"prompts": len(records), "revised": changed, "sft_records": len(sft)}
    if self.cai.prompts == "world":
      held = world.red_team("train", self.cai.num_prompts, seed=self.cai.seed)
      summary["initial_violation_rate"] = sum(
          world.violates(h, r["initial"]) for h, r in zip(held, records)) / len(records)
      summary["final_violation_rate"] = sum(
          world.violates(h, r["final"]) for h, r in zip(held, records)) / len(records)
    return summary

  def step_sft(self) -> dict:
    return {"metrics": self._train("sft", self.path("critique", "sft.jsonl"), self.policy)}

  def step_label(self) -> dict:
    cai = self.cai
    count = cai.num_prompts + cai.label_prompts
    prompts = self._label_prompts()
    policy = self._engine(self.path("sft", "model") if "sft" not in self.skip else self.policy)
    feedback = self._engine(self.feedback)
    records = labels_lib.run(policy, feedback, self.constitution, prompts,
                             self.path("label", "records.jsonl"),
                             labels_lib.Settings.from_config(cai))
    preference = labels_lib.preference_records(records)
    dpo = labels_lib.dpo_records(records, cai.dpo_min_confidence)
    helpful = self._helpful_preferences(int(round(len(preference) * cai.helpful_pairs_ratio)))
    _write_jsonl(self.path("label", "preference.jsonl"), _shuffled(preference + helpful, cai.seed))
    _write_jsonl(self.path("label", "dpo.jsonl"), _shuffled(dpo + helpful, cai.seed))
    labelled = [r for r in records if "p_chosen" in r]
    summary = {"prompts": len(records), "labelled": len(labelled), "dpo_pairs": len(dpo),
               "helpful_pairs": len(helpful),
               "mean_confidence": (sum(max(r["p_chosen"], 1 - r["p_chosen"]) for r in labelled)
                                   / max(len(labelled), 1))}
    if cai.prompts == "world":
      summary.update(_label_agreement(self.config, records, count))
    return summary

  def _helpful_preferences(self, count: int) -> list[dict]:
    """`count` helpfulness pairs of cai.helpful_preferences ("world", or a data.source)."""
    if not self.cai.helpful_preferences or not count:
      return []
    if self.cai.helpful_preferences == "world":
      return world.helpful_pairs(count, self.cai.seed)
    from lm.data import sources  # pylint: disable=import-outside-toplevel
    data = self.config.preference_model.data.copy_and_resolve_references()
    data.unlock()
    data.source = self.cai.helpful_preferences
    pairs = list(sources.open_source(data, ("prompt", "chosen", "rejected")).train)[:count]
    return [{k: r[k] for k in ("prompt", "chosen", "rejected", "margin", "p_chosen") if k in r}
            for r in pairs]

  def step_preference_model(self) -> dict:
    start = self.path("sft", "model") if "sft" not in self.skip else self.policy
    return {"metrics": self._train("preference_model", self.path("label", "preference.jsonl"),
                                   start)}

  def step_rl(self) -> dict:
    """GRPO of the SL-CAI model with the preference model as its reward, on the labelled
    prompts; each record's assistant turn is the reply its label preferred, the reference
    answer whose likelihood GRPO's held-out evaluation reports."""
    labelled = [r for r in records_lib.read(self.path("label", "records.jsonl"))
                if "p_chosen" in r]
    data = _write_jsonl(self.path("rl", "prompts.jsonl"), [
        {"messages": list(r["prompt"]) + [{"role": "assistant", "content": (
            r["chosen"] if r["p_chosen"] >= 0.5 else r["rejected"])}]} for r in labelled])
    start = self.path("sft", "model") if "sft" not in self.skip else self.policy
    return {"metrics": self._train("rl", data, start, **{
        "rl.reward": "model", "rl.reward_model": self.path("preference_model", "model")})}

  def _label_prompts(self) -> list[list[dict]]:
    cai = self.cai
    prompts = red_team_prompts(self.config, "train", cai.num_prompts + cai.label_prompts)
    return prompts[cai.num_prompts:] if cai.label_prompts else prompts

  def step_dpo(self) -> dict:
    start = self.path("sft", "model") if "sft" not in self.skip else self.policy
    return {"metrics": self._train("dpo", self.path("label", "dpo.jsonl"), start)}

  def models(self) -> dict[str, str | None]:
    """The models the evaluation compares, by the row names of the table."""
    def trained(step):
      return None if step in self.skip else self.path(step, "model")
    return {"helpful-only": self.policy, "SL-CAI": trained("sft"),
            "RL-CAI (PM + RL)": trained("rl"), "RL-CAI (DPO)": trained("dpo")}

  def step_evaluate(self) -> dict:
    if not self.cai.world:
      return self._evaluate_rubric()
    red = world.red_team("eval", self.cai.eval_red_team, seed=self.cai.seed)
    benign = world.benign("eval", self.cai.eval_benign, seed=self.cai.seed)
    results = {}
    for name, workdir in self.models().items():
      path = self.path("evaluate", name.replace(" ", "_").replace("(", "").replace(")", "")
                       .replace("+", "") + ".json")
      if workdir is None:
        results[name] = None
      elif os.path.exists(path):
        with open(path, encoding="utf-8") as f:
          results[name] = json.load(f)
      else:
        results[name] = evaluate_lib.world_eval(self._engine(workdir), red, benign,
                                                self.cai.eval_max_new_tokens)
        with open(path, "w", encoding="utf-8") as f:
          json.dump(results[name], f, indent=1)
    return {"results": results, "table": evaluate_lib.format_table(results)}

  def _evaluate_rubric(self) -> dict:
    """A real model: cai.eval_prompts judged by the rubric (rubric.py); the feedback model's
    comparisons against the helpful-only replies a secondary signal."""
    if not self.cai.eval_prompts:
      return {"note": "cai.eval_prompts is empty: nothing to evaluate a real model on"}
    from lm.constitutional import rubric  # pylint: disable=import-outside-toplevel
    records = rubric.load(self.cai.eval_prompts)
    results, reference = {}, None
    for name, workdir in self.models().items():
      path = self.path("evaluate", name.replace(" ", "_").replace("(", "").replace(")", "")
                       .replace("+", "") + ".json")
      if workdir is None:
        results[name] = None
        continue
      if not os.path.exists(path):
        result = evaluate_lib.rubric_eval(
            self._engine(workdir), records, self.cai.eval_max_new_tokens, self.cai.batch_size,
            self._engine(self.feedback) if reference is not None else None,
            self.constitution, reference)
        with open(path, "w", encoding="utf-8") as f:
          json.dump(result, f, indent=1)
      with open(path, encoding="utf-8") as f:
        results[name] = evaluate_lib.rejudge(records, json.load(f))
      if reference is None:  # the first model, helpful-only: the others are compared to it
        reference = [v["reply"] for v in results[name]["verdicts"]]
    return {"results": results, "table": evaluate_lib.format_rubric_table(results)}

  # -- Running ----------------------------------------------------------------------------

  def run_step(self, step: str) -> dict:
    if self.done(step):
      with open(self.path(step, "done.json"), encoding="utf-8") as f:
        return json.load(f)
    os.makedirs(self.path(step), exist_ok=True)
    start = time.time()
    logging.warning("cai: step %s in %s", step, self.path(step))
    method: Callable[[], dict] = getattr(self, f"step_{step}")
    return self._finish(step, method(), start)

  def run(self, only: str | None = None) -> dict[str, Any]:
    steps = [only] if only else list(cai_config.STEPS)
    for step in steps:
      if step in self.skip and step != only:
        self.summaries[step] = None
        continue
      self.summaries[step] = self.run_step(step)
    return self.summaries


def _shuffled(records: list, seed: int) -> list:
  import numpy as np  # pylint: disable=import-outside-toplevel
  order = np.random.default_rng([seed, 29]).permutation(len(records))
  return [records[i] for i in order]


def _has_stage(name: str) -> bool:
  from lm import stages  # pylint: disable=import-outside-toplevel
  return name in stages.STAGES


def _label_agreement(config: ml_collections.ConfigDict, records: list[dict], count: int
                     ) -> dict:
  """How often the AI label agrees with the world's rule, on pairs where exactly one reply
  violates it (the feedback model's accuracy; training never sees the rule)."""
  cai = config.cai
  held = world.red_team("train", count, seed=cai.seed)
  held = held[cai.num_prompts:] if cai.label_prompts else held
  agree = decided = 0
  for h, r in zip(held, records):
    if "p_chosen" not in r:
      continue
    a_bad, b_bad = world.violates(h, r["chosen"]), world.violates(h, r["rejected"])
    if a_bad != b_bad:
      decided += 1
      agree += (r["p_chosen"] > 0.5) == b_bad
  return {"rule_decided_pairs": decided,
          "label_accuracy_vs_rule": agree / decided if decided else None}


def format_summary(summaries: dict[str, Any]) -> str:
  """The table printed at the end: each step's status, wall time and headline numbers."""
  lines = [f"{'step':<18} {'status':<8} {'wall':>8}  summary", "-" * 78]
  for step in cai_config.STEPS:
    if step not in summaries:
      continue
    s = summaries[step]
    if s is None:
      lines.append(f"{step:<18} {'skipped':<8}")
      continue
    shown = {k: v for k, v in s.items() if k not in ("results", "table", "wall_seconds")}
    metrics = shown.pop("metrics", {})
    shown.update({k: v for k, v in metrics.items()
                  if k in ("loss", "eval_loss", "eval_accuracy", "eval_rewards/accuracies")})
    text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in shown.items())
    lines.append(f"{step:<18} {'done':<8} {s.get('wall_seconds', 0):>7.0f}s  {text}"[:200])
  table = (summaries.get("evaluate") or {}).get("table")
  if table:
    judge = "rule-based judge" if "exact match" in table else (
        "rubric; FM = the feedback model's preference over helpful-only, secondary")
    lines += ["", f"Held-out evaluation ({judge}):", table]
  return "\n".join(lines)
