"""End-to-end plugin discovery: real distributions, real entry points, fresh interpreters.

Every check runs in a *fresh* ``python`` subprocess so that the ``msae_plugin_autoload.pth``
hook is exercised exactly as a user meets it (``from sae_lens import SAE`` and nothing else).

Nothing is installed into the environment running the tests (a test asserts it):

* a throw-away virtual environment is created in a temporary folder. Its site-packages holds one
  ``.pth`` line, ``import site; site.addsitedir(<this environment's site-packages>)``, so torch,
  SAELens and msae-plugin are shared instead of re-installed, and the ``.pth`` files there
  (``msae_plugin_autoload.pth``, the editable install) run exactly as in a real environment;
* ``tests/example_plugin`` (``msae-example-plugin``, adds the ``example_relu`` architecture) is
  pip-installed into that throw-away environment, offline (``--no-index``) and built with the
  hatchling of the test extras (``--no-build-isolation``: nothing is fetched at test time);
* ``tests/broken_plugin`` (``msae-broken-plugin``: one raising hook, one unimportable module) is
  installed with ``--target`` into a second temporary folder and put on ``PYTHONPATH`` of the one
  subprocess that needs it.

``import sae_lens`` costs ~13 s of CPU on the reference machine, so the checks that need it are
batched into three subprocesses (two of them run concurrently) instead of one per assertion.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
EXAMPLE_DIR = HERE / "example_plugin"
BROKEN_DIR = HERE / "broken_plugin"
MARK = "RESULT-JSON:"
PYTHON: dict[str, Path] = {}  # "exe": the throw-away environment's interpreter (set by `plugins`)
TIMEOUT = 240  # one subprocess; import sae_lens alone is ~13 s on a quiet 2-core machine


# --------------------------------------------------------------------------- helpers


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"MSAE_PLUGIN_DISABLE", "PYTHONPATH"}}
    env.update(extra)
    return env


def _site_dirs() -> list[str]:
    """The site-packages folder(s) of the environment running the tests."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def _snapshot_main_env() -> dict[str, list[str]]:
    """What an install into the running environment would change: its site-packages and bin."""
    dirs = [*_site_dirs(), str(Path(sys.executable).parent)]
    return {d: sorted(os.listdir(d)) for d in dirs}


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    if proc.returncode != 0:
        pytest.fail(f"{what}: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def _throwaway_env(root: Path) -> Path:
    """A venv in ``root`` that sees (but never writes to) the running environment; its python."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)], "creating the throw-away venv")
    python = root / "bin" / "python"
    site_dir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, env=_env(),
    ).stdout.strip()
    lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in _site_dirs())
    (Path(site_dir) / "_share_test_env.pth").write_text(lines)
    return python


def _pip_install(python: Path, *args: str) -> None:
    """Offline install with the given interpreter: no index, no build isolation, no deps."""
    _run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-deps",
         "--no-index", "--no-build-isolation", "--ignore-installed", *args],
        "installing a test plugin (hatchling comes from the [test] extras)",
    )


class Fresh:
    """A ``python -c CODE`` subprocess started now and awaited on first use."""

    def __init__(self, code: str, env: dict[str, str] | None = None, *args: str) -> None:
        self.cmd = [str(PYTHON["exe"]), "-W", "default", "-c", code, *args]
        self.proc = subprocess.Popen(
            self.cmd, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._done: tuple[int, str, str] | None = None

    def wait(self) -> tuple[int, str, str]:
        if self._done is None:
            try:
                out, err = self.proc.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
            self._done = (self.proc.returncode, out, err)
        return self._done

    @property
    def stderr(self) -> str:
        return self.wait()[2]

    @property
    def stdout(self) -> str:
        return self.wait()[1]

    def result(self) -> dict:
        rc, out, err = self.wait()
        lines = [ln for ln in out.splitlines() if ln.startswith(MARK)]
        if rc != 0 or not lines:
            pytest.fail(
                f"fresh interpreter failed (rc={rc}):\n--- stdout\n{out}\n--- stderr\n{err}"
            )
        return json.loads(lines[-1][len(MARK) :])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


# Code run in the fresh interpreters. None of it imports msae_plugin or msae_example_plugin
# before the autoload checks: the .pth hook must have done the registration by itself.

AUTOLOAD_CODE = f"""
import json, sys
from sae_lens.registry import (
    SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY, get_sae_class, get_sae_training_class,
)

def qual(c):
    return c.__module__ + "." + c.__qualname__

out = {{}}
sae_cls, cfg_cls = get_sae_class("example_relu")
tsae_cls, tcfg_cls = get_sae_training_class("example_relu")
out["example"] = [qual(c) for c in (sae_cls, cfg_cls, tsae_cls, tcfg_cls)]
out["example_file"] = sys.modules["msae_example_plugin.plugin"].__file__
out["prefix"] = sys.prefix
out["msae"] = ["msae" in SAE_CLASS_REGISTRY, "msae" in SAE_TRAINING_CLASS_REGISTRY]
out["builtins"] = sorted(n for n in ("standard", "topk", "jumprelu") if n in SAE_CLASS_REGISTRY)

# importlib.resources.files("sae_lens") must survive the loader patch (pretrained directory)
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
out["n_pretrained"] = len(get_pretrained_saes_directory())

# build a tiny example_relu training SAE, run it, save it for the load-back check
import torch
torch.manual_seed(0)
sae = tsae_cls(tcfg_cls(d_in=8, d_sae=16))
acts = sae.encode(torch.randn(4, 8))
out["encode_shape"] = list(acts.shape)
out["encode_nonneg"] = bool((acts >= 0).all())
sae.save_model(sys.argv[1])
out["W_enc_sum"] = sae.W_enc.detach().sum().item()
out["training_cls"] = type(sae).__name__

# explicit registration afterwards is idempotent and changes nothing
before = (dict(SAE_CLASS_REGISTRY), dict(SAE_TRAINING_CLASS_REGISTRY))
import msae_plugin
r1 = msae_plugin.register()
r2 = msae_plugin.register()
out["idempotent"] = before == (dict(SAE_CLASS_REGISTRY), dict(SAE_TRAINING_CLASS_REGISTRY))
out["same_provenance"] = sorted(r1) == sorted(r2)
out["provenance"] = {{k[0] + ":" + k[1]: [r.plugin, r.distribution] for k, r in r2.items()}}
print({MARK!r} + json.dumps(out))
"""

DISABLED_CODE = f"""
import json, sys
import sae_lens
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
out = {{"msae_before": "msae" in SAE_CLASS_REGISTRY,
        "example_before": "example_relu" in SAE_CLASS_REGISTRY}}
import msae_plugin
msae_plugin.register()
snap = (dict(SAE_CLASS_REGISTRY), dict(SAE_TRAINING_CLASS_REGISTRY))
msae_plugin.register()
out["msae_after"] = ["msae" in SAE_CLASS_REGISTRY, "msae" in SAE_TRAINING_CLASS_REGISTRY]
out["example_after"] = "example_relu" in SAE_CLASS_REGISTRY
out["stable"] = snap == (dict(SAE_CLASS_REGISTRY), dict(SAE_TRAINING_CLASS_REGISTRY))
print({MARK!r} + json.dumps(out))
"""

LOAD_CODE = f"""
import json, sys
from sae_lens import SAE
from sae_lens.registry import get_sae_class
sae = SAE.load_from_disk(sys.argv[1])
out = {{"cls": type(sae).__name__, "qual": type(sae).__module__ + "." + type(sae).__qualname__,
        "registered": get_sae_class("example_relu")[0].__name__,
        "architecture": sae.cfg.architecture(), "W_enc_sum": sae.W_enc.detach().sum().item()}}
print({MARK!r} + json.dumps(out), flush=True)
# then `msae plugins`, through the same function the console script calls
from msae_plugin.cli import main
sys.exit(main(["plugins"]))
"""


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    """msae-example-plugin into a throw-away venv, msae-broken-plugin into a --target folder."""
    before = _snapshot_main_env()
    root = tmp_path_factory.mktemp("plugin_env")
    python = _throwaway_env(root / "venv")
    _pip_install(python, str(EXAMPLE_DIR))
    broken_site = root / "broken_site"
    _pip_install(python, "--target", str(broken_site), str(BROKEN_DIR))
    PYTHON["exe"] = python
    yield {"broken_site": broken_site, "python": python, "main_env_before": before}
    PYTHON.pop("exe", None)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def runs(plugins, tmp_path_factory):
    """The two expensive fresh interpreters, started together (they are independent)."""
    save_dir = tmp_path_factory.mktemp("example_relu_sae")
    started = {
        "save_dir": save_dir,
        "autoload": Fresh(
            AUTOLOAD_CODE, _env(PYTHONPATH=str(plugins["broken_site"])), str(save_dir)
        ),
        "disabled": Fresh(DISABLED_CODE, _env(MSAE_PLUGIN_DISABLE="1")),
    }
    yield started
    for p in started.values():
        if isinstance(p, Fresh):
            p.kill()


# --------------------------------------------------------------------------- cheap checks


def test_pth_hook_imports_nothing_heavy_at_startup():
    code = (
        "import sys; print('torch' in sys.modules, 'sae_lens' in sys.modules, "
        "'open_clip' in sys.modules, 'msae_plugin._autoload' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False", "False", "True"]


def _msae_cmd() -> list[str]:
    script = Path(sys.executable).with_name("msae")
    return [str(script)] if script.exists() else [sys.executable, "-m", "msae_plugin.cli"]


@pytest.mark.parametrize("args", [["--help"], ["plugins", "--help"], ["check", "--help"]])
def test_cli_help_exits_zero(args):
    proc = subprocess.run(
        [*_msae_cmd(), *args], capture_output=True, text=True, env=_env(), timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: msae" in proc.stdout


# --------------------------------------------------------------------------- autoload


def test_autoload_registers_third_party_architecture(runs):
    res = runs["autoload"].result()
    assert res["example"] == [
        "msae_example_plugin.sae.ExampleReLUSAE",
        "msae_example_plugin.sae.ExampleReLUSAEConfig",
        "msae_example_plugin.sae.ExampleReLUTrainingSAE",
        "msae_example_plugin.sae.ExampleReLUTrainingSAEConfig",
    ]
    assert res["msae"] == [True, True]
    assert res["builtins"] == ["jumprelu", "standard", "topk"]
    prov = res["provenance"]
    assert prov["architecture:example_relu"] == ["example_relu", "msae-example-plugin"]
    assert prov["training_architecture:example_relu"] == ["example_relu", "msae-example-plugin"]
    assert prov["architecture:msae"] == ["msae", "msae-plugin"]


def test_discovery_used_the_throwaway_environment(plugins, runs):
    """The plugin found by entry-point discovery is the copy installed in the throw-away venv."""
    res = runs["autoload"].result()
    venv = plugins["python"].parent.parent.resolve()
    assert Path(res["prefix"]).resolve() == venv
    assert Path(res["example_file"]).resolve().is_relative_to(venv), res["example_file"]


def test_pretrained_directory_still_loads_after_hook(runs):
    assert runs["autoload"].result()["n_pretrained"] > 100


def test_register_is_idempotent_after_autoload(runs):
    res = runs["autoload"].result()
    assert res["idempotent"] is True
    assert res["same_provenance"] is True


def test_broken_plugin_is_a_warning_not_a_failure(runs):
    res = runs["autoload"].result()  # import sae_lens succeeded in that interpreter
    assert res["msae"] == [True, True]
    assert res["example"][0].endswith("ExampleReLUSAE")
    err = runs["autoload"].stderr
    hook_lines = [ln for ln in err.splitlines() if "'broken_hook'" in ln]
    assert hook_lines, err
    assert any("msae-broken-plugin" in ln and "RuntimeError" in ln for ln in hook_lines), err
    import_lines = [ln for ln in err.splitlines() if "'broken_import'" in ln]
    assert any("msae-broken-plugin" in ln and "ImportError" in ln for ln in import_lines), err
    assert "Traceback" not in err, err
    assert not any(k.startswith("architecture:broken") for k in res["provenance"])


def test_disable_env_then_explicit_register(runs):
    res = runs["disabled"].result()
    assert res["msae_before"] is False
    assert res["example_before"] is False
    assert res["msae_after"] == [True, True]
    assert res["example_after"] is True
    assert res["stable"] is True


def test_training_sae_saves_and_loads_in_fresh_process(runs):
    saved = runs["autoload"].result()  # saved into runs["save_dir"] by that interpreter
    assert saved["training_cls"] == "ExampleReLUTrainingSAE"
    assert saved["encode_shape"] == [4, 16] and saved["encode_nonneg"]
    save_dir = runs["save_dir"]
    cfg = json.loads((save_dir / "cfg.json").read_text())
    assert cfg["architecture"] == "example_relu"

    load = Fresh(LOAD_CODE, _env(), str(save_dir))  # clean env: example plugin only
    try:
        res = load.result()
    finally:
        load.kill()
    assert res["cls"] == "ExampleReLUSAE" == res["registered"]
    assert res["qual"] == "msae_example_plugin.sae.ExampleReLUSAE"
    assert res["architecture"] == "example_relu"
    assert res["W_enc_sum"] == pytest.approx(saved["W_enc_sum"], rel=1e-6)

    # `msae plugins` listing printed by the same interpreter
    rows = [ln.split() for ln in load.stdout.splitlines() if not ln.startswith(MARK)]
    listing = {(r[0], r[1]): r[-1] for r in rows if len(r) >= 3 and r[-2] == "/"}
    assert listing[("architecture", "example_relu")] == "msae-example-plugin", load.stdout
    assert listing[("training_architecture", "example_relu")] == "msae-example-plugin"
    assert listing[("architecture", "msae")] == "msae-plugin", load.stdout
    assert "broken" not in load.stdout + load.stderr


def test_main_environment_is_left_untouched(plugins, runs):
    """Last in the file: after every install and fresh interpreter, the environment running the
    tests has exactly the files it had before (no plugin, no build backend, no script)."""
    runs["autoload"].wait()
    runs["disabled"].wait()
    assert _snapshot_main_env() == plugins["main_env_before"]
    for d in _site_dirs():
        leaked = [n for n in os.listdir(d) if n.startswith(("msae_example", "msae_broken"))]
        assert not leaked, f"{leaked} in {d}: remove with `pip uninstall msae-example-plugin`"
