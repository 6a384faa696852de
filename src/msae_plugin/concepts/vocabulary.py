"""Concept vocabularies: word lists and their text embeddings.

Why a module of its own: the naming paths (direction- and activation-based) and any later
consumer (similarity search) must embed words the same way, with the same checks, so that a
word that cannot be encoded is refused once, by name, instead of silently becoming ``<unk>``.

A vocabulary file holds one word (or short phrase) per line; blank lines and lines starting with
``#`` are skipped. The paper uses LAION unigrams; the shipped default
(``embedded_vocabulary.txt``) is the caption vocabulary of the embedded ``msae-tiny-clip``:
digits, colours, thickness, rotations, backgrounds, parity, loops and strokes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from msae_plugin.errors import ConceptVocabularyError

#: the prompt each word is put in before the text tower. The embedded model's captions start
#: with "a photo of ..." (see ``embedded/dataset.py``), and OpenCLIP's zero-shot prompts do too.
DEFAULT_TEMPLATE = "a photo of {}"
DEFAULT_VOCABULARY_PATH = Path(__file__).with_name("embedded_vocabulary.txt")


def parse_vocabulary(text: str, source: str = "vocabulary") -> list[str]:
    """Words of a vocabulary text, one per line, stripped, de-duplicated in order."""
    words: list[str] = []
    for line in text.splitlines():
        word = line.strip()
        if word and not word.startswith("#") and word not in words:
            words.append(word)
    if not words:
        raise ConceptVocabularyError(
            f"{source} holds no words. Write one word (or short phrase) per line, or leave "
            "--vocab out to use the default vocabulary of the embedded model."
        )
    return words


def load_vocabulary(path: str | Path | None = None) -> list[str]:
    """The words of a vocabulary file; ``None`` gives the shipped default."""
    path = DEFAULT_VOCABULARY_PATH if path is None else Path(path)
    return parse_vocabulary(path.read_text(encoding="utf-8"), f"vocabulary file {path}")


def unencodable_words(tokenizer: Any, words: list[str]) -> list[str]:
    """Words the tokenizer maps (partly) to its unknown token, or to nothing at all.

    A word-level tokenizer (the embedded model's) maps unknown words to ``<unk>``, whose text
    embedding says nothing about the word: naming a latent after it would be meaningless.
    """
    unk = getattr(tokenizer, "unk_id", None)
    bad = []
    for word in words:
        if hasattr(tokenizer, "encode"):
            try:
                ids = list(tokenizer.encode(word))
            except Exception:  # noqa: BLE001 - any failure means "cannot encode"
                ids = []
            if not ids or (unk is not None and unk in ids):
                bad.append(word)
    return bad


@torch.no_grad()
def text_embeddings(
    model: Any, words: list[str], template: str = DEFAULT_TEMPLATE, center: bool = True
) -> torch.Tensor:
    """``[V, D]`` unit text embeddings of ``template.format(word)``.

    ``center=True`` subtracts the vocabulary's mean embedding before normalising: every text
    embedding shares a large common component (the "modality gap"), which otherwise dominates
    the cosine with a decoder direction; centring keeps what tells the words apart. On the
    embedded model it doubled the number of latents passing the validity rule whose ground-truth
    selectivity held (docs/concepts.md)."""
    if not words:
        raise ConceptVocabularyError("the vocabulary is empty; pass at least one word")
    tokenizer = model.tokenizer
    bad = unencodable_words(tokenizer, words)
    if bad:
        raise ConceptVocabularyError(
            f"the model's tokenizer cannot encode {len(bad)} vocabulary word(s): "
            f"{', '.join(repr(w) for w in bad[:10])}{' ...' if len(bad) > 10 else ''}. Remove "
            "them from the vocabulary file, or use words of the model's vocabulary."
        )
    device = next(model.parameters()).device
    emb = model.encode_text(tokenizer([template.format(w) for w in words]).to(device)).float()
    emb = F.normalize(emb, dim=-1)
    if center and len(words) > 1:
        emb = F.normalize(emb - emb.mean(0, keepdim=True), dim=-1)
    return emb.cpu()
