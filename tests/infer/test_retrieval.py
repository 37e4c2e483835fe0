"""Retrieval (lm/infer/retrieval.py) and its use by chat and the server: chunking, BM25
top-3 accuracy on a folder of made-up facts, numbered passages in the prompt, citations."""

import re

import numpy as np
import pytest

from lm.infer import chat as chat_lib
from lm.infer import retrieval
from lm.infer.engine import Completion

# Made-up facts (no model has seen them), each a sentence inside filler text that shares
# most of their words (river, tower, built, town...): the entity's name and the one word a
# question shares with its fact (kilometres, year, people) decide.
NAMES = ["Zorblax", "Quenta", "Morrowind", "Tabrizel", "Okonda", "Veltrane", "Surimo",
         "Pallaxis", "Drovno", "Ilvareth", "Kestrune", "Ombrell"]
FACTS = [("river {} is {} kilometres long", "How many kilometres long is the {} river?"),
         ("tower of {} was built in the year {}", "In which year was the tower of {} built?"),
         ("town of {} has a population of {} people", "How many people live in the town of {}?")]
FILLER = ("the river runs past old towns and every tower was built of stone while the "
          "population grew slowly over many long years of trade and farming").split()


def write_folder(path, rng):
  """Files of filler with facts at random places; returns [(question, answer, file)]."""
  questions = []
  for i, name in enumerate(NAMES):
    words = list(rng.choice(FILLER, 400))
    for j, (fact, question) in enumerate(FACTS):
      value = str(int(rng.integers(100, 99999)))
      at = int(rng.integers(0, len(words)))
      words[at:at] = ("The " + fact.format(name, value) + ".").split()
      questions.append((question.format(name), value, f"place_{i}.txt"))
    sub = path / ("a" if i % 2 else "b")
    sub.mkdir(exist_ok=True)
    (sub / f"place_{i}.txt").write_text(" ".join(words))
  (path / "notes.bin").write_bytes(b"\x00\x01 not text")  # ignored: not .txt / .md
  return questions


def holds(text: str, answer: str) -> bool:
  return re.search(rf"\b{answer}\b", text) is not None


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = tmp_path_factory.mktemp("docs")
  return path, write_folder(path, np.random.default_rng(0))


def test_chunks_overlap_and_cover_the_text():
  words = [f"w{i}" for i in range(10)]
  chunks = retrieval.chunk(" ".join(words), size=4, overlap=1)
  assert [start for start, _ in chunks] == [0, 3, 6]
  assert [c.split() for _, c in chunks] == [words[0:4], words[3:7], words[6:10]]
  assert retrieval.chunk("a b", size=4, overlap=1) == [(0, "a b")]
  with pytest.raises(ValueError, match="overlap"):
    retrieval.chunk("a b", size=4, overlap=4)


def test_the_answering_passage_is_in_the_top_3(folder):
  path, questions = folder
  index = retrieval.Index.from_folder(str(path), size=60, overlap=15)
  assert {p.source.split("/")[-1] for p in index.passages} == {f"place_{i}.txt"
                                                               for i in range(len(NAMES))}
  hits = 0
  for question, answer, file in questions:
    top = index.search(question, k=3)
    hits += any(holds(p.text, answer) and p.source.endswith(file) for p in top)
  assert hits / len(questions) >= 0.9, (hits, len(questions))


def test_passages_are_numbered_in_the_prompt_and_citations_point_at_them(folder, engine):
  path, questions = folder
  question, answer, file = questions[4]
  index = retrieval.Index.from_folder(str(path), size=20, overlap=10)
  chat = chat_lib.Chat(engine, index=index)
  request = chat_lib.parse_request({"max_tokens": 8, "retrieval": {"top_k": 2},
                                    "messages": [{"role": "user", "content": question}]})
  prompt = engine.tokenizer.decode(chat.prompt(request))
  first, second = request.passages
  assert f"[1] ({first.source}) {first.text}" in prompt
  assert f"[2] ({second.source}) {second.text}" in prompt
  used = 1 if holds(first.text, answer) else 2
  assert request.passages[used - 1].source.endswith(file)
  reply = Completion(tokens=[1, 2], text=f"It is {answer} [{used}], not [9].", logprobs=[0, 0],
                     stop_reason="end_turn", prompt_tokens=len(prompt))
  body = chat.message(reply, request).to_dict()
  assert body["retrieval"]["cited"] == [used]  # [9] names no passage
  cited = body["retrieval"]["passages"][used - 1]
  assert cited["index"] == used and holds(cited["text"], answer)
  assert "retrieval" not in chat.message(reply, chat_lib.parse_request(
      {"max_tokens": 8, "messages": [{"role": "user", "content": "x"}]})).to_dict()


def test_retrieval_needs_documents(engine):
  request = chat_lib.parse_request({"max_tokens": 8, "retrieval": True,
                                    "messages": [{"role": "user", "content": "x"}]})
  with pytest.raises(chat_lib.RequestError, match="no documents"):
    chat_lib.Chat(engine).prompt(request)
  with pytest.raises(chat_lib.RequestError, match="retrieval"):
    chat_lib.parse_request({"max_tokens": 8, "retrieval": "yes",
                            "messages": [{"role": "user", "content": "x"}]})
