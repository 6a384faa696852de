"""Feed the ``msae`` command line a sweep of bad inputs and count how each one ends.

Why: "every failure a clear message" is a property of the whole CLI, not of one command, and it
regresses quietly (a new code path lets a library error through). This script runs every case
in-process through ``msae_plugin.cli.main`` and classifies the outcome:

* ``clear``     -- non-zero exit, an ``error: ...`` line on stderr, no traceback;
* ``traceback`` -- an exception escaped ``main`` (a user would see a raw traceback);
* ``accepted``  -- exit 0: the bad input was not noticed;
* ``timeout``   -- still running after ``--timeout`` seconds (work started before the check).

Usage: ``python scripts/bad_input_sweep.py [--out results.json] [--only SUBSTRING]``.
The per-row tests live in the test suite (see docs/reliability.md); this is the census.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = json.loads((ROOT / "configs" / "vision_msae_tiny.json").read_text())


class _Timeout(Exception):
    pass


class _Evil:
    """Unpickling this runs code: the sweep checks that nothing loads it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: D105
        return (os.system, (f"touch {self.marker}",))


def _write_config(tmp: Path, name: str, changes: dict, raw: str | None = None) -> str:
    path = tmp / name
    if raw is not None:
        path.write_text(raw)
        return str(path)
    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg["checkpoint_path"] = str(tmp / "ckpt" / name)
    cfg["output_path"] = str(tmp / "out" / name)
    cfg["training_tokens"] = 8192
    for key, value in changes.items():
        target = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        if value is _DELETE:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    path.write_text(json.dumps(cfg))
    return str(path)


_DELETE = object()


def _checkpoint(tmp: Path, name: str, mutate: Callable[[Path], None] | None = None) -> str:
    """A small valid msae checkpoint, optionally damaged by ``mutate``."""
    from sae_lens import SAE
    from sae_lens.registry import get_sae_class

    msae_cls, cfg_cls = get_sae_class("msae")
    sae = msae_cls(cfg_cls(d_in=16, d_sae=64, k_start=4, k_factor=2))
    path = tmp / name
    sae.save_model(path)
    assert isinstance(SAE.load_from_disk(str(path)), msae_cls)
    if mutate is not None:
        mutate(path)
    return str(path)


def _edit_cfg(**changes) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        cfg = json.loads((path / "cfg.json").read_text())
        for k, v in changes.items():
            if v is _DELETE:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        (path / "cfg.json").write_text(json.dumps(cfg))

    return mutate


def _nan_weights(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / "sae_weights.safetensors"))
    key = sorted(k for k in tensors if tensors[k].is_floating_point())[0]
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, str(path / "sae_weights.safetensors"))


def _evil_trainer_state(evil: Path) -> Callable[[Path], None]:
    """A training checkpoint whose trainer state is a pickle that would run a command."""

    def mutate(path: Path) -> None:
        (path / "trainer_state.pt").write_bytes(evil.read_bytes())
        (path / "activation_scaler.json").write_text("{}")

    return mutate


def _truncate(path: Path) -> None:
    data = (path / "sae_weights.safetensors").read_bytes()
    (path / "sae_weights.safetensors").write_bytes(data[: len(data) // 2])


def cases(tmp: Path) -> list[tuple[str, list[str]]]:
    """(description, argv) for every bad input of the sweep."""
    a_file = tmp / "a_file"
    a_file.write_text("not a folder")
    under_file = str(a_file / "sub")
    evil_marker = tmp / "PWNED"
    evil = tmp / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump(_Evil(str(evil_marker)), fh)
    evil_ckpt = tmp / "evil_ckpt"
    evil_ckpt.mkdir()
    (evil_ckpt / "trainer_state.pt").write_bytes(evil.read_bytes())
    (evil_ckpt / "sae_weights.safetensors").write_bytes(b"")
    for name, tensor in {
        "nan_act.pt": torch.full((32,), float("nan")),
        "zero_act.pt": torch.zeros(32),
        "wide_act.pt": torch.randn(33),
        "matrix_act.pt": torch.randn(2, 32),
    }.items():
        torch.save(tensor, tmp / name)

    def cfg(name: str, **changes) -> str:
        return _write_config(tmp, name + ".json", changes)

    train = [
        ("train: config file missing", ["train", str(tmp / "missing.json")]),
        ("train: config is a folder", ["train", str(tmp)]),
        ("train: YAML with a tab", ["train", _write_config(tmp, "tab.yaml", {}, raw="sae:\n\td_in: 96\n")]),
        ("train: invalid JSON", ["train", _write_config(tmp, "bad.json", {}, raw="{\"sae\": ")]),
        ("train: empty config file", ["train", _write_config(tmp, "empty.json", {}, raw="")]),
        ("train: config is a list", ["train", _write_config(tmp, "list.json", {}, raw="[1, 2]")]),
        ("train: training_tokens 'lots'", ["train", cfg("tt_str", training_tokens="lots")]),
        ("train: training_tokens 8192.5", ["train", cfg("tt_frac", training_tokens=8192.5)]),
        ("train: training_tokens negative", ["train", cfg("tt_neg", training_tokens=-4096)]),
        ("train: lr 'fast'", ["train", cfg("lr_str", lr="fast")]),
        ("train: lr negative", ["train", cfg("lr_neg", lr=-1e-3)]),
        ("train: lr NaN", ["train", _write_config(tmp, "lr_nan.json", {}, raw=json.dumps({**BASE_CONFIG, "lr": float("nan")}))]),
        ("train: sae.d_in '96'", ["train", cfg("din_str", **{"sae.d_in": "96"})]),
        ("train: sae.d_in wrong width", ["train", cfg("din_wrong", **{"sae.d_in": 128})]),
        ("train: sae.d_sae 0", ["train", cfg("dsae0", **{"sae.d_sae": 0})]),
        ("train: sae.k_start 0", ["train", cfg("k0", **{"sae.k_start": 0})]),
        ("train: sae.k_factor 1", ["train", cfg("kf1", **{"sae.k_factor": 1})]),
        ("train: sae.k_start > d_sae", ["train", cfg("kbig", **{"sae.k_start": 4096})]),
        ("train: sae.weighting 'XX'", ["train", cfg("wXX", **{"sae.weighting": "XX"})]),
        ("train: sae.architecture unknown", ["train", cfg("arch", **{"sae.architecture": "msea"})]),
        ("train: sae missing d_sae", ["train", cfg("nodsae", **{"sae.d_sae": _DELETE})]),
        ("train: unknown field", ["train", cfg("unk", lrr=1e-3)]),
        ("train: hook_name typo", ["train", cfg("hook", hook_name="blocks.2.hook_resid_pots")]),
        ("train: hook beyond the model", ["train", cfg("hook9", hook_name="blocks.9.hook_resid_post")]),
        ("train: token_selection bogus", ["train", cfg("toksel", token_selection="bogus")]),
        ("train: model_name unknown", ["train", cfg("model", model_name="no-such-clip")]),
        ("train: model_class_name unknown", ["train", cfg("mcls", model_class_name="HookedNothing")]),
        ("train: dataset_path missing", ["train", cfg("data", dataset_path=str(tmp / "no_images"))]),
        ("train: device cuda without GPU", ["train", cfg("cuda", device="cuda")]),
        ("train: dtype float8", ["train", cfg("dtype", dtype="float8")]),
        ("train: train_batch_size_tokens 0", ["train", cfg("bs0", train_batch_size_tokens=0)]),
        ("train: output_path under a file", ["train", cfg("outfile", output_path=under_file)]),
        ("train: checkpoint_path under a file", ["train", cfg("ckfile", checkpoint_path=under_file)]),
        ("train: --override without '='", ["train", cfg("ov1"), "--override", "lr"]),
        ("train: --override unknown key", ["train", cfg("ov2"), "--override", "sae.d_inn=3"]),
        ("train: --resume missing folder", ["train", cfg("res1"), "--resume", str(tmp / "nope")]),
        ("train: --resume malicious pickle", ["train", cfg("res2"), "--resume", str(evil_ckpt)]),
    ]
    if torch.cuda.is_available():
        train = [c for c in train if "cuda" not in c[0]]
    check = [
        ("check: missing path", ["check", str(tmp / "nothing")]),
        ("check: a file, not a folder", ["check", str(a_file)]),
        ("check: empty folder", ["check", str(Path(tempfile.mkdtemp(dir=tmp)))]),
        ("check: cfg.json missing d_sae", ["check", _checkpoint(tmp, "c_nodsae", _edit_cfg(d_sae=_DELETE))]),
        ("check: unknown architecture", ["check", _checkpoint(tmp, "c_arch", _edit_cfg(architecture="msea"))]),
        ("check: d_sae not matching weights", ["check", _checkpoint(tmp, "c_dsae", _edit_cfg(d_sae=128))]),
        ("check: d_in '16' as a string", ["check", _checkpoint(tmp, "c_din", _edit_cfg(d_in="16"))]),
        ("check: NaN weights", ["check", _checkpoint(tmp, "c_nan", _nan_weights)]),
        ("check: truncated weights", ["check", _checkpoint(tmp, "c_trunc", _truncate)]),
        ("check: garbage cfg.json", ["check", _checkpoint(tmp, "c_garbage", lambda p: (p / "cfg.json").write_text("{]"))]),
        ("check: malicious trainer_state.pt", ["check", _checkpoint(tmp, "c_evil", _evil_trainer_state(evil))]),
        ("check: weights missing", ["check", _checkpoint(tmp, "c_now", lambda p: (p / "sae_weights.safetensors").unlink())]),
    ]
    ablate = [
        ("ablate-heads: --top -2", ["ablate-heads", "--top", "-2", "--n-images", "8", "--out", str(tmp / "ab1"), "--no-progress"]),
        ("ablate-heads: --n-images 0", ["ablate-heads", "--n-images", "0", "--out", str(tmp / "ab2"), "--no-progress"]),
        ("ablate-heads: --n-images -5", ["ablate-heads", "--n-images", "-5", "--out", str(tmp / "ab3"), "--no-progress"]),
        ("ablate-heads: --batch-size 0", ["ablate-heads", "--batch-size", "0", "--n-images", "8", "--out", str(tmp / "ab4"), "--no-progress"]),
        ("ablate-heads: --layers 99", ["ablate-heads", "--layers", "99", "--n-images", "8", "--out", str(tmp / "ab5"), "--no-progress"]),
        ("ablate-heads: --out under a file", ["ablate-heads", "--n-images", "8", "--out", under_file, "--no-progress"]),
        ("ablate-heads: --model unknown", ["ablate-heads", "--model", "no-such-clip", "--n-images", "8", "--out", str(tmp / "ab6"), "--no-progress"]),
    ]
    iv = "123+456=579"
    inversion = [
        ("inversionview: --site typo", ["inversionview", iv, "--site", "blocks.0.hook_resid_pots", "--n", "4"]),
        ("inversionview: head out of range", ["inversionview", iv, "--site", "blocks.0.attn.hook_result.9", "--n", "4"]),
        ("inversionview: --position 99", ["inversionview", iv, "--site", "blocks.0.hook_resid_post", "--position", "99", "--n", "4"]),
        ("inversionview: malformed input", ["inversionview", "12+3", "--site", "blocks.0.hook_resid_post", "--n", "4"]),
        ("inversionview: foreign characters", ["inversionview", "abc+def=ghi", "--site", "blocks.0.hook_resid_post", "--n", "4"]),
        ("inversionview: --n 0", ["inversionview", iv, "--site", "blocks.0.hook_resid_post", "--n", "0"]),
        ("inversionview: --n -3", ["inversionview", iv, "--site", "blocks.0.hook_resid_post", "--n", "-3"]),
        ("inversionview: --epsilon 0", ["inversionview", iv, "--site", "blocks.0.hook_resid_post", "--epsilon", "0", "--n", "4"]),
        ("inversionview: --epsilon -1", ["inversionview", iv, "--site", "blocks.0.hook_resid_post", "--epsilon", "-1", "--n", "4"]),
        ("inversionview: --activation NaN", ["inversionview", "--activation", str(tmp / "nan_act.pt"), "--site", "blocks.0.hook_resid_post", "--n", "4"]),
        ("inversionview: --activation all zeros", ["inversionview", "--activation", str(tmp / "zero_act.pt"), "--site", "blocks.0.hook_resid_post", "--n", "4"]),
        ("inversionview: --activation wrong width", ["inversionview", "--activation", str(tmp / "wide_act.pt"), "--site", "blocks.0.hook_resid_post", "--n", "4"]),
        ("inversionview: --activation 2-D", ["inversionview", "--activation", str(tmp / "matrix_act.pt"), "--site", "blocks.0.hook_resid_post", "--n", "4"]),
        ("inversionview: --activation malicious pickle", ["inversionview", "--activation", str(evil), "--site", "blocks.0.hook_resid_post", "--n", "4"]),
        ("inversionview: --activation missing", ["inversionview", "--activation", str(tmp / "none.pt"), "--site", "blocks.0.hook_resid_post", "--n", "4"]),
        ("inversionview: --html under a file", ["inversionview", iv, "--site", "blocks.0.hook_resid_post", "--n", "4", "--html", under_file + "/v.html"]),
        ("inversionview: --decoder-dir missing", ["inversionview", iv, "--site", "blocks.0.hook_resid_post", "--n", "4", "--decoder-dir", str(tmp / "nodec")]),
        ("inversionview: --release unknown", ["inversionview", iv, "--release", "multiplication", "--site", "blocks.0.hook_resid_post", "--n", "4"]),
        ("inversionview: no input and no --activation", ["inversionview", "--site", "blocks.0.hook_resid_post"]),
    ]
    demo = [
        ("demo: --out under a file", ["demo", "--out", under_file, "--tokens", "4096"]),
        ("demo: --tokens 0", ["demo", "--out", str(tmp / "d1"), "--tokens", "0"]),
        ("demo: --samples -1 (synthetic)", ["demo", "--synthetic", "--out", str(tmp / "d2"), "--samples", "-1"]),
        ("demo: --seed 'x'", ["demo", "--out", str(tmp / "d3"), "--seed", "x"]),
    ]
    release_sae = str(ROOT / "src" / "msae_plugin" / "releases" / "data" / "msae-tiny-clip-msae"
                      / "hook_image_embed")
    (tmp / "empty_vocab.txt").write_text("\n# nothing\n")
    newer = [
        ("convert: reference file missing", ["convert", str(tmp / "nope.pt"), str(tmp / "cv1")]),
        ("convert: malicious pickle", ["convert", str(evil), str(tmp / "cv2")]),
        ("convert: not a reference state dict", ["convert", str(tmp / "nan_act.pt"), str(tmp / "cv3")]),
        ("convert: OUT_DIR under a file", ["convert", str(tmp / "zero_act.pt"), under_file]),
        ("concepts: SAE folder missing", ["concepts", str(tmp / "no_sae"), "--out", str(tmp / "co1")]),
        ("concepts: empty vocabulary", ["concepts", release_sae, "--vocab", str(tmp / "empty_vocab.txt"), "--out", str(tmp / "co2")]),
        ("concepts: --out under a file", ["concepts", release_sae, "--out", under_file]),
        ("probes: unknown property", ["probes", "--properties", "digt", "--out", str(tmp / "p1")]),
        ("probes: --out under a file", ["probes", "--out", under_file]),
        ("bias: --out under a file", ["bias", "--out", under_file]),
        ("bias: --n-images 0", ["bias", "--n-images", "0", "--out", str(tmp / "b1")]),
        ("bias: unknown concept", ["bias", "--concept", "rd", "--out", str(tmp / "b2")]),
    ]
    other = [
        ("msae: unknown subcommand", ["trian"]),
        ("msae: no subcommand", []),
    ]
    return train + check + ablate + inversion + demo + newer + other


def run_case(argv: list[str], timeout: float) -> tuple[str, int | None, str]:
    """Run ``msae ARGV`` in-process; return (outcome, exit code, first stderr line / error)."""
    from msae_plugin.cli import main

    out, err = io.StringIO(), io.StringIO()

    def _alarm(signum, frame):  # noqa: ARG001
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(timeout))
    code: int | None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except _Timeout:
        return "timeout", None, f"still running after {timeout:.0f} s"
    except BaseException as exc:  # noqa: BLE001 - this is what a user would see as a traceback
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(tb.filename).name}:{tb.lineno}"
        return "traceback", None, f"{type(exc).__name__} at {where}: {str(exc)[:160]}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    stderr = err.getvalue()
    lines = [ln for ln in stderr.splitlines() if "error" in ln.lower()]
    first = (lines[-1] if lines else stderr.strip().splitlines()[-1:] or [""])
    first = first if isinstance(first, str) else (first[0] if first else "")
    if code == 0:
        return "accepted", 0, out.getvalue().strip().splitlines()[-1:][0][:160] if out.getvalue().strip() else ""
    if "Traceback" in stderr or not lines:
        stdout_tail = out.getvalue().strip().splitlines()[-1:]
        return "unclear", code, (first or (stdout_tail[0] if stdout_tail else ""))[:200]
    return "clear", code, first[:200]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the per-case results as JSON here")
    parser.add_argument("--only", help="run only cases whose description contains this")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    os.environ.setdefault("MSAE_NO_PROGRESS", "1")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            results = []
            for desc, case_argv in cases(tmp):
                if args.only and args.only not in desc:
                    continue
                t0 = time.perf_counter()
                outcome, code, message = run_case(case_argv, args.timeout)
                dt = time.perf_counter() - t0
                results.append({"case": desc, "outcome": outcome, "exit": code,
                                "message": message, "seconds": round(dt, 2)})
                print(f"{outcome:9s} {dt:6.1f}s  {desc}: {message}", flush=True)
            pwned = (tmp / "PWNED").exists()
        finally:
            os.chdir(cwd)
    counts: dict[str, int] = {}
    for r in results:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    print(f"\n{len(results)} bad inputs: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    print(f"malicious pickle executed: {pwned}")
    if args.out:
        Path(args.out).write_text(json.dumps({"counts": counts, "pickle_executed": pwned,
                                              "results": results}, indent=1))
    return 0 if counts.get("clear", 0) == len(results) and not pwned else 1


if __name__ == "__main__":
    sys.exit(main())
