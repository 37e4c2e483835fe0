"""Tiny Hugging Face models and tokenizers, built locally with random weights (no downloads).

Each family's config is small enough to build, save and load in well under a second, yet
exercises what sets the family apart: GQA everywhere; Llama 3.1 RoPE scaling with a short
original context, so the scaling changes the rotation; a Mistral window shorter than the
test sequences; Qwen2 q/k/v biases with tied embeddings; Gemma with head_dim != D / N.
"""

import os

import torch
import transformers

VOCAB = 256
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)

CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                                            n_positions=128, bos_token_id=1, eos_token_id=2),
    "llama": lambda: transformers.LlamaConfig(**_COMMON, rope_parameters=dict(
        rope_type="llama3", rope_theta=10_000.0, factor=8.0, low_freq_factor=1.0,
        high_freq_factor=4.0, original_max_position_embeddings=16)),
    "mistral": lambda: transformers.MistralConfig(**_COMMON, sliding_window=8),
    "qwen2": lambda: transformers.Qwen2Config(**_COMMON, tie_word_embeddings=True),
    "gemma": lambda: transformers.GemmaConfig(**_COMMON, head_dim=24),
}

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>\n{{ message['content'] | trim }}\n"
    "{% else %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces  ",
    "Grüße aus Köln! naïve café, 世界 and emoji 🙂.",
    "line one\nline two\n\n\ttabbed",
    "numbers 12345 and symbols #$%&*()[]{}",
    "",
]

_CORPUS = [
    "the quick brown fox jumps over the lazy dog", "hello world, this is a small test corpus",
    "language models read tokens and predict the next one", "Grüße aus Köln, naïve café",
    "we train a tiny tokenizer on a few sentences so that the tests need no download",
] * 20


def make_model(family: str, seed: int = 0, dtype=torch.float32) -> transformers.PreTrainedModel:
  """A random model whose every parameter (norms and biases too) is perturbed away from its
  initial value, so a mapping that mixed up two tensors could not go unnoticed."""
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(CONFIGS[family](),
                                                        attn_implementation="eager")
  with torch.no_grad():
    for _, p in model.named_parameters():
      p.add_(torch.randn_like(p) * 0.1)
  return model.to(dtype).eval()


def make_tokenizer(kind: str = "metaspace") -> transformers.PreTrainedTokenizerFast:
  """A BPE trained here: "metaspace" (Llama 2 / Gemma style, byte fallback, vocab < 256) or
  "byte_level" (GPT-2 / Llama 3 style); both add bos through their post-processor."""
  # pylint: disable=import-outside-toplevel
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  specials = ["<unk>", "<s>", "</s>", "<pad>"]
  if kind == "metaspace":
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=specials)
    tok.train_from_iterator(_CORPUS, trainer)
  else:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
  bos = tok.token_to_id("<s>")
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                     special_tokens=[("<s>", bos)])
  hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                                                eos_token="</s>", pad_token="<pad>",
                                                unk_token="<unk>")
  hf_tok.chat_template = CHAT_TEMPLATE
  return hf_tok


def save(model, directory: str, tokenizer=None, max_shard_size: str | None = None) -> str:
  kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
  model.save_pretrained(directory, **kwargs)
  if tokenizer is not None:
    tokenizer.save_pretrained(directory)
  assert not [f for f in os.listdir(directory) if f.endswith(".bin")]
  return directory
