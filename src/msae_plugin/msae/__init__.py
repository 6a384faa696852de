"""Matryoshka SAE (Zaigrajew et al. 2025): nested TopK levels over one dictionary.

``sae_lens`` is imported first on purpose: importing it runs the autoload hook, which imports the
modules of this package to register them. Doing it here, before any submodule starts executing,
means the hook never sees a half-initialised submodule.
"""

import sae_lens  # noqa: F401  (see docstring)
