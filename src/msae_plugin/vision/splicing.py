"""SAE splicing for hooked CLIP models, reusing SAELens's ``HookedSAETransformer`` machinery.

SAELens's splicing methods (``add_sae``, ``saes()``, ``run_with_saes``,
``run_with_cache_with_saes``, ``run_with_hooks_with_saes``, ``reset_saes``) only need a
``HookedRootModule`` with hook points at dotted paths plus two dicts; they live on a
``HookedTransformer`` subclass for historical reasons. This mixin calls those very functions on
our model (no copy), and adds what vision needs:

* a clear error, not a logged warning, when an SAE's hook is missing or its ``d_in`` does not
  match the activation width at that hook;
* ``exclude_special_tokens`` meaning *bypass the CLS token* on the image tower (or a boolean
  position mask ``[seq]`` / ``[batch, seq]``, True = keep the original activation), and the
  tokenizer's special tokens on the text tower.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from msae_plugin.errors import ModelInputError, SAEModelMismatchError, UnknownHookError
from msae_plugin.vision.hook_names import TEXT_PREFIX, block_of, suggest, tower_of


def _hst() -> Any:
    from sae_lens.analysis.hooked_sae_transformer import HookedSAETransformer

    return HookedSAETransformer


def _position_mask(
    spec: torch.Tensor, batch: int, seq: int, what: str, unit: str, device: torch.device
) -> torch.Tensor:
    """``spec`` as a ``[batch, seq]`` bool mask, or :class:`ModelInputError` naming the shapes
    allowed (a wrong shape would otherwise fail deep inside SAELens's wrapper, or broadcast)."""
    if spec.dim() not in (1, 2) or spec.shape[-1] != seq or (
        spec.dim() == 2 and spec.shape[0] != batch
    ):
        raise ModelInputError(
            f"token mask has shape {tuple(spec.shape)} but the {what} in this batch have {seq} "
            f"{unit}: pass a boolean mask [{seq}] (same for every item) or [{batch}, {seq}]"
        )
    return spec.to(device=device, dtype=torch.bool).expand(batch, seq)


class SAESplicingMixin:
    """SAELens's splicing API on a non-language ``HookedRootModule``."""

    _acts_to_saes: dict[str, Any]
    _transcoder_output_hooks: dict[str, str]

    def _init_splicing(self) -> None:
        self._acts_to_saes = {}
        self._transcoder_output_hooks = {}

    # -------------------------------------------------------------- checks
    def activation_width(self, hook_name: str) -> int | None:
        """Width of the last axis an SAE sees at ``hook_name`` (q/k/v/z flattened over heads,
        as SAELens does for ``hook_z`` SAEs); ``None`` for attention scores / patterns."""
        text = tower_of(hook_name) == "text"
        base = hook_name[len(TEXT_PREFIX):] if text else hook_name
        tower = self.text if text else self  # type: ignore[attr-defined]
        layer = block_of(hook_name)
        if base.endswith(("hook_attn_scores", "hook_pattern")):
            return None
        if base.endswith(("hook_image_embed", "hook_text_embed")):
            return int(self.cfg.output_dim)  # type: ignore[attr-defined]
        if layer is not None:
            blk = tower.blocks[layer].borrowed
            if ".mlp.hook_" in base:
                return int(blk.mlp.c_fc.out_features)
            if base.endswith("hook_scale"):
                return 1
            return int(blk.attn.embed_dim)
        if text:
            return int(self.text.borrowed.transformer.width)  # type: ignore[attr-defined]
        return int(self.cfg.d_model)  # type: ignore[attr-defined]

    def check_sae(self, sae: Any) -> str:
        """Raise :class:`SAEModelMismatchError` unless ``sae`` fits this model; return its hook."""
        meta = sae.cfg.metadata
        hook = meta.hook_name
        if hook is None:
            raise SAEModelMismatchError(
                "the SAE has no metadata.hook_name; set sae.cfg.metadata.hook_name to the hook it "
                "was trained on (e.g. 'blocks.3.hook_resid_post')"
            )
        if hook not in self.hook_dict and hook not in self._acts_to_saes:  # type: ignore[attr-defined]
            raise UnknownHookError(
                f"the SAE was trained at hook {hook!r}, which this model "
                f"({self.model_name}) does not have.{suggest(hook, self.hook_dict)}"  # type: ignore[attr-defined]
            )
        width = self.activation_width(hook)
        if width is None:
            raise SAEModelMismatchError(
                f"SAEs cannot be spliced at {hook!r} (attention scores/patterns are per key "
                "position, not a feature vector)"
            )
        if int(sae.cfg.d_in) != width:
            raise SAEModelMismatchError(
                f"SAE d_in={sae.cfg.d_in} does not match the width {width} of {hook!r} in "
                f"{self.model_name}; this SAE was trained on a different model or hook "
                f"(metadata model_name={meta.model_name!r})"
            )
        trained_on = meta.model_name
        if trained_on and trained_on not in (self.model_name, "custom"):  # type: ignore[attr-defined]
            warnings.warn(
                f"SAE metadata says it was trained on {trained_on!r}; splicing it into "
                f"{self.model_name!r}",  # type: ignore[attr-defined]
                stacklevel=3,
            )
        return hook

    # -------------------------------------------------------------- SAELens's API
    def add_sae(
        self,
        sae: Any,
        use_error_term: bool | None = None,
        exclude_special_tokens: bool | list[int] | torch.Tensor = False,
    ) -> None:
        """Splice ``sae`` at its ``metadata.hook_name`` (SAELens ``HookedSAETransformer.add_sae``).

        ``exclude_special_tokens``: ``True`` bypasses the CLS token (image hooks) or the
        tokenizer's special tokens (text hooks); a boolean tensor ``[seq]`` or ``[batch, seq]``
        bypasses the positions marked True; a list of ints names token ids (text hooks)."""
        self.check_sae(sae)
        _hst().add_sae(self, sae, use_error_term=use_error_term,
                       exclude_special_tokens=exclude_special_tokens)

    def _reset_sae(self, act_name: str, prev_wrapper: Any = None) -> None:
        _hst()._reset_sae(self, act_name, prev_wrapper)

    def reset_saes(self, act_names: str | list[str] | None = None) -> None:
        _hst().reset_saes(self, act_names)

    @property
    def acts_to_saes(self) -> dict[str, Any]:
        """Hook name -> attached SAE (SAELens property)."""
        return _hst().acts_to_saes.fget(self)

    def saes(self, *args: Any, **kwargs: Any):
        """Context manager attaching SAEs for its body (SAELens ``saes()``)."""
        return _hst().saes(self, *args, **kwargs)

    def run_with_saes(self, *args: Any, **kwargs: Any) -> Any:
        return _hst().run_with_saes(self, *args, **kwargs)

    def run_with_cache_with_saes(self, *args: Any, **kwargs: Any) -> Any:
        return _hst().run_with_cache_with_saes(self, *args, **kwargs)

    def run_with_hooks_with_saes(self, *args: Any, **kwargs: Any) -> Any:
        return _hst().run_with_hooks_with_saes(self, *args, **kwargs)

    # -------------------------------------------------------------- token masks
    def _special_token_ids(self) -> list[int]:
        tok = self.tokenizer  # type: ignore[attr-defined]
        ids = {0}
        for attr in ("sot_token_id", "eot_token_id", "pad_token_id", "sot_id", "eot_id", "pad_id"):
            value = getattr(tok, attr, None)
            if isinstance(value, int):
                ids.add(value)
        return sorted(ids)

    def _mask_for(self, spec: Any, hook: str, input: torch.Tensor) -> torch.Tensor | None:
        if spec is False or spec is None:
            return None
        if tower_of(hook) != self.tower_for(input):  # type: ignore[attr-defined]
            return None
        batch = input.shape[0]
        if tower_of(hook) == "image":
            n_prompts = int(getattr(self, "n_prompt_tokens", 0))  # adaptation's visual prompts
            seq = self.cfg.n_ctx + n_prompts  # type: ignore[attr-defined]
            if spec is True:  # CLS and any appended prompt tokens are special
                mask = torch.zeros(batch, seq, dtype=torch.bool, device=input.device)
                mask[:, : self.cfg.n_prefix_tokens] = True  # type: ignore[attr-defined]
                if n_prompts:
                    mask[:, seq - n_prompts:] = True
                return mask
            if isinstance(spec, torch.Tensor):
                return _position_mask(spec, batch, seq, "images", "tokens (CLS + patches)",
                                      input.device)
            raise ModelInputError(
                "on image hooks exclude_special_tokens must be True/False or a boolean position "
                f"mask [{seq}] / [batch, {seq}], got {type(spec).__name__}"
            )
        if isinstance(spec, torch.Tensor):
            return _position_mask(spec, batch, input.shape[1], "captions", "tokens",
                                  input.device)
        ids = self._special_token_ids() if spec is True else list(spec)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ModelInputError(
                f"exclude_special_tokens as a list holds token ids (ints), got {ids!r}"
            )
        mask = torch.zeros_like(input, dtype=torch.bool)
        for token_id in ids:
            mask |= input == token_id
        return mask

    @contextlib.contextmanager
    def _sae_token_masks(self, input: Any) -> Iterator[None]:
        wrappers = [
            (hook, w) for hook, w in self._acts_to_saes.items()
            if w.exclude_special_tokens is not False
        ]
        for hook, wrapper in wrappers:
            wrapper.set_token_mask(self._mask_for(wrapper.exclude_special_tokens, hook, input))
        try:
            yield
        finally:
            for _, wrapper in wrappers:
                wrapper.set_token_mask(None)
