"""The tiny model's text stack: a word-level tokenizer over the data vocabulary and a small transformer encoder.

The tokenizer lower-cases, drops punctuation, and maps each word of `data.VOCABULARY` to its id (``<pad>`` is
0, ``<unk>`` 1: words outside the vocabulary are accepted and mean nothing to the model). The encoder embeds
the ids, adds learned positions, runs a few `torch.nn.TransformerEncoderLayer` layers (padding masked out) and
zeroes the padded positions, as Wan's pipeline does with T5 states, so the DiT's cross-attention sees zeros
there. It is trained jointly with the DiT (`compactsearch.tinymodel.train`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import torch
from torch import nn

from compactsearch.tinymodel.data import VOCABULARY

__all__ = ["WordTokenizer", "TextEncoderConfig", "TinyTextEncoder", "PAD", "UNK"]

PAD, UNK = 0, 1


class WordTokenizer:
    """Words -> ids over a fixed vocabulary.

    Args:
        vocabulary: the known words (ids start at 2).
        max_length: tokens per prompt (longer prompts are cut, shorter ones padded).
    """

    def __init__(self, vocabulary: tuple[str, ...] = VOCABULARY, max_length: int = 16):
        self.vocabulary = tuple(vocabulary)
        self.max_length = max_length
        self.ids = {w: i + 2 for i, w in enumerate(self.vocabulary)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary) + 2

    @staticmethod
    def words(text: str) -> list[str]:
        """Lower-cased words of ``text``, punctuation dropped."""
        return re.findall(r"[a-z]+", text.lower())

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in self.words(text) if w not in self.ids]

    def __call__(self, prompts: str | list[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``[B, L]`` int64 and the valid-token mask ``[B, L]`` bool (``L = max_length``)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        n = max_length or self.max_length
        ids = torch.full((len(prompts), n), PAD, dtype=torch.int64)
        for i, p in enumerate(prompts):
            toks = [self.ids.get(w, UNK) for w in self.words(p)][:n]
            if toks:
                ids[i, : len(toks)] = torch.tensor(toks)
        return ids, ids != PAD


@dataclass(frozen=True)
class TextEncoderConfig:
    """Sizes of the tiny text encoder (stored in the weights file's metadata)."""

    vocab_size: int = len(VOCABULARY) + 2
    dim: int = 128
    layers: int = 2
    heads: int = 4
    max_length: int = 16

    def to_dict(self) -> dict:
        return asdict(self)


class TinyTextEncoder(nn.Module):
    """Embedding + learned positions + a small pre-norm transformer encoder.

    Forward: ``ids [B, L]`` int64, ``mask [B, L]`` bool -> ``[B, L, dim]`` states, zero at padded positions.
    """

    def __init__(self, config: TextEncoderConfig = TextEncoderConfig()):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim, padding_idx=PAD)
        self.pos = nn.Parameter(torch.zeros(config.max_length, config.dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(config.dim, config.heads, dim_feedforward=4 * config.dim, dropout=0.0,
                                           batch_first=True, norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        L = ids.shape[1]
        x = self.embed(ids) + self.pos[:L]
        # an all-padding row (the empty prompt of classifier-free guidance) would make every key masked: keep
        # position 0 visible there; its output is zeroed below anyway
        key_pad = ~mask
        key_pad[:, 0] = key_pad[:, 0] & mask.any(1)
        x = self.encoder(x, src_key_padding_mask=key_pad)
        x = self.norm(x)
        return x * mask.unsqueeze(-1).to(x.dtype)
