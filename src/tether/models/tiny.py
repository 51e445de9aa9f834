"""Tiny random-init models and an in-memory byte-level tokenizer, for tests and `*_tiny.yaml` configs.

Nothing is downloaded: the tokenizer is a byte-level BPE with no merges (every byte is a token) plus
three special tokens, and the models are built from transformers configs with random weights.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|endoftext|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, PAD]
TINY_NAMES = ("tiny-llama", "tiny-gpt2", "tiny-bert")


def wrap_tokenizer(tok: Tokenizer, model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Give a `tokenizers.Tokenizer` with the special tokens BOS/EOS/PAD a transformers interface.

    A BOS token is prepended when `add_special_tokens=True`, so prompts start with BOS and replies
    (tokenized without special tokens) do not.
    """
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=model_max_length
    )
    fast.padding_side = "right"
    return fast


def byte_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: 256 byte tokens + BOS, EOS, PAD (vocab 259)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for t in SPECIAL_TOKENS:
        vocab[t] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return wrap_tokenizer(tok, model_max_length)


def tiny_config(kind: str, tokenizer, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, max_positions: int = 512, num_labels: int | None = None):
    """A transformers config for a tiny model of `kind` ('llama', 'gpt2' or 'bert')."""
    from transformers import BertConfig, GPT2Config, LlamaConfig

    common = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if kind == "llama":
        cfg = LlamaConfig(
            hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, num_key_value_heads=num_heads, max_position_embeddings=max_positions,
            tie_word_embeddings=True, **common,
        )
    elif kind == "gpt2":
        cfg = GPT2Config(n_embd=hidden_size, n_layer=num_layers, n_head=num_heads, n_positions=max_positions, **common)
    elif kind == "bert":
        cfg = BertConfig(
            hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
            intermediate_size=hidden_size * 2, max_position_embeddings=max_positions, **common,
        )
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}; expected llama, gpt2 or bert")
    if num_labels is not None:
        cfg.num_labels = num_labels
    return cfg


def tiny_causal_lm(kind: str = "llama", seed: int = 0, **kwargs):
    """A random-init tiny causal LM and its byte tokenizer. Returns (model, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = byte_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, tokenizer, **kwargs))
    return model, tokenizer


def tiny_sequence_classifier(kind: str = "bert", num_labels: int = 1, seed: int = 0, **kwargs):
    """A random-init tiny model with a sequence-classification head. Returns (model, tokenizer)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    tokenizer = byte_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(tiny_config(kind, tokenizer, num_labels=num_labels, **kwargs))
    return model, tokenizer
