"""Small builders several test modules share (importable as ``helpers``: pytest puts tests/ on
``sys.path``, and so does running a test file as a script)."""

from __future__ import annotations

import json
from pathlib import Path


def edit_cfg(path: Path, **changes: object) -> None:
    """Rewrite ``path/cfg.json`` with ``changes`` (a value of ``None`` deletes the field)."""
    cfg = json.loads((path / "cfg.json").read_text())
    for key, value in changes.items():
        if value is None:
            del cfg[key]
        else:
            cfg[key] = value
    (path / "cfg.json").write_text(json.dumps(cfg))


def tiny_clip(layers: int = 1, head_width: int = 16, seed: int = 0):
    """A randomly initialised 16×16-pixel OpenCLIP CLIP (width 32): seconds to build and run."""
    import torch
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    return CLIP(
        embed_dim=32,
        vision_cfg=dict(image_size=16, patch_size=4, width=32, layers=layers,
                        head_width=head_width),
        text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
    ).eval()
