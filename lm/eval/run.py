"""`lm eval`: every measurement of a workdir's model in one results dict, a JSON file and a
table.

    results = run.evaluate(engine, tasks=["add", "sort"], documents=docs, source="builtin:stdlib")
    print(run.format_table(results)); run.write_results(results, "runs/x/eval_results.json")
"""

import json
import time
from typing import Any, Iterable, Sequence

from etils import epath
import ml_collections

from lm.data import tasks as tasks_lib
from lm.eval import choice
from lm.eval import exact_match
from lm.eval import perplexity

MAX_DOCUMENTS = 32        # held-out documents of the text source measured
MAX_DOCUMENT_CHARS = 4096  # of each, so one long document does not dominate the time


def held_out_documents(data: ml_collections.ConfigDict, source: str,
              max_documents: int = MAX_DOCUMENTS) -> list[str]:
  """The first held-out documents of `source` (a data.source string), opened with the
  workdir's other data settings (cache_dir, eval_every_nth, ...), each cut to
  MAX_DOCUMENT_CHARS."""
  from lm.data import sources  # pylint: disable=import-outside-toplevel
  data = ml_collections.ConfigDict(data.to_dict())
  data.source = source
  held_out = sources.open_source(data).eval
  out = []
  for i in range(min(len(held_out), max_documents)):
    text = held_out[i]
    if not isinstance(text, str):
      raise ValueError(f"--source={source} yields records, not text: perplexity needs a text "
                       "source (e.g. builtin:stdlib, text:<glob>)")
    out.append(text[:MAX_DOCUMENT_CHARS])
  return out


def evaluate(engine: Any, tasks: Sequence[str] | None = None,
             documents: Iterable[str] | None = None, source: str | None = None,
             seed: int = 0, batch_size: int = 64) -> dict:
  """Exact match and multiple choice on the held-out built-in tasks (`tasks`; None: all of
  them), and perplexity on `documents` when given (named `source` in the results)."""
  tasks = tasks_lib.check_tasks(tasks)
  records = tasks_lib.records("eval", seed=seed, tasks=tasks)
  results: dict = {"model": getattr(engine, "name", "lm"), "seed": seed, "tasks": list(tasks)}
  start = time.perf_counter()
  replies = exact_match.replies(engine, records, batch_size)
  results["exact_match"] = exact_match.score(records, replies)
  results["exact_match_seconds"] = time.perf_counter() - start
  start = time.perf_counter()
  items = choice.items_from_records(records, seed=seed)
  results["multiple_choice"] = choice.score(items, choice.option_logprobs(engine, items,
                                                                          batch_size))
  results["multiple_choice_seconds"] = time.perf_counter() - start
  for key in ("exact_match", "multiple_choice"):
    per_task = results[key]
    results[f"{key}_mean"] = sum(t["accuracy"] for t in per_task.values()) / len(per_task)
  if documents is not None:
    start = time.perf_counter()
    results["perplexity"] = {"source": source, **perplexity.evaluate(engine, documents,
                                                                      batch_size)}
    results["perplexity_seconds"] = time.perf_counter() - start
  return results


def format_table(results: dict) -> str:
  """Per task exact match and multiple-choice accuracy, their means, then perplexity."""
  def cell(result: dict) -> str:
    return f"{result['accuracy']:>7.1%} {result['correct']:>4}/{result['total']:<4}"

  lines = [f"{'task':<10} {'exact match':>17} {'multiple choice':>17}"]
  for task in results["tasks"]:
    lines.append(f"{task:<10} {cell(results['exact_match'][task])} "
                 f"{cell(results['multiple_choice'][task])}")
  lines.append(f"{'mean':<10} {results['exact_match_mean']:>7.1%}{'':>10} "
               f"{results['multiple_choice_mean']:>7.1%}")
  if "perplexity" in results:
    p = results["perplexity"]
    lines.append(f"\n{p['source']}: {p['documents']} held-out documents, {p['tokens']} tokens: "
                 f"perplexity {p['perplexity']:.3f}, {p['bits_per_byte']:.4f} bits per byte")
  return "\n".join(lines)


def workdir_data_config(workdir: str) -> ml_collections.ConfigDict:
  """The data section of the config a workdir was trained (or imported) with."""
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"--workdir={workdir} holds no config.json: is it a training run?")
  return ml_collections.ConfigDict(json.loads(path.read_text())).data


def perplexity_source(workdir: str, source: str | None) -> tuple[str | None, str | None]:
  """(the source `lm eval` measures perplexity on, or None; a note saying why there is none).
  `source` (--source) when given; else the workdir's data.source, which is text only for a
  pre-training run: a post-training stage (sft, dpo, ...) trained on records (chats, pairs)
  that perplexity cannot read."""
  if source is not None:
    return source, None
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"--workdir={workdir} holds no config.json: is it a training run?")
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  stage = config.get("stage", "pretrain")
  if stage != "pretrain":
    return None, (f"No perplexity: the workdir trained stage={stage!r} on the records of "
                  f"data.source={config.data.source!r}, not on text; pass --source=<a text "
                  "source> (builtin:stdlib, text:<glob>, tfds:<name>) to measure it")
  return config.data.source or None, None


def write_results(results: dict, path: str) -> None:
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
