"""The ``msae`` command line's error policy end to end, and ``msae check`` on good and bad folders.

Known (user-fixable) errors: ``error: <message>`` on stderr, no traceback, exit status 2.
Bugs (any other exception) keep their traceback. ``--debug`` / ``MSAE_DEBUG=1`` show tracebacks.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import edit_cfg
from safetensors.torch import load_file, save_file

from msae_plugin.cli import is_known_error, main
from msae_plugin.errors import CheckpointError, MSAEConfigError

MSAE_BIN = Path(sys.executable).parent / "msae"


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    import msae_plugin
    from msae_plugin.msae.config import MSAEConfig
    from msae_plugin.msae.sae import MSAE

    msae_plugin.register()
    torch.manual_seed(0)
    MSAE(MSAEConfig(d_in=8, d_sae=32, k_start=4)).save_model(tmp_path / "ckpt")
    return tmp_path / "ckpt"


@pytest.fixture
def training_ckpt(tmp_path: Path) -> Path:
    """A real SAELens training checkpoint (SAETrainer with checkpoint_path)."""
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    import msae_plugin
    from msae_plugin.msae.config import MSAETrainingSAEConfig
    from msae_plugin.msae.training_sae import MSAETrainingSAE

    msae_plugin.register()
    torch.manual_seed(0)
    sae = MSAETrainingSAE(MSAETrainingSAEConfig(d_in=8, d_sae=32, k_start=4))

    def provider():
        while True:
            yield torch.randn(16, 8)

    cfg = SAETrainerConfig(total_training_samples=64, train_batch_size_samples=16, lr_end=1e-4,
                           checkpoint_path=str(tmp_path / "run"), n_checkpoints=1)
    SAETrainer(cfg, sae, provider()).fit()
    (folder,) = [p for p in (tmp_path / "run").iterdir() if p.is_dir()]
    return folder


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------------- msae check
def test_check_good_checkpoint(ckpt: Path, capsys) -> None:
    rc, out, err = run_cli(capsys, "check", str(ckpt))
    assert rc == 0 and err == ""
    assert f"{ckpt}: ok" in out
    assert "architecture: msae  d_in=8  d_sae=32" in out
    assert "k ladder: [4, 8, 16, 32]" in out
    # 7 tensors: W_enc 8x32, W_dec 32x8, b_enc 32, b_dec 8, input_mean 8, input_scale, fitted
    assert f"(7 tensors, {8 * 32 * 2 + 32 + 8 + 8 + 1 + 1:,} values, all finite)" in out


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_check_refuses_non_finite_weights(ckpt: Path, capsys, bad: float) -> None:
    tensors = load_file(ckpt / "sae_weights.safetensors")
    tensors["W_dec"][5, 2] = bad
    save_file(tensors, ckpt / "sae_weights.safetensors")
    rc, out, err = run_cli(capsys, "check", str(ckpt))
    kind = "NaN" if bad != bad else "inf"
    assert rc == 2 and out == ""
    assert err.startswith("error: tensor 'W_dec'")
    assert f"1 non-finite value(s) ({kind}) out of 256" in err


def test_check_reports_a_forward_that_raises(ckpt: Path, capsys, monkeypatch) -> None:
    from msae_plugin.msae.sae import MSAE

    def broken(self, x):
        raise IndexError("boom")

    monkeypatch.setattr(MSAE, "forward", broken)
    rc, _, err = run_cli(capsys, "check", str(ckpt))
    assert rc == 2 and "forward pass on random input fails (IndexError: boom)" in err


def test_check_refuses_sae_whose_forward_is_not_finite(ckpt: Path, capsys) -> None:
    tensors = load_file(ckpt / "sae_weights.safetensors")
    tensors["input_scale"] = torch.zeros_like(tensors["input_scale"])  # finite, but x / 0
    tensors["input_stats_fitted"] = torch.ones_like(tensors["input_stats_fitted"])
    save_file(tensors, ckpt / "sae_weights.safetensors")
    rc, _, err = run_cli(capsys, "check", str(ckpt))
    assert rc == 2 and "forward pass gives NaN/inf on random input" in err


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.rename(p.parent / "gone"), "checkpoint folder .* does not exist"),
        (lambda p: (p / "cfg.json").unlink(), "cfg.json is missing from"),
        (lambda p: [(p / "cfg.json").unlink(), (p / "cfg.json").mkdir()],
         "cfg.json is a folder, not a file"),
        (lambda p: (p / "cfg.json").write_text("{"), "cfg.json is not valid JSON"),
        (lambda p: (p / "sae_weights.safetensors").write_bytes(b"\x00" * 10),
         "sae_weights.safetensors cannot be read as safetensors"),
        (lambda p: edit_cfg(p, architecture="msea"), "'msea'.*Did you mean 'msae'"),
        (lambda p: edit_cfg(p, d_sae=64), r"tensor 'W_\w+' .* implies"),
        (lambda p: edit_cfg(p, d_in=None), r"missing required field\(s\) \['d_in'\]"),
        (lambda p: save_file({"sparsity": torch.zeros(31)}, p / "sparsity.safetensors"),
         r"'sparsity' in .* has shape \[31\], expected \[32\]"),
        (lambda p: save_file({"sparsity": torch.full((32,), float("nan"))},
                             p / "sparsity.safetensors"), "tensor 'sparsity'.*NaN"),
    ],
)
def test_check_bad_folders(ckpt: Path, capsys, damage, message) -> None:
    import re

    damage(ckpt)
    rc, out, err = run_cli(capsys, "check", str(ckpt))
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and re.search(message, err), err
    assert "Traceback" not in err


def test_check_sparsity_may_hold_minus_inf(ckpt: Path, capsys) -> None:
    """log10 of a density of 0 (a latent that never fired) is -inf, not damage."""
    s = torch.zeros(32)
    s[3] = float("-inf")
    save_file({"sparsity": s}, ckpt / "sparsity.safetensors")
    rc, out, _ = run_cli(capsys, "check", str(ckpt))
    assert rc == 0 and "checked: cfg.json, sae_weights.safetensors, sparsity.safetensors" in out


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


class _Evil:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_check_training_checkpoint(training_ckpt: Path, capsys) -> None:
    rc, out, _ = run_cli(capsys, "check", str(training_ckpt))
    assert rc == 0
    assert "trainer_state.pt" in out and "activation_scaler.json" in out
    state = torch.load(training_ckpt / "trainer_state.pt", weights_only=True)
    assert state["n_training_samples"] == int(training_ckpt.name)  # SAELens names it so
    assert (f"training checkpoint: step {state['n_training_steps']}, "
            f"{state['n_training_samples']:,} samples seen") in out


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: _truncate(p / "trainer_state.pt"), r"cannot load .*trainer_state.pt"),
        (lambda p: torch.save({"x": _Evil()}, p / "trainer_state.pt"),
         r"refusing to load .*trainer_state.pt: it holds Python objects .*\(it names builtins\.print\)"),
        (lambda p: torch.save({"n_training_steps": 1}, p / "trainer_state.pt"),
         r"trainer_state.pt lacks \['optimizer'"),
        (lambda p: (p / "activation_scaler.json").unlink(),
         "incomplete: activation_scaler.json is missing"),
        (lambda p: (p / "activation_scaler.json").write_text("[1"),
         "activation_scaler.json is not valid JSON"),
        (lambda p: (p / "runner_cfg.json").write_text("[]"), "must hold a JSON object"),
        (lambda p: (p / "vision_provider_state.json").write_text("{}"),
         "lacks runner_cfg.json"),  # a vision training checkpoint must be complete
        (lambda p: [(p / n).write_text("{}") for n in ("vision_provider_state.json",
                                                       "runner_cfg.json")],
         "vision_provider_state.json lacks images_consumed"),
    ],
)
def test_check_bad_training_files(training_ckpt: Path, capsys, damage, message) -> None:
    import re

    damage(training_ckpt)
    rc, out, err = run_cli(capsys, "check", str(training_ckpt))
    assert rc == 2 and re.search(message, err), err
    assert "code ran" not in out


# ----------------------------------------------------------------------------- error policy
def _raise_from_check(monkeypatch, exc: BaseException) -> None:
    import msae_plugin.commands.check as check

    def run(args):
        raise exc

    monkeypatch.setattr(check, "run", run)


def test_known_error_is_one_line_on_stderr(monkeypatch, capsys) -> None:
    _raise_from_check(monkeypatch, MSAEConfigError("k_start=0 must be positive; pass k_start=1"))
    rc, out, err = run_cli(capsys, "check", "x")
    assert (rc, out, err) == (2, "", "error: k_start=0 must be positive; pass k_start=1\n")


def test_debug_flag_and_env_show_the_traceback(monkeypatch, capsys) -> None:
    _raise_from_check(monkeypatch, CheckpointError("bad"))
    with pytest.raises(CheckpointError, match="bad"):
        main(["--debug", "check", "x"])
    with pytest.raises(CheckpointError, match="bad"):
        main(["check", "x", "--debug"])
    monkeypatch.setenv("MSAE_DEBUG", "1")
    with pytest.raises(CheckpointError, match="bad"):
        main(["check", "x"])


def test_bugs_keep_their_traceback(monkeypatch) -> None:
    _raise_from_check(monkeypatch, TypeError("a bug"))
    with pytest.raises(TypeError, match="a bug"):
        main(["check", "x"])


def test_which_errors_count_as_known() -> None:
    from msae_plugin.vision.loading import PretrainedUnavailableError

    try:
        from msae_plugin.vision.config_files import VisionConfigError
    except ImportError:  # before the training split
        from msae_plugin.vision.training import VisionConfigError  # type: ignore[no-redef]

    for exc in (MSAEConfigError("x"), VisionConfigError("x"), PretrainedUnavailableError("x"),
                FileNotFoundError(2, "No such file", "a.json"), PermissionError("x"),
                IsADirectoryError("x"), NotADirectoryError("x")):
        assert is_known_error(exc), exc
    for exc in (TypeError("x"), RuntimeError("x"), ValueError("x"), KeyError("x")):
        assert not is_known_error(exc), exc


@pytest.mark.slow  # a fresh interpreter imports torch + sae_lens (~5-20 s)
def test_entry_point_subprocess(tmp_path: Path) -> None:
    """The installed ``msae`` script: stderr, exit 2, no traceback."""
    cmd = [str(MSAE_BIN)] if MSAE_BIN.exists() else [sys.executable, "-m", "msae_plugin.cli"]
    proc = subprocess.run([*cmd, "check", str(tmp_path / "nope")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: checkpoint folder {tmp_path / 'nope'} does not exist")
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- msae demo
def test_demo_checks_before_work(tmp_path: Path, monkeypatch, capsys) -> None:
    import msae_plugin.demo.synthetic as synthetic
    import msae_plugin.demo.vision as vision

    def no_work(*a, **k):
        raise AssertionError("the demo started before its arguments were checked")

    monkeypatch.setattr(vision, "run_vision_demo", no_work)
    monkeypatch.setattr(synthetic, "run_demo", no_work)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _, err = run_cli(capsys, "demo", "--out", str(blocker / "out"))
    assert rc == 2 and f"{blocker} is a file, not a folder" in err
    rc, _, err = run_cli(capsys, "demo", "--synthetic", "--out", str(blocker))
    assert rc == 2 and f"--out {blocker} is a file, not a folder" in err
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "msae_vision_checkpoint").write_text("in the way")
    rc, _, err = run_cli(capsys, "demo", "--out", str(tmp_path / "o"))
    assert rc == 2 and "msae_vision_checkpoint is a file, but the command writes a folder" in err
    (tmp_path / "o" / "msae_demo_metrics.json").mkdir()
    rc, _, err = run_cli(capsys, "demo", "--synthetic", "--out", str(tmp_path / "o"))
    assert rc == 2 and "msae_demo_metrics.json is a folder, but the command writes a file" in err
    rc, _, err = run_cli(capsys, "demo", "--tokens", "5", "--out", str(tmp_path / "o"))
    assert rc == 2 and "--tokens 5 is less than one training batch; pass at least 4096" in err
    rc, _, err = run_cli(capsys, "demo", "--synthetic", "--samples", "10", "--out",
                         str(tmp_path / "o"))
    assert rc == 2 and "pass at least 1024" in err
    for args in (["--tokens", "-5"], ["--samples", "0"], ["--seed", "-1"]):
        with pytest.raises(SystemExit) as exc:
            main(["demo", *args])
        assert exc.value.code == 2


def test_unwritable_output_folder(tmp_path: Path, capsys, monkeypatch) -> None:
    """A read-only --out is refused before any work. Root can write through chmod 0500, so
    there the write probe is made to fail the way the kernel fails it for other users."""
    import os
    import tempfile

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    try:
        rc, _, err = run_cli(capsys, "ablate-heads", "--out", str(locked / "x"))
        assert rc == 2 and "is not writable (Permission denied)" in err
    finally:
        locked.chmod(0o700)


def test_demo_has_one_home() -> None:
    import importlib.util

    import msae_plugin.demo as demo

    assert demo.run_vision_demo.__module__ == "msae_plugin.demo.vision"
    assert demo.run_demo.__module__ == "msae_plugin.demo.synthetic"
    for old in ("msae_plugin.vision_demo",):
        assert importlib.util.find_spec(old) is None
    assert pickle.loads(pickle.dumps(demo.DemoConfig())) == demo.DemoConfig()


def test_check_vision_training_checkpoint(tmp_path: Path, capsys, monkeypatch) -> None:
    """A checkpoint written by the vision runner passes, including the trainer's own
    validate_training_checkpoint; then one damaged provider field is named."""
    from open_clip.model import CLIP

    from msae_plugin.msae.config import MSAETrainingSAEConfig
    from msae_plugin.vision.hooked_clip import HookedOpenCLIP
    from msae_plugin.vision.training import VisionSAERunnerConfig, VisionSAETrainingRunner

    monkeypatch.setenv("WANDB_MODE", "disabled")
    torch.manual_seed(0)
    clip = CLIP(embed_dim=16, vision_cfg=dict(image_size=16, patch_size=8, width=32, layers=1,
                                              head_width=16),
                text_cfg=dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1))
    model = HookedOpenCLIP(clip.eval(), model_name="tiny-test").eval()
    cfg = VisionSAERunnerConfig(
        sae=MSAETrainingSAEConfig(d_in=32, d_sae=64, k_start=4), model_name="tiny-test",
        hook_name="blocks.0.hook_resid_post", dataset_path="msae-digits",
        dataset_kwargs={"images_per_epoch": 256}, token_selection="all", training_tokens=640,
        train_batch_size_tokens=64, store_batch_size_images=16, n_batches_in_buffer=2,
        n_batches_for_norm_estimate=2, n_eval_batches=1, n_checkpoints=1,
        checkpoint_path=str(tmp_path / "ckpt"), output_path=str(tmp_path / "out"), seed=0,
        verbose=False)
    VisionSAETrainingRunner(cfg, override_model=model).run()
    (folder,) = [p for p in (tmp_path / "ckpt").rglob("vision_provider_state.json")]
    folder = folder.parent
    rc, out, err = run_cli(capsys, "check", str(folder))
    assert rc == 0, err
    assert "vision_provider_state.json" in out and "training checkpoint: step" in out
    state = json.loads((folder / "vision_provider_state.json").read_text())
    del state["images_consumed"]
    (folder / "vision_provider_state.json").write_text(json.dumps(state))
    rc, _, err = run_cli(capsys, "check", str(folder))
    assert rc == 2 and "vision_provider_state.json lacks images_consumed" in err


def test_closed_pipe_is_not_a_traceback() -> None:
    """`msae plugins | head -0`: the reader is gone before we write; exit like a SIGPIPE'd Unix
    tool (141), no 'Exception ignored ... BrokenPipeError' and no traceback."""
    cmd = [str(MSAE_BIN)] if MSAE_BIN.exists() else [sys.executable, "-m", "msae_plugin.cli"]
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read
    proc = subprocess.run([*cmd, "plugins"], stdout=write_end, stderr=subprocess.PIPE,
                          text=True, timeout=120)
    os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr
