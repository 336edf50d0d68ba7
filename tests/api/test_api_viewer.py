"""The reader page's image viewer (Cornerstone3D, built from ``frontend/``) in Debian's Chromium.

A study with a PA and a lateral image and a second study are served by ApiServer on a free
port; Playwright drives the page at a laptop's 1366x768 and a reading-room monitor's
2560x1440, and checks what the reader sees: both views side by side at full resolution with
their 16-bit values, window/level by drag changing the shown pixels, zoom at the cursor keeping
the point under it, Reset, presets and invert, and no zoom carried into the next study.
Screenshots go to a temporary folder the tests print (and are copied to
``$VIEWER_SCREENSHOTS`` when it is set). The ``.../pixels`` route is also checked on its own.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from apihelpers import (
    JANE_TOKEN,
    ApiUnderTest,
    SeededStudy,
    api_settings,
    auth,
    seed_drafted_study,
    spool_instance,
)
from PIL import Image
from pydicom.uid import generate_uid
from test_api_hostile_input import BAD_IMAGES, Change

from dicom_node.api import ApiServer
from dicom_node.settings import Settings
from dicom_node.store import Database

CHROMIUM = "/usr/bin/chromium"
#: Milliseconds Playwright waits (the first Cornerstone render takes a few seconds on 2 cores).
TIMEOUT_MS = 60_000
SIZES = {"laptop": (1366, 768), "monitor": (2560, 1440)}
#: Where a copy of the screenshots goes, when set (the issue's closing note shows them).
SCREENSHOTS_ENV = "VIEWER_SCREENSHOTS"
#: axe-core, a dev dependency of the viewer's build (frontend/package.json).
AXE = Path(__file__).parents[2] / "frontend" / "node_modules" / "axe-core" / "axe.min.js"


# --------------------------------------------------------------------------- the pixels route
def test_pixels_are_the_full_resolution_16_bit_values_with_their_attributes(
    api: ApiUnderTest,
) -> None:
    image_id = api.client.get(api.path(), headers=auth()).json()["images"][0]["id"]
    response = api.client.get(api.path(f"/images/{image_id}/pixels"), headers=auth())
    assert response.status_code == 200, response.text
    source = pydicom.dcmread(api.study.image_path)
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["X-Rows"] == str(source.Rows) == "1955"
    assert response.headers["X-Columns"] == str(source.Columns) == "1841"
    assert response.headers["X-Pixel-Format"] == "uint16"
    assert response.headers["X-Photometric-Interpretation"] == "MONOCHROME1"
    assert float(response.headers["X-Window-Center"]) == float(source.WindowCenter)
    assert float(response.headers["X-Window-Width"]) == float(source.WindowWidth)
    pixels = np.frombuffer(response.content, dtype="<u2").reshape(source.Rows, source.Columns)
    np.testing.assert_array_equal(pixels, source.pixel_array)
    assert pixels.max() > 255  # 16-bit values, not an 8-bit rendering


def test_rescaled_pixels_travel_after_the_modality_lut(api: ApiUnderTest) -> None:
    ds = pydicom.dcmread(api.study.image_path)
    stored = ds.pixel_array.astype(np.float64)
    ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-1024"
    ds.save_as(api.study.image_path, enforce_file_format=False)
    image_id = api.client.get(api.path(), headers=auth()).json()["images"][0]["id"]
    response = api.client.get(api.path(f"/images/{image_id}/pixels"), headers=auth())
    assert response.status_code == 200, response.text
    assert response.headers["X-Pixel-Format"] == "float32"  # halves of odd values
    pixels = np.frombuffer(response.content, dtype="<f4").reshape(ds.Rows, ds.Columns)
    np.testing.assert_array_equal(pixels, (stored * 0.5 - 1024).astype(np.float32))


@pytest.mark.parametrize(("change", "reason"), [case[1:] for case in BAD_IMAGES],
                         ids=[case[0] for case in BAD_IMAGES])
def test_pixels_of_an_image_with_bad_attributes_get_422_with_the_reason(
    api: ApiUnderTest, change: Change, reason: str
) -> None:
    ds = pydicom.dcmread(api.study.image_path)
    ds.RescaleIntercept = 0
    change(ds).save_as(api.study.image_path, enforce_file_format=False)
    image_id = api.client.get(api.path(), headers=auth()).json()["images"][0]["id"]
    response = api.client.get(api.path(f"/images/{image_id}/pixels"), headers=auth())
    assert response.status_code == 422, response.text
    assert reason in response.json()["detail"]


def test_pixels_and_priors_need_a_token_and_a_known_study(api: ApiUnderTest) -> None:
    image_id = api.client.get(api.path(), headers=auth()).json()["images"][0]["id"]
    assert api.client.get(api.path(f"/images/{image_id}/pixels")).status_code == 401
    missing = api.client.get(api.path(f"/images/{image_id + 99}/pixels"), headers=auth())
    assert missing.status_code == 404 and f"no image {image_id + 99}" in missing.json()["detail"]
    assert api.client.get(api.path("/priors")).status_code == 401
    unknown = api.client.get(api.path("/priors", study_uid="1.2.3.4"), headers=auth())
    assert unknown.status_code == 404 and unknown.json()["detail"] == "no such study"
    # One study of the patient: no priors.
    assert api.client.get(api.path("/priors"), headers=auth()).json() == []


# --------------------------------------------------------------------------- the page
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")
sync_api.expect.set_options(timeout=TIMEOUT_MS)


def add_lateral(settings: Settings, db: Database, study: SeededStudy) -> pydicom.Dataset:
    """Spool and record a lateral view in `study`: its PA image transposed, so that it looks
    different and is 1955 wide and 1841 high."""
    ds = pydicom.dcmread(study.image_path)
    pixels = np.ascontiguousarray(ds.pixel_array.T)
    ds.PixelData = pixels.tobytes()
    ds.Rows, ds.Columns = pixels.shape
    ds.ViewPosition = "LL"
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    spool_instance(settings, db, ds, "LL")
    return ds


@dataclass
class ViewerStudies:
    """A study with a PA and a lateral image, a second study with one PA, the API serving them."""

    two_views: SeededStudy
    lateral: pydicom.Dataset
    other: SeededStudy
    server: ApiServer


@pytest.fixture
def viewer_studies(
    tmp_path: Path, tiny_bundle: Path, tiny_model: Any, chest_cr_path: Path,
    start_api_server: Callable[..., ApiServer],
) -> Iterator[ViewerStudies]:
    settings = api_settings(tmp_path / "node", tiny_bundle)
    db = Database(settings.database_url)
    db.create_all()
    try:
        two_views = seed_drafted_study(settings, db, tiny_model, chest_cr_path)
        lateral = add_lateral(settings, db, two_views)
        other = seed_drafted_study(settings, db, tiny_model, chest_cr_path)
        yield ViewerStudies(two_views, lateral, other, start_api_server(settings, db))
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def browser() -> Any:
    """Headless Chromium driven by Playwright (skipped only when chromium is not installed)."""
    executable = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if executable is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The folder of this module's screenshots (printed; copied to $VIEWER_SCREENSHOTS)."""
    folder = tmp_path_factory.mktemp("viewer-screenshots")
    print(f"\nviewer screenshots: {folder}")
    yield folder
    target = os.environ.get(SCREENSHOTS_ENV)
    if target:
        shutil.copytree(folder, target, dirs_exist_ok=True)


class Viewer:
    """The page of a logged-in reader, and what its viewer shows."""

    def __init__(self, page: Any, errors: list[str]) -> None:
        self.page = page
        self.errors = errors

    def open(self, study_uid: str, images: int) -> None:
        self.page.locator(f'#worklist tbody tr[data-uid="{study_uid}"]').click()
        sync_api.expect(self.page.locator(f'#viewer[data-study="{study_uid}"]')).to_have_attribute(
            "data-state", "ready"
        )
        sync_api.expect(self.page.locator('#viewer .vp-cell[data-state="ready"]')).to_have_count(
            images
        )

    def call(self, index: int, expression: str) -> Any:
        """`expression` of the index-th Cornerstone viewport (``vp``)."""
        return self.page.evaluate(
            f"(i) => {{ const vp = window.cxrViewer.viewport(i); return {expression}; }}", index
        )

    def box(self, index: int) -> dict[str, float]:
        box = self.page.locator("#viewer .vp-element").nth(index).bounding_box()
        assert box is not None
        return dict(box)

    def shot(self, index: int) -> np.ndarray:
        """The shown pixels of the middle of the index-th viewport (inside the image, away
        from the black around it), as grey values."""
        png = self.page.locator("#viewer .vp-element").nth(index).screenshot()
        grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
        rows, columns = grey.shape
        return grey[rows // 3: 2 * rows // 3, columns // 3: 2 * columns // 3]

    def readout(self, index: int) -> str:
        return str(self.page.locator("#viewer .vp-wl").nth(index).inner_text())

    def settle(self) -> None:
        """Wait two animation frames: Cornerstone renders on the next frame."""
        self.page.evaluate(
            "() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))"
        )


@pytest.fixture(params=list(SIZES), ids=list(SIZES))
def viewer(
    request: pytest.FixtureRequest, viewer_studies: ViewerStudies, browser: Any
) -> Iterator[Viewer]:
    width, height = SIZES[request.param]
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Failed answers by address (the console's "Failed to load resource" names none); the
    # browser's own favicon request is no page error.
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
    try:
        page.goto(viewer_studies.server.url)
        page.fill("#token", JANE_TOKEN)
        page.click("#login-button")
        yield Viewer(page, errors)
    finally:
        context.close()


def wheel(viewer: Viewer, notches: int) -> None:
    """Turn the wheel towards the reader `notches` times where the mouse is (each zooms a step
    that is smaller the taller the viewport)."""
    for _ in range(notches):
        viewer.page.mouse.wheel(0, -100)
        viewer.settle()


def _size(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["viewer"])


@pytest.mark.network
def test_pa_and_lateral_side_by_side_at_full_resolution_and_window_by_drag(
    viewer: Viewer, viewer_studies: ViewerStudies, screenshots: Path,
    request: pytest.FixtureRequest,
) -> None:
    page, study = viewer.page, viewer_studies.two_views
    viewer.open(study.study_uid, images=2)
    # Both views at once, side by side, each named.
    labels = page.locator("#viewer .vp-label")
    sync_api.expect(labels).to_have_text(["CR PA", "CR LL"])
    # Side by side where the pane is wide, one above the other where it is tall and narrow
    # (whichever shows them larger), both whole on the screen and not thumbnails.
    pa, lateral = viewer.box(0), viewer.box(1)
    pane = page.locator("#viewer").bounding_box()
    assert pane is not None
    if pane["width"] >= pane["height"]:
        assert abs(pa["y"] - lateral["y"]) < 1 and lateral["x"] >= pa["x"] + pa["width"] - 1
    else:
        assert abs(pa["x"] - lateral["x"]) < 1 and lateral["y"] >= pa["y"] + pa["height"] - 1
    width, height = SIZES[_size(request)]
    for box in (pa, lateral):
        assert box["x"] >= 0 and box["y"] >= 0
        assert box["x"] + box["width"] <= width and box["y"] + box["height"] <= height, box
        assert min(box["width"], box["height"]) > 0.15 * height, box
    # Full resolution: the viewport holds every pixel of each file, with its 16-bit values.
    source = pydicom.dcmread(study.image_path).pixel_array
    shapes = [source.shape, viewer_studies.lateral.pixel_array.shape]
    for index, (rows, columns) in enumerate(shapes):
        assert viewer.call(index, "Array.from(vp.getImageData().dimensions)") == [columns, rows, 1]
    probe = viewer.call(
        0, "(() => { const d = vp.getCornerstoneImage().getPixelData(); return [d.length,"
        " d[1000 * 1841 + 900], d.subarray(0, 200000).reduce((a, b) => Math.max(a, b))]; })()"
    )
    assert probe[0] == source.size and probe[1] == int(source[1000, 900])
    assert probe[2] == int(source.reshape(-1)[:200000].max()) > 255
    viewer.settle()
    page.screenshot(path=screenshots / f"{_size(request)}-pa-lateral.png")
    # axe-core (installed with the viewer's npm packages) finds nothing wrong in the viewer.
    page.evaluate(AXE.read_text())
    violations = page.evaluate(
        "async () => (await axe.run('#viewer-panel')).violations"
        ".map((v) => `${v.id}: ${v.nodes.map((n) => n.target).join(' ')}`)"
    )
    assert violations == []

    # Window/level by drag changes the shown pixels and the numbers written over the image.
    before, numbers = viewer.shot(0), viewer.readout(0)
    assert numbers.startswith("W 30000") and "L 15000" in numbers
    x, y = pa["x"] + pa["width"] / 2, pa["y"] + pa["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 120, y + 80, steps=8)
    page.mouse.up()
    viewer.settle()
    after = viewer.shot(0)
    assert viewer.readout(0) != numbers
    assert np.abs(after - before).mean() > 5, "the drag did not change the shown pixels"
    # Only the dragged image: the lateral keeps its window.
    assert viewer.readout(1).startswith("W 30000")
    page.screenshot(path=screenshots / f"{_size(request)}-after-window-drag.png")
    assert not viewer.errors, viewer.errors


@pytest.mark.network
def test_zoom_at_the_cursor_reset_and_no_zoom_into_the_next_study(
    viewer: Viewer, viewer_studies: ViewerStudies, screenshots: Path,
    request: pytest.FixtureRequest,
) -> None:
    page, study = viewer.page, viewer_studies.two_views
    viewer.open(study.study_uid, images=2)
    box = viewer.box(0)
    start_zoom = viewer.call(0, "vp.getZoom()")
    initial = viewer.readout(0)
    # A point off the centre: the wheel zooms there, and that point stays under the cursor.
    # The browser reports the mouse at whole CSS pixels, so the point is taken at one.
    cursor = (round(box["x"] + box["width"] * 0.3), round(box["y"] + box["height"] * 0.35))
    point = [cursor[0] - box["x"], cursor[1] - box["y"]]
    world = viewer.call(0, f"vp.canvasToWorld({point})")
    page.mouse.move(*cursor)
    wheel(viewer, 10)
    zoom = viewer.call(0, "vp.getZoom()")
    assert zoom > start_zoom * 1.1
    canvas = viewer.call(0, f"Array.from(vp.worldToCanvas({world}))")
    assert np.hypot(canvas[0] - point[0], canvas[1] - point[1]) < 2, (canvas, point)
    # Ctrl+wheel zooms at the cursor too (and not the page).
    page.keyboard.down("Control")
    wheel(viewer, 5)
    page.keyboard.up("Control")
    assert viewer.call(0, "vp.getZoom()") > zoom * 1.05
    canvas = viewer.call(0, f"Array.from(vp.worldToCanvas({world}))")
    assert np.hypot(canvas[0] - point[0], canvas[1] - point[1]) < 2, (canvas, point)
    assert page.evaluate("() => window.visualViewport.scale") == 1
    page.screenshot(path=screenshots / f"{_size(request)}-zoomed-at-cursor.png")

    # Presets and invert change the window and the shown pixels; Reset undoes zoom and window.
    shown = viewer.shot(0)
    page.select_option("#wl-preset", "lung")
    viewer.settle()
    assert viewer.readout(0) != initial
    page.screenshot(path=screenshots / f"{_size(request)}-lung.png")
    page.click("#viewer-invert")
    sync_api.expect(page.locator("#viewer-invert")).to_have_attribute("aria-pressed", "true")
    sync_api.expect(page.locator("#viewer .vp-wl").first).to_contain_text("inverted")
    viewer.settle()
    assert np.abs(viewer.shot(0) - shown).mean() > 5
    page.screenshot(path=screenshots / f"{_size(request)}-lung-inverted.png")
    page.click("#viewer-reset")
    viewer.settle()
    assert viewer.call(0, "vp.getZoom()") == pytest.approx(start_zoom, rel=1e-6)
    assert viewer.readout(0) == initial
    sync_api.expect(page.locator("#viewer-invert")).to_have_attribute("aria-pressed", "false")
    sync_api.expect(page.locator("#wl-preset")).to_have_value("file")

    # Shift+drag pans (the image follows the mouse, the window stays); Fit undoes it.
    centre = (round(box["x"] + box["width"] / 2), round(box["y"] + box["height"] / 2))
    anchor = [centre[0] - box["x"], centre[1] - box["y"]]
    world = viewer.call(0, f"vp.canvasToWorld({anchor})")
    page.keyboard.down("Shift")
    page.mouse.move(*centre)
    page.mouse.down()
    page.mouse.move(centre[0] + 40, centre[1] + 30, steps=5)
    page.mouse.up()
    page.keyboard.up("Shift")
    viewer.settle()
    moved = viewer.call(0, f"Array.from(vp.worldToCanvas({world}))")
    assert np.hypot(moved[0] - anchor[0] - 40, moved[1] - anchor[1] - 30) < 2, (moved, anchor)
    assert viewer.readout(0) == initial
    page.click("#viewer-fit")
    viewer.settle()
    back = viewer.call(0, f"Array.from(vp.worldToCanvas({world}))")
    assert np.hypot(back[0] - anchor[0], back[1] - anchor[1]) < 0.5, (back, anchor)

    # Zoomed and windowed, then the next study: it opens fitted, with its own window.
    page.mouse.move(*cursor)
    wheel(viewer, 10)
    assert viewer.call(0, "vp.getZoom()") > start_zoom * 1.1
    other = viewer_studies.other
    viewer.open(other.study_uid, images=1)
    assert viewer.call(0, "vp.getZoom()") == pytest.approx(1.0, rel=1e-6)
    assert viewer.readout(0) == initial
    viewer.settle()
    page.screenshot(path=screenshots / f"{_size(request)}-next-study.png")
    viewer.open(study.study_uid, images=2)
    assert viewer.call(0, "vp.getZoom()") == pytest.approx(start_zoom, rel=1e-6)
    assert not viewer.errors, viewer.errors


@pytest.mark.network
def test_an_image_the_node_cannot_decode_says_why_in_its_pane(
    viewer: Viewer, viewer_studies: ViewerStudies,
) -> None:
    study = viewer_studies.other
    ds = pydicom.dcmread(study.image_path)
    ds.BitsStored = 20
    ds.save_as(study.image_path, enforce_file_format=False)
    viewer.page.locator(f'#worklist tbody tr[data-uid="{study.study_uid}"]').click()
    cell = viewer.page.locator('#viewer .vp-cell[data-state="failed"]')
    sync_api.expect(cell).to_contain_text("This image cannot be shown: the image header is not "
                                          "valid: BitsStored is 20")
    # The report still shows: the viewer's failure does not block the study.
    sync_api.expect(viewer.page.locator("#report-version")).to_have_text("1")
    assert [e.split("/images/")[0] for e in viewer.errors] == [
        f"422 {viewer_studies.server.url}/api/studies/{study.study_uid}"
    ], viewer.errors


@pytest.mark.network
def test_a_prior_study_of_the_patient_shows_beside_the_current_one(
    viewer: Viewer, viewer_studies: ViewerStudies, screenshots: Path,
    request: pytest.FixtureRequest,
) -> None:
    # The second study was received later but taken earlier: it is the first one's prior.
    current, prior = viewer_studies.two_views, viewer_studies.other
    ds = pydicom.dcmread(prior.image_path)
    ds.StudyDate = "20030217"
    ds.save_as(prior.image_path, enforce_file_format=False)
    url = viewer_studies.server.url
    listed = httpx.get(f"{url}/api/studies/{current.study_uid}/priors", headers=auth()).json()
    assert [(p["study_instance_uid"], p["study_date"], len(p["images"])) for p in listed] == [
        (prior.study_uid, "2003-02-17", 1)
    ]
    later = httpx.get(f"{url}/api/studies/{prior.study_uid}/priors", headers=auth())
    assert later.status_code == 200 and later.json() == []

    page = viewer.page
    viewer.open(current.study_uid, images=3)
    labels = page.locator("#viewer .vp-label")
    shown_date = page.evaluate("() => new Date(2003, 1, 17).toLocaleDateString()")
    sync_api.expect(labels).to_have_text(["CR PA", "CR LL", f"Prior {shown_date} CR PA"])
    button = page.locator("#viewer-priors")
    sync_api.expect(button).to_have_text("Priors (1)")
    sync_api.expect(button).to_have_attribute("aria-pressed", "true")
    boxes = [viewer.box(index) for index in range(3)]
    width, height = SIZES[_size(request)]
    for box in boxes:
        assert box["x"] + box["width"] <= width and box["y"] + box["height"] <= height, box
    viewer.settle()
    page.screenshot(path=screenshots / f"{_size(request)}-with-prior.png")
    # The prior's pixels are its own study's.
    assert viewer.call(2, "vp.getCurrentImageId()").endswith(
        f"/studies/{prior.study_uid}/images/{listed[0]['images'][0]['id']}/pixels"
    )
    # The reader hides the priors; the prior itself has none, and no button.
    button.click()
    sync_api.expect(page.locator('#viewer .vp-cell[data-state="ready"]')).to_have_count(2)
    sync_api.expect(button).to_have_attribute("aria-pressed", "false")
    viewer.open(prior.study_uid, images=1)
    sync_api.expect(button).to_be_hidden()
    assert not viewer.errors, viewer.errors


@pytest.mark.network
def test_the_viewer_works_from_the_keyboard(
    viewer: Viewer, viewer_studies: ViewerStudies
) -> None:
    page = viewer.page
    viewer.open(viewer_studies.other.study_uid, images=1)
    initial = viewer.readout(0)
    image = page.locator("#viewer .vp-element").first
    image.focus()
    page.keyboard.press("ArrowRight")  # wider window
    sync_api.expect(page.locator("#viewer .vp-wl").first).to_contain_text("W 30900")
    page.keyboard.press("+")
    assert viewer.call(0, "vp.getZoom()") == pytest.approx(1.2, rel=1e-6)
    page.keyboard.press("0")
    sync_api.expect(page.locator("#viewer .vp-wl").first).to_have_text(initial)
    assert viewer.call(0, "vp.getZoom()") == pytest.approx(1.0, rel=1e-6)
    # The toolbar's controls are reached with Tab like any other.
    page.locator("#wl-preset").focus()
    page.keyboard.press("Tab")
    sync_api.expect(page.locator("#viewer-invert")).to_be_focused()
    page.keyboard.press("Enter")
    sync_api.expect(page.locator("#viewer-invert")).to_have_attribute("aria-pressed", "true")
    assert not viewer.errors, viewer.errors


@pytest.mark.network
def test_a_quick_switch_shows_only_the_last_study_and_a_resize_refits(
    viewer: Viewer, viewer_studies: ViewerStudies, request: pytest.FixtureRequest
) -> None:
    page = viewer.page
    first, second = viewer_studies.two_views, viewer_studies.other
    # The second study is opened while the first one's pixels are still on their way.
    page.locator(f'#worklist tbody tr[data-uid="{first.study_uid}"]').click()
    viewer.open(second.study_uid, images=1)
    viewer.settle()
    sync_api.expect(page.locator("#viewer .vp-cell")).to_have_count(1)
    assert f"/studies/{second.study_uid}/" in viewer.call(0, "vp.getCurrentImageId()")
    # A smaller window: the viewport follows its pane and the image is fitted again.
    width, height = SIZES[_size(request)]
    before = viewer.box(0)
    page.set_viewport_size({"width": width, "height": height * 3 // 4})
    page.wait_for_function(
        "(h) => document.querySelector('#viewer .vp-element').clientHeight < h",
        arg=before["height"] - 10,
    )
    viewer.settle()
    size = page.evaluate(
        "() => { const e = document.querySelector('#viewer .vp-element');"
        " const c = e.querySelector('canvas'); return [e.clientWidth, e.clientHeight,"
        " c.clientWidth, c.clientHeight]; }"
    )
    assert size[2:] == size[:2]
    corners = viewer.call(
        0, "[0, 1].map((c) => vp.worldToCanvas(vp.getImageData().imageData.indexToWorld("
        "[c * 1840, c * 1954, 0])))"
    )
    (x0, y0), (x1, y1) = corners
    # the whole image within the pane, touching two of its sides (fitted)
    assert -1 <= min(x0, x1) and max(x0, x1) <= size[0] + 1
    assert -1 <= min(y0, y1) and max(y0, y1) <= size[1] + 1
    assert abs(y1 - y0) >= size[1] - 3 or abs(x1 - x0) >= size[0] - 3
    assert not viewer.errors, viewer.errors
