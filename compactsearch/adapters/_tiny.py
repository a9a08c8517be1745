"""Tiny random text stacks for the tiny pipelines (tests, examples): no download, fully deterministic.

The tokenizer is byte-level (every UTF-8 byte is a token, no merges), so distinct prompts give distinct token
sequences; the encoder is a 2-layer T5 with random weights from a fixed seed.
"""

from __future__ import annotations

import torch

__all__ = ["tiny_tokenizer", "tiny_t5_encoder"]


def tiny_tokenizer():
    """A byte-level `PreTrainedTokenizerFast` with ``<pad>`` (0), ``</s>`` (1), ``<unk>`` (2) and 256 bytes."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for c in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[c] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_t5_encoder(d_model: int = 32, seed: int = 0):
    """A random 2-layer `T5EncoderModel` over the byte vocabulary (259 tokens)."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=259, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4)
    return T5EncoderModel(cfg).eval()
