"""Sub-commands of the ``msae`` CLI (one module each, exposing ``add_parser``)."""
