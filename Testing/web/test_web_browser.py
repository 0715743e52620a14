"""``rcreg web`` end to end in Debian's Chromium: the server's socket, a bad file, the sample pair registered
through the page, the views' pixels (deformation grid, segmentation, fade), the metrics table, the downloads,
and Cancel. The run is network-only (refinement iterations 0) to stay quick.

The tests share one page and run in file order: the bad file first, then the run the later tests look at,
Cancel last.
"""
from __future__ import annotations

import json
import os
import re
from urllib.parse import urljoin

import h5py
import numpy as np
import psutil
import pytest
import SimpleITK as sitk

from web_page import (REPOSITORY, choose, coloured_fraction, open_menu, status, view_pixels, wait_for_error,
                      wait_for_status, wait_for_views)

pytestmark = pytest.mark.network  # the sample pair comes from rcreg.data (cached after the first download)

NUMBER = r"-?\d+\.\d+"
RUN_S = 240  # a network-only run of the 1 mm pair takes 15–30 s on 2 busy cores


def test_server_listens_on_127_0_0_1_only(web_server):
    listening = [c for c in psutil.Process(web_server.process.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening, "the server has no listening socket"
    assert {(c.laddr.ip, c.laddr.port) for c in listening} == {("127.0.0.1", web_server.port)}
    proc_net = {line.split()[1] for name in ("tcp", "tcp6") for line in open(f"/proc/net/{name}").readlines()[1:]
                if line.split()[3] == "0A"}  # state LISTEN; local address as hex IP:port
    ours = {address for address in proc_net if address.endswith(f":{web_server.port:04X}")}
    assert ours == {f"0100007F:{web_server.port:04X}"}  # 127.0.0.1, little-endian hex; nothing on tcp6


def test_bad_file_shows_one_line_error_and_server_keeps_serving(page, web_server, tmp_path):
    bad = tmp_path / "bad_upload.nii.gz"
    bad.write_bytes(b"\x1f\x8b this is not a gzip stream\n")
    page.set_input_files("#upload", str(bad))
    wait_for_status(page, "Uploaded bad_upload.nii.gz", 30)
    titles = open_menu(page, "moving-select")
    page.keyboard.press("Escape")
    assert "upload: bad_upload.nii.gz" in titles
    assert "broken/bad_volume.nii.gz" in titles  # offered from the --data folder
    choose(page, "moving-select", "upload: bad_upload.nii.gz")
    text = wait_for_error(page, "moving volume: bad_upload.nii.gz: ")
    assert "\n" not in text and len(text) < 300  # one line
    page.click("#run")  # refused with a message, not a crash
    wait_for_error(page, "cannot run: moving volume: bad_upload.nii.gz: ")
    choose(page, "fixed-select", "broken/bad_volume.nii.gz")
    wait_for_error(page, "fixed volume: bad_volume.nii.gz: ")
    assert web_server.process.poll() is None


@pytest.fixture(scope="module")
def finished_run(page):
    """After the bad file: the sample pair registered from the page (network only)."""
    page.click("#sample")
    wait_for_status(page, "^Sample pair", 300)
    assert page.locator("#error").count() == 0  # choosing good files clears the error line
    page.fill("#refine-iterations", "0")
    choose(page, "initial-alignment", "mass")
    page.click("#run")
    done = wait_for_status(page, r"^(Finished run|Failed|Cancelled)", RUN_S)
    error = page.inner_text("#error") if page.locator("#error").count() else ""
    assert done.startswith("Finished run"), f"{done}: {error}"
    return page


def test_run_after_the_error_fills_the_metrics_table(finished_run):
    finished_run.wait_for_selector("#metrics td", timeout=10_000)
    cells = finished_run.locator("#metrics tr").evaluate_all(
        "rows => rows.map(row => [...row.cells].map(cell => cell.textContent))")
    table = {row[0].strip(): row[1].strip() for row in cells if len(row) == 2}
    dice = {name[len("Dice "):]: value for name, value in table.items() if name.startswith("Dice ")}
    assert set(dice) == {"CSF", "Grey matter", "White matter"}, cells
    for value in dice.values():  # before → after, both in [0, 1]
        before, after = (float(v) for v in re.fullmatch(fr"({NUMBER}) → ({NUMBER})", value).groups())
        assert 0 <= before <= 1 and 0 < after <= 1
    assert re.fullmatch(fr"{NUMBER} %", table["Folded voxels (det J ≤ 0)"])
    assert finished_run.locator("#progress").get_attribute("aria-valuenow") == "100"


def _switch(page, element_id: str, on: bool) -> None:
    box = page.locator(f"#{element_id}")
    if box.is_checked() != on:
        box.click()
    assert box.is_checked() == on


def test_grid_and_segmentation_pixels_follow_their_switches(finished_run):
    page = finished_run
    _switch(page, "segmentation", False)
    _switch(page, "grid", True)
    grid_on = coloured_fraction(wait_for_views(page, lambda p: coloured_fraction(p) > 0.01))
    _switch(page, "grid", False)
    nothing = coloured_fraction(wait_for_views(page, lambda p: coloured_fraction(p) < 0.001))
    _switch(page, "segmentation", True)
    segments = coloured_fraction(wait_for_views(page, lambda p: coloured_fraction(p) > 0.05))
    _switch(page, "grid", True)
    wait_for_views(page, lambda p: coloured_fraction(p) > segments + 0.005)
    assert grid_on > 10 * max(nothing, 1e-4) and segments > 10 * max(nothing, 1e-4)


def _fade(page, keys: list[str]):
    thumb = page.locator("#fade [role=slider]")
    thumb.focus()
    for key in keys:
        page.keyboard.press(key)
    return float(thumb.get_attribute("aria-valuenow"))


def test_fade_slider_changes_the_views(finished_run):
    page = finished_run
    _switch(page, "segmentation", False)
    _switch(page, "grid", False)
    wait_for_views(page, lambda p: coloured_fraction(p) < 0.001)
    before = view_pixels(page).astype(float)
    assert _fade(page, ["Home"]) == 0
    fixed = wait_for_views(page, lambda p: np.abs(p - before).mean() > 0.5).astype(float)
    assert _fade(page, ["End"]) == 1
    warped = wait_for_views(page, lambda p: np.abs(p - fixed).mean() > 0.5).astype(float)
    assert _fade(page, ["Home"] + ["ArrowRight"] * 10) == 0.5
    half = wait_for_views(page, lambda p: np.abs(p - warped).mean() > 0.5).astype(float)
    difference = np.abs(warped - fixed)
    assert difference.max() > 100 and difference.mean() > 2  # the warped brain is not the fixed one
    # at 0.5 each pixel is the mean of the two (Slicer's foreground opacity), to rounding
    assert np.abs(half - (fixed + warped) / 2).mean() < 0.1 * difference.mean()
    _switch(page, "segmentation", True)
    _switch(page, "grid", True)
    wait_for_views(page, lambda p: coloured_fraction(p) > 0.1)
    if os.environ.get("RCREG_DOCS_IMAGES"):
        page.wait_for_timeout(500)  # the switches' animation
        _write_docs_image(page.screenshot(full_page=True))


def _write_docs_image(png: bytes) -> None:
    """The README's screenshot: the page after the run, as a 128-colour PNG (well under 200 KB)."""
    import io

    from PIL import Image

    path = REPOSITORY / "docs" / "images" / "web.png"
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128).save(path, optimize=True)
    assert path.stat().st_size < 200_000


def test_downloads_are_the_transform_its_inverse_and_the_warped_volume(finished_run, tmp_path):
    page = finished_run
    links = {link.text_content().strip(): link.get_attribute("href")
             for link in page.locator("#downloads a").all()}
    assert {"transform.h5", "inverse_transform.h5", "warped.nii.gz", "warped_labels.nii.gz",
            "metrics.json"} <= set(links)
    files = {}
    for name, href in links.items():
        response = page.request.get(urljoin(page.url, href))  # as the browser resolves the link
        assert response.ok, name
        files[name] = tmp_path / name
        files[name].write_bytes(response.body())
    forward = sitk.ReadTransform(str(files["transform.h5"]))
    inverse = sitk.ReadTransform(str(files["inverse_transform.h5"]))
    for name in ("transform.h5", "inverse_transform.h5"):  # both fields stored compact (rcreg.io.write_transform)
        with h5py.File(files[name]) as h5:
            stored = h5["TransformGroup/0/TransformParameters"]
            assert stored.dtype == np.float32 and stored.compression == "gzip", name
    points = [(x, y, z) for x in (-40.0, 0.0, 40.0) for y in (-50.0, 0.0, 30.0) for z in (-10.0, 20.0)]  # in the brain
    assert max(np.linalg.norm(np.subtract(inverse.TransformPoint(forward.TransformPoint(p)), p)) for p in points) < 0.5
    assert max(np.linalg.norm(np.subtract(forward.TransformPoint(p), p)) for p in points) > 0.5  # not the identity
    warped, labels = sitk.ReadImage(str(files["warped.nii.gz"])), sitk.ReadImage(str(files["warped_labels.nii.gz"]))
    assert warped.GetSize() == labels.GetSize() == (197, 233, 189)  # the fixed grid (MNI152 2009a)
    assert set(np.unique(sitk.GetArrayViewFromImage(labels))) == {0, 1, 2, 3}
    metrics = json.loads(files["metrics.json"].read_text(encoding="utf-8"))
    assert metrics["initial_alignment"] == "mass"  # the page's selector reached the engine
    assert np.linalg.norm(metrics["initial_translation_mm"]) > 0


def test_cancel_stops_a_run(finished_run):
    page = finished_run
    page.fill("#refine-iterations", "default")
    page.click("#run")
    page.wait_for_selector("#cancel:not([disabled])", timeout=30_000)  # this run has started
    page.wait_for_function("Number(document.querySelector('#progress').getAttribute('aria-valuenow')) >= 10",
                           timeout=RUN_S * 1000)
    page.click("#cancel")
    assert wait_for_status(page, r"^(Cancelled|Finished run|Failed)", 60) == "Cancelled"
    assert page.locator("#downloads a").count() == 0 and page.inner_text("#metrics").strip() == ""
    assert page.locator("#error").count() == 0
    assert page.outside_requests == []  # the page loaded nothing from outside the server
    assert status(page) == "Cancelled"
