import copy
import json

import pytest

from lm.constitutional import constitution as constitution_lib


def _data():
  return {"name": "mine", "principles": [
      {"name": "kind", "critique_request": "Is it unkind?", "revision_request": "Be kind.",
       "comparison": "Which is kinder?"},
      {"name": "true", "critique_request": "Is it false?", "revision_request": "Be true.",
       "comparison": "Which is truer?"}],
      "few_shot": [{"prompt": "Hi", "response": "Go away.", "principle": "kind",
                    "critique": "Rude.", "revision": "Hello!"}]}


def test_builtin_constitutions_load():
  default = constitution_lib.load("default")
  assert len(default.principles) == 16
  names = {p.name for p in default.principles}
  assert {"harm", "honesty", "private_data", "dangerous_instructions", "insults",
          "helpfulness"} <= names
  assert default.few_shot and all(d.principle in names for d in default.few_shot)
  synthetic = constitution_lib.load("synthetic")
  assert [p.name for p in synthetic.principles] == ["secret", "banned", "topic"]


def test_parse_keeps_fields_and_turns_a_string_prompt_into_a_user_turn():
  c = constitution_lib.parse(_data())
  assert c.principle("true").revision_request == "Be true."
  assert c.few_shot[0].prompt == ({"role": "user", "content": "Hi"},)


@pytest.mark.parametrize("field", ["critique_request", "revision_request", "comparison"])
def test_a_missing_field_names_the_principle_and_the_field(field):
  data = _data()
  del data["principles"][1][field]
  with pytest.raises(ValueError, match=rf"mine.json: principle 1 \('true'\): field '{field}'"):
    constitution_lib.parse(data, "mine.json")


def test_other_malformed_files_name_what_is_wrong(tmp_path):
  cases = [
      (lambda d: d["principles"][0].update(critique_request="  "), r"principle 0 \('kind'\): "
       r"field 'critique_request'"),
      (lambda d: d["principles"][0].update(extra=1), r"unknown field 'extra'"),
      (lambda d: d["principles"][1].update(name="kind"), r"'kind' is used twice"),
      (lambda d: d["few_shot"][0].update(principle="nope"), r"few_shot 0: field 'principle' = "
       r"'nope' names no principle"),
      (lambda d: d["few_shot"][0].pop("revision"), r"few_shot 0: field 'revision'"),
      (lambda d: d.update(principles=[]), r"field 'principles' must be a non-empty list"),
  ]
  for change, message in cases:
    data = copy.deepcopy(_data())
    change(data)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
      constitution_lib.load(str(path))
  (tmp_path / "bad.json").write_text("{")
  with pytest.raises(ValueError, match="bad.json: not valid JSON"):
    constitution_lib.load(str(tmp_path / "bad.json"))
  with pytest.raises(ValueError, match="cai.constitution='nope'"):
    constitution_lib.load("nope")
