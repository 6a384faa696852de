"""A static, offline feature dashboard for SAEs at vision hooks (``msae dashboard``).

``build_dashboard(out, sae, model, images, ...)`` reads the SAE's activations on an image set
and writes a self-contained site: ``index.html`` plus data in classic script files (no
``fetch()``, so it opens from ``file://``), thumbnails in one sprite. See docs/dashboard.md.
"""

from msae_plugin.dashboard.build import (
    DashboardData,
    build_dashboard,
    check_page_size,
    collect_dashboard,
)
from msae_plugin.dashboard.site import site_size, write_site

__all__ = [
    "DashboardData", "build_dashboard", "check_page_size", "collect_dashboard", "site_size",
    "write_site",
]
