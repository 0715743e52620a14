"""Reading the web app's page in the browser tests: the views' pixels, the status line, the file selectors."""
from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[2]


def view_pixels(page) -> np.ndarray:
    """The slice views as they are in the browser: an ``(height, width, 3)`` uint8 screenshot of ``#views``."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(page.locator("#views").screenshot())).convert("RGB"))


def coloured_fraction(pixels: np.ndarray) -> float:
    """Share of pixels with a saturated colour: grid lines and segment fills (the volumes are grey)."""
    channels = pixels.astype(np.int16)
    return float(((channels.max(axis=-1) - channels.min(axis=-1)) > 60).mean())


def wait_for_views(page, condition: Callable[[np.ndarray], bool], timeout_s: float = 20.0) -> np.ndarray:
    """The views once ``condition(pixels)`` holds and two screenshots 0.3 s apart are equal (the server has
    finished redrawing); fails after ``timeout_s``."""
    deadline, previous = time.monotonic() + timeout_s, None
    while True:
        pixels = view_pixels(page)
        if condition(pixels) and previous is not None and np.array_equal(pixels, previous):
            return pixels
        if time.monotonic() > deadline:
            raise AssertionError(f"the views did not reach the expected state in {timeout_s:.0f} s "
                                 f"(coloured fraction {coloured_fraction(pixels):.4f})")
        previous = pixels
        time.sleep(0.3)


def status(page) -> str:
    return page.inner_text("#status").strip()


def wait_for_status(page, pattern: str, timeout_s: float) -> str:
    """Wait until the status line matches the regular expression ``pattern``; return it."""
    page.wait_for_function("pattern => new RegExp(pattern).test(document.querySelector('#status').textContent)",
                           arg=pattern, timeout=timeout_s * 1000)
    return status(page)


def wait_for_error(page, prefix: str, timeout_s: float = 30.0) -> str:
    """Wait until the page's error line starts with ``prefix``; return the line."""
    page.wait_for_function("prefix => document.querySelector('#error')?.textContent.trim().startsWith(prefix)",
                           arg=prefix, timeout=timeout_s * 1000)
    return page.inner_text("#error").strip()


def choose(page, select_id: str, title: str) -> None:
    """Pick the entry ``title`` in the file selector ``select_id`` as a user does (open the menu, click)."""
    open_menu(page, select_id)
    page.get_by_role("option", name=title, exact=True).click()


def open_menu(page, select_id: str) -> list[str]:
    """Open the menu of the selector ``select_id`` (a click on its field); return its entries' titles."""
    page.locator(".v-field", has=page.locator(f"#{select_id}")).click()
    options = page.get_by_role("option")
    options.first.wait_for()
    return [text.strip() for text in options.all_inner_texts()]
