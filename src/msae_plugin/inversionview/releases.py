"""Trained decoders addressable by name, each bundled with its probed model and tokenizer.

``load_release("addition")`` gives everything needed to read an activation of the shipped
three-digit-addition model: the probed model, the decoder (checked against the probed model's
recorded identity), the decoder's sites, and the task's encode/decode. ``decoder_dir`` swaps in
a decoder trained elsewhere (e.g. by ``scripts/train_addition_decoder.py``) for the same model.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from msae_plugin.inversionview.checkpoint import load_decoder
from msae_plugin.inversionview.decoder import InversionViewDecoder


@dataclass
class Release:
    """A probed model with a decoder trained against it."""

    name: str
    probed: torch.nn.Module
    decoder: InversionViewDecoder
    sites: list[str]
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    meta: dict


def _addition(decoder_dir: str | Path | None) -> Release:
    from msae_plugin.inversionview import addition as A
    from msae_plugin.inversionview import addition_decoder as AD

    probed = AD.load_shipped_probed_model()
    if decoder_dir is None:
        decoder, meta = AD.load_shipped_decoder(probed)
    else:
        decoder, meta = load_decoder(decoder_dir, probed)
    return Release(
        name="addition", probed=probed, decoder=decoder, sites=list(meta["hooks"]),
        encode=A.encode, decode=lambda ids: A.decode(ids, keep_special=True), meta=meta,
    )


RELEASES: dict[str, Callable[[str | Path | None], Release]] = {"addition": _addition}


def load_release(name: str, decoder_dir: str | Path | None = None) -> Release:
    if name not in RELEASES:
        near = difflib.get_close_matches(name, list(RELEASES), n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown InversionView release {name!r}.{hint} Known: {sorted(RELEASES)}")
    return RELEASES[name](decoder_dir)
