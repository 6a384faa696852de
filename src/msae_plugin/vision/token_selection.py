"""Which token positions of each image an SAE is trained on.

A ViT image gives ``n_ctx`` tokens: the class token (CLS) at position 0, then one token per patch
(positions ``1..n_ctx-1``, row-major over the patch grid). :class:`TokenSelection` picks positions:

* ``"all"`` (CLS + patches, what ViT-Prisma recommends), ``"cls"`` (one vector per image),
  ``"patches"`` (spatial tokens only);
* an int (``5``, ``-1`` = last patch) or a Python-style slice string ``"a:b"`` / ``"a:b:step"``.

Unlike Python slicing, out-of-range positions are an error rather than silently clipped: a slice
written for a 197-token ViT-B/16 silently training on 50 tokens of a ViT-B/32 is a wasted run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NAMED = ("all", "cls", "patches")


class TokenSelectionError(ValueError):
    """A token selection that cannot be parsed or does not fit the model's token count."""


def _layout(n_ctx: int, n_prefix: int) -> str:
    if n_prefix == 1:
        return f"images have {n_ctx} tokens (CLS at 0, patches 1..{n_ctx - 1})"
    return (
        f"images have {n_ctx} tokens (prefix tokens 0..{n_prefix - 1}, patches "
        f"{n_prefix}..{n_ctx - 1})"
    )


@dataclass(frozen=True)
class TokenSelection:
    """A parsed token selection. Build with :meth:`parse`; ``str()`` gives back the spec."""

    kind: str  # "all" | "cls" | "patches" | "index" | "slice"
    start: int | None = None
    stop: int | None = None
    step: int | None = None

    # ------------------------------------------------------------------ parsing
    @classmethod
    def parse(cls, spec: TokenSelection | str | int) -> TokenSelection:
        """``"all"``, ``"cls"``, ``"patches"``, an int, or ``"a:b"`` / ``"a:b:step"``."""
        if isinstance(spec, TokenSelection):
            return spec
        if isinstance(spec, bool):  # bool is an int; True/False are certainly a mistake
            raise TokenSelectionError(f"token selection must be a string or an int, got {spec!r}")
        if isinstance(spec, int):
            return cls("index", start=spec)
        if not isinstance(spec, str):
            raise TokenSelectionError(
                f"token selection must be a string or an int, got {type(spec).__name__} {spec!r}"
            )
        text = spec.strip().lower()
        if text in NAMED:
            return cls(text)
        if ":" not in text:
            try:
                return cls("index", start=int(text))
            except ValueError:
                raise TokenSelectionError(
                    f"cannot parse token selection {spec!r}: use 'all', 'cls', 'patches', a "
                    "position (e.g. 0 or -1) or a slice 'start:stop[:step]' (e.g. '1:17')"
                ) from None
        parts = text.split(":")
        if len(parts) > 3:
            raise TokenSelectionError(
                f"cannot parse token selection {spec!r}: a slice has at most two colons"
            )
        try:
            nums = [int(p) if p.strip() else None for p in parts]
        except ValueError:
            raise TokenSelectionError(
                f"cannot parse token selection {spec!r}: slice bounds must be integers, e.g. "
                "'1:17' or '0:50:2'"
            ) from None
        nums += [None] * (3 - len(nums))
        start, stop, step = nums
        if step is not None and step < 1:
            raise TokenSelectionError(
                f"token selection {spec!r}: the step must be a positive integer, got {step}"
            )
        return cls("slice", start=start, stop=stop, step=step)

    def __str__(self) -> str:
        if self.kind in NAMED:
            return self.kind
        if self.kind == "index":
            return str(self.start)
        start = "" if self.start is None else self.start
        stop = "" if self.stop is None else self.stop
        text = f"{start}:{stop}"
        if self.step is not None:
            text += f":{self.step}"
        return text

    # ------------------------------------------------------------------ positions
    def positions(self, n_ctx: int, n_prefix: int = 1) -> list[int]:
        """The kept positions (ascending) for images of ``n_ctx`` tokens; raises if out of range."""
        if self.kind == "all":
            return list(range(n_ctx))
        if self.kind == "cls":
            return list(range(n_prefix))[:1]
        if self.kind == "patches":
            return list(range(n_prefix, n_ctx))
        if self.kind == "index":
            i = self.start if self.start >= 0 else n_ctx + self.start  # type: ignore[operator]
            if not 0 <= i < n_ctx:
                raise TokenSelectionError(
                    f"token selection {self} is out of range: {_layout(n_ctx, n_prefix)}; "
                    f"use a position in {-n_ctx}..{n_ctx - 1}"
                )
            return [i]
        start = 0 if self.start is None else self.start
        stop = n_ctx if self.stop is None else self.stop
        start = start + n_ctx if start < 0 else start
        stop = stop + n_ctx if stop < 0 else stop
        if not (0 <= start <= n_ctx and 0 <= stop <= n_ctx):
            raise TokenSelectionError(
                f"token selection {self} is out of range: {_layout(n_ctx, n_prefix)}; slice "
                f"bounds must lie in 0..{n_ctx} (e.g. '1:{n_ctx}' for all patches)"
            )
        kept = list(range(start, stop, self.step or 1))
        if not kept:
            raise TokenSelectionError(
                f"token selection {self} selects no tokens: {_layout(n_ctx, n_prefix)}"
            )
        return kept

    def validate(self, n_ctx: int, n_prefix: int = 1) -> None:
        """Raise :class:`TokenSelectionError` unless this selection fits ``n_ctx`` tokens."""
        self.positions(n_ctx, n_prefix)

    def tokens_per_image(self, n_ctx: int, n_prefix: int = 1) -> int:
        """How many tokens of each image are kept."""
        return len(self.positions(n_ctx, n_prefix))

    def to_slice(self, n_ctx: int, n_prefix: int = 1) -> slice | None:
        """The selection as a slice when it is one (``None`` otherwise); validates first."""
        kept = self.positions(n_ctx, n_prefix)
        step = kept[1] - kept[0] if len(kept) > 1 else 1
        if kept == list(range(kept[0], kept[-1] + 1, step)):
            return slice(kept[0], kept[-1] + 1, step)
        return None  # pragma: no cover - every kind above is an arithmetic progression

    def apply(self, acts: torch.Tensor, n_prefix: int = 1) -> torch.Tensor:
        """``[B, L, ...]`` activations -> ``[B, T, ...]`` at the kept positions (L = ``n_ctx``)."""
        if acts.dim() < 3:
            raise TokenSelectionError(
                f"token selection needs activations with a token axis [batch, tokens, ...], got "
                f"shape {tuple(acts.shape)}"
            )
        sl = self.to_slice(acts.shape[1], n_prefix)
        assert sl is not None
        return acts[:, sl]
