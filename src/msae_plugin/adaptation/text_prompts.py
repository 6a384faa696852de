"""CoOp-style learnable text context (Zhou et al. 2022): the template words before the class
name become free vectors in the text tower's token-embedding space.

Each class prompt is tokenized as ``[sot] w_1 .. w_n <class name> [eot]``; the ``n`` context
positions are then overwritten at the text tower's ``text.hook_embed`` (token embeddings, before
the positional embedding) with ``ctx`` ``[n, d_text]``, shared by all classes (CoOp's unified
context). Going through the hook point keeps the text forward the hooked model's own; nothing in
the text tower is copied or edited.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msae_plugin.errors import ModelInputError

PLACEHOLDER = "X"  # context word for random initialisation (CoOp's "X X X X")


def _n_words(model: Any, text: str) -> int:
    """Token count of ``text`` between sot and eot (eot is the largest id in both the embedded
    word tokenizer and OpenCLIP's BPE tokenizer, so ``argmax`` finds it)."""
    tok = model.to_tokens([text])[0]
    return int(tok.argmax()) - 1


class TextContext(nn.Module):
    """Learnable context vectors for the class prompts of a ``HookedOpenCLIP`` text tower.

    ``ctx_init``: initialise from the embeddings of these words (CoOp/MaPLe's "a photo of a");
    ``None``: ``n_ctx`` random vectors (std 0.02)."""

    def __init__(self, model: Any, class_names: Sequence[str],
                 ctx_init: str | None = "a photo of the digit", n_ctx: int | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        if model.text is None:
            raise ModelInputError(f"CoOp needs a text tower: {model.text_unsupported_reason}")
        if not class_names:
            raise ModelInputError("class_names must be non-empty")
        emb = model.text.borrowed.token_embedding
        if ctx_init is not None:
            n = _n_words(model, ctx_init)
            if n_ctx is not None and n_ctx != n:
                raise ModelInputError(f"ctx_init {ctx_init!r} has {n} tokens but n_ctx={n_ctx}")
            ids = model.to_tokens([ctx_init])[0, 1: 1 + n]
            init = emb(ids).detach().float().clone()
            prefix = ctx_init
        else:
            if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
                raise ModelInputError(f"n_ctx must be an int >= 1 without ctx_init, got {n_ctx!r}")
            n = n_ctx
            gen = torch.Generator().manual_seed(seed)
            init = torch.randn(n, emb.embedding_dim, generator=gen) * 0.02
            prefix = " ".join([PLACEHOLDER] * n)
        if n < 1:
            raise ModelInputError(f"ctx_init {ctx_init!r} has no tokens")
        if _n_words(model, prefix) != n:
            raise ModelInputError(f"context {prefix!r} does not tokenize to {n} tokens")
        self.ctx = nn.Parameter(init)
        self.ctx_init = ctx_init
        self.class_names = list(class_names)
        tokens = model.to_tokens([f"{prefix} {c}" for c in self.class_names])
        if int(tokens.argmax(-1).min()) < n + 2:
            raise ModelInputError("a class prompt was truncated into the context positions")
        self.register_buffer("tokens", tokens, persistent=False)

    @property
    def n_ctx(self) -> int:
        return int(self.ctx.shape[0])

    def class_embeddings(self, model: Any, classes: Sequence[int] | None = None) -> torch.Tensor:
        """``[C, D]`` unit text embeddings of the prompts (all classes, or the ``classes`` rows),
        differentiable with respect to ``ctx``."""
        tokens = self.tokens if classes is None else self.tokens[list(classes)]
        n = self.n_ctx

        def put_ctx(x: torch.Tensor, hook: Any) -> torch.Tensor:
            ctx = self.ctx.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
            return torch.cat([x[:, :1], ctx, x[:, 1 + n:]], dim=1)

        emb = model.run_with_hooks(tokens.to(model.device),
                                   fwd_hooks=[("text.hook_embed", put_ctx)])
        return F.normalize(emb.float(), dim=-1)
