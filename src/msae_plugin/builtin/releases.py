"""Built-in plugin: the MSAEs trained on the embedded CLIP, as SAELens release
``msae-tiny-clip-msae`` (``SAE.from_pretrained("msae-tiny-clip-msae", "hook_image_embed")``)."""

from __future__ import annotations

from msae_plugin.hookspecs import hookimpl
from msae_plugin.specs import ReleaseSpec


@hookimpl
def msae_register_releases() -> list[ReleaseSpec]:
    import json

    from msae_plugin.releases import EMBEDDED_RELEASE, EMBEDDED_SAE_IDS, release_dir

    root = release_dir(EMBEDDED_RELEASE)
    ids = [i for i in EMBEDDED_SAE_IDS if (root / i / "cfg.json").is_file()]
    if not ids:  # weights not trained yet (scripts/train_embedded_msaes.py): nothing to offer
        return []
    # SAELens's directory fields from the training run's held-out figures (ReLU path)
    log_path = root / "training_log.json"
    log = json.loads(log_path.read_text()).get("saes", {}) if log_path.is_file() else {}
    relu = {i: log.get(i, {}).get("reconstruction", {}).get("relu", {}) for i in ids}
    return [
        ReleaseSpec(
            name=EMBEDDED_RELEASE,
            model="msae-tiny-clip",
            saes={i: i for i in ids},
            root=root,
            expected_var_explained={
                i: 1 - r["reconstruction_quality"]["fvu"] for i, r in relu.items() if r
            },
            expected_l0={i: r["sparsity"]["l0"] for i, r in relu.items() if r},
            description="Matryoshka SAEs on the embedded CLIP (scripts/train_embedded_msaes.py)",
        )
    ]
