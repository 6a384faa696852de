"""``msae check PATH``: validate a checkpoint folder file by file, load it, and say what it holds.

The checks are :func:`msae_plugin.msae.checkpoint_check.validate_checkpoint` with
``check_values=True`` (every file of the folder, every tensor's name, shape and values), then a
load through the architecture's own ``load_from_disk`` (for ``msae``: the plugin's checked load)
and one forward pass on random input, which must give finite output. A problem raises a
:class:`~msae_plugin.errors.CheckpointError`; ``msae`` prints it as ``error: ...`` on stderr and
exits with status 2.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="validate an SAE checkpoint folder (cfg.json + safetensors, training files)",
        description="Validate every file of an SAE checkpoint folder (cfg.json fields, tensor "
        "names, shapes and NaN/inf values, sparsity.safetensors and training-checkpoint files "
        "when present), load it through SAELens and run one forward pass. Exit status 0 if it "
        "is sound, 2 with 'error: ...' on stderr if not.",
    )
    p.add_argument("path", help="folder holding cfg.json and sae_weights.safetensors")
    p.set_defaults(func=run)


def _load(arch: str, path: str) -> object:
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    registry = SAE_CLASS_REGISTRY if arch in SAE_CLASS_REGISTRY else SAE_TRAINING_CLASS_REGISTRY
    return registry[arch][0].load_from_disk(path)


def _smoke_forward(sae: object, path: str) -> None:
    import torch

    from msae_plugin.errors import CheckpointError

    d_in = sae.cfg.d_in  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, d_in, generator=g).to(device=sae.device, dtype=sae.dtype)  # type: ignore[attr-defined]
    with torch.no_grad():
        out = sae(x)  # type: ignore[operator]
    if not torch.isfinite(out).all():
        raise CheckpointError(
            f"the SAE in {path} loads, but its forward pass gives NaN/inf on random input "
            "although every stored tensor is finite (e.g. a zero input scale). Re-save it from "
            "a healthy training run."
        )


def run(args: argparse.Namespace) -> int:
    import msae_plugin
    from msae_plugin.msae.checkpoint_check import validate_checkpoint

    msae_plugin.register()
    report = validate_checkpoint(args.path, check_values=True)
    sae = _load(report.architecture, args.path)
    _smoke_forward(sae, args.path)

    cfg = sae.cfg  # type: ignore[attr-defined]
    print(f"{args.path}: ok")
    print(f"architecture: {report.architecture}  d_in={cfg.d_in}  d_sae={cfg.d_sae}  "
          f"dtype={cfg.dtype}")
    ladder = getattr(cfg, "ladder", None)
    if ladder:
        print(f"k ladder: {list(ladder)}  default_k: {cfg.default_k}")
    hook = cfg.metadata.hook_name
    if hook:
        print(f"hook: {hook}  model: {cfg.metadata.model_name}")
    n_values = sum(_numel(s) for s in report.tensors.values())
    print(f"checked: {', '.join(report.files)} ({len(report.tensors)} tensors, {n_values:,} "
          "values, all finite)")
    if report.trainer_state is not None:
        st = report.trainer_state
        print(f"training checkpoint: step {st['n_training_steps']}, "
              f"{st['n_training_samples']:,} samples seen")
    return 0


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
