"""Serving the web app: one trame server, bound to 127.0.0.1 unless another host is asked for.

The app has no authentication: anyone who can reach its address can read, upload and register images. A
host that is not a loopback address therefore gets a one-line warning.
"""
from __future__ import annotations

import ipaddress
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "is_loopback", "host_warning", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_warning(host: str) -> Optional[str]:
    """The warning for binding ``host`` (``None`` for a loopback host)."""
    if is_loopback(host):
        return None
    return (f"rcreg web: warning: listening on {host}: the app has no authentication, anyone who can reach this "
            "address can read, upload and register images")


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, data_dir: Optional[Path] = None) -> None:
    """Build the app and serve it until interrupted (port 0: any free port); prints the URL once listening.

    Uploads, the sample's label maps and the downloads live in a temporary folder removed on exit.
    """
    warning = host_warning(host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    if not os.environ.get("DISPLAY"):  # Slicer's views render offscreen through EGL without an X server
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    from trame.app import get_server

    from .app import RegistrationApp

    with tempfile.TemporaryDirectory(prefix="rcreg-web-") as work:
        server = get_server("rcreg-web", client_type="vue3")
        RegistrationApp(server, data_dir, Path(work))

        def announce(**_) -> None:
            print(f"rcreg web: serving on http://{host}:{server.port}/ (Ctrl-C stops)", flush=True)

        server.controller.on_server_ready.add(announce)
        server.start(host=host, port=port, open_browser=False, show_connection_info=False, timeout=0)
