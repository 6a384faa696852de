"""Entry point ``broken_hook``: loads fine, but its hook raises."""

from __future__ import annotations

from msae_plugin.hookspecs import hookimpl


@hookimpl
def msae_register_architectures() -> list:
    raise RuntimeError("msae-broken-plugin: this hook fails on purpose")
