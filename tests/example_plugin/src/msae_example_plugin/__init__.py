"""msae-example-plugin: registers the ``example_relu`` SAE architecture with SAELens.

Importing this package is cheap; the SAE classes live in :mod:`msae_example_plugin.sae` and are
imported by the hook only when msae-plugin activates (i.e. after ``sae_lens`` was imported).
"""

__version__ = "0.1.0"
