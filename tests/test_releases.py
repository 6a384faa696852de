"""SAEs by name: plugin releases in SAELens's pretrained directory (issue 10, part 0a).

``SAE.from_pretrained(release, sae_id)`` must resolve the shipped release offline, in a process
that never imports msae_plugin, with the cfg_dict / sparsity SAELens's own releases give; a
third-party plugin's release from a local folder must resolve the same way; and bad input
(unknown ids, clashing names, broken folders) must be refused clearly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
import warnings
from pathlib import Path

import pytest
import torch
from sae_lens import SAE
from safetensors.torch import load_file

from msae_plugin.errors import CheckpointError
from msae_plugin.hookspecs import hookimpl
from msae_plugin.manager import create_plugin_manager
from msae_plugin.msae.config import MSAEConfig
from msae_plugin.msae.sae import MSAE
from msae_plugin.registration import REGISTRATIONS, PluginHookWarning, activate
from msae_plugin.releases import EMBEDDED_RELEASE, EMBEDDED_SAE_IDS, release_dir
from msae_plugin.releases.directory import LOADER_NAME, ReleaseClashWarning
from msae_plugin.specs import ReleaseSpec

ROOT = release_dir(EMBEDDED_RELEASE)
#: held-out quality the shipped SAEs must keep (measured values in docs/releases.md)
MAX_FVU = {"hook_image_embed": {"k=32": 0.05, "relu": 0.03},
           "blocks.2.hook_resid_post": {"k=32": 0.13, "relu": 0.05}}
MIN_KEPT_RELU = 0.95  # zero-shot accuracy kept with the blocks.2 SAE spliced in (ReLU path)


@pytest.fixture(autouse=True)
def _forget_test_releases():
    """Releases a test registers (toy folders in tmp_path) leave no trace for later tests."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from msae_plugin.releases.directory import RELEASES

    before = set(RELEASES)
    yield
    directory = get_pretrained_saes_directory()
    for name in set(RELEASES) - before:
        rel = RELEASES.pop(name)
        REGISTRATIONS.pop(("release", name), None)
        if directory.get(name) is rel.lookup:
            del directory[name]


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _toy_sae_folder(folder: Path, hook: str = "blocks.0.hook_resid_post", seed: int = 0) -> MSAE:
    torch.manual_seed(seed)
    cfg = MSAEConfig(d_in=8, d_sae=32, k_start=4)
    cfg.metadata.hook_name = hook
    sae = MSAE(cfg)
    with torch.no_grad():  # non-trivial biases / statistics, so a mix-up would show
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    sae.save_model(folder)
    return sae


class _ReleasePlugin:
    def __init__(self, *specs: object) -> None:
        self.specs = list(specs)

    @hookimpl
    def msae_register_releases(self) -> list:
        return self.specs


def _activate_with(*plugins: object) -> dict:
    pm = create_plugin_manager(load_entry_points=False)
    for i, p in enumerate(plugins):
        pm.register(p, name=f"third_party_{i}_{uuid.uuid4().hex[:6]}")
    return activate(pm)


# --------------------------------------------------------------------------- shipped release


@pytest.mark.slow
def test_fresh_process_resolves_shipped_release_without_importing_the_plugin():
    """Plain SAELens code in a fresh interpreter: no `import msae_plugin` anywhere."""
    code = textwrap.dedent(
        """
        import json, sys, torch
        from sae_lens import SAE
        out = {}
        for sae_id in sys.argv[2:]:
            sae = SAE.from_pretrained(sys.argv[1], sae_id)
            sae2, cfg_dict, sparsity = SAE.from_pretrained_with_cfg_and_sparsity(sys.argv[1], sae_id)
            torch.manual_seed(0)
            x = torch.randn(16, sae.cfg.d_in) * 3
            out[sae_id] = {
                "cls": type(sae).__module__ + "." + type(sae).__qualname__,
                "hook": sae.cfg.metadata.hook_name,
                "x": x.tolist(), "y": sae(x).tolist(), "y2": sae2(x).tolist(),
                "cfg_d_sae": cfg_dict["d_sae"], "cfg_hook": cfg_dict["metadata"]["hook_name"],
                "sparsity": None if sparsity is None else sparsity.tolist(),
            }
        print("RESULT" + json.dumps(out))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "MSAE_PLUGIN_DISABLE"}
    proc = subprocess.run(
        [sys.executable, "-c", code, EMBEDDED_RELEASE, *EMBEDDED_SAE_IDS],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "msae_plugin" not in code
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    out = json.loads(line[len("RESULT"):])
    for sae_id in EMBEDDED_SAE_IDS:
        r = out[sae_id]
        assert r["cls"] == "msae_plugin.msae.sae.MSAE"
        assert r["hook"] == r["cfg_hook"] == sae_id
        ref = SAE.load_from_disk(str(ROOT / sae_id)).eval()  # independent load, this process
        x = torch.tensor(r["x"])
        with torch.no_grad():
            expected = ref(x)
        torch.testing.assert_close(torch.tensor(r["y"]), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.tensor(r["y2"]), expected, rtol=1e-5, atol=1e-5)
        assert r["cfg_d_sae"] == json.loads((ROOT / sae_id / "cfg.json").read_text())["d_sae"]
        file_sparsity = load_file(str(ROOT / sae_id / "sparsity.safetensors"))["sparsity"]
        torch.testing.assert_close(torch.tensor(r["sparsity"]), file_sparsity)


@pytest.mark.parametrize("sae_id", EMBEDDED_SAE_IDS)
def test_shipped_release_equals_load_from_disk(sae_id):
    sae, cfg_dict, sparsity = SAE.from_pretrained_with_cfg_and_sparsity(EMBEDDED_RELEASE, sae_id)
    ref = SAE.load_from_disk(str(ROOT / sae_id))
    assert type(sae) is MSAE is type(ref)
    assert sae.cfg.metadata.hook_name == sae_id
    ref_state = ref.state_dict()
    for name, t in sae.state_dict().items():
        torch.testing.assert_close(t, ref_state[name], rtol=0, atol=0)
    on_disk = json.loads((ROOT / sae_id / "cfg.json").read_text())
    for key in ("architecture", "d_in", "d_sae", "k_start", "k_factor"):
        assert cfg_dict[key] == on_disk[key]
    assert cfg_dict["device"] == "cpu" and cfg_dict["dtype"] == "float32"
    assert cfg_dict["neuronpedia_id"] is None  # as for a SAELens release without one
    file_sparsity = load_file(str(ROOT / sae_id / "sparsity.safetensors"))["sparsity"]
    assert sparsity is not None and sparsity.shape == (on_disk["d_sae"],)
    torch.testing.assert_close(sparsity, file_sparsity, rtol=0, atol=0)


def test_dtype_argument_is_honoured_as_for_saelens_releases():
    sae, cfg_dict, _ = SAE.from_pretrained_with_cfg_and_sparsity(
        EMBEDDED_RELEASE, "hook_image_embed", dtype="float64")
    ref = SAE.load_from_disk(str(ROOT / "hook_image_embed"), dtype="float64")
    assert cfg_dict["dtype"] == "float64" and sae.W_enc.dtype == torch.float64
    x = torch.randn(4, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(sae(x), ref(x), rtol=0, atol=0)


def test_shipped_release_in_saelens_directory():
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    entry = get_pretrained_saes_directory()[EMBEDDED_RELEASE]
    assert entry.model == "msae-tiny-clip"
    assert entry.conversion_func == LOADER_NAME
    assert sorted(entry.saes_map) == sorted(EMBEDDED_SAE_IDS)
    assert Path(entry.repo_id) == ROOT
    log = json.loads((ROOT / "training_log.json").read_text())["saes"]
    for sae_id in EMBEDDED_SAE_IDS:  # the directory's figures are the training run's ReLU path
        relu = log[sae_id]["reconstruction"]["relu"]
        assert entry.expected_l0[sae_id] == pytest.approx(relu["sparsity"]["l0"])
        assert entry.expected_var_explained[sae_id] == pytest.approx(
            1 - relu["reconstruction_quality"]["fvu"])
    reg = REGISTRATIONS[("release", EMBEDDED_RELEASE)]
    assert (reg.plugin, reg.distribution) == ("releases", "msae-plugin")


@pytest.mark.parametrize("sae_id", EMBEDDED_SAE_IDS)
def test_shipped_folders_pass_the_full_checkpoint_check(sae_id):
    """What `msae check` runs: every file, every tensor finite, shapes as cfg.json implies."""
    from msae_plugin.msae.checkpoint_check import validate_checkpoint

    report = validate_checkpoint(ROOT / sae_id, check_values=True)
    assert report.architecture == "msae"
    assert report.files == ["cfg.json", "sae_weights.safetensors", "sparsity.safetensors"]
    assert report.cfg["metadata"]["hook_name"] == sae_id
    assert report.cfg["metadata"]["model_name"] == "msae-tiny-clip"


def test_shipped_release_fits_the_size_budget():
    size = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert size <= 5 * 1024 * 1024, f"{size:,} bytes"


@pytest.mark.slow
def test_shipped_saes_reconstruct_held_out_scenes_and_keep_zero_shot_accuracy():
    """Fresh held-out scenes (not the training log's): FVU computed here from the raw
    activations and the reconstructions, not with the project's metrics."""
    from msae_plugin.embedded.dataset import make_digit_scenes, normalize
    from msae_plugin.embedded.zero_shot import build_zero_shot_classifier
    from msae_plugin.vision.evaluation import zero_shot_accuracy_kept
    from msae_plugin.vision.hooked_clip import HookedOpenCLIP

    model = HookedOpenCLIP.from_pretrained("msae-tiny-clip")
    scenes = make_digit_scenes(300, split="test", seed=4242)
    images = normalize(scenes.images)
    with torch.no_grad():
        _, cache = model.run_with_cache(images, names_filter=list(EMBEDDED_SAE_IDS))
    for sae_id in EMBEDDED_SAE_IDS:
        sae = SAE.from_pretrained(EMBEDDED_RELEASE, sae_id).eval()
        x = cache[sae_id]
        if x.ndim == 3:
            x = x[:, 1:].reshape(-1, x.shape[-1])  # patch tokens, as trained
        total = (x - x.mean(0)).pow(2).sum()
        for key, limit in MAX_FVU[sae_id].items():
            k = None if key == "relu" else int(key[2:])
            with torch.no_grad():
                x_hat = sae.decode(sae.encode(x, k=k))
            fvu = float((x - x_hat).pow(2).sum() / total)
            assert fvu < limit, (sae_id, key, fvu)
    sae = SAE.from_pretrained(EMBEDDED_RELEASE, "blocks.2.hook_resid_post").eval()
    clf = build_zero_shot_classifier(model, model.tokenizer)
    zs = zero_shot_accuracy_kept(model, sae, images, scenes.labels, clf, ks=[None],
                                 exclude_cls=True)
    assert zs["original"] > 0.8
    assert zs["relu"]["kept"] >= MIN_KEPT_RELU, zs


def test_msae_plugins_lists_the_release(capsys):
    from msae_plugin.cli import main

    assert main(["plugins"]) == 0
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines()]
    assert ["release", EMBEDDED_RELEASE, "releases", "/", "msae-plugin"] in rows


# --------------------------------------------------------------------------- third-party releases


def test_third_party_release_from_a_local_folder(tmp_path):
    from sae_lens.loading.pretrained_sae_loaders import load_sae_config_from_huggingface

    name = _unique("toy-release")
    saved = _toy_sae_folder(tmp_path / "layer0")
    spec = ReleaseSpec(name=name, model="toy-model", saes={"blocks.0.hook_resid_post": "layer0"},
                       root=tmp_path, expected_l0={"blocks.0.hook_resid_post": 7.0})
    regs = _activate_with(_ReleasePlugin(spec))
    assert regs[("release", name)].plugin.startswith("third_party_0")
    sae, cfg_dict, sparsity = SAE.from_pretrained_with_cfg_and_sparsity(
        name, "blocks.0.hook_resid_post")
    assert type(sae) is MSAE and sparsity is None  # no sparsity.safetensors in that folder
    assert cfg_dict["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    x = torch.randn(5, 8)
    with torch.no_grad():
        torch.testing.assert_close(sae(x), saved.eval()(x))
    cfg = load_sae_config_from_huggingface(name, "blocks.0.hook_resid_post")
    assert (cfg["architecture"], cfg["d_sae"]) == ("msae", 32)
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    entry = get_pretrained_saes_directory()[name]
    assert entry.expected_l0 == {"blocks.0.hook_resid_post": 7.0}
    assert entry.expected_var_explained == {"blocks.0.hook_resid_post": 1.0}  # SAELens default


def test_release_survives_directory_cache_clear(tmp_path):
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    name = _unique("toy-release")
    _toy_sae_folder(tmp_path / "a")
    _activate_with(_ReleasePlugin(ReleaseSpec(name=name, model="toy",
                                              saes={"a": tmp_path / "a"})))
    get_pretrained_saes_directory.cache_clear()
    assert name in get_pretrained_saes_directory()
    assert type(SAE.from_pretrained(name, "a")) is MSAE


def test_unknown_sae_id_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"ID hook_image_embedd not found in release "
                       rf"{EMBEDDED_RELEASE}\. Valid IDs are .*'hook_image_embed'"):
        SAE.from_pretrained(EMBEDDED_RELEASE, "hook_image_embedd")


def test_release_name_clash_with_saelens_is_a_warning(tmp_path):
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    taken = "gpt2-small-res-jb"
    before = get_pretrained_saes_directory()[taken]
    _toy_sae_folder(tmp_path / "a")
    with pytest.warns(ReleaseClashWarning, match=rf"release '{taken}' from plugin "
                      r"'third_party_0_\w+'.*clashes with SAELens's own.*Rename"):
        _activate_with(_ReleasePlugin(ReleaseSpec(name=taken, model="toy",
                                                  saes={"a": tmp_path / "a"})))
        get_pretrained_saes_directory()
    assert get_pretrained_saes_directory()[taken] is before
    assert ("release", taken) not in REGISTRATIONS
    assert issubclass(ReleaseClashWarning, PluginHookWarning)  # one filter silences both kinds


def test_release_name_clash_between_plugins_keeps_the_first(tmp_path):
    name = _unique("toy-release")
    _toy_sae_folder(tmp_path / "a", seed=1)
    _toy_sae_folder(tmp_path / "b", seed=2)
    first = _ReleasePlugin(ReleaseSpec(name=name, model="toy", saes={"x": tmp_path / "a"}))
    second = _ReleasePlugin(ReleaseSpec(name=name, model="toy", saes={"x": tmp_path / "b"}))
    with pytest.warns(PluginHookWarning, match=rf"release name '{name}' .* already registered "
                      r"by plugin 'third_party_0_\w+'"):
        _activate_with(first, second)
    want = SAE.load_from_disk(str(tmp_path / "a"))
    torch.testing.assert_close(SAE.from_pretrained(name, "x").W_enc, want.W_enc)


@pytest.mark.parametrize(
    ("make_spec", "match"),
    [
        (lambda d: ReleaseSpec(name="r", model="m", saes={"x": d / "missing"}), "no cfg.json"),
        (lambda d: ReleaseSpec(name="r", model="m", saes={"x": "a"}), "relative but the spec has no root"),
        (lambda d: ReleaseSpec(name="r", model="m", saes={}), "non-empty mapping"),
        (lambda d: ReleaseSpec(name="", model="m", saes={"x": d / "a"}), "non-empty string"),
        (lambda d: ReleaseSpec(name="r", model="", saes={"x": d / "a"}), "model must be"),
        (lambda d: {"name": "r"}, "return ReleaseSpec records"),
    ],
    ids=["missing-folder", "relative-no-root", "no-saes", "no-name", "no-model", "not-a-spec"],
)
def test_bad_release_specs_are_refused_with_a_warning(tmp_path, make_spec, match):
    _toy_sae_folder(tmp_path / "a")
    spec = make_spec(tmp_path)
    if isinstance(spec, ReleaseSpec) and spec.name == "r":
        spec = ReleaseSpec(**{**spec.__dict__, "name": _unique("bad")})
    with pytest.warns(PluginHookWarning, match=rf"plugin 'third_party_0_\w+'.*{match}"):
        regs = _activate_with(_ReleasePlugin(spec))
    assert not [k for k in regs if k[0] == "release" and regs[k].plugin.startswith("third_party_0")
                and regs[k].obj is spec]


def test_vanished_release_folder_is_a_clear_error(tmp_path):
    name = _unique("toy-release")
    _toy_sae_folder(tmp_path / "a")
    _activate_with(_ReleasePlugin(ReleaseSpec(name=name, model="toy", saes={"x": tmp_path / "a"})))
    shutil.rmtree(tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"no longer exists.*Reinstall the plugin"):
        SAE.from_pretrained(name, "x")


def test_damaged_release_folder_names_the_file(tmp_path):
    name = _unique("toy-release")
    _toy_sae_folder(tmp_path / "a")
    _activate_with(_ReleasePlugin(ReleaseSpec(name=name, model="toy", saes={"x": tmp_path / "a"})))
    weights = tmp_path / "a" / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated copy
    with pytest.raises(CheckpointError, match=r"sae_weights\.safetensors cannot be read"):
        SAE.from_pretrained(name, "x")
    (tmp_path / "a" / "cfg.json").write_text("{not json")
    from sae_lens.loading.pretrained_sae_loaders import load_sae_config_from_huggingface

    with pytest.raises(CheckpointError, match=r"cfg\.json is not valid JSON"):
        load_sae_config_from_huggingface(name, "x")


def test_reactivation_is_silent_and_idempotent(tmp_path):
    name = _unique("toy-release")
    _toy_sae_folder(tmp_path / "a")
    plugin = _ReleasePlugin(ReleaseSpec(name=name, model="toy", saes={"x": tmp_path / "a"}))
    pm = create_plugin_manager(load_entry_points=False)
    pm.register(plugin, name="same")
    activate(pm)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        activate(pm)
    assert type(SAE.from_pretrained(name, "x")) is MSAE
