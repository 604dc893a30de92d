"""demo: the API on good and bad uploads, its settings and examples, and the page in a real headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from finders import unscored
from synthetic import draw_face
from tinymodel import make_tiny_binary_run, make_tiny_incorrect_model, make_tiny_run

from maskclf import CLASS_NAMES
from maskclf.data import MANIFEST_COLUMNS
from maskclf.demo import EXAMPLE_RULE, PAGE, create_app, decode_upload, example_photos, UploadError
from maskclf.demo_browser import CHROMIUM, capture_example, capture_webcam, open_page, replies, serve, shown, wait_for_reply, write_y4m
from maskclf.detect import DEFAULT_DETECTOR, DETECTORS
from maskclf.predict import COLOURS
from maskclf.runs import load_run

BOXES = [(20, 20, 60, 60), (120, 50, 168, 98)]
MAX_BYTES = 300_000


def photo_png(blank: bool = False) -> bytes:
    """photo_array as a PNG."""
    buffer = io.BytesIO()
    Image.fromarray(photo_array(blank)).save(buffer, format="PNG")
    return buffer.getvalue()


def photo_array(blank: bool = False) -> np.ndarray:
    """A 200x120 RGB photo with a masked face and an unmasked one at BOXES (or none)."""
    image = np.full((120, 200, 3), (90, 140, 90), np.uint8)
    if not blank:
        image[20:60, 20:60] = draw_face(40, "with_mask")
        image[50:98, 120:168] = draw_face(48, "without_mask")
    return image


def fake_boxes(image: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The known faces of `photo_png`; none on a uniform image; fails on a 13-px-wide one."""
    if image.shape[1] == 13:
        raise RuntimeError("boom")
    return BOXES if image.std(axis=(0, 1)).max() > 5 else []


fake_detector = unscored(fake_boxes)
"""`fake_boxes` as the app's FaceFinder."""


class FakeDetectors:
    """`make_detector` for the app (name -> FaceFinder): "haar" finds only the first face; "mtcnn" is not installed."""

    def __init__(self):
        self.made: list[str] = []

    def __call__(self, name: str):
        self.made.append(name)
        if name == "mtcnn":
            raise ImportError("No module named 'mtcnn'")
        return unscored(lambda image: fake_boxes(image)[:1])


# one data set photo per name: (fold, faces); by the rule the examples are p1 and p4 (count 2)
EXAMPLE_SET = {"p1.png": (0, 2), "p2.png": (0, 1), "p3.png": (1, 3), "p4.png": (0, 2), "p10.png": (0, 3)}


@pytest.fixture(scope="module")
def extraction(tmp_path_factory) -> Path:
    """An extraction (faces.csv, extract.json) of a small data set whose photos are EXAMPLE_SET."""
    root = tmp_path_factory.mktemp("extraction")
    (root / "data" / "images").mkdir(parents=True)
    rows = []
    for name, (fold, n) in EXAMPLE_SET.items():
        Image.fromarray(photo_array()).save(root / "data" / "images" / name)
        for i in range(n):
            rows.append({"crop_path": f"faces/with_mask/{name}_{i}.png", "source_image": name, "face_index": i,
                         "xmin": 20, "ymin": 20, "xmax": 60, "ymax": 60, "width": 40, "height": 40, "image_width": 200,
                         "image_height": 120, "clipped": False, "original_label": "with_mask", "label": "with_mask",
                         "fold": fold})
    faces = root / "faces"
    faces.mkdir()
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(faces / "faces.csv", index=False)
    (faces / "extract.json").write_text(json.dumps({"data_dir": str(root / "data")}))
    return faces


@pytest.fixture(scope="module")
def makers():
    return FakeDetectors()


@pytest.fixture(scope="module")
def app(tmp_path_factory, extraction, makers):
    model, config = load_run(make_tiny_run(tmp_path_factory.mktemp("model") / "run"))
    return create_app(model, config, fake_detector, max_bytes=MAX_BYTES, make_detector=makers,
                      examples=example_photos(extraction, count=2))


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def incorrect_app(tmp_path_factory):
    """The demo of the tiny model whose unmasked faces are `mask_incorrect` (tinymodel.make_tiny_incorrect_model)."""
    model, config = load_run(make_tiny_run(tmp_path_factory.mktemp("model") / "incorrect", make_tiny_incorrect_model()))
    return create_app(model, config, fake_detector)


def post(client, name: str, data: bytes, mime: str = "image/png", **settings):
    return client.post("/api/predict", files={"file": (name, data, mime)}, data=settings)


def page_settings(html: str) -> dict:
    return json.loads(html.split('<script id="config" type="application/json">', 1)[1].split("</script>", 1)[0])


def test_page_is_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text and "getUserMedia" in page.text
    text = page.text.replace("http://www.w3.org/2000/svg", "").replace('<link rel="icon" href="data:', "")
    for marker in ("http://", "https://", "//cdn", "<link", "src=\"http", "@import"):
        assert marker not in text, f"external resource: {marker}"


def test_page_has_an_inline_favicon(client):
    """A browser then has no reason to ask for /favicon.ico (a 404)."""
    href = client.get("/").text.split('<link rel="icon" href="', 1)[1].split('"', 1)[0]
    kind, svg = href.split(",", 1)
    assert kind == "data:image/svg+xml"
    root = ET.fromstring(urllib.parse.unquote(svg))
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and len(root) >= 1


def test_good_photo(client):
    reply = post(client, "two.png", photo_png())
    assert reply.status_code == 200
    body = reply.json()
    assert [f["label"] for f in body["faces"]] == ["with_mask", "without_mask"]
    assert [tuple(f["box"]) for f in body["faces"]] == BOXES
    assert [f["number"] for f in body["faces"]] == [1, 2], "numbered as the table's rows and the drawing's tags"
    assert [f["three_way"] for f in body["faces"]] == ["with_mask", "without_mask"]
    assert [f["label_text"] for f in body["faces"]] == ["with mask", "without mask"]
    assert body["summary_line"] == "2 faces: 1 with mask, 0 worn incorrectly, 1 without"
    assert body["message"] == "2 faces: 1 with mask, 0 worn incorrectly, 1 without." and body["notes"] == []
    assert body["summary"] == {"faces": 2, "with_mask": 1, "without_mask": 1, "everyone_masked": False,
                               "mask_incorrect": 0,
                               "three_way": {"with_mask": 1, "mask_incorrect": 0, "without_mask": 1}}
    assert body["image"].startswith("data:image/jpeg;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(body["image"].split(",", 1)[1]))).size == (200, 120)


def test_webcam_frames_can_skip_the_image(client):
    body = post(client, "frame.jpg", photo_png(), with_image="0").json()
    assert "image" not in body and body["summary_line"] == "2 faces: 1 with mask, 0 worn incorrectly, 1 without"


def test_threshold_changes_the_answer(client):
    faces = post(client, "two.png", photo_png()).json()["faces"]
    p = sorted(face["p_without_mask"] for face in faces)
    assert 0 < p[0] < p[1] < 1
    low = post(client, "two.png", photo_png(), threshold=str(p[0] / 2)).json()
    assert [f["label"] for f in low["faces"]] == ["without_mask", "without_mask"]
    assert low["summary_line"] == "2 faces: 0 with mask, 0 worn incorrectly, 2 without"
    high = post(client, "two.png", photo_png(), threshold=str((p[1] + 1) / 2)).json()
    assert [f["label"] for f in high["faces"]] == ["with_mask", "with_mask"]
    assert [f["p_without_mask"] for f in high["faces"]] == [f["p_without_mask"] for f in faces], "only the labels move"


@pytest.mark.parametrize("value", ["abc", "1.5", "-0.1", "nan"])
def test_bad_threshold_is_a_400_naming_it(client, value):
    reply = post(client, "two.png", photo_png(), threshold=value)
    assert reply.status_code == 400 and f"not “{value}”" in reply.json()["error"]


def test_detector_is_chosen_per_request(client, makers):
    settings = page_settings(client.get("/").text)
    assert settings["detectors"] == list(DETECTORS) and settings["detector"] == DEFAULT_DETECTOR
    assert len(post(client, "two.png", photo_png()).json()["faces"]) == 2
    for _ in range(2):
        assert len(post(client, "two.png", photo_png(), detector="haar").json()["faces"]) == 1
    assert makers.made.count("haar") == 1, "made once for the lane, then kept"
    unknown = post(client, "two.png", photo_png(), detector="yolo")
    assert unknown.status_code == 400 and "choose one of centerface, mtcnn, haar" in unknown.json()["error"]
    missing = post(client, "two.png", photo_png(), detector="mtcnn")
    assert missing.status_code == 503 and "mtcnn detector is not available" in missing.json()["error"]


def test_examples_follow_the_rule_and_are_served(client, extraction):
    assert [p.name for p in example_photos(extraction)] == ["p1.png", "p4.png", "p10.png"]
    listed = client.get("/api/examples").json()
    assert listed["rule"] == EXAMPLE_RULE and "fold 0" in EXAMPLE_RULE
    assert [e["name"] for e in listed["examples"]] == ["p1.png", "p4.png"]
    assert page_settings(client.get("/").text)["examples"] == listed["examples"]
    served = client.get(listed["examples"][0]["url"])
    assert served.status_code == 200
    assert served.content == (extraction.parent / "data" / "images" / "p1.png").read_bytes()
    for name in ("p2.png", "..%2Ffaces%2Ffaces.csv", "faces.csv"):
        assert client.get(f"/examples/{name}").status_code == 404, name


def test_without_the_data_set_there_are_no_examples_and_the_page_works(tmp_path, client):
    assert example_photos(tmp_path / "nowhere") == []
    model_app = create_app(None, {"class_names": list(CLASS_NAMES)}, fake_detector)
    page = TestClient(model_app).get("/")
    assert page.status_code == 200 and page_settings(page.text)["examples"] == []
    assert page_settings(page.text)["detectors"] == [DEFAULT_DETECTOR], "without a maker, only the detector given"


def test_a_mask_worn_incorrectly_has_its_own_answer_words_and_count(incorrect_app, client):
    body = post(TestClient(incorrect_app), "two.png", photo_png()).json()
    assert [f["label"] for f in body["faces"]] == ["with_mask", "without_mask"], "binary: incorrect counts as without"
    assert [f["p_without_mask"] for f in body["faces"]] == pytest.approx(
        [f["p_without_mask"] for f in post(client, "two.png", photo_png()).json()["faces"]], abs=1e-5)
    assert [f["three_way"] for f in body["faces"]] == ["with_mask", "mask_incorrect"]
    three = body["faces"][1]["three_way_probabilities"]
    assert set(three) == {"with_mask", "mask_incorrect", "without_mask"}
    assert three["mask_incorrect"] > three["without_mask"]
    assert [f["label_text"] for f in body["faces"]] == ["with mask", "worn incorrectly"]
    assert body["summary"]["mask_incorrect"] == 1 and body["summary"]["without_mask"] == 1
    assert body["summary"]["three_way"] == {"with_mask": 1, "mask_incorrect": 1, "without_mask": 0}
    assert body["summary_line"] == "2 faces: 1 with mask, 1 worn incorrectly, 0 without"
    settings = page_settings(TestClient(incorrect_app).get("/").text)
    assert settings["answers"] == ["with_mask", "mask_incorrect", "without_mask"]
    assert settings["words"]["mask_incorrect"] == "worn incorrectly"
    assert len(set(settings["colours"].values())) == 3


def test_a_binary_model_answers_as_before(tmp_path):
    model, config = load_run(make_tiny_binary_run(tmp_path / "binary"))
    binary = TestClient(create_app(model, config, fake_detector))
    body = post(binary, "two.png", photo_png()).json()
    assert [f["label_text"] for f in body["faces"]] == ["with mask", "without mask"]
    assert all("three_way" not in f and "three_way_probabilities" not in f for f in body["faces"])
    assert body["summary"] == {"faces": 2, "with_mask": 1, "without_mask": 1, "everyone_masked": False}
    assert body["summary_line"] == "2 faces: 1 with mask, 1 without"
    assert page_settings(binary.get("/").text)["answers"] == list(CLASS_NAMES)


def test_photo_without_face(client):
    body = post(client, "blank.png", photo_png(blank=True)).json()
    assert body["faces"] == [] and body["message"] == "No face found in this photo."
    assert body["summary"]["faces"] == 0 and body["summary"]["everyone_masked"] is None


def truncated() -> bytes:
    data = photo_png()
    return data[: len(data) // 2]


@pytest.mark.parametrize("name, data, status, text", [
    ("notes.txt", b"hello, not an image", 400, "is not an image"),
    ("empty.png", b"", 400, "is empty"),
    ("cut.png", truncated(), 400, "truncated or corrupt"),
    ("big.png", b"\x89PNG" + bytes(MAX_BYTES), 413, "larger than"),
])
def test_bad_uploads_get_a_friendly_message_and_the_server_stays_up(client, name, data, status, text):
    reply = post(client, name, data)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert text in error and "Traceback" not in error
    if status == 400:
        assert name in error
    assert post(client, "two.png", photo_png()).status_code == 200


def test_huge_photo_is_refused_by_pixel_count(client):
    buffer = io.BytesIO()
    Image.new("L", (8100, 8000)).save(buffer, format="PNG")  # 64.8 Mpx in a small file
    assert len(buffer.getvalue()) < MAX_BYTES
    reply = post(client, "huge.png", buffer.getvalue())
    assert reply.status_code == 413 and "huge.png" in reply.json()["error"] and "megapixels" in reply.json()["error"]


def test_request_without_a_file(client):
    reply = client.post("/api/predict", data={"other": "x"})
    assert reply.status_code == 400 and "choose a photo" in reply.json()["error"]


def test_unexpected_failure_is_a_500_with_a_message(client):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((10, 13, 3), np.uint8)).save(buffer, format="PNG")
    reply = post(client, "odd.png", buffer.getvalue())
    assert reply.status_code == 500 and "Something went wrong" in reply.json()["error"]
    assert post(client, "two.png", photo_png()).status_code == 200


def test_decode_upload_limits_pixels_and_converts_modes():
    buffer = io.BytesIO()
    Image.new("P", (40, 30)).save(buffer, format="PNG")
    assert decode_upload(buffer.getvalue(), "p.png").shape == (30, 40, 3)
    with pytest.raises(UploadError, match="megapixels"):
        decode_upload(buffer.getvalue(), "p.png", max_pixels=100)


# --------------------------------------------------------------------------- real browser


def served(app):
    """The app's URL, served in a thread, once playwright and chromium are there (else the test is skipped)."""
    pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -r requirements.txt)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    return serve(app)


@pytest.fixture(scope="module")
def server(app):
    with served(app) as url:
        yield url


@pytest.fixture(scope="module")
def incorrect_server(incorrect_app):
    with served(incorrect_app) as url:
        yield url


def pixel(page, canvas: str, x: int, y: int) -> list[int]:
    return page.evaluate(f"Array.from(document.getElementById('{canvas}').getContext('2d').getImageData({x}, {y}, 1, 1).data)")


def set_threshold(page, value: float) -> None:
    page.evaluate("value => { const t = document.getElementById('threshold'); t.value = value;"
                  " t.dispatchEvent(new Event('change')); }", str(value))


def test_photos_in_a_real_browser(server, tmp_path):
    (tmp_path / "two.png").write_bytes(photo_png())
    (tmp_path / "broken.png").write_bytes(b"this is not a PNG")
    with open_page(server) as (page, requests):
        assert page.locator("#examples img").count() == 2 and page.is_visible("#examples-rule")
        assert [o for o in page.locator("#detector option").all_inner_texts()] == list(DETECTORS)
        assert page.input_value("#detector") == DEFAULT_DETECTOR and page.input_value("#threshold") == "0.5"
        example = capture_example(page, tmp_path / "demo-example.png")
        assert example["summary"] == "2 faces: 1 with mask, 0 worn incorrectly, 1 without"
        assert example["numbers"] == [1, 2]

        before = replies(page)
        page.set_input_files("#file", str(tmp_path / "two.png"))
        page.click("#submit")
        wait_for_reply(page, before)
        seen = shown(page)
        assert seen["labels"] == ["with mask", "without mask"] and seen["numbers"] == [1, 2]
        assert seen["summary"] == "2 faces: 1 with mask, 0 worn incorrectly, 1 without"
        # drawn 4x (800 px wide): box 1 in green, box 2 in red, on their left edges
        assert page.evaluate("document.getElementById('photo').width") == 800
        r, g, b, _ = pixel(page, "photo", 80, 160)
        assert g > 120 and r < 80, "face 1's box is green"
        r, g, b, _ = pixel(page, "photo", 480, 296)
        assert r > 150 and g < 80, "face 2's box is red"
        page.screenshot(path=str(tmp_path / "demo-upload.png"), full_page=True)

        before = replies(page)
        set_threshold(page, 0.01)  # the photo shown is analysed again with the new setting
        wait_for_reply(page, before)
        assert shown(page)["labels"] == ["without mask", "without mask"]
        assert shown(page)["summary"] == "2 faces: 0 with mask, 0 worn incorrectly, 2 without"
        before = replies(page)
        page.select_option("#detector", "haar")
        wait_for_reply(page, before)
        assert shown(page)["numbers"] == [1]

        page.set_input_files("#file", str(tmp_path / "broken.png"))
        page.click("#submit")
        page.wait_for_selector("#message.error", timeout=15_000)
        assert "broken.png" in page.inner_text("#message") and "not an image" in page.inner_text("#message")
        assert page.locator("#faces").is_hidden()
        assert all(url.startswith((server, "data:", "blob:")) for url in requests), requests
    for name in ("demo-example.png", "demo-upload.png"):
        assert Image.open(tmp_path / name).width >= 1000


def test_webcam_in_a_real_browser(server, tmp_path):
    clip = write_y4m([photo_array()] * 10, tmp_path / "clip.y4m", fps=10)
    with open_page(server, clip=clip) as (page, requests):
        live = capture_webcam(page, tmp_path / "demo-webcam.png", frames=3)
        assert live["frames"] >= 3 and page.inner_text("#message").startswith("Webcam on")
        assert live["summary"] == "2 faces: 1 with mask, 0 worn incorrectly, 1 without" and live["numbers"] == [1, 2]
        assert live["labels"] == ["with mask", "without mask"]
        size = page.evaluate("[document.getElementById('video').videoWidth, document.getElementById('video').videoHeight]")
        assert size == [200, 120], "the clip is the camera"
        scale = page.evaluate("document.getElementById('overlay').width") / 200
        r, g, b, a = pixel(page, "overlay", round(20 * scale), round(40 * scale))
        assert a > 0 and g > 120 and r < 80, "face 1's box drawn over the video in green"
        page.click("#webcam-stop")
        assert all(url.startswith((server, "data:", "blob:")) for url in requests), requests
        posted = [url for url in requests if url.endswith("api/predict")]
        assert len(posted) >= 3
    assert Image.open(tmp_path / "demo-webcam.png").width >= 1000


def test_a_mask_worn_incorrectly_in_a_real_browser(incorrect_server, tmp_path):
    (tmp_path / "two.png").write_bytes(photo_png())
    with open_page(incorrect_server) as (page, requests):
        assert page.is_visible("#rule-three-way") and page.is_hidden("#rule-binary")
        before = replies(page)
        page.set_input_files("#file", str(tmp_path / "two.png"))
        page.click("#submit")
        wait_for_reply(page, before)
        seen = shown(page)
        assert seen["labels"] == ["with mask", "worn incorrectly"] and seen["numbers"] == [1, 2]
        assert seen["summary"] == "2 faces: 1 with mask, 1 worn incorrectly, 0 without"
        assert page.locator("#faces th").all_inner_texts()[:5] == [
            "#", "label", "P(with mask)", "P(worn incorrectly)", "P(without mask)"]
        row = page.locator("#faces tbody tr").nth(1).locator("td").all_inner_texts()
        assert sum(map(float, row[2:5])) == pytest.approx(1, abs=2e-3) and float(row[3]) > float(row[4])
        colours = page.locator("#faces td.label").evaluate_all("cells => cells.map(c => getComputedStyle(c).color)")
        assert len(set(colours)) == 2, "the incorrect row's label has a colour of its own"
        # face 2's box, drawn 4x, on its left edge: orange, as predict draws it
        assert pixel(page, "photo", 480, 296)[:3] == pytest.approx(list(COLOURS["mask_incorrect"]), abs=12)
        page.screenshot(path=str(tmp_path / "demo-incorrect.png"), full_page=True)
        icon = page.evaluate("async () => { const img = new Image();"
                             " img.src = document.querySelector('link[rel=icon]').href;"
                             " await img.decode(); return [img.src.slice(0, 19), img.naturalWidth]; }")
        assert icon == ["data:image/svg+xml,", 16], "the favicon is an inline image the browser draws"
        assert all(url.startswith((incorrect_server, "data:", "blob:")) for url in requests), requests
