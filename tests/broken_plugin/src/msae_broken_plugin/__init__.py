"""msae-broken-plugin: a test fixture whose plugins fail on purpose."""

__version__ = "0.1.0"
