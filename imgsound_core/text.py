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


PROMPT_FIELDS = {"image": ("image_prompt", "image_negative"), "audio": ("audio_prompt", "audio_negative")}


def dropped_tokens(tokenizer, prompt: str) -> int:
    """How many of the prompt's tokens do not fit the text encoder's context and are cut off (0 if it fits)."""
    return max(0, count_prompt_tokens(tokenizer, prompt) - int(tokenizer.model_max_length))


def prompt_truncation(request, image_tokenizer, audio_tokenizer) -> dict[str, int]:
    """`{field: tokens cut off}` for each prompt of `request` too long for its model's text encoder (77 tokens for
    CLIP); empty when all fit. A record keeps it, and the command line and the HTTP API say so."""
    found = {}
    for tokenizer, fields in ((image_tokenizer, PROMPT_FIELDS["image"]), (audio_tokenizer, PROMPT_FIELDS["audio"])):
        for field in fields:
            dropped = dropped_tokens(tokenizer, getattr(request, field)) if getattr(request, field) else 0
            if dropped:
                found[field] = dropped
    return found


def truncation_warning(field: str, dropped: int, context: int, name: str | None = None) -> str:
    """One sentence: which prompt was cut, and by how much."""
    return (
        f"{name or field} is {context + dropped} tokens long and its text encoder reads {context}: "
        f"the last {dropped} are ignored"
    )


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
