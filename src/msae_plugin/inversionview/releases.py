"""Trained decoders addressable by name, each bundled with its probed model and tokenizer.

``load_release("addition")`` gives everything needed to read an activation of the shipped
three-digit-addition model: the probed model, the decoder (checked against the probed model's
recorded identity), the decoder's sites, and the task's encode/decode. ``decoder_dir`` swaps in
a decoder trained elsewhere (e.g. by ``scripts/train_addition_decoder.py``) for the same model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from msae_plugin.errors import InversionViewError
from msae_plugin.inversionview.checkpoint import load_decoder
from msae_plugin.inversionview.decoder import InversionViewDecoder
from msae_plugin.names import suggest


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
    # Query positions the decoder saw in training (None: any ordinary position, or unknown).
    # A query elsewhere is out of distribution: its precision says nothing about the activation.
    positions: tuple[int, ...] | None = None
    default_position: int | None = None  # None: the input's last token


def trained_positions(
    meta: dict, restricted: tuple[int, ...], bos: int = 0
) -> tuple[int, ...] | None:
    """The query positions a decoder was trained on, from its saved config: an explicit
    ``positions`` list, else ``restricted`` (plus BOS, drawn for 1 % of pairs) when the
    training record says ``all_positions: false``; ``None`` when any position was used or
    nothing was recorded."""
    if "positions" in meta:
        pos = meta["positions"]
        return None if pos is None else tuple(sorted({bos, *map(int, pos)}))
    training = meta.get("training")
    if isinstance(training, dict) and training.get("all_positions") is False:
        return tuple(sorted({bos, *restricted}))
    return None


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
        positions=trained_positions(meta, AD.QUERY_POSITIONS), default_position=A.EQUALS_POS,
    )


RELEASES: dict[str, Callable[[str | Path | None], Release]] = {"addition": _addition}


def load_release(name: str, decoder_dir: str | Path | None = None) -> Release:
    """The release ``name`` (its decoder replaced by the one in ``decoder_dir`` when given)."""
    if name not in RELEASES:
        raise InversionViewError(
            f"unknown InversionView release {name!r}.{suggest(name, RELEASES)} "
            f"Known: {sorted(RELEASES)}"
        )
    return RELEASES[name](decoder_dir)
