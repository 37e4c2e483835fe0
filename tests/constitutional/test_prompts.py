"""Critique, revision and comparison conversations against strings written out by hand."""

from lm.constitutional import constitution as constitution_lib
from lm.constitutional import prompts
from lm.data import tokenizer as tokenizer_lib

CONSTITUTION = constitution_lib.parse({
    "name": "t",
    "principles": [{"name": "kind", "critique_request": "Is it unkind?",
                    "revision_request": "Make it kind.", "comparison": "Which is kinder?"}],
    "few_shot": [{"prompt": [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Hi"}],
                  "response": "Go away.", "principle": "kind", "critique": "It is rude.",
                  "revision": "Hello!"}]})
KIND = CONSTITUTION.principle("kind")
PROMPT = [{"role": "system", "content": "Sys."}, {"role": "user", "content": "Q?"}]


def test_critique_and_revision_conversations():
  expected_critique = [
      {"role": "system", "content": "Sys."},
      {"role": "user", "content": "Be brief.\nHi"},   # a demo's system text joins its user turn
      {"role": "assistant", "content": "Go away."},
      {"role": "user", "content": "Is it unkind?"},
      {"role": "assistant", "content": "It is rude."},
      {"role": "user", "content": "Make it kind."},
      {"role": "assistant", "content": "Hello!"},
      {"role": "user", "content": "Q?"},
      {"role": "assistant", "content": "A."},
      {"role": "user", "content": "Is it unkind?"}]
  assert prompts.critique_messages(CONSTITUTION, PROMPT, "A.", KIND) == expected_critique
  assert prompts.critique_messages(CONSTITUTION, PROMPT, "A.", KIND, few_shot=0) == [
      expected_critique[0]] + expected_critique[7:]
  assert prompts.revision_messages(CONSTITUTION, PROMPT, "A.", KIND, "Fine.", few_shot=0) == [
      {"role": "system", "content": "Sys."}, {"role": "user", "content": "Q?"},
      {"role": "assistant", "content": "A."}, {"role": "user", "content": "Is it unkind?"},
      {"role": "assistant", "content": "Fine."}, {"role": "user", "content": "Make it kind."}]


def test_the_revision_prompt_renders_as_the_byte_template_says():
  tok = tokenizer_lib.get("byte")
  messages = prompts.revision_messages(CONSTITUTION, [{"role": "user", "content": "Q?"}], "A.",
                                       KIND, "Fine.", few_shot=0)
  ids = tok.render_chat(messages, add_generation_prompt=True).tolist()
  s = tok.special_ids
  expected = [s["<bos>"]]
  for role, text in (("user", "Q?"), ("assistant", "A."), ("user", "Is it unkind?"),
                     ("assistant", "Fine."), ("user", "Make it kind.")):
    expected += [s[f"<{role}>"], *text.encode(), s["<end_of_turn>"]]
  assert ids == expected + [s["<assistant>"]]


def test_comparison_text():
  messages = prompts.comparison_messages(PROMPT, "Yes.", "No.", KIND)
  assert messages == [{"role": "user", "content":
                       "Which is kinder?\nSystem: Sys.\nUser: Q?\n(A) Yes.\n(B) No."}]
  assert prompts.OPTIONS == ("(A)", "(B)")
