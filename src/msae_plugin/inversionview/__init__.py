"""InversionView support (Huang et al., 2024): probed tasks/models and, later, their decoders.

The modules here are imported explicitly (``msae_plugin.inversionview.addition``); this package
deliberately imports nothing so that ``import msae_plugin`` stays cheap.
"""
