"""Fixtures for the browser tests of ``rcreg web``: the server as a subprocess, Debian's Chromium driven by
Playwright (headless, never ``playwright install``), and the app's page in it (helpers: web_page.py).

``Testing/web/setup.sh`` installs Chromium and the web extra. ``RCREG_DOCS_IMAGES=1`` makes the tests write
the README's screenshot, ``docs/images/web.png``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from web_page import REPOSITORY

CHROMIUM = "/usr/bin/chromium"
STARTUP_S = 90


@dataclass
class WebServer:
    """A running ``rcreg web``: its process, URL, data folder and log file."""

    process: subprocess.Popen
    url: str
    port: int
    data_dir: Path
    log: Path


@pytest.fixture(scope="module")
def web_server(tmp_path_factory) -> Iterator[WebServer]:
    """``rcreg web --port 0 --data DIR`` (default host), once listening; DIR holds one unreadable volume."""
    root = tmp_path_factory.mktemp("web")
    data_dir = root / "data"
    (data_dir / "broken").mkdir(parents=True)
    (data_dir / "broken" / "bad_volume.nii.gz").write_text("not a volume\n")
    log = root / "server.log"
    env = {key: value for key, value in os.environ.items() if key != "DISPLAY"}
    with open(log, "w") as log_file:  # stdout and stderr: the URL line is read back from the file
        process = subprocess.Popen([sys.executable, "-m", "rcreg.cli", "web", "--port", "0", "--data", str(data_dir)],
                                   stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=REPOSITORY)
    deadline, found = time.monotonic() + STARTUP_S, None
    while found is None and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        found = re.search(r"serving on (http://127\.0\.0\.1:(\d+)/)", log.read_text(errors="replace"))
    if found is None:
        process.kill()
        pytest.fail(f"rcreg web did not start: {log.read_text(errors='replace')[-2000:]}")
    url, port = found.group(1), int(found.group(2))
    yield WebServer(process, url, port, data_dir, log)
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium (no Playwright-downloaded browser, no background networking)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--disable-background-networking", "--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(browser, web_server):
    """The app's page; every request that is not to the server is recorded in ``page.outside_requests``."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.outside_requests = []
    page.on("request", lambda request: None if request.url.startswith((web_server.url, "blob:", "data:",
                                                                        f"ws://127.0.0.1:{web_server.port}/"))
            else page.outside_requests.append(request.url))
    page.goto(web_server.url)
    page.wait_for_selector("#run")
    yield page
    context.close()
