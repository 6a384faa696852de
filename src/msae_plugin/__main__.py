"""``python -m msae_plugin ...`` is the ``msae`` command; it is what ``torchrun -m`` launches:
``torchrun --nproc-per-node 2 -m msae_plugin train CONFIG``."""

import sys

from msae_plugin.cli import main

if __name__ == "__main__":
    sys.exit(main())
