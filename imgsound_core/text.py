"""Prompt embeddings: CLIP text encoder outputs, computed once per distinct prompt.

No sampling logic here. Prompts are tokenized to the tokenizer's context length (77 for CLIP) with padding, as
in the reference code; longer prompts are truncated there (the reference code would fail instead).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.inference_mode()
def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str]) -> torch.Tensor:
    """Encode `prompts` to `(N, L, D)` last hidden states (L = 77, D = 768 for SD-1.5 and Auffusion)."""
    tokens = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    input_ids = tokens.input_ids.to(text_encoder.device)
    return text_encoder(input_ids)[0]


def count_prompt_tokens(tokenizer, prompt: str) -> int:
    """Tokens the prompt takes, start and end markers included (compare with `tokenizer.model_max_length`)."""
    return len(tokenizer(prompt, truncation=False).input_ids)


class TextEmbeddingCache:
    """Embeddings keyed by prompt text, computed in batches on first use and kept for the cache's lifetime."""

    def __init__(self, tokenizer, text_encoder) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self._embeddings: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._embeddings)

    def add(self, prompts: Sequence[str]) -> None:
        missing = sorted({p for p in prompts if p not in self._embeddings})
        if missing:
            for prompt, embedding in zip(missing, encode_prompts(self.tokenizer, self.text_encoder, missing)):
                self._embeddings[prompt] = embedding

    def get(self, prompts: Sequence[str]) -> torch.Tensor:
        """`(N, L, D)` embeddings of `prompts` in order, encoding any not seen yet."""
        self.add(prompts)
        return torch.stack([self._embeddings[p] for p in prompts])

    def discard(self, prompts: Sequence[str]) -> None:
        for prompt in prompts:
            self._embeddings.pop(prompt, None)
