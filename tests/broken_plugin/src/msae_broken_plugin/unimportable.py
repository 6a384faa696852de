"""Entry point ``broken_import``: importing this module fails."""

raise ImportError("msae-broken-plugin: this module fails to import on purpose")
