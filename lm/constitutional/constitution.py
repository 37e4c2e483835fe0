"""Constitutions: written principles, each with a critique request, a revision request and a
comparison question, plus few-shot critique -> revision demonstrations.

    constitution = load("default")          # lm/constitutional/constitutions/default.json
    constitution = load("path/to/mine.json")
    constitution.principles[0].critique_request

A file is JSON:

  {"name": str, "description": str,
   "principles": [{"name": str, "critique_request": str, "revision_request": str,
                   "comparison": str}, ...],
   "few_shot": [{"prompt": str | [{"role", "content"}, ...], "response": str,
                 "principle": <a principle's name>, "critique": str, "revision": str}, ...]}

`comparison` is the multiple-choice question the feedback model answers about two replies
("Which reply is less harmful?"); the options are rendered by lm/constitutional/prompts.py.
Loading validates everything: a missing or empty field is a ValueError naming the file, the
principle (or demonstration) and the field.
"""

import dataclasses
import json
import os

PRINCIPLE_FIELDS = ("name", "critique_request", "revision_request", "comparison")
FEW_SHOT_FIELDS = ("prompt", "response", "principle", "critique", "revision")
BUILTIN_DIR = os.path.join(os.path.dirname(__file__), "constitutions")


@dataclasses.dataclass(frozen=True)
class Principle:
  name: str
  critique_request: str   # asked after the reply: what to look for
  revision_request: str   # asked after the critique: how to rewrite
  comparison: str         # the multiple-choice question of AI feedback


@dataclasses.dataclass(frozen=True)
class Demonstration:
  """A worked critique -> revision, shown before the real one (few-shot)."""
  prompt: tuple[dict, ...]   # the conversation the response replies to
  response: str
  principle: str
  critique: str
  revision: str


@dataclasses.dataclass(frozen=True)
class Constitution:
  name: str
  description: str
  principles: tuple[Principle, ...]
  few_shot: tuple[Demonstration, ...]

  def principle(self, name: str) -> Principle:
    for principle in self.principles:
      if principle.name == name:
        return principle
    raise ValueError(f"constitution {self.name!r} has no principle {name!r}; it has "
                     f"{[p.name for p in self.principles]}")


def builtin_names() -> list[str]:
  return sorted(f[:-5] for f in os.listdir(BUILTIN_DIR) if f.endswith(".json"))


def resolve(name_or_path: str) -> str:
  """The file of a built-in constitution's name, or the path itself."""
  if os.path.sep not in name_or_path and not name_or_path.endswith(".json"):
    path = os.path.join(BUILTIN_DIR, f"{name_or_path}.json")
    if not os.path.exists(path):
      raise ValueError(f"cai.constitution={name_or_path!r} is neither a file nor a built-in "
                       f"constitution ({', '.join(builtin_names())})")
    return path
  if not os.path.exists(name_or_path):
    raise FileNotFoundError(f"cai.constitution={name_or_path!r}: no such file")
  return name_or_path


def _text(item: dict, field: str, where: str) -> str:
  value = item.get(field)
  if not isinstance(value, str) or not value.strip():
    raise ValueError(f"{where}: field {field!r} is missing or not a non-empty string")
  return value


def _prompt(value, where: str) -> tuple[dict, ...]:
  if isinstance(value, str) and value.strip():
    return ({"role": "user", "content": value},)
  if isinstance(value, list) and value:
    for i, message in enumerate(value):
      if (not isinstance(message, dict) or message.get("role") not in ("system", "user")
          or not isinstance(message.get("content"), str)):
        raise ValueError(f"{where}: field 'prompt', item {i} must be {{'role': 'system' | "
                         f"'user', 'content': str}}")
    return tuple({"role": m["role"], "content": m["content"]} for m in value)
  raise ValueError(f"{where}: field 'prompt' must be a non-empty string or list of messages")


def parse(data: dict, source: str = "<constitution>") -> Constitution:
  """A validated Constitution from decoded JSON; errors name `source`, the item and field."""
  if not isinstance(data, dict):
    raise ValueError(f"{source}: a constitution is a JSON object")
  name = _text(data, "name", source)
  principles_data = data.get("principles")
  if not isinstance(principles_data, list) or not principles_data:
    raise ValueError(f"{source}: field 'principles' must be a non-empty list")
  principles = []
  for i, item in enumerate(principles_data):
    label = item.get("name") if isinstance(item, dict) else None
    where = f"{source}: principle {i}" + (f" ({label!r})" if isinstance(label, str) else "")
    if not isinstance(item, dict):
      raise ValueError(f"{where}: must be an object with {list(PRINCIPLE_FIELDS)}")
    unknown = sorted(set(item) - set(PRINCIPLE_FIELDS))
    if unknown:
      raise ValueError(f"{where}: unknown field {unknown[0]!r} (the fields are "
                       f"{list(PRINCIPLE_FIELDS)})")
    principles.append(Principle(*(_text(item, f, where) for f in PRINCIPLE_FIELDS)))
  names = [p.name for p in principles]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"{source}: principle name {duplicates[0]!r} is used twice")
  few_shot = []
  for i, item in enumerate(data.get("few_shot", [])):
    where = f"{source}: few_shot {i}"
    if not isinstance(item, dict):
      raise ValueError(f"{where}: must be an object with {list(FEW_SHOT_FIELDS)}")
    principle = _text(item, "principle", where)
    if principle not in names:
      raise ValueError(f"{where}: field 'principle' = {principle!r} names no principle of "
                       f"this constitution ({names})")
    few_shot.append(Demonstration(_prompt(item.get("prompt"), where),
                                  *(_text(item, f, where) for f in FEW_SHOT_FIELDS[1:])))
  return Constitution(name, data.get("description", ""), tuple(principles), tuple(few_shot))


def load(name_or_path: str) -> Constitution:
  """A built-in constitution by name ("default", "synthetic") or a JSON file, validated."""
  path = resolve(name_or_path)
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON: {e}") from e
  return parse(data, path)
