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
