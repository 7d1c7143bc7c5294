"""Base models that exist offline: a tiny GPT-Neo built from a config, with a
byte-level BPE tokenizer trained on the spot. Tests and the demo use it where
users would name `EleutherAI/gpt-neo-125m` (no Hugging Face Hub here)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

DEFAULT_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "translate to french: hello -> bonjour",
    "my name is alice and my email is alice@example.com",
    "this movie was wonderful, I loved every minute",
    "terrible service, the food was cold and bland",
    "question: what is the capital of france? answer: paris",
    "summarize: the meeting covered budget, hiring and the roadmap",
    "0123456789 ,.;:!?'\"()[]{}<>-_=+*/@#$%&|",
]


def build_tiny_gpt_neo(
    out_dir: str | Path,
    corpus: Iterable[str] = (),
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 256,
    seed: int = 0,
) -> Path:
    """Saves a randomly initialised GPT-Neo and its tokenizer with save_pretrained."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPTNeoConfig, GPTNeoForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = [*DEFAULT_CORPUS, *corpus]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts * 4, vocab_size=vocab_size, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=max_position_embeddings,
    )
    tokenizer.save_pretrained(out)
    torch.manual_seed(seed)
    config = GPTNeoConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_position_embeddings,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        attention_types=[[["global", "local"], num_layers // 2]] if num_layers % 2 == 0 else [[["global"], num_layers]],
        intermediate_size=hidden_size * 4,
        window_size=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPTNeoForCausalLM(config).save_pretrained(out)
    return out
