"""Linear probes with Hewitt & Liang control tasks on hook activations and SAE latents
(``probe``), image-level features (``features``), the site × property study on the embedded
model (``study``). See docs/probes.md."""

from msae_plugin.probes.features import hook_activations, pooled_features, sae_features
from msae_plugin.probes.probe import ProbeResult, control_labels, probe
from msae_plugin.probes.study import ProbeGrid, plot_grid, probe_grid, run_study, scene_properties

__all__ = [
    "ProbeGrid", "ProbeResult", "control_labels", "hook_activations", "plot_grid", "pooled_features",
    "probe", "probe_grid", "run_study", "sae_features", "scene_properties",
]
