"""The conversations the model is asked to critique, revise and compare: pure functions of
the prompt, the replies and the constitution, rendered as chat messages (the tokenizer's own
template turns them into tokens, so any chat model reads them as a conversation).

Critique and revision (one round), after the few-shot demonstrations as earlier turns:

  [system]                      the prompt's system message, if any (it must come first)
  user       demo prompt        } for each demonstration
  assistant  demo response      }
  user       demo critique req. }
  assistant  demo critique      }
  user       demo revision req. }
  assistant  demo revision      }
  user       prompt             the prompt's own turns
  assistant  response           the reply being critiqued (the latest revision)
  user       critique request   <- the critique is generated here
  assistant  critique
  user       revision request   <- the revision is generated here

Each round starts this conversation afresh from the latest revision (the paper continued one
growing conversation; a fresh one keeps the prompt's length bounded over rounds).

Comparison (AI feedback): one user turn holding the conversation and two options

  <question>
  <role>: <content>             per turn of the prompt (System:, User:, earlier Assistant:)
  (A) <reply a>
  (B) <reply b>

then the assistant's reply is scored as each option (OPTIONS), optionally after a chain of
thought that starts with COT_PREFIX.
"""

from typing import Sequence

from lm.constitutional.constitution import Constitution, Demonstration, Principle

OPTIONS = ("(A)", "(B)")
COT_PREFIX = "Let's think step by step:"
COT_ANSWER = "\nSo the answer is "


def _split_system(prompt: Sequence[dict]) -> tuple[list[dict], list[dict]]:
  system = [dict(m) for m in prompt if m["role"] == "system"]
  return system, [dict(m) for m in prompt if m["role"] != "system"]


def _round(turns: list[dict], response: str, principle: Principle, critique: str | None,
           revision: str | None) -> list[dict]:
  out = turns + [{"role": "assistant", "content": response},
                 {"role": "user", "content": principle.critique_request}]
  if critique is not None:
    out += [{"role": "assistant", "content": critique},
            {"role": "user", "content": principle.revision_request}]
  if revision is not None:
    out.append({"role": "assistant", "content": revision})
  return out


def demonstration_turns(constitution: Constitution, demos: Sequence[Demonstration]
                        ) -> list[dict]:
  """The few-shot demonstrations as finished rounds (their system messages become the first
  words of their user turn: a chat has one system message, the real prompt's)."""
  turns = []
  for demo in demos:
    system, rest = _split_system(demo.prompt)
    if system:
      rest[0] = {"role": "user", "content": "\n".join(
          [m["content"] for m in system] + [rest[0]["content"]])}
    turns += _round(rest, demo.response, constitution.principle(demo.principle), demo.critique,
                    demo.revision)
  return turns


def critique_messages(constitution: Constitution, prompt: Sequence[dict], response: str,
                      principle: Principle, few_shot: int | None = None) -> list[dict]:
  """The conversation whose next assistant turn is the critique of `response`
  (`few_shot` demonstrations first; None: all of the constitution's)."""
  demos = constitution.few_shot[:few_shot] if few_shot is not None else constitution.few_shot
  system, rest = _split_system(prompt)
  return system + demonstration_turns(constitution, demos) + _round(rest, response, principle,
                                                                    None, None)


def revision_messages(constitution: Constitution, prompt: Sequence[dict], response: str,
                      principle: Principle, critique: str, few_shot: int | None = None
                      ) -> list[dict]:
  """The conversation whose next assistant turn is the revision of `response`."""
  return critique_messages(constitution, prompt, response, principle, few_shot) + [
      {"role": "assistant", "content": critique},
      {"role": "user", "content": principle.revision_request}]


def round_messages(prompt: Sequence[dict], response: str, principle: Principle, critique: str,
                   revision: str) -> list[dict]:
  """A finished round without demonstrations: a training conversation for the format."""
  system, rest = _split_system(prompt)
  return system + _round(rest, response, principle, critique, revision)


def comparison_text(prompt: Sequence[dict], reply_a: str, reply_b: str, question: str) -> str:
  """The multiple-choice question about two replies to `prompt`, as one user turn."""
  lines = [question]
  lines += [f"{m['role'].capitalize()}: {m['content']}" for m in prompt]
  lines += [f"{OPTIONS[0]} {reply_a}", f"{OPTIONS[1]} {reply_b}"]
  return "\n".join(lines)


def comparison_messages(prompt: Sequence[dict], reply_a: str, reply_b: str,
                        principle: Principle) -> list[dict]:
  """The conversation whose next assistant turn answers (A) or (B)."""
  return [{"role": "user", "content": comparison_text(prompt, reply_a, reply_b,
                                                      principle.comparison)}]
