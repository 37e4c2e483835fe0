"""Dense retrieval (lm/infer/dense.py: cosine of an lm model's mean-pooled hidden states)
against BM25 on the retrieval test's folder (tests/infer/test_retrieval.py: 12 files of
filler, 36 made-up facts, passages of 60 words overlapping by 15).

    python experiments/limits/dense_retrieval.py /work/runs/quickstart /work/runs/sft_tasks \
        $(python -m lm fetch smollm2-135m-instruct)

Prints, per ranking, the share of questions whose answering passage is at top 1 / top 3,
and the seconds it took to index and search.
"""

import os
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
# pylint: disable=wrong-import-position
from lm.infer import retrieval
from lm.infer.engine import Engine
from tests.infer.test_retrieval import holds, write_folder


def hits(index: retrieval.Index, questions) -> tuple[float, float]:
  top1 = top3 = 0
  for question, answer, file in questions:
    found = [holds(p.text, answer) and p.source.endswith(file) for p in index.search(question, 3)]
    top1 += bool(found[:1] and found[0])
    top3 += any(found)
  return top1 / len(questions), top3 / len(questions)


def main(workdirs: list[str]) -> None:
  with tempfile.TemporaryDirectory() as folder:
    questions = write_folder(pathlib.Path(folder), np.random.default_rng(0))
    print(f"{len(questions)} questions\n\n| ranking | top 1 | top 3 | seconds |\n|---|---|---|---|")
    start = time.perf_counter()
    index = retrieval.Index.from_folder(folder, size=60, overlap=15)
    top1, top3 = hits(index, questions)
    print(f"| BM25 ({len(index.passages)} passages) | {top1:.0%} | {top3:.0%} | "
          f"{time.perf_counter() - start:.1f} |", flush=True)
    for workdir in workdirs:
      engine = Engine.from_workdir(workdir)
      start = time.perf_counter()
      index = retrieval.Index.from_folder(folder, size=60, overlap=15, dense=engine)
      top1, top3 = hits(index, questions)
      print(f"| dense: {workdir} | {top1:.0%} | {top3:.0%} | "
            f"{time.perf_counter() - start:.1f} |", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
