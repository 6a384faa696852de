"""The InversionView decoder of the three-digit-addition case study: its sites, shape, training
inputs, and the shipped (trained) decoder.

Sites are the paper's 13 for this task: ``blocks.0.hook_resid_pre``, every head's output
``blocks.{l}.attn.hook_result.{h}`` and ``blocks.{l}.hook_resid_mid`` /
``blocks.{l}.hook_resid_post`` of both layers. One decoder reads all of them.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import torch

from msae_plugin.inversionview import addition as A
from msae_plugin.inversionview.checkpoint import load_decoder
from msae_plugin.inversionview.decoder import DecoderConfig, InversionViewDecoder
from msae_plugin.inversionview.training import PairGenerator

PROBED_NAME = "inversionview/three_digit_addition (shipped probed model)"
SITES: tuple[str, ...] = (
    "blocks.0.hook_resid_pre",
    *(f"blocks.0.attn.hook_result.{h}" for h in range(4)),
    "blocks.0.hook_resid_mid",
    "blocks.0.hook_resid_post",
    *(f"blocks.1.attn.hook_result.{h}" for h in range(4)),
    "blocks.1.hook_resid_mid",
    "blocks.1.hook_resid_post",
)
# Positions the paper queries in this case study: '+', '=', A1, A2, A3.
QUERY_POSITIONS: tuple[int, ...] = (4, A.EQUALS_POS, 9, 10, 11)


def data_dir() -> Path:
    return Path(str(files("msae_plugin.inversionview") / "data"))


def load_shipped_probed_model() -> torch.nn.Module:
    """The shipped probed model, with per-head outputs (``attn.hook_result``) switched on."""
    model = A.load_probed_model(data_dir() / "addition_probed")
    model.set_use_attn_result(True)
    return model.eval()


def decoder_config(
    d_model: int = 128, n_layers: int = 2, n_heads: int = 4, dropout: float = 0.0
) -> DecoderConfig:
    """The shipped decoder's shape (d_model 128, no dropout); the paper's is d_model 256 with
    dropout 0.1, kept as options to compare per CPU-second."""
    return DecoderConfig(
        vocab_size=A.D_VOCAB, n_ctx=A.SEQ_LEN, d_act=32, n_sites=len(SITES), pad_id=A.PAD,
        bos_id=A.BOS, eos_id=A.EOS, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
        dropout=dropout,
    )


def pair_generator(
    probed: torch.nn.Module, seed: int = 0, positions: tuple[int, ...] | None = QUERY_POSITIONS
) -> PairGenerator:
    """Fresh pairs from the *training* problems (held-out problems are for queries), at the
    positions the paper queries (``positions=None``: any non-special position)."""
    train, _ = A.train_test_split()
    train_t = torch.tensor(train)

    def sample_inputs(n: int, g: torch.Generator) -> torch.Tensor:
        # The same draw as ``make_batch(train_t, batch_size=n, generator=g)`` (one randint of
        # the row indices, then encoding), but only the n drawn rows are range-checked, not
        # all 607,500 every step.
        idx = torch.randint(0, train_t.shape[0], (n,), generator=g)
        return A.make_batch(train_t[idx])[0]

    return PairGenerator(probed, SITES, sample_inputs, [A.PAD, A.BOS, A.EOS], bos_id=A.BOS,
                         seed=seed, positions=positions)


def held_out_inputs(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` held-out problems (never seen by the probed model or the decoder) as tokens."""
    _, test = A.train_test_split()
    return A.make_batch(torch.tensor(test), batch_size=n,
                        generator=torch.Generator().manual_seed(seed))[0]


def load_shipped_decoder(
    probed: torch.nn.Module | None = None,
) -> tuple[InversionViewDecoder, dict]:
    """The decoder trained by ``scripts/train_addition_decoder.py``, shipped as package data.
    With ``probed`` given, its identity is checked against the one recorded at training."""
    path = data_dir() / "addition_decoder"
    if not (path / "decoder_cfg.json").is_file():
        raise FileNotFoundError(
            f"no shipped addition decoder at {path}; train one with "
            "`python scripts/train_addition_decoder.py OUT_DIR`"
        )
    return load_decoder(path, probed)
