"""Exceptions with messages that name the problem and the fix."""

from __future__ import annotations


class MSAEConfigError(ValueError):
    """An invalid MSAE configuration (ladder, k, version...)."""


class ActivationShapeError(ValueError):
    """Activations whose width does not match the SAE's ``d_in``."""


class NonFiniteActivationsError(ValueError):
    """A batch containing NaN or inf; training on it would silently corrupt the SAE."""


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be read (missing, truncated, corrupt or incompatible)."""


class UnknownArchitectureError(KeyError):
    """An architecture name that no installed plugin (nor SAELens) registered."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want a readable sentence
        return str(self.args[0]) if self.args else ""


class UnknownHookError(LookupError):
    """A hook name the hooked model does not have (typo, wrong tower, beyond ``stop_at_layer``)."""


class UnsupportedModelError(ValueError):
    """An OpenCLIP configuration the hooked wrapper cannot reproduce exactly."""


class ModelInputError(ValueError):
    """Input a hooked model cannot take as given (empty batch, wrong shape, wrong dtype)."""


class ImageInputError(ModelInputError):
    """Images of the wrong dtype, channel count or size for the vision tower."""


class TextInputError(ModelInputError):
    """Token tensors of the wrong shape or length for the text tower."""


class SAEModelMismatchError(ValueError):
    """An SAE spliced into a model it was not trained for (hook or width mismatch)."""


class InversionViewError(ValueError):
    """A bad InversionView request: sample count, site or position the decoder does not know,
    an output path that cannot be written."""


class QueryActivationError(InversionViewError):
    """A query activation InversionView cannot read: wrong shape, NaN/inf, or all zeros (the
    paper's distance ‖a − q‖ / ‖q‖ is undefined for q = 0)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file holding pickled Python objects other than tensors and plain containers:
    loading it could run arbitrary code, so it is refused."""


class CheckpointConfigError(CheckpointError, MSAEConfigError):
    """A checkpoint whose ``cfg.json`` lacks a required field or holds one of the wrong type.

    Both a :class:`CheckpointError` (the folder is bad) and an :class:`MSAEConfigError` (what
    earlier releases raised for a ``cfg.json`` missing ``d_in``/``d_sae``), so either catches it.
    """


class CheckpointArchitectureError(CheckpointError, UnknownArchitectureError):
    """A checkpoint whose ``cfg.json`` names an architecture no installed plugin registered.

    Both a :class:`CheckpointError` and an :class:`UnknownArchitectureError` (earlier releases).
    """


class OutputPathError(ValueError):
    """An output path that cannot be created or written (under a file, no permission)."""


class DegenerateActivationsError(ValueError):
    """Activations with (near-)zero spread, from which no input scale can be fitted."""


class PluginSpecError(TypeError):
    """A plugin's spec record that would register something broken (e.g. a name mismatch)."""


class DeviceUnavailableError(ValueError):
    """A torch device name that is malformed or not available on this machine."""


class FoldNotSupportedError(MSAEConfigError, NotImplementedError):
    """A weight fold that cannot be exact for this SAE (a ``NotImplementedError`` like SAELens's)."""


class CalibrationError(ValueError):
    """Scores or labels a calibration metric (ECE, reliability curve) cannot be computed on:
    empty, mismatched lengths, NaN/inf, probabilities that do not sum to 1, a bad bin count."""


class ConceptVocabularyError(ValueError):
    """A concept vocabulary that cannot be used: an empty word list, or words the model's
    tokenizer cannot encode."""


class ConceptNamingError(ValueError):
    """A concept-naming request that cannot be answered as asked (direction-based naming for an
    SAE outside an embedding hook, no images for activation-based naming, bad ``top_n``)."""


class UnknownConceptError(ValueError):
    """A concept name that no latent was given (the message lists the nearest names)."""


class ConceptSearchError(ValueError):
    """A concept-based similarity search that cannot run: an empty gallery, embeddings of the
    wrong width, an unknown edit mode or latent id."""


class ProbeInputError(ValueError):
    """Features, labels or settings a linear probe cannot be fitted on: missing labels or labels
    of the wrong length, a property with a single class, features that are not a finite 2-D
    matrix, an unknown property or hook, a test fraction outside (0, 1)."""


class BiasAnalysisError(ValueError):
    """A concept bias analysis that cannot run as asked: labels or groups missing or of the
    wrong length, a concept name without the names to resolve it, clamp values that do not
    match the latents, a classifier whose output is not ``[n, classes]`` logits."""


class DashboardError(ValueError):
    """A feature dashboard that cannot be built as asked: an SAE whose hook the model lacks or of
    the wrong width for it, an empty image set, labels of the wrong length, a page size the page
    cannot hold (the message says what to change)."""


class RemappingError(ValueError):
    """A remapping analysis that cannot run as asked: models whose hooks cannot be aligned
    (width or token count), an SAE trained on another hook, k outside 1..d_sae, a class without
    examples, a threshold <= 0."""


class GroupError(ValueError):
    """A finite-group testbed request that cannot run: an unknown group name, a group too large
    to enumerate, a model whose output size does not match its group, an explanation for another
    group."""


class DistributedError(RuntimeError):
    """A multi-process run that cannot go on: a rank that cannot reach the rendezvous, a peer
    that died or stopped answering, a world size that does not match the checkpoint or cache."""
