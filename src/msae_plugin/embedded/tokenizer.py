"""A fixed word-level tokenizer for the embedded CLIP model, called like open_clip's tokenizers.

``tok(texts, context_length=None) -> LongTensor[N, context_length]``: each row is
``[sot] word ids... [eot]`` followed by zero padding (pad id 0). Text is lower-cased and split
into runs of letters and digits; punctuation is dropped; unknown words map to ``unk``. Too-long
texts are truncated so that ``eot`` stays last.

The ``eot`` id is the largest id in the vocabulary: open_clip's CLIP text tower pools at
``text.argmax(-1)`` (``text_pool_type="argmax"``), i.e. at the first occurrence of the largest
id, which must therefore be the end-of-text token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

PAD, UNK, SOT, EOT = "<pad>", "<unk>", "<sot>", "<eot>"

# Every word the caption grammar and the zero-shot templates of ``dataset.py`` can produce.
# Hard-coded (not derived at import time) so that token ids never change under a trained model;
# a test checks that ``dataset.caption_vocabulary()`` is a subset.
WORDS: tuple[str, ...] = (
    "a", "an", "background", "blue", "bold", "curved", "dark", "digit", "drawn", "eight", "even",
    "five", "four", "green", "handwritten", "image", "in", "left", "loop", "nine", "number",
    "odd", "of", "on", "one", "photo", "picture", "purple", "red", "regular", "right", "seven",
    "six", "straight", "strokes", "textured", "the", "thin", "three", "tilted", "two", "upright",
    "white", "with", "without", "yellow", "zero",
)  # fmt: skip

DEFAULT_CONTEXT_LENGTH = 28  # the longest caption is 23 words + sot + eot

_SPLIT = re.compile(r"[a-z0-9]+")


class WordTokenizer:
    """Word-level tokenizer: ids ``pad=0, unk=1, words 2..W+1, sot=W+2, eot=W+3`` (the max)."""

    def __init__(
        self, words: Iterable[str] = WORDS, context_length: int = DEFAULT_CONTEXT_LENGTH
    ) -> None:
        words = list(words)
        if len(set(words)) != len(words):
            raise ValueError("duplicate words in the vocabulary")
        self.itos: list[str] = [PAD, UNK, *words, SOT, EOT]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        self.pad_id = 0
        self.unk_id = 1
        self.sot_token_id = self.stoi[SOT]
        self.eot_token_id = self.stoi[EOT]
        self.context_length = context_length

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def words(self, text: str) -> list[str]:
        """The word sequence of ``text`` (lower-cased, punctuation dropped)."""
        return _SPLIT.findall(text.lower())

    def encode(self, text: str) -> list[int]:
        """Word ids of ``text`` without sot/eot."""
        return [self.stoi.get(w, self.unk_id) for w in self.words(text)]

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        ctx = context_length or self.context_length
        if ctx < 2:
            raise ValueError(f"context_length must be >= 2, got {ctx}")
        out = torch.zeros(len(texts), ctx, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text)][: ctx - 1] + [self.eot_token_id]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: torch.Tensor | Iterable[int]) -> str:
        """Words of one id sequence, without sot/eot/pad (stops at the first eot)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        words = []
        for i in ids:
            i = int(i)
            if i == self.eot_token_id:
                break
            if i in (self.pad_id, self.sot_token_id):
                continue
            words.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return " ".join(words)

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"
