"""The hooked OpenCLIP text tower (``text.*`` hook names).

OpenCLIP keeps the text transformer either directly on the ``CLIP`` object (``token_embedding``,
``positional_embedding``, ``transformer``, ``ln_final``, ``text_projection``, ``attn_mask``) or in a
``TextTransformer`` at ``model.text`` (``CustomTextCLIP``). Both expose the same attribute names,
so this module borrows whichever object holds them.
"""

from __future__ import annotations

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint

from msae_plugin.errors import TextInputError
from msae_plugin.vision.components import HookedBlock, _Borrowing


class HookedTextTower(_Borrowing):
    """Text transformer with ``hook_embed``, ``hook_pos_embed``, ``blocks.{i}.*``,
    ``hook_ln_final`` and ``hook_text_embed`` (the pooled, projected text embedding)."""

    def __init__(self, parts: nn.Module, pool_type: str, eos_id: int | None) -> None:
        super().__init__(parts)
        self.pool_type = pool_type
        self.eos_id = eos_id
        self.context_length = int(parts.positional_embedding.shape[0])
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(HookedBlock(b) for b in parts.transformer.resblocks)
        self.hook_ln_final = HookPoint()
        self.hook_text_embed = HookPoint()

    def check_tokens(self, text: torch.Tensor) -> None:
        if text.dim() != 2:
            raise TextInputError(
                f"text tokens must be a [batch, seq] integer tensor, got shape {tuple(text.shape)}; "
                "tokenize strings with model.tokenizer(...)"
            )
        if text.shape[0] == 0:
            raise TextInputError("empty text batch: pass at least one tokenized caption")
        if text.shape[1] == 0:
            raise TextInputError(
                "token sequences of length 0: tokenize captions with model.to_tokens(...)"
            )
        if text.dtype not in (torch.int32, torch.int64):
            raise TextInputError(
                f"text tokens have dtype {text.dtype}; token ids must be int64 (or int32): "
                "tokenize with model.to_tokens(...) or convert with tokens.long()"
            )
        vocab = int(self.borrowed.token_embedding.num_embeddings)
        if text.min() < 0 or text.max() >= vocab:
            raise TextInputError(
                f"token ids must lie in 0..{vocab - 1} (the text tower's vocabulary), got "
                f"{int(text.min())}..{int(text.max())}; tokenize with this model's tokenizer "
                "(model.to_tokens(...))"
            )
        if text.shape[1] > self.context_length:
            raise TextInputError(
                f"token sequence of length {text.shape[1]} exceeds the text tower's context length "
                f"{self.context_length}; tokenize with context_length={self.context_length}"
            )

    def forward(self, text: torch.Tensor, stop_at_layer: int | None = None) -> torch.Tensor:
        from open_clip.transformer import text_global_pool

        self.check_tokens(text)
        p = self.borrowed
        cast_dtype = p.transformer.get_cast_dtype()
        seq = text.shape[1]
        x = self.hook_embed(p.token_embedding(text).to(cast_dtype))
        pos = p.positional_embedding[:seq].to(cast_dtype)
        x = x + self.hook_pos_embed(pos.unsqueeze(0).expand(x.shape[0], -1, -1))
        mask = p.attn_mask
        if mask is not None:
            mask = mask[:seq, :seq]
        blocks = self.blocks if stop_at_layer is None else self.blocks[:stop_at_layer]
        for block in blocks:
            x = block(x, attn_mask=mask)
        if stop_at_layer is not None:
            return x
        x = self.hook_ln_final(p.ln_final(x))
        pooled = text_global_pool(x, text, self.pool_type, eos_token_id=self.eos_id)
        proj = p.text_projection
        if proj is not None:
            pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        return self.hook_text_embed(pooled)
