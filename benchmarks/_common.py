"""Helpers shared by the benchmark scripts (machine info, JSON output, training, evaluation).

Everything here uses SAELens's own trainer (``SAETrainer`` + ``SAETrainerConfig``) with a plain
Python generator as the data provider, so the MSAE and the SAELens baselines are trained by the
same loop (forward, backward, grad-norm clipping at 1.0, Adam, LR schedule).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not available on this platform
        return []


def machine_info() -> dict[str, Any]:
    import sae_lens

    import msae_plugin

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "sae_lens": sae_lens.__version__,
        "msae_plugin": msae_plugin.__version__,
        "cuda_available": torch.cuda.is_available(),
        "load_average_1_5_15min": load_average(),
    }


def write_json(name: str, payload: dict[str, Any], out_dir: Path | None = None) -> Path:
    out_dir = out_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


@contextmanager
def timed(store: dict[str, Any], key: str):
    """Record wall time (s) and the load average at the end under ``store[key]``."""
    t0 = time.perf_counter()
    yield
    store[key] = {"seconds": round(time.perf_counter() - t0, 2), "load_average": load_average()}


# ---- data ---------------------------------------------------------------------------------
def cycle_batches(data: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless generator of (batch_size, d_in) batches: epochs over ``data``, each shuffled by a
    generator seeded with ``seed`` (so every model sees exactly the same stream)."""
    n = data.shape[0]
    if n < batch_size:
        raise ValueError(f"need at least one batch of data ({batch_size} rows), got {n}")
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1, batch_size):
            yield data[perm[i : i + batch_size]]


def sample_synthetic(
    model: Any,
    n: int,
    seed: int,
    chunk: int = 16384,
    noise_std: float = 0.0,
    desc: str = "",
    keep_features: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draw ``n`` rows of hidden activations (and, with ``keep_features``, the ground-truth
    feature activations) from a SAELens ``SyntheticModel`` with a fixed seed; optional isotropic
    Gaussian noise on the activations."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    xs, fs = [], []
    with tqdm(total=n, desc=desc or "sampling", unit="row", leave=False) as pbar:
        done = 0
        while done < n:
            m = min(chunk, n - done)
            x, f = model.sample_with_features(m)
            if noise_std > 0:
                x = x + noise_std * torch.randn_like(x)
            xs.append(x)
            if keep_features:
                fs.append(f.to_dense() if f.is_sparse else f)
            done += m
            pbar.update(m)
    return torch.cat(xs), (torch.cat(fs) if keep_features else None)


# ---- training -----------------------------------------------------------------------------
def make_trainer(
    sae: Any,
    data_provider: Iterator[torch.Tensor],
    batch_size: int,
    total_samples: int,
    lr: float,
    decay_frac: float = 0.2,
    n_batches_for_norm_estimate: int = 50,
    device: str = "cpu",
):
    """SAELens trainer with the paper's schedule shape: constant LR, then linear decay to 0 over
    the last ``decay_frac`` of the steps. No wandb, no checkpoints."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    steps = total_samples // batch_size
    cfg = SAETrainerConfig(
        total_training_samples=total_samples,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr,
        lr_scheduler_name="constant",
        lr_decay_steps=int(decay_frac * steps),
        device=device,
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=n_batches_for_norm_estimate,
    )
    return SAETrainer(cfg, sae, data_provider)


def train(
    sae: Any,
    data: torch.Tensor,
    batch_size: int,
    total_samples: int,
    lr: float,
    seed: int,
    desc: str = "",
) -> dict[str, Any]:
    """Train ``sae`` with SAETrainer.fit() on batches of ``data``; return timing info."""
    from tqdm.auto import tqdm

    provider = cycle_batches(data, batch_size, seed)
    trainer = make_trainer(sae, provider, batch_size, total_samples, lr)
    if getattr(sae.cfg, "normalize_activations", "none") == "expected_average_only_in":
        # SAELens's scaler, but estimated here (same formula, sqrt(d_in) / E||x||) so it does not
        # consume batches from the provider: every model then sees the identical batch stream.
        mean_norm = float(data[:65536].norm(dim=-1).mean())
        trainer.activation_scaler.scaling_factor = float(data.shape[1]) ** 0.5 / mean_norm
    # SAETrainer.fit() shows its own tqdm bar; label it via the description of a wrapper line
    if desc:
        tqdm.write(f"-- training {desc}")
    t0 = time.perf_counter()
    trainer.fit()
    sae.eval()
    return {
        "train_seconds": round(time.perf_counter() - t0, 2),
        "steps": trainer.n_training_steps,
        "samples": trainer.n_training_samples,
        "lr": lr,
        "load_average": load_average(),
    }


# ---- evaluation ---------------------------------------------------------------------------
@contextmanager
def topk_at(sae: Any, k: int):
    """Temporarily run a SAELens TopK SAE at inference TopK ``k`` (swaps its activation fn)."""
    from sae_lens.saes.topk_sae import TopK

    old = sae.activation_fn
    sae.activation_fn = TopK(k)
    try:
        yield sae
    finally:
        sae.activation_fn = old


def evaluate_plain(sae: Any, x: torch.Tensor, batch_size: int = 4096) -> dict[str, Any]:
    """``msae_plugin.metrics.evaluate_sae`` of a non-MSAE SAE (its own ``encode``); returns the
    single mode's result dict (reconstruction_quality / sparsity)."""
    from msae_plugin.metrics import evaluate_sae

    res = evaluate_sae(sae, x, ks=[None], batch_size=batch_size, cknna_samples=0)
    return res["relu"]


def row(res: dict[str, Any]) -> dict[str, float]:
    """Flatten one mode's result to {fvu, l0, cossim, explained_variance, dead_fraction}."""
    rq, sp = res["reconstruction_quality"], res["sparsity"]
    return {
        "fvu": rq["fvu"],
        "cossim": rq["cossim"],
        "explained_variance": rq["explained_variance"],
        "l0": sp["l0"],
        "dead_fraction": sp["dead_fraction"],
        "n_dead": sp["n_dead"],
    }


def print_table(headers: list[str], rows: list[list[Any]], fmt: Callable[[Any], str] | None = None
                ) -> str:
    """Render and print a simple fixed-width table; returns the text."""
    def f(v: Any) -> str:
        if fmt is not None:
            return fmt(v)
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[f(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    lines = [" | ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    text = "\n".join(lines)
    print(text)
    return text


# ---- small library-free helpers (B2's dataset options; tested in tests/test_b2_datasets.py) --
def parse_floats(text: str | list[float] | tuple[float, ...]) -> list[float]:
    """``"4e-3,1e-2"`` -> ``[0.004, 0.01]`` (a list passes through as floats). Refuses an empty
    grid, because a benchmark that tries no learning rate would silently train nothing."""
    values = [float(v) for v in text] if isinstance(text, (list, tuple)) else [
        float(v) for v in str(text).split(",") if v.strip()]
    if not values:
        raise ValueError(f"empty comma-separated list: {text!r}")
    return values


def parse_ints(text: str | list[int] | tuple[int, ...]) -> list[int]:
    """``"2,4,8"`` -> ``[2, 4, 8]``; refuses an empty list."""
    values = [int(v) for v in text] if isinstance(text, (list, tuple)) else [
        int(v) for v in str(text).split(",") if v.strip()]
    if not values:
        raise ValueError(f"empty comma-separated list: {text!r}")
    return values


def fvu_verdict(msae_fvu: float, topk_fvu: float, target: float) -> tuple[float, str]:
    """``(ratio, "PASS"|"FAIL")`` for the target ``msae_fvu <= target * topk_fvu``. The ratio's
    denominator is floored at 1e-12 so a perfect TopK gives a huge (not infinite) ratio."""
    ratio = msae_fvu / max(topk_fvu, 1e-12)
    return ratio, ("PASS" if msae_fvu <= target * topk_fvu else "FAIL")


def load_or_build_tensors(
    path: Path,
    key: dict[str, Any],
    build: Callable[[], dict[str, torch.Tensor]],
) -> tuple[dict[str, torch.Tensor], bool]:
    """Tensors cached in ``path`` under a JSON-able ``key`` (the settings that made them):
    returns ``(tensors, from_cache)``. A missing, unreadable or differently keyed file is
    rebuilt with ``build()`` and rewritten atomically (tmp file, then rename), so an interrupted
    run never leaves a half-written cache that a later run would trust."""
    want = json.loads(json.dumps(key, default=_json_default))
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("key") == want and isinstance(blob.get("tensors"), dict):
                return blob["tensors"], True
        except Exception:  # noqa: BLE001 - any unreadable cache is simply rebuilt
            pass
    tensors = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"key": want, "tensors": tensors}, tmp)
    tmp.replace(path)
    return tensors, False
