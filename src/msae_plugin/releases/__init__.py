"""SAEs shipped with msae-plugin, loadable through SAELens by release name.

``SAE.from_pretrained("msae-tiny-clip-msae", "hook_image_embed")`` resolves offline: the built-in
plugin :mod:`msae_plugin.builtin.releases` contributes this package's ``data/<release>/<sae_id>/``
folders (SAELens layout) through the ``msae_register_releases`` hook, and
:mod:`msae_plugin.releases.loader` reads them. Nothing here imports torch: the hook runs while
``sae_lens`` is being imported.
"""

from __future__ import annotations

from pathlib import Path

#: the shipped release: MSAEs trained on the embedded CLIP by scripts/train_embedded_msaes.py
EMBEDDED_RELEASE = "msae-tiny-clip-msae"
#: its sae_ids, which are also the hook names the SAEs read
EMBEDDED_SAE_IDS = ("hook_image_embed", "blocks.2.hook_resid_post")
DATA_DIR = Path(__file__).resolve().parent / "data"


def release_dir(release: str = EMBEDDED_RELEASE) -> Path:
    """The folder holding a shipped release's ``<sae_id>/`` sub-folders."""
    return DATA_DIR / release
