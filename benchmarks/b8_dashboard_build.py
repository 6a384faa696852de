"""B8 — build time and size on disk of ``msae dashboard`` for d_sae = 4096 on the embedded model.

For each hook (``hook_image_embed``: one vector per image, no heat maps; and
``blocks.2.hook_resid_post``: 65 tokens per image, 8x8 heat maps) an MSAE with d_sae 4096 (ladder
8 ... 4096) is trained briefly with SAELens's ``SAETrainer`` on train-split scenes (not timed),
saved and loaded as an SAELens checkpoint, then ``build_dashboard`` runs on held-out scenes:
model forward, two encoding passes, names, neighbours, logit effects, card assembly and the
site's files (the timed part, as ``msae dashboard`` runs it, minus model loading).

Target (issue 11): build <= 60 s on 2 cores at d_sae = 4096.

    python benchmarks/b8_dashboard_build.py                 # both hooks, 2000 images (~4 min)
    python benchmarks/b8_dashboard_build.py --quick         # smoke test (d_sae 256, 200 images)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine_info, train, write_json  # noqa: E402

TARGET_SECONDS = 60.0
HOOKS = ("hook_image_embed", "blocks.2.hook_resid_post")


def training_activations(model, hook: str, n_images: int) -> torch.Tensor:
    from msae_plugin.embedded import make_digit_scenes

    images = model.preprocess(make_digit_scenes(n_images, "train", seed=11).images)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), 256):
            _, cache = model.run_with_cache(images[i:i + 256], names_filter=[hook])
            a = cache[hook]
            out.append(a[:, 1:].reshape(-1, a.shape[-1]) if a.dim() == 3 else a)
    return torch.cat(out)


def _phases(timings: dict[str, float]) -> dict[str, float]:
    """Cumulative phase end times (collect_dashboard's ``timings``) -> seconds per phase."""
    out, last = {}, 0.0
    for name, end in timings.items():
        out[name] = round(end - last, 2)
        last = end
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--n-images", type=int, default=2000)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.d_sae, args.n_images, args.train_steps = 256, 200, 20

    from sae_lens import SAE

    from msae_plugin.dashboard import collect_dashboard, site_size, write_site
    from msae_plugin.embedded import make_digit_scenes
    from msae_plugin.embedded.dataset import CLASS_NAMES
    from msae_plugin.msae.config import MSAETrainingSAEConfig
    from msae_plugin.msae.training_sae import MSAETrainingSAE
    from msae_plugin.vision import HookedOpenCLIP

    torch.manual_seed(0)
    model = HookedOpenCLIP.from_pretrained("msae-tiny-clip").eval()
    scenes = make_digit_scenes(args.n_images, "test", seed=0)
    images = model.preprocess(scenes.images)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for hook in HOOKS:
            data = training_activations(model, hook, 4000 if not args.quick else 300)
            sae = MSAETrainingSAE(MSAETrainingSAEConfig(d_in=data.shape[1], d_sae=args.d_sae,
                                                        k_start=8))
            batch = 1024 if hook != "hook_image_embed" else 256
            info = train(sae, data, batch, batch * args.train_steps, 1e-3, seed=0,
                         desc=f"MSAE d_sae {args.d_sae} at {hook}")
            sae.cfg.metadata.hook_name, sae.cfg.metadata.model_name = hook, "msae-tiny-clip"
            sae.save_inference_model(Path(tmp) / hook)
            loaded = SAE.load_from_disk(Path(tmp) / hook).eval()
            out = Path(tmp) / f"site-{hook}"
            t0 = time.perf_counter()  # what build_dashboard does, with the phases timed
            data = collect_dashboard(loaded, model, images, labels=scenes.labels,
                                     class_names=CLASS_NAMES, progress=False)
            t_write = time.perf_counter()
            write_site(out, data.meta, data.cards, data.thumbs)
            seconds = time.perf_counter() - t0
            phases = _phases(data.timings)
            phases["write"] = round(time.perf_counter() - t_write, 2)
            size = site_size(out)
            rows.append({"hook": hook, "d_sae": args.d_sae, "n_images": args.n_images,
                         "build_seconds": round(seconds, 1), "site_mb": round(size / 1e6, 2),
                         "n_files": sum(1 for p in out.rglob("*") if p.is_file()),
                         "pass": seconds <= TARGET_SECONDS, "phases_seconds": phases,
                         "train": info,
                         "load_average": load_average()})
            print(f"{hook}: build {seconds:.1f} s (target <= {TARGET_SECONDS:.0f} s), "
                  f"site {size / 1e6:.2f} MB, {rows[-1]['n_files']} files; phases {phases}")
    if not args.quick:
        path = write_json("b8_dashboard_build", {"machine": machine_info(), "rows": rows,
                                                 "target_seconds": TARGET_SECONDS})
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
