"""Built-in plugins. Each module is advertised in pyproject's ``msae_plugin`` entry points,
exactly as a third-party plugin would be."""
