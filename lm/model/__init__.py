"""The decoder-only transformer: `ModelConfig`, `Decoder`, and named `presets`."""

from lm.model import presets
from lm.model.attention import KVCache
from lm.model.config import ModelConfig
from lm.model.transformer import Decoder

__all__ = ["ModelConfig", "Decoder", "KVCache", "presets"]
