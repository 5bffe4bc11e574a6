"""The HTTP API (`wbc serve`): real app, real ONNX classifier, real segmenter, FastAPI's TestClient.

The classifier is the shipped default model when it is present, else a tiny real ONNX classifier built
in the test (mean colour -> linear layer, see test_analyze), so that these tests run anywhere in seconds.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from wbc.analyze import analyze_image, result_to_dict
from wbc.classify import classify_paths
from wbc.errors import WbcError
from wbc.labels import PER_100_WBC
from wbc.model import load_model
from wbc.paths import DEFAULT_MODEL
from wbc.segment.classical import ClassicalSegmenter
from wbc.serve.app import STATIC_DIR, create_app
from wbc.synthetic import synthetic_cell, synthetic_smear

sys.path.insert(0, str(Path(__file__).parent))
from test_analyze import make_colour_classifier


def png_bytes(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))[1].tobytes()


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]))[1].tobytes()


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model if present, else a tiny real ONNX classifier with wbc metadata."""
    if DEFAULT_MODEL.is_file():
        return DEFAULT_MODEL
    return make_colour_classifier(tmp_path_factory.mktemp("serve_model") / "tiny.onnx", size=48)


@pytest.fixture(scope="session")
def classifier(model_path: Path):
    return load_model(model_path, threads=1)


@pytest.fixture(scope="module")
def client(classifier) -> Iterator[TestClient]:
    app = create_app(classifier, ClassicalSegmenter(), max_upload_mb=2)
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def smear() -> np.ndarray:
    rgb, *_ = synthetic_smear(n_wbc=2, seed=5)
    return rgb


# --------------------------------------------------------------------------- metadata


def test_health_names_the_model_and_versions(client: TestClient, classifier) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["model_id"] == classifier.model_id and body["classes"] == classifier.classes
    assert body["versions"]["wbc"] and body["versions"]["onnxruntime"]
    assert body["limits"]["max_upload_mb"] == pytest.approx(2)


def test_model_metadata_matches_the_loaded_model(client: TestClient, classifier) -> None:
    body = client.get("/model").json()
    assert body["classes"] == classifier.classes
    assert body["input_size"] == classifier.info.input_size
    assert body["review_threshold"] == pytest.approx(classifier.info.review_threshold)
    assert set(body["colours"]) == set(classifier.classes)
    assert all(v.startswith("#") and len(v) == 7 for v in body["colours"].values())
    assert body["segmenter"]["name"] == "classical"
    # the framing /classify applies: the training band unless `wbc adapt --no-labels` chose another, and the zone
    # below 0.22 where a cell also runs re-framed
    assert body["reframe"] == {"target": 0.34, "low": 0.12, "high": 0.5, "grey": 0.22, "side": 0.0}
    # /classify: the model's own views per cell (one for a model without a setting); /analyze: the smear default
    assert body["tta_views"] == {"classify": 1, "analyze": 4}
    # ... and /classify's cells named below 0.7 with one view answered again by their four rotations
    assert body["tta_unsure"] == {"below": 0.7, "views": 4}
    assert body["class_prior"] == {} and body["class_priors"] == {}  # the shipped model: trained class-balanced
    assert body["colour_calibration"] == classifier.red_cell_target()  # the shipped model's training red cells


def test_openapi_schema_is_served_and_cdn_docs_are_off(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/classify", "/analyze", "/health", "/model", "/differential"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN
    assert client.get("/redoc").status_code == 404


# --------------------------------------------------------------------------- /classify


def test_classify_matches_the_command_line_and_reports_bad_files(client: TestClient, classifier,
                                                                  tmp_path: Path) -> None:
    labels = ["lymphocyte", "neutrophil", "eosinophil"]
    files, paths = [], []
    for i, label in enumerate(labels):
        data = png_bytes(synthetic_cell(label, 96, seed=i))
        files.append(("files", (f"{label}.png", data, "image/png")))
        paths.append(tmp_path / f"{label}.png")
        paths[-1].write_bytes(data)
    files.insert(1, ("files", ("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg")))
    files.append(("files", ("empty.png", b"", "image/png")))

    r = client.post("/classify", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n"] == 3 and [p["filename"] for p in body["results"]] == [f"{x}.png" for x in labels]
    errors = {e["filename"]: e["error"] for e in body["errors"]}
    assert set(errors) == {"broken.jpg", "empty.png"}
    assert "empty" in errors["empty.png"] and "broken.jpg" in errors["broken.jpg"]

    cli = classify_paths(paths, classifier, workers=1)  # what `wbc classify` computes for the same files
    thr = classifier.info.review_threshold
    for got, want in zip(body["results"], cli.predictions, strict=True):
        assert got["label"] == want.label
        assert got["confidence"] == pytest.approx(want.confidence, abs=1e-3)
        assert got["review"] == want.review and got["review"] == (want.confidence < thr or want.ood)
        assert sum(got["probabilities"].values()) == pytest.approx(1.0, abs=2e-3)
        assert max(got["probabilities"], key=got["probabilities"].get) == got["label"]
    assert sum(body["counts"].values()) == 3 and body["n_review"] == sum(p["review"] for p in body["results"])
    assert sum(d["count"] for d in body["differential"]) == 3



def test_classify_gives_every_flag_and_refusal_the_command_line_gives(client: TestClient, classifier,
                                                                     tmp_path: Path) -> None:
    """/classify answers through `wbc classify`'s own path (``wbc.classify.classify_byte_sources``; before wbc 0.34.0
    a predict loop of its own): two cells in one image and a TIFF of two images (flagged), an image too small to be
    a cell and a blank frame (refused), with a label set and without re-framing: the same labels, confidences,
    flags, reasons and refusals as ``classify_paths`` gives the same files."""
    from PIL import Image

    from test_two_cells import two_cells

    rgb = {"neutrophil": synthetic_cell("neutrophil", size=200, seed=1), "pair": two_cells(),
           "tiny": synthetic_cell("lymphocyte", size=12, seed=3), "blank": np.full((96, 96, 3), 230, np.uint8)}
    paths = []
    for k, v in rgb.items():
        paths.append(tmp_path / f"{k}.png")
        paths[-1].write_bytes(png_bytes(v))
    pages = [Image.fromarray(synthetic_cell("basophil", size=96, seed=s)) for s in (6, 7)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    paths.append(tmp_path / "stack.tif")
    upload = [("files", (p.name, p.read_bytes(), "image/tiff" if p.suffix == ".tif" else "image/png")) for p in paths]
    for params in ({}, {"classes": "5part"}, {"reframe": "false"}):
        body = client.post("/classify", files=upload, params=params).json()
        cli = classify_paths(paths, classifier, workers=1, classes=params.get("classes"),
                             reframe="reframe" not in params)
        assert [(r["filename"], r["label"], r["review"], r["ood"], r["review_reasons"], r["confidence"])
                for r in body["results"]] == [
            (Path(p.path).name, p.label, p.review, p.ood, list(p.reasons), round(p.confidence, 6))
            for p in cli.predictions], params
        assert [(e["filename"], e["error"]) for e in body["errors"]] == [
            (Path(n).name, m.replace(str(tmp_path) + os.sep, "")) for n, m in cli.errors], params
        flags = {r["filename"]: " ".join(r["review_reasons"]) for r in body["results"]}
        assert "holds 2 images" in flags["stack.tif"]
        assert ("2 nucleated cells in view" in flags["pair.png"]) == ("reframe" not in params)  # measured re-framing


@pytest.mark.parametrize(
    ("name", "data", "ctype", "status", "words"),
    [
        ("empty.png", b"", "image/png", 422, "empty"),
        ("text.png", b"hello, I am text", "image/png", 422, "not a readable image"),
        ("notes.txt", b"hello", "text/plain", 415, "content type text/plain"),
        ("cut.jpg", None, "image/jpeg", 422, "truncated"),
    ],
)
def test_classify_rejects_bad_uploads_with_4xx(client: TestClient, smear: np.ndarray, name: str,
                                               data: bytes | None, ctype: str, status: int,
                                               words: str) -> None:
    if data is None:
        data = jpeg_bytes(smear)[:4000]
    r = client.post("/classify", files={"files": (name, data, ctype)})
    assert r.status_code == status
    body = r.json()
    assert body["errors"][0]["filename"] == name
    assert name in body["errors"][0]["error"] and words in body["errors"][0]["error"]


def test_parts_without_a_file_name_are_named_by_their_place_in_results_and_errors(client: TestClient) -> None:
    """Parts sent with an empty file name were named by a running count in results (`file1`, `file5`) and by nothing
    in errors (`"filename": ""`, "upload: content type text/plain ...") (wbc 0.32.0): each is `file<its place>`."""
    cell, other = (png_bytes(synthetic_cell("lymphocyte", 96, seed=s)) for s in (1, 2))  # not copies: both counted
    parts = [(cell, "image/png"), (b"hello", "text/plain"), (b"not an image", "image/png"), (other, "image/png")]
    body = b"".join(b'--B\r\nContent-Disposition: form-data; name="files"; filename=""\r\nContent-Type: '
                    + ctype.encode() + b"\r\n\r\n" + data + b"\r\n" for data, ctype in parts) + b"--B--\r\n"
    r = client.post("/classify", content=body, headers={"content-type": "multipart/form-data; boundary=B"})
    assert r.status_code == 200, r.text
    assert [x["filename"] for x in r.json()["results"]] == ["file1", "file4"]
    errors = r.json()["errors"]
    assert [e["filename"] for e in errors] == ["file2", "file3"], errors
    assert all(e["error"].startswith(e["filename"] + ": ") for e in errors), errors


def test_missing_file_field_and_non_multipart_requests(client: TestClient) -> None:
    for path, field in (("/classify", "files"), ("/analyze", "file")):
        r = client.post(path, files={"wrong_name": ("a.png", b"123", "image/png")})
        assert r.status_code == 400 and field in r.json()["detail"]
        r = client.post(path, json={"image": "abc"})
        assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
        r = client.post(path)
        assert r.status_code == 415


def test_answers_named_in_docs_api_for_slips_and_extremes(client: TestClient, smear: np.ndarray) -> None:
    """Each of these got another status than docs/api.md names (or a 500) in wbc 0.26.0."""
    # `curl -F file=field.jpg` without its @ sends text: 400 missing_file, not 422
    for path, field in (("/classify", "files"), ("/analyze", "file")):
        r = client.post(path, data={field: "field.jpg"}, files={"other": ("x.txt", b"x", "text/plain")})
        assert r.status_code == 400 and r.json()["error"] == "missing_file", r.text
    # a text part beside a real file: the file is answered
    r = client.post("/classify", data={"files": "note"}, files=[("files", ("c.png", png_bytes(smear), "image/png"))])
    assert r.status_code == 200 and r.json()["n"] == 1
    # the status follows the problem, never the file's name: bad bytes named "content type ..." are 422, not 415
    for path, field in (("/classify", "files"), ("/analyze", "file")):
        r = client.post(path, files=[(field, ("content type scan.png", b"not an image", "image/png"))])
        assert r.status_code == 422, (path, r.text)
    r = client.post("/analyze", files=[("file", ("scan.png", png_bytes(smear), "text/plain"))])
    assert r.status_code == 415
    # past Starlette's own 1,000 parts: 413 too_many_files, as past the server's limit
    many = [("files", (f"{i}.png", b"x", "image/png")) for i in range(1001)]
    r = client.post("/classify", files=many)
    assert r.status_code == 413 and r.json()["error"] == "too_many_files"
    # a count past any slide: 422, not a 500 from the interval's arithmetic
    r = client.post("/differential", json={"counts": {"neutrophil": 2**64, "lymphocyte": 1}})
    assert r.status_code == 422 and r.json()["error"] == "invalid_counts"


def test_answers_named_in_docs_api_past_1000_text_parts_and_for_head(client: TestClient, smear: np.ndarray) -> None:
    """Past 1,000 text parts the answer was 400 http_error, not docs/api.md's 413 too_many_files; HEAD /health and
    HEAD /model, as uptime monitors ask, were 405 (wbc 0.28.0)."""
    cell = [("files", ("c.png", png_bytes(smear), "image/png"))]
    r = client.post("/classify", data={f"t{i}": "x" for i in range(1001)}, files=cell)
    assert r.status_code == 413 and r.json()["error"] == "too_many_files", r.text
    for path in ("/health", "/model"):
        r = client.head(path)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json" and not r.content, path
    assert set(client.get("/openapi.json").json()["paths"]["/health"]) == {"get"}


DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_error_code_the_server_sends_is_documented(client: TestClient) -> None:
    """A malformed multipart body, an unknown path and a wrong method were answered `"error": "http_error"`, a code
    docs/api.md never listed; a body cut before its closing boundary (an interrupted upload) "no file in the
    request" (wbc 0.32.0). Each has its code now, and every code the server's source answers is in the docs."""
    import re

    import wbc.serve

    doc = (DOCS / "api.md").read_text(encoding="utf-8")
    part = (b'--B\r\nContent-Disposition: form-data; name="files"; filename="c.png"\r\nContent-Type: image/png\r\n\r\n'
            + png_bytes(synthetic_cell("lymphocyte", 96, seed=1)) + b"\r\n")
    answers = {
        "invalid_multipart": [client.post("/classify", content=part + b"--B--\r\n", headers={"content-type": ct})
                              for ct in ("multipart/form-data", "multipart/form-data; boundary=ZZ")]
        + [client.post("/classify", content=part, headers={"content-type": "multipart/form-data; boundary=B"})],
        "not_found": [client.get("/nowhere")],
        "method_not_allowed": [client.delete("/classify")],
    }
    for code, rs in answers.items():
        for r in rs:
            assert r.status_code < 500 and r.json()["error"] == code, (code, r.status_code, r.text)
    assert "closing boundary" in answers["invalid_multipart"][-1].json()["detail"]
    assert answers["method_not_allowed"][0].headers["allow"] == "POST"
    source = "".join(f.read_text(encoding="utf-8") for f in Path(wbc.serve.__file__).parent.glob("*.py"))
    sent = set(re.findall(r"(?:[Pp]roblem|_json_response)\(\s*\d{3},\s*\"(\w+)\"", source))
    sent |= set(re.findall(r"return \"(\w+)\", ", source))  # framework_error's
    assert {"busy", "invalid_multipart", "http_error", "unauthorized"} <= sent
    assert sorted(c for c in sent - {"misconfigured"} if f"`{c}`" not in doc) == []


def test_openapi_says_the_upload_routes_take_required_files(client: TestClient) -> None:
    """/openapi.json described /analyze's `file` as an optional array of "binary or string" (the routes' lenient
    typing, for their own 400): a client generated from it offered `file: list[bytes | str] | None` (wbc 0.32.0)."""
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def body_of(path: str) -> dict:
        body = spec["paths"][path]["post"]["requestBody"]
        assert body["required"] is True
        return schemas[body["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]]

    analyze = body_of("/analyze")
    assert analyze["required"] == ["file"]
    assert analyze["properties"]["file"]["type"] == "string" and analyze["properties"]["file"]["format"] == "binary"
    for path in ("/classify", "/cases"):
        files = body_of(path)["properties"]["files"]
        assert "files" in body_of(path)["required"] and files["type"] == "array" and files["minItems"] == 1
        assert files["items"]["format"] == "binary" and "description" in files
    assert set(body_of("/cases")["required"]) == {"name", "files"}


def test_docs_api_shows_the_differential_rows_as_served(client: TestClient, smear: np.ndarray) -> None:
    """docs/api.md's examples left out each row's ``unit``, which tells a client the rows outside the WBC total."""
    import json
    import re

    text = (DOCS / "api.md").read_text(encoding="utf-8")
    example = json.loads(re.search(r"### `POST /classify`.*?```json\n(.*?)```", text, re.S)[1])
    served = client.post("/classify", files=[("files", ("c.png", png_bytes(smear), "image/png"))]).json()
    assert set(example["differential"][0]) == set(served["differential"][0])
    assert set(example) == set(served)


def test_docs_api_classify_example_gives_the_reasons_the_code_writes() -> None:
    """docs/api.md's /classify example showed "confidence 0.61 < 0.83", a reason the code does not write
    (``wbc.classify.review_reason``: "confidence 0.61, below the review threshold 0.83"); a client parsing it broke.
    The example names the shipped model (since wbc 0.32.0), so its reasons carry that model's threshold."""
    import json
    import re

    from wbc.classify import review_reason
    from wbc.model import load_model

    text = (DOCS / "api.md").read_text(encoding="utf-8")
    example = json.loads(re.search(r"### `POST /classify`.*?```json\n(.*?)```", text, re.S)[1])
    shipped = load_model()
    assert example["model_id"] == shipped.info.model_id
    from wbc.serve.app import CellPrediction, ClassifyBody, ClassifySettings

    assert list(example) == list(ClassifyBody.model_fields)  # every field the body has, in its order
    assert set(example["settings"]) == set(ClassifySettings.model_fields)
    assert all(set(r) == set(CellPrediction.model_fields) for r in example["results"])
    flagged = [r for r in example["results"] if r["review"]]
    assert flagged and all(r["review_reasons"] for r in flagged)
    for r in example["results"]:
        for reason in r["review_reasons"]:
            assert reason == review_reason(r["confidence"], shipped.info.review_threshold) \
                or re.match(r"(colours|appearance) unlike", reason)


def test_too_large_uploads_get_413_before_and_while_reading(client: TestClient) -> None:
    big = b"\x00" * (3 * 2**20)
    r = client.post("/classify", files={"files": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "2 MiB" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while streaming
        yield b"--xyz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
        yield b"Content-Type: image/png\r\n\r\n"
        for _ in range(6):
            yield b"\x00" * 2**19

    r = client.post("/classify", content=chunks(),
                    headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413


def test_the_upload_limit_is_per_app(classifier) -> None:
    data = png_bytes(synthetic_cell("monocyte", 400, seed=1))
    small = TestClient(create_app(classifier, ClassicalSegmenter(), max_upload_mb=0.05))
    large = TestClient(create_app(classifier, ClassicalSegmenter(), max_upload_mb=5))
    assert len(data) > 0.05 * 2**20
    assert small.post("/classify", files={"files": ("m.png", data, "image/png")}).status_code == 413
    assert large.post("/classify", files={"files": ("m.png", data, "image/png")}).status_code == 200


# --------------------------------------------------------------------------- /analyze


def test_analyze_returns_the_cli_json_plus_differential(client: TestClient, classifier,
                                                        smear: np.ndarray) -> None:
    r = client.post("/analyze", files={"file": ("field.png", png_bytes(smear), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    seg = ClassicalSegmenter()
    from wbc.analyze import smear_label_set

    answered = smear_label_set(classifier)  # every class of the model but platelets (since wbc 0.30.0)
    want = result_to_dict(analyze_image(smear, classifier, seg, name="field.png"), answered, seg.model_id)
    for key, value in want.items():
        assert body[key] == value, key
    assert body["n_cells"] == 2 and "annotated_png" not in body
    calibrated = classifier.red_cell_target() is not None  # the shipped model: the field's red cells, measured
    assert (body["colour_calibration"] is not None) == calibrated
    if calibrated:
        assert set(body["colour_calibration"]) == {"background", "od"}
    diff = {d["class"]: d for d in body["differential"]}
    assert list(diff) == answered
    assert sum(d["count"] for d in diff.values()) == 2
    wbcs = [d for c, d in diff.items() if c not in PER_100_WBC]  # NRBCs: per 100 WBCs, outside
    assert {c: d["unit"] for c, d in diff.items() if d["unit"] != "percent"} == {"erythroblast": "per 100 WBC"}
    assert sum(d["percent"] for d in wbcs) == pytest.approx(100.0 if sum(d["count"] for d in wbcs) else 0.0, abs=0.05)
    for d in diff.values():  # a rate per 100 WBCs with no WBC counted has no value (null), never 0.0 in 0-100
        if d["percent"] is None:
            assert d["total"] == 0 and d["unit"] == "per 100 WBC" and d["ci95_low"] is d["ci95_high"] is None
        else:
            assert d["ci95_low"] <= d["percent"] <= d["ci95_high"]
    assert body["n_review"] == sum(c["review"] for c in body["cells"])


def test_analyze_annotated_png_is_the_rendered_field(client: TestClient, smear: np.ndarray) -> None:
    r = client.post("/analyze?annotated=true", files={"file": ("field.jpg", jpeg_bytes(smear), "image/jpeg")})
    assert r.status_code == 200
    png = base64.b64decode(r.json()["annotated_png"])
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[:2] == smear.shape[:2]
    assert np.abs(img.astype(int) - smear[:, :, ::-1].astype(int)).max() > 100  # something was drawn


def test_analyze_refuses_two_files_instead_of_dropping_one(client: TestClient, smear: np.ndarray) -> None:
    """`curl -F file=@a.png -F file=@b.png` got a 200 for b.png alone, a.png dropped without a word (wbc 0.28.0)."""
    files = [("file", ("a.png", png_bytes(smear), "image/png")),
             ("file", ("b.png", jpeg_bytes(smear), "image/jpeg"))]
    r = client.post("/analyze", files=files)
    assert r.status_code == 400 and r.json()["error"] == "too_many_files"
    assert r.json()["detail"].startswith("/analyze takes one field a request, got 2: a.png, b.png")
    assert client.post("/analyze", files=files[:1]).json()["image"] == "a.png"


def test_analyze_empty_field_is_200_with_a_warning(client: TestClient) -> None:
    rgb, *_ = synthetic_smear(n_wbc=0, seed=6)
    body = client.post("/analyze", files={"file": ("blank.png", png_bytes(rgb), "image/png")}).json()
    assert body["n_cells"] == 0 and body["cells"] == [] and body["warnings"]
    assert all(d["count"] == 0 for d in body["differential"])


@pytest.mark.parametrize(
    ("name", "kind", "status", "words"),
    [
        ("empty.jpg", "empty", 422, "empty"),
        ("cut.jpg", "truncated", 422, "truncated"),
        ("tiny.png", "tiny", 422, "too small"),
        ("field.pdf", "pdf", 415, "content type application/pdf"),
        ("noise.png", "garbage", 422, "not a readable image"),
    ],
)
def test_analyze_rejects_bad_uploads_with_4xx(client: TestClient, smear: np.ndarray, name: str, kind: str,
                                              status: int, words: str) -> None:
    data, ctype = {
        "empty": (b"", "image/jpeg"),
        "truncated": (jpeg_bytes(smear)[: len(jpeg_bytes(smear)) // 2], "image/jpeg"),
        "tiny": (png_bytes(smear[:12, :12]), "image/png"),
        "pdf": (b"%PDF-1.4 ...", "application/pdf"),
        "garbage": (bytes(range(256)) * 10, "image/png"),
    }[kind]
    r = client.post("/analyze", files={"file": (name, data, ctype)})
    assert r.status_code == status, r.text
    body = r.json()
    assert name in body["detail"] and words in body["detail"]
    assert body["errors"] == [{"filename": name, "error": body["detail"]}]


def test_a_truncated_multi_page_tiff_is_analysed_not_a_type_error(client: TestClient, smear: np.ndarray) -> None:
    """A three-page TIFF cut in its second page (an interrupted upload of a scanner's fields): its first page reads,
    but counting its pages raised TypeError, and /analyze answered the field it had analysed "analysis failed
    (TypeError)", /classify "could not be read (TypeError: Missing dimensions)" (wbc 0.32.0)."""
    from PIL import Image

    def cut(rgb: np.ndarray) -> bytes:
        buf = io.BytesIO()
        page = Image.fromarray(np.ascontiguousarray(rgb))
        page.save(buf, "TIFF", save_all=True, append_images=[page] * 2)
        return buf.getvalue()[: len(buf.getvalue()) // 2]

    r = client.post("/analyze", files={"file": ("f.tif", cut(smear), "image/tiff")})
    assert r.status_code == 200 and "TypeError" not in r.text, r.text[:300]
    assert any(w.startswith("the file holds ") for w in r.json()["warnings"]), r.json()["warnings"]
    r = client.post("/classify", files={"files": ("c.tif", cut(synthetic_cell("monocyte", 96, seed=1)), "image/tiff")})
    assert r.status_code == 200 and r.json()["n"] == 1 and not r.json()["errors"], r.text[:300]


def test_analyze_refuses_a_label_set_without_a_class_a_smear_cell_can_be(classifier, client: TestClient,
                                                                         smear: np.ndarray, tmp_path: Path) -> None:
    """`/analyze?classes=platelet` (or a `wbc serve --classes platelet` server) called every cell a platelet, with an
    empty differential (wbc 0.32.0): no smear cell is a platelet. It is 422 `bad_classes` naming the set; /classify
    still answers platelets."""
    field = {"file": ("f.png", png_bytes(smear), "image/png")}
    r = client.post("/analyze?classes=platelet", files=field)
    assert r.status_code == 422 and r.json()["error"] == "bad_classes" and "'platelet'" in r.json()["detail"], r.text
    cell = {"files": ("c.png", png_bytes(synthetic_cell("lymphocyte", 96, seed=1)), "image/png")}
    assert client.post("/classify?classes=platelet", files=cell).status_code == 200
    with TestClient(create_app(classifier, ClassicalSegmenter(), classes="platelet", store=tmp_path / "c.db")) as c:
        r = c.post("/analyze", files=field)
        assert r.status_code == 422 and r.json()["error"] == "bad_classes", r.text[:300]
        r = c.post("/cases", data={"name": "S-1"}, files={"files": field["file"]})
        assert r.status_code == 422 and r.json()["error"] == "bad_classes", r.text[:300]


# --------------------------------------------------------------------------- /differential and the page


def test_differential_endpoint_gives_clopper_pearson_intervals(client: TestClient) -> None:
    body = client.post("/differential", json={"counts": {"neutrophil": 5, "lymphocyte": 95}}).json()
    assert body["total"] == 100
    d = {x["class"]: x for x in body["differential"]}
    assert (d["neutrophil"]["percent"], d["neutrophil"]["ci95_low"], d["neutrophil"]["ci95_high"]) == (
        5.0, 1.6432, 11.2835)  # 4 decimals: a page showing one rounds the exact value once
    assert d["monocyte"]["count"] == 0 and d["monocyte"]["ci95_low"] == 0.0
    assert client.post("/differential", json={"counts": {"neutrophil": -1}}).status_code == 422
    assert client.post("/differential", json={"nope": 1}).status_code == 422


def test_differential_reads_counts_under_the_names_labs_use(client: TestClient) -> None:
    """``NRBC`` was a class of its own inside the WBC total (every percentage wrong, no error) and ``Neutrophils``
    another neutrophil class (wbc 0.28.0): names are read as wbc reads labels, and an unknown one is refused."""
    body = client.post("/differential", json={"counts": {"Neutrophils": 40, "band": 10, "lymphocyte": 50,
                                                         "NRBC": 10}}).json()
    rows = {d["class"]: d for d in body["differential"]}
    assert body["total"] == 100 and set(rows) == set(client.get("/model").json()["classes"])
    assert rows["neutrophil"]["count"] == 50 and rows["neutrophil"]["percent"] == 50.0
    assert rows["erythroblast"]["count"] == 10 and rows["erythroblast"]["unit"] == "per 100 WBC"
    bad = client.post("/differential", json={"counts": {"neutrophil": 5, "blasts": 2, "not_wbc": 1}})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_counts"
    assert bad.json()["detail"].startswith("not a class of this model: 'blasts', 'not_wbc' (its classes: ")
    over = client.post("/differential", json={"counts": {"neutrophil": 10**12, "neut": 1}})
    assert over.status_code == 422 and over.json()["error"] == "invalid_counts"


def test_differential_names_a_few_unknown_classes_and_counts_the_rest(client: TestClient) -> None:
    """200,000 unknown names were all echoed: a 2 MB `detail` (wbc 0.32.0)."""
    r = client.post("/differential", json={"counts": {f"x{i}": 1 for i in range(20_000)}})
    assert r.status_code == 422 and r.json()["error"] == "invalid_counts"
    assert r.json()["detail"].startswith("not a class of this model: 'x0', 'x1', 'x2', 'x3', 'x4' and 19,995 more (")
    assert len(r.text) < 1000
    r = client.post("/differential", json={"counts": {f"x{i}": -1 for i in range(20_000)}})
    assert r.status_code == 422 and "and 19,995 more" in r.json()["detail"] and len(r.text) < 1000


def test_web_page_and_assets_are_served_and_need_no_network(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/static/common.js" in r.text and "/static/app.js" in r.text and "/static/style.css" in r.text
    assert r.text.index("/static/common.js") < r.text.index("/static/app.js")  # its helpers load first
    for name in ("common.js", "app.js", "style.css", "favicon.svg"):
        assert client.get(f"/static/{name}").status_code == 200
    for f in STATIC_DIR.iterdir():  # nothing fetched from elsewhere: works offline
        text = f.read_text(encoding="utf-8").replace("http://www.w3.org/2000/svg", "")  # SVG namespace
        assert "https://" not in text and "http://" not in text, f.name


def test_page_scripts_are_revalidated_so_an_upgrade_reaches_the_browser(client: TestClient) -> None:
    """/static/* had no Cache-Control while the pages were `no-store`: browsers kept app.js, common.js, review.js and
    style.css by heuristic (a tenth of their age: days for a file installed weeks before) and after `pip install -U
    wbc` ran the new page with the old scripts (wbc 0.30.0). They are now revalidated on each load (ETag, 304)."""
    for name in ("app.js", "common.js", "review.js", "style.css", "review.css", "favicon.svg"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["cache-control"] == "no-cache", name
        again = client.get(f"/static/{name}", headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304 and again.headers["cache-control"] == "no-cache", name
    assert client.get("/").headers["cache-control"] == "no-store"


FIVE_PART = {"basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"}


def test_the_served_label_set_is_named_in_model_and_health(classifier, client: TestClient) -> None:
    assert client.get("/model").json()["label_set"] == classifier.classes  # default: every class
    with TestClient(create_app(classifier, ClassicalSegmenter(), classes="5part")) as c:  # wbc serve --classes 5part
        model, health = c.get("/model").json(), c.get("/health").json()
        assert model["classes"] == classifier.classes and set(model["label_set"]) == FIVE_PART
        assert health["classes"] == classifier.classes and health["label_set"] == model["label_set"]
        r = c.post("/classify", files=[("files", ("c.png", png_bytes(synthetic_cell("lymphocyte", 96)), "image/png"))])
        assert r.json()["results"][0]["label"] in FIVE_PART
    with pytest.raises(WbcError, match="nope"):
        create_app(classifier, ClassicalSegmenter(), classes="nope")


def test_a_smear_is_answered_among_the_served_label_set_without_platelets(classifier, client: TestClient,
                                                                            smear: np.ndarray) -> None:
    """/analyze gave every class of the model a differential row and a legend entry: platelets, which no smear cell
    is, at a measured-looking 0 per 100 WBCs with an interval, and on a `--classes 5part` server ig and erythroblasts
    at 0 beside the web page's five rows (wbc 0.29.0). Its rows are /model's `smear_label_set`."""
    upload = {"file": ("field.png", png_bytes(smear), "image/png")}
    want = [c for c in classifier.classes if c != "platelet"]
    assert client.get("/model").json()["smear_label_set"] == want
    body = client.post("/analyze", files=upload).json()
    assert [d["class"] for d in body["differential"]] == list(body["counts"]) == want
    with TestClient(create_app(classifier, ClassicalSegmenter(), classes="5part")) as c:  # wbc serve --classes 5part
        five = c.get("/model").json()["smear_label_set"]
        assert set(five) == FIVE_PART
        body = c.post("/analyze?annotated=true", files=upload).json()
        assert [d["class"] for d in body["differential"]] == list(body["counts"]) == five
        png = cv2.imdecode(np.frombuffer(base64.b64decode(body["annotated_png"]), np.uint8), cv2.IMREAD_COLOR)
        ys = np.nonzero(np.all(png == 255, axis=-1))[0]  # the legend's white panel: five rows, and the review mark's
        row = int(24 * max(0.45, min(png.shape[:2]) / 900)) + 4
        assert (ys.max() - ys.min() + 1 - 5) // row == 5 + (body["n_review"] > 0)


def test_classify_with_a_label_set_answers_counts_and_rows_among_it(classifier, client: TestClient) -> None:
    """/classify with a label set (`classes=5part`, or `wbc serve --classes 5part`) gave `counts` and `differential`
    rows for every class of the model: ig at "0.0 % (95 % CI 0-70.8)", erythroblasts and platelets at 0 per 100 WBC,
    measured-looking zeros for classes it can never answer (wbc 0.30.0), where /analyze and `wbc classify --classes
    --report` list the label set's rows only. Its rows are now the label set's, /model's `label_set`."""
    cells = [("files", (f"{k}.png", png_bytes(synthetic_cell(k, 96)), "image/png")) for k in ("lymphocyte", "platelet")]
    body = client.post("/classify", files=cells).json()  # no label set: every class
    assert list(body["counts"]) == [d["class"] for d in body["differential"]] == classifier.classes
    with TestClient(create_app(classifier, ClassicalSegmenter(), classes="5part")) as c:
        five = c.get("/model").json()["label_set"]
        assert set(five) == FIVE_PART
        body = c.post("/classify", files=cells).json()
        assert list(body["counts"]) == [d["class"] for d in body["differential"]] == five
        assert sum(body["counts"].values()) == body["n"] == 2
    two = client.post("/classify?classes=neutrophil,lymphocyte", files=cells).json()  # a request's own label set
    assert list(two["counts"]) == [d["class"] for d in two["differential"]] == ["lymphocyte", "neutrophil"]


def test_a_pooled_differential_gives_the_label_set_s_rows_and_any_class_counted(classifier, client: TestClient) -> None:
    """POST /differential gave every class of the model a row on a `--classes 5part` server: ig at 0.0 %, erythroblasts
    and platelets at 0 per 100 WBC with intervals, where the /analyze answers it pools give five rows (wbc 0.30.0).
    Its rows are now the server's label set (or the request's `classes`), plus any class actually counted."""
    def rows(c: TestClient, counts: dict[str, int], query: str = "") -> list[str]:
        r = c.post(f"/differential{query}", json={"counts": counts})
        assert r.status_code == 200, r.text
        return [d["class"] for d in r.json()["differential"]]

    five = [c for c in classifier.classes if c in FIVE_PART]
    with TestClient(create_app(classifier, ClassicalSegmenter(), classes="5part")) as c:
        assert rows(c, {"neutrophil": 5, "lymphocyte": 3}) == five
        body = c.post("/differential", json={"counts": {"neutrophil": 5, "ig": 1, "NRBC": 2}}).json()
        assert [d["class"] for d in body["differential"]] == [k for k in classifier.classes
                                                              if k in FIVE_PART | {"ig", "erythroblast"}]
        assert body["total"] == 6  # the ig counted in the WBC total, the erythroblasts per 100 WBC
        assert rows(c, {"neutrophil": 5}, "?classes=all") == classifier.classes
        bad = c.post("/differential?classes=nope", json={"counts": {"neutrophil": 5}})
        assert bad.status_code == 422 and bad.json()["error"] == "bad_classes"
    assert rows(client, {"neutrophil": 5}) == classifier.classes  # no label set: every class, as before
    smear = client.get("/model").json()["smear_label_set"]  # pooled /analyze answers: their rows
    assert rows(client, {"neutrophil": 5}, "?classes=" + ",".join(smear)) == smear


def test_create_app_loads_models_from_paths(model_path: Path) -> None:
    app = create_app(model_path=model_path, segmenter_method="classical", threads=1)
    body = TestClient(app).get("/health").json()
    assert body["segmenter"]["name"] == "classical" and body["classes"]


def test_serve_command_reports_a_missing_model_without_traceback(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "wbc", "serve", "--model", str(tmp_path / "none.onnx")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "none.onnx" in r.stderr and "not found" in r.stderr and "Traceback" not in r.stderr


def test_serve_on_a_port_in_use_is_one_line_and_exit_code_1(tmp_path: Path) -> None:
    """uvicorn logged the bind error itself and exited with code 3, past `wbc serve`'s `except OSError` (wbc 0.32.0):
    the port is now tried before the models load, as docs/api.md promises for start-up failures."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "wbc", "serve", "--port", str(port), "--segmenter", "classical",
                            "--store", str(tmp_path / "c.sqlite")], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in " ".join(r.stderr.split()), r.stderr
    assert "Traceback" not in r.stderr and "model" not in r.stdout  # refused before the models loaded


def test_serve_bench_refuses_more_cells_than_one_request_takes_before_starting_a_server(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`wbc serve-bench --cells 600` started a server, then stopped at its 413 (wbc 0.32.0)."""
    from typer.testing import CliRunner

    import wbc.serve.bench as bench
    from wbc.cli import app as cli

    monkeypatch.setattr(bench, "running_server", lambda *a, **k: pytest.fail("a server was started"))
    r = CliRunner().invoke(cli, ["serve-bench", "--cells", "600"])
    assert isinstance(r.exception, WbcError) and "at most 500 files" in str(r.exception), r.output


def test_serve_bench_starts_its_server_without_the_environment_s_keys_or_the_lab_s_store(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`wbc serve-bench` sends no key, but its server inherited WBC_API_KEYS (a traceback: httpx's 401), and opened
    results/cases.sqlite in the working directory, which may be the lab's store (wbc 0.28.0)."""
    import wbc.serve.bench as bench

    started: list[dict] = []

    class ExitsAtOnce:  # a server that never answers: running_server says so, after recording how it started it
        def __init__(self, cmd: list[str], **kw: object) -> None:
            started.append({**kw, "cmd": cmd})

        def poll(self) -> int:
            return 1

        def terminate(self) -> None: ...

        def wait(self, timeout: float | None = None) -> int:
            return 1

    monkeypatch.setattr(bench.subprocess, "Popen", ExitsAtOnce)
    monkeypatch.setenv("WBC_API_KEYS", "k-0123456789abcdef-one")
    monkeypatch.setenv("WBC_API_KEY_FILE", "/keys.txt")
    with pytest.raises(WbcError, match="exited at start"):
        bench.measure_latency([Path("f.jpg")], [Path("c.jpg")])
    env, cmd = started[0]["env"], started[0]["cmd"]
    assert "WBC_API_KEYS" not in env and "WBC_API_KEY_FILE" not in env and env["PATH"] == os.environ["PATH"]
    store = Path(cmd[cmd.index("--store") + 1])
    assert store.name == "cases.sqlite" and not store.parent.exists()  # a temporary folder, gone afterwards
    with pytest.raises(WbcError), bench.running_server(["--store", "x.sqlite"], env={"WBC_API_KEYS": "k" * 20}):
        pass  # an explicit environment (benchmarks/serve_load.py: keys on) and store are left as they are
    assert started[1]["env"] == {"WBC_API_KEYS": "k" * 20} and started[1]["cmd"].count("--store") == 1


def test_serve_bench_never_starts_a_wbc_py_in_the_working_directory(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """serve-bench started its server as ``python -m wbc serve`` in the working directory, where a ``wbc.py`` ran
    instead of wbc (before wbc 0.34.0); now ``python -P -m wbc`` (:func:`wbc.paths.python_m_wbc`)."""
    import wbc.serve.bench as bench

    started: list[list[str]] = []

    class ExitsAtOnce:
        def __init__(self, cmd: list[str], **kw: object) -> None:
            started.append(cmd)

        def poll(self) -> int:
            return 1

        def terminate(self) -> None: ...

        def wait(self, timeout: float | None = None) -> int:
            return 1

    (tmp_path / "wbc.py").write_text("raise SystemExit('not wbc')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench.subprocess, "Popen", ExitsAtOnce)
    with pytest.raises(WbcError, match="exited at start"), bench.running_server():
        pass
    assert started[0][:5] == [sys.executable, "-P", "-m", "wbc", "serve"], started


def test_serve_bench_without_httpx_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx is in the ``test`` extra only: on the base install ``wbc serve-bench`` ended in a 39-line
    ModuleNotFoundError traceback (before wbc 0.34.0); now one line naming the extra, before a server starts."""
    import wbc.serve.bench as bench

    monkeypatch.setitem(sys.modules, "httpx", None)  # not installed
    monkeypatch.setattr(bench.subprocess, "Popen", lambda *a, **k: pytest.fail("a server was started"))
    for call in (lambda: bench.measure_latency([Path("field.jpg")], [Path("cell.jpg")]),
                 lambda: bench.running_server().__enter__()):
        with pytest.raises(WbcError, match=r"needs httpx, the test extra: pip install -e '\.\[test\]'"):
            call()


def test_serve_bench_says_what_the_server_answered_instead_of_a_traceback(classifier, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from contextlib import contextmanager

    import wbc.serve.bench as bench
    from browser import live_server
    from wbc.serve.settings import ServeSettings

    @contextmanager
    def keyed_server(args: object = (), env: object = None) -> Iterator[tuple[str, None]]:
        app = create_app(classifier, ClassicalSegmenter(), settings=ServeSettings(api_keys=["k" * 20]))
        with live_server(app) as base:
            yield base, None

    monkeypatch.setattr(bench, "running_server", keyed_server)
    (tmp_path / "f.jpg").write_bytes(jpeg_bytes(synthetic_smear(n_wbc=1, seed=1)[0]))
    with pytest.raises(WbcError, match=r"^serve-bench: wbc serve answered 401 to POST /analyze: .*API key"):
        bench.measure_latency([tmp_path / "f.jpg"], [tmp_path / "f.jpg"])


def test_a_runtime_error_of_the_analysis_is_a_422_naming_the_file_not_a_500(classifier, smear: np.ndarray,
                                                                             tmp_path: Path) -> None:
    """ONNX Runtime's own errors (out of memory on a large field) are no ValueError: /analyze answered 500 and POST
    /cases 500 where wbc analyze lists the file in errors.csv (wbc 0.28.0)."""

    class Failing(ClassicalSegmenter):
        def segment(self, rgb: np.ndarray) -> list:
            raise RuntimeError("Failed to allocate memory for requested buffer of size 860160000")

    with TestClient(create_app(classifier, Failing(), store=tmp_path / "c.sqlite")) as c:
        r = c.post("/analyze", files={"file": ("big.png", png_bytes(smear), "image/png")})
        assert r.status_code == 422 and r.json()["error"] == "analysis_failed"
        assert r.json()["detail"] == "big.png: analysis failed (RuntimeError)"
        r = c.post("/cases", data={"name": "S-1"}, files=[("files", ("big.png", png_bytes(smear), "image/png"))])
        assert r.status_code == 422 and "big.png: analysis failed (RuntimeError)" in r.text
        assert r.json()["error"] == "unreadable_image"
        assert r.json()["errors"] == [{"filename": "big.png", "error": "big.png: analysis failed (RuntimeError)"}]
    # docs/api.md named analysis_failed for POST /cases too, misleading a client that switches on "error"
    [row] = [ln for ln in (DOCS / "api.md").read_text(encoding="utf-8").splitlines() if "could not be analysed" in ln]
    assert row.split("|")[-2].strip().startswith("`analysis_failed` (`/analyze`); `unreadable_image` in `POST /cases`")


def test_classify_and_analyze_say_out_of_distribution_as_each_other() -> None:
    """The shipped model, another lab's field (BCCD): `/analyze` gave the out-of-distribution sentence but no cell an
    ``ood`` flag, `/classify` the flags but no sentence (wbc 0.29.0). Both now give both."""
    from wbc.paths import PACKAGE_DIR

    c = TestClient(create_app(), base_url="http://127.0.0.1")
    data = (PACKAGE_DIR / "example_fields" / "BloodImage_00007.jpg").read_bytes()
    cl = c.post("/classify", files=[("files", ("a.jpg", data, "image/jpeg"))]).json()
    an = c.post("/analyze", files=[("file", ("a.jpg", data, "image/jpeg"))]).json()
    assert cl["results"][0]["ood"] and cl["warnings"] == ["1 of 1 cells (100%) look unlike the model's training data "
                                                          "(marked for review); results may be unreliable for this "
                                                          "lab's images until the model is adapted to this lab's "
                                                          "stain and scanner: check every cell"]
    assert an["cells"] and all(cell["ood"] is True for cell in an["cells"])
    assert any("look unlike the model's training data" in w for w in an["warnings"])


def test_a_case_takes_the_chosen_file_names_only_where_the_browser_encoded_them(classifier, tmp_path: Path) -> None:
    """A browser (and httpx) sends a " in a multipart file name as %22 and a % as it is, so the server cannot tell
    a"b.png from a file named a%22b.png: a case named the field a%22b.png (before wbc 0.34.0). POST /cases takes
    the chosen names (``names``, a JSON list) where each is what the part's name was sent for."""
    import json

    images = [png_bytes(synthetic_smear(n_wbc=1, seed=60 + i)[0]) for i in range(3)]
    chosen = ['a"b.png', "a%22b.png", "plain.png"]
    files = [("files", (n, data, "image/png")) for n, data in zip(chosen, images, strict=True)]
    with TestClient(create_app(classifier, ClassicalSegmenter(), store=tmp_path / "c.sqlite")) as c:
        r = c.post("/cases", data={"name": "S-q", "names": json.dumps([*chosen[:2], "other.png"])}, files=files)
        assert r.status_code == 201, r.text
        assert [f["image"] for f in r.json()["fields"]] == ['a"b.png', "a%22b.png", "plain.png"]  # no other name
        for bad in ("a.png", json.dumps(["a.png"]), json.dumps([1, 2, 3])):
            r = c.post("/cases", data={"name": "S-bad", "names": bad}, files=files)
            assert r.status_code == 422 and r.json()["error"] == "invalid_request", r.text
            assert r.json()["detail"] == "names: a JSON list of 3 file name(s), one per file"


# --------------------------------------------------------------------------- HTTP review of wbc 0.35.0


def test_a_text_part_beside_files_is_named_never_dropped(classifier, client: TestClient, smear: np.ndarray,
                                                         tmp_path: Path) -> None:
    """`curl -F files=@a.png -F files=b.png` (the second @ forgotten) sends b.png as text: beside a real file it was
    left out without a word (wbc 0.35.0), /classify answering a differential short of a cell with no error, POST
    /cases creating the case without the field. It is named now, on each upload route."""
    cell = png_bytes(synthetic_cell("lymphocyte", 96, seed=1))
    r = client.post("/classify", files=[("files", ("a.png", cell, "image/png"))], data={"files": "b.png"})
    assert r.status_code == 200 and r.json()["n"] == 1, r.text
    assert r.json()["errors"] == [{"filename": "b.png", "index": 0, "error": "b.png: sent as text in the field "
                                   "'files', not as a file (no filename parameter; curl: -F files=@b.png)"}]
    r = client.post("/analyze", files=[("file", ("a.png", png_bytes(smear), "image/png"))], data={"file": "b.png"})
    assert r.status_code == 400 and r.json()["error"] == "too_many_files", r.text
    assert "'b.png' (text)" in r.json()["detail"] and r.json()["errors"][0]["filename"] == "b.png"
    with TestClient(create_app(classifier, ClassicalSegmenter(), store=tmp_path / "c.sqlite")) as c:
        r = c.post("/cases", data={"name": "S-text", "files": "b.png"},
                   files=[("files", ("a.png", png_bytes(smear), "image/png"))])
        assert r.status_code == 422 and r.json()["error"] == "unreadable_image", r.text
        assert [e["filename"] for e in r.json()["errors"]] == ["b.png"]
        assert c.get("/cases").json()["cases"] == []  # no case without the field


def test_classify_counts_a_byte_copy_once_as_wbc_classify_does(client: TestClient, tmp_path: Path) -> None:
    """A cell uploaded twice under two names (downloaded twice: ``c (1).png``) was counted twice by /classify (wbc
    0.35.0) where `wbc classify` counts it once and names it. It is left out as the command line leaves it out (the
    one kept: the shorter name), listed in ``copies`` and said in `wbc classify`'s words; a copy of a file that cannot
    be read is an error as that file is."""
    from wbc.cli.classify import without_copies

    cell = png_bytes(synthetic_cell("lymphocyte", 96, seed=1))
    other = png_bytes(synthetic_cell("neutrophil", 96, seed=2))
    cut = png_bytes(synthetic_cell("monocyte", 96, seed=3))[:300]
    sent = [("c (1).png", cell), ("n.png", other), ("c.png", cell), ("t.png", cut), ("t copy.png", cut)]
    r = client.post("/classify", files=[("files", (n, data, "image/png")) for n, data in sent])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n"] == 2 and sum(body["counts"].values()) == 2
    assert [x["filename"] for x in body["results"]] == ["n.png", "c.png"]
    assert body["copies"] == [{"filename": "c (1).png", "index": 0, "same_as": "c.png", "same_as_index": 2}]
    assert ("c (1).png: the same image as another input, classified and counted once (c.png has the same bytes)"
            in body["warnings"])
    assert [e["filename"] for e in body["errors"]] == ["t.png", "t copy.png"]
    assert body["errors"][1]["error"] == "t copy.png" + body["errors"][0]["error"][len("t.png"):]
    for name, data in sent:  # the command line keeps the same files
        (tmp_path / name).write_bytes(data)
    kept, copies = without_copies([tmp_path / n for n, _ in sent])
    assert [p.name for p in kept] == ["n.png", "c.png", "t.png"] and [(a.name, b.name) for a, b in copies] == [
        ("c (1).png", "c.png"), ("t copy.png", "t.png")]


def test_a_repeated_classes_query_names_every_class(client: TestClient, smear: np.ndarray) -> None:
    """``classes=neutrophil&classes=lymphocyte`` (httpx, requests and most query builders send a list so) kept its
    last value only (wbc 0.35.0): a one-class label set, every cell "lymphocyte" with confidence 1.0. Every value is
    taken now, on each route that takes ``classes``, as the comma list is."""
    cell = {"files": ("c.png", png_bytes(synthetic_cell("neutrophil", 96, seed=2)), "image/png")}
    field = {"file": ("f.png", png_bytes(smear), "image/png")}
    for path, upload in (("/classify", cell), ("/analyze", field)):
        repeated = client.post(f"{path}?classes=neutrophil&classes=lymphocyte", files=upload)
        listed = client.post(f"{path}?classes=neutrophil,lymphocyte", files=upload)
        assert repeated.status_code == 200 and set(repeated.json()["counts"]) == {"neutrophil", "lymphocyte"}
        assert repeated.json()["counts"] == listed.json()["counts"]
        assert repeated.json()["differential"] == listed.json()["differential"]
    r = client.post("/differential?classes=monocyte&classes=lymphocyte", json={"counts": {"lymphocyte": 3}})
    assert [row["class"] for row in r.json()["differential"]] == ["lymphocyte", "monocyte"]
    r = client.post("/classify?classes=all&classes=neutrophil", files=cell)  # contradicting values: refused
    assert r.status_code == 422 and r.json()["error"] == "bad_classes"
    r = client.post("/classify?classes=&classes=", files=cell)  # empty values: the server's default, as one
    assert r.status_code == 200 and len(r.json()["counts"]) == len(client.get("/model").json()["label_set"])


def test_classes_all_repeated_is_every_class_and_next_to_a_class_is_refused_so(client: TestClient) -> None:
    """``classes=all&classes=all`` (a client repeating its default) was 422 "'all' is not a class of this model ...
    nor a named set", false of ``all``; next to a class the refusal now says what is wrong."""
    cell = {"files": ("c.png", png_bytes(synthetic_cell("neutrophil", 96, seed=2)), "image/png")}
    every = client.post("/classify?classes=all", files=cell)
    twice = client.post("/classify?classes=all&classes=ALL", files=cell)
    assert twice.status_code == every.status_code == 200, twice.text
    assert twice.json()["counts"] == every.json()["counts"] and len(every.json()["counts"]) == 8
    r = client.post("/classify?classes=all&classes=neutrophil", files=cell)
    assert r.status_code == 422 and r.json()["detail"] == (
        "classes: 'all' (every class) cannot be combined with other classes: neutrophil")


def test_an_empty_label_set_is_one_rule_on_the_server(classifier, client: TestClient) -> None:
    """``wbc serve --classes ""`` (``"$LAB_CLASSES"`` unset) served every class, platelets included, unsaid, where
    `wbc classify --classes ""` is refused; and ``classes=,`` was 422 where ``classes=`` meant the server's set."""
    with pytest.raises(WbcError, match=r"^classes: empty; name classes"):
        create_app(classifier, ClassicalSegmenter(), classes="")
    cell = {"files": ("c.png", png_bytes(synthetic_cell("neutrophil", 96, seed=2)), "image/png")}
    given = [client.post(f"/classify?{q}", files=cell) for q in ("classes=", "classes=,", "classes=%20,&classes=")]
    assert [r.status_code for r in given] == [200, 200, 200], given[1].text
    assert given[0].json()["counts"] == given[1].json()["counts"] == given[2].json()["counts"]
    assert len(given[0].json()["counts"]) == len(client.get("/model").json()["label_set"])


def multipart(disposition: bytes, data: bytes) -> tuple[bytes, dict[str, str]]:
    """A one-part multipart body with this Content-Disposition (as clients httpx does not imitate send it)."""
    body = (b"--B\r\nContent-Disposition: " + disposition + b"\r\nContent-Type: image/png\r\n\r\n" + data
            + b"\r\n--B--\r\n")
    return body, {"content-type": "multipart/form-data; boundary=B"}


def test_rfc5987_and_encoded_word_file_names_are_decoded(classifier, client: TestClient, smear: np.ndarray,
                                                         tmp_path: Path) -> None:
    """A part named by ``filename*`` alone (urllib3 before 1.25) was a text field, answered "no file in the request";
    .NET's HttpClient and PowerShell's encoded word in ``filename`` named results ``=?utf-8?B?...?=`` (wbc 0.35.0)."""
    cell = png_bytes(synthetic_cell("lymphocyte", 96, seed=1))
    star = b"form-data; name=\"%s\"; filename*=utf-8''caf%%C3%%A9.png"
    dotnet = b"form-data; name=%s; filename=\"=?utf-8?B?Y2Fmw6kucG5n?=\"; filename*=utf-8''caf%%C3%%A9.png"
    word = b"form-data; name=\"%s\"; filename=\"=?utf-8?Q?caf=C3=A9?= =?utf-8?B?LnBuZw==?=\""
    for disposition in (star, dotnet, word):
        r = client.post("/classify", content=multipart(disposition % b"files", cell)[0],
                        headers=multipart(b"", b"")[1])
        assert r.status_code == 200 and [x["filename"] for x in r.json()["results"]] == ["café.png"], r.text
        r = client.post("/classify", content=multipart(disposition % b"files", cell[:300])[0],
                        headers=multipart(b"", b"")[1])
        assert [e["filename"] for e in r.json()["errors"]] == ["café.png"], r.text
    body, headers = multipart(star % b"file", png_bytes(smear))
    r = client.post("/analyze", content=body, headers=headers)
    assert r.status_code == 200 and r.json()["image"] == "café.png", r.text
    body = body.replace(b"--B--", b"--B\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nS-star\r\n--B--")
    with TestClient(create_app(classifier, ClassicalSegmenter(), store=tmp_path / "c.sqlite")) as c:
        r = c.post("/cases", content=body.replace(b'name="file"', b'name="files"'), headers=headers)
        assert r.status_code == 201 and [f["image"] for f in r.json()["fields"]] == ["café.png"], r.text
    for bad in (b"filename*=utf-8''a%0Ab.png", b"filename*=utf-8''dir%2Fc.png", b"filename*=nonsense"):
        r = client.post("/classify", content=multipart(b'form-data; name="files"; ' + bad, cell)[0],
                        headers=multipart(b"", b"")[1])  # a control character: its place; a folder: left out
        assert r.status_code == 200 and r.json()["results"][0]["filename"] in ("file1", "c.png", "nonsense"), r.text


def test_classify_errors_keep_the_upload_order(client: TestClient) -> None:
    """The uploads refused by the cheap checks (content type, size, header) were listed before those that failed to
    decode (wbc 0.35.0), so a client pairing errors with its files by position got them shuffled."""
    cell = png_bytes(synthetic_cell("lymphocyte", 96, seed=1))
    parts = [("1.png", cell[:200], "image/png"), ("2.png", cell, "image/png"), ("3.txt", b"hi", "text/plain"),
             ("4.png", b"", "image/png"), ("5.png", cell[:300], "image/png")]
    r = client.post("/classify", files=[("files", p) for p in parts], data={"files": "6.png"})
    assert r.status_code == 200, r.text
    # httpx sends the text part (`data`) first
    assert [e["filename"] for e in r.json()["errors"]] == ["6.png", "1.png", "3.txt", "4.png", "5.png"]


def test_openapi_types_the_success_bodies_and_says_the_servers_default(classifier, smear: np.ndarray,
                                                                       tmp_path: Path) -> None:
    """The 200/201 bodies of /classify, /analyze and POST /cases were ``{}`` in /openapi.json, and ``classes`` said
    "default: every class of the model" on a `wbc serve --classes 5part` server, which answers among five (wbc
    0.35.0). Each body's schema now names every key the server sends, and nothing it does not."""
    from pydantic import BaseModel

    from wbc.serve.app import AnalyzeBody, ClassifyBody
    from wbc.serve.cases import CaseBody

    def keys(model: type[BaseModel]) -> set[str]:
        return {f.alias or name for name, f in model.model_fields.items()}

    app = create_app(classifier, ClassicalSegmenter(), classes="5part", store=tmp_path / "c.sqlite")
    with TestClient(app) as c:
        spec = c.get("/openapi.json").json()
        cell = {"files": ("c.png", png_bytes(synthetic_cell("neutrophil", 96, seed=2)), "image/png")}
        cl = c.post("/classify", files=cell).json()
        an = c.post("/analyze?annotated=true", files={"file": ("f.png", png_bytes(smear), "image/png")}).json()
        case = c.post("/cases", data={"name": "S-1"}, files={"files": ("f.png", png_bytes(smear), "image/png")})
    help_text = next(p["description"] for p in spec["paths"]["/classify"]["post"]["parameters"]
                     if p["name"] == "classes")
    assert help_text.split("default:")[1].startswith(" the server's label set (`label_set` in /model")
    assert "`label_set` in /model" in help_text and len(cl["counts"]) == 5
    for path, method, status, model, body in (("/classify", "post", "200", ClassifyBody, cl),
                                              ("/analyze", "post", "200", AnalyzeBody, an),
                                              ("/cases", "post", "201", CaseBody, case.json()),
                                              ("/cases/{case_id}", "get", "200", CaseBody, case.json())):
        schema = spec["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model.__name__}"}, (path, schema)
        model.model_validate(body)
        assert set(body) == keys(model), (path, set(body) ^ keys(model))
        assert set(spec["components"]["schemas"][model.__name__]["properties"]) == keys(model)
    assert an["cells"] and keys(AnalyzeBody.model_fields["cells"].annotation.__args__[0]) == set(an["cells"][0])


def test_analyze_png_colours_are_get_model_s_for_any_label_set(classifier, smear: np.ndarray) -> None:
    """A model with classes other than wbc's eight: /analyze's annotated PNG coloured them by their place among the
    classes answered, /model (whose colours the web page paints its bars and swatches with) among the model's, so
    with `classes=` one page showed a class in two colours (wbc 0.36.0's first cut). Both are the model's now."""
    import copy

    other = copy.copy(classifier)
    other.info = copy.deepcopy(classifier.info)
    other.info.classes = [f"kind_{c}" for c in classifier.info.classes]
    upload = {"file": ("f.png", png_bytes(smear), "image/png")}
    with TestClient(create_app(other, ClassicalSegmenter())) as c:
        colours = c.get("/model").json()["colours"]
        last = sorted(other.info.classes)[-3:]
        for query in ("", f"&classes={','.join(last)}"):
            body = c.post(f"/analyze?annotated=true{query}", files=upload).json()
            png = cv2.imdecode(np.frombuffer(base64.b64decode(body["annotated_png"]), np.uint8), cv2.IMREAD_COLOR)
            assert body["cells"]
            for cell in body["cells"]:
                x0, y0, _x1, y1 = cell["box"]
                b, g, r = (int(v) for v in png[(y0 + y1) // 2, x0])  # the box's left edge
                assert f"#{r:02x}{g:02x}{b:02x}" == colours[cell["label"]], (query, cell["label"])


def test_analyze_and_classify_answers_say_which_software_settings_and_input_gave_them(
        client: TestClient, classifier, smear: np.ndarray, tmp_path: Path) -> None:
    """Before wbc 0.37.0 ``/analyze`` left out of `wbc analyze`'s document its ``settings``, ``sha1`` and
    ``wbc_version``, and ``/classify`` answered with the model id alone: an audit trail had to ask ``/health`` apart
    (a race during an upgrade), and a request's own ``tta``, ``classes`` and ``reframe`` were not echoed."""
    import hashlib
    import json

    import wbc
    from wbc.batch import Job, analyze_job

    data = png_bytes(smear)
    r = client.post("/analyze?tta=2&classes=5part", files={"file": ("field.png", data, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    (tmp_path / "field.png").write_bytes(data)  # the command line's document for the same file and settings
    chosen = classifier.with_tta(2).with_classes("5part")
    cli = json.loads(analyze_job(Job(str(tmp_path / "field.png"), "field"), chosen, ClassicalSegmenter(),
                                 draw=False).json_text)
    for key in ("settings", "sha1", "wbc_version"):
        assert body[key] == cli[key], key
    assert set(cli) <= set(body)  # the document `wbc analyze` writes, whole, as docs/api.md says
    assert body["sha1"] == hashlib.sha1(data).hexdigest() and body["wbc_version"] == wbc.__version__
    assert body["settings"]["tta"] == 2 and len(body["settings"]["classes"]) == 5
    assert body["settings"]["model_sha1"] == hashlib.sha1(Path(classifier.path).read_bytes()).hexdigest()

    cell = png_bytes(synthetic_cell("lymphocyte", 96, seed=1))
    r = client.post("/classify?tta=3&reframe=false&classes=neutrophil,lymphocyte",
                    files=[("files", ("c.png", cell, "image/png"))])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["wbc_version"] == wbc.__version__
    settings = body["settings"]
    assert sorted(settings.pop("classes")) == ["lymphocyte", "neutrophil"]
    assert settings == {"tta": 3, "tta_unsure": None, "reframe": False,
                        "model_sha1": hashlib.sha1(Path(classifier.path).read_bytes()).hexdigest()}
    spec = client.get("/openapi.json").json()["components"]["schemas"]
    assert {"settings", "sha1", "wbc_version"} <= set(spec["AnalyzeBody"]["required"])
    assert {"settings", "wbc_version"} <= set(spec["ClassifyBody"]["required"])


def test_classify_settings_tell_the_default_from_tta_1_by_the_unsure_cells_views(
        client: TestClient, classifier) -> None:
    """By default /classify answers the cells one view is unsure of again by four rotations (``tta_unsure`` in
    /model); any ``tta``, 1 included, turns that off, and the answers can differ. ``settings`` said ``"tta": 1`` for
    both, so a stored answer could not be traced to what gave it (0.37.0 before release)."""
    cell = png_bytes(synthetic_cell("lymphocyte", 96, seed=1))
    sent = [("files", ("c.png", cell, "image/png"))]
    default = client.post("/classify", files=sent).json()["settings"]
    one = client.post("/classify?tta=1", files=sent).json()["settings"]
    assert default["tta_unsure"] == client.get("/model").json()["tta_unsure"] == {"below": 0.7, "views": 4}
    assert one["tta_unsure"] is None and default["tta"] == one["tta"] == 1 and default != one
    off = create_app(classifier.with_unsure_gate(0.0), ClassicalSegmenter(), max_upload_mb=2)
    with TestClient(off) as c:  # a server whose model answers every cell by one view: null, as /model says
        assert c.post("/classify", files=sent).json()["settings"]["tta_unsure"] is None
        assert c.get("/model").json()["tta_unsure"] is None
    spec = client.get("/openapi.json").json()["components"]["schemas"]
    assert "tta_unsure" in spec["ClassifySettings"]["required"]
    assert set(spec["TtaUnsure"]["properties"]) == {"below", "views"}


def test_classify_ties_every_result_error_and_copy_to_its_part_by_place(client: TestClient, classifier) -> None:
    """An LIS that names every part alike (``cell.jpg``, a browser's ``blob``) could not tell which part a result,
    an error or a copy answered: entries carried the name alone, and an answer was matched to its part by name, so of
    three parts named alike, the second failing, the third's answer took the second's place (before wbc 0.37.0)."""
    import hashlib

    from wbc.classify import classify_arrays

    a, b = png_bytes(synthetic_cell("lymphocyte", 96, seed=1)), png_bytes(synthetic_cell("neutrophil", 96, seed=2))
    cut = png_bytes(synthetic_cell("monocyte", 96, seed=3))[:300]  # passes the header check, fails to decode
    sent = [a, cut, b, a, "b.png"]  # the 4th a copy of the 1st; the 5th a text part (its @ forgotten)
    files = [("files", ("cell.jpg", d, "image/png")) if isinstance(d, bytes) else ("files", (None, d)) for d in sent]
    r = client.post("/classify", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    alone = classify_arrays([a, b], classifier, names=["cell.jpg", "cell.jpg"]).predictions
    assert [(x["index"], x["sha1"], x["label"], x["confidence"]) for x in body["results"]] == [
        (0, hashlib.sha1(a).hexdigest(), alone[0].label, pytest.approx(alone[0].confidence, abs=1e-6)),
        (2, hashlib.sha1(b).hexdigest(), alone[1].label, pytest.approx(alone[1].confidence, abs=1e-6))]
    assert [(e["filename"], e["index"]) for e in body["errors"]] == [("cell.jpg", 1), ("b.png", 4)]
    assert body["copies"] == [{"filename": "cell.jpg", "index": 3, "same_as": "cell.jpg", "same_as_index": 0}]
    # the Python API gives the places too: the failure is the place its answers leave out
    res = classify_arrays([a, cut, b], classifier, names=["cell.jpg"] * 3)
    assert res.indices == [0, 2] and len(res.errors) == 1
    # a request none of whose parts is read names each part's place in its 4xx body too
    r = client.post("/classify", files=[("files", ("cell.jpg", cut, "image/png"))] * 2)
    assert r.status_code == 422 and [e["index"] for e in r.json()["errors"]] == [0, 1]


def test_the_python_api_names_copies_and_counts_each_image_once_as_classify_does(client: TestClient, classifier,
                                                                                  tmp_path: Path) -> None:
    """`wbc.classify_images` answers a cell saved twice (``c (1).png``) once per path, where ``/classify`` and `wbc
    classify` count it once and name it: before wbc 0.37.0 the Python API neither named the copy nor could count as
    they do, so its counts differed from the service's for the same files. Per-path answers are kept."""
    import wbc

    cell = png_bytes(synthetic_cell("lymphocyte", 96, seed=1))
    other = png_bytes(synthetic_cell("neutrophil", 96, seed=2))
    cut = png_bytes(synthetic_cell("monocyte", 96, seed=3))[:300]
    sent = [("c (1).png", cell), ("n.png", other), ("c.png", cell), ("t.png", cut), ("t copy.png", cut)]
    for name, data in sent:
        (tmp_path / name).write_bytes(data)
    body = client.post("/classify", files=[("files", (n, d, "image/png")) for n, d in sent]).json()
    served = {k: v for k, v in body["counts"].items() if v}

    res = wbc.classify_images([tmp_path / n for n, _ in sent], classifier)
    assert len(res.predictions) == 3 and sum(res.counts().values()) == 3  # each path answered, as before
    assert res.copies == [(str(tmp_path / "c (1).png"), str(tmp_path / "c.png"))]  # a failed file's copy: no copy
    assert dict(res.counts(each_image_once=True)) == served
    res = wbc.classify_arrays([d for _, d in sent], classifier, names=[n for n, _ in sent])
    assert res.copies == [("c (1).png", "c.png")] and res.copy_of == {0: 2}
    assert dict(res.counts(each_image_once=True)) == served and sum(res.counts().values()) == 3


def test_a_file_name_s_folders_are_left_out_whichever_separator_it_uses(client: TestClient) -> None:
    """A Windows path (``C:\\fakepath\\slide1\\cell.jpg``) came back as ``cell.jpg`` but ``../../slide2/cell.jpg`` whole
    (wbc 0.36.0): part_name said "its folders left out", and only Starlette's cut at ``\\`` did it."""
    cell = png_bytes(synthetic_cell("lymphocyte", 96, seed=1))
    other = png_bytes(synthetic_cell("neutrophil", 96, seed=2))
    r = client.post("/classify", files=[("files", ("C:\\fakepath\\slide1\\a.png", cell, "image/png")),
                                        ("files", ("../../slide2/b.png", other, "image/png"))])
    assert r.status_code == 200, r.text
    assert [x["filename"] for x in r.json()["results"]] == ["a.png", "b.png"]


def test_a_backslash_in_a_linux_or_macos_file_name_is_kept_only_a_windows_path_is_cut(
        classifier, client: TestClient, tmp_path: Path) -> None:
    r"""``\`` is legal in a Linux/macOS file name (``slide 3\cell.png``) and browsers send a file's name without its
    folders, yet 0.37.0 before release cut every name at ``\``: /classify answered ``cell.png``, and ``POST /cases``
    stored ``f.png`` although the review page sent the chosen name in ``names``. Only a Windows path is cut at ``\``
    now (a drive, a share, a browser's ``fakepath``), as wbc 0.36.0 cut it; ``/`` always."""
    import json

    sent = ["slide 3\\cell.png", "\\\\lab\\share\\c.png", "D:\\s1\\d.png", "x\\fakepath\\e.png", "s4/f\\g.png"]
    cells = [png_bytes(synthetic_cell("lymphocyte", 96, seed=i)) for i in range(len(sent))]
    r = client.post("/classify", files=[("files", (n, b, "image/png")) for n, b in zip(sent, cells, strict=True)])
    assert r.status_code == 200, r.text
    assert [x["filename"] for x in r.json()["results"]] == ["slide 3\\cell.png", "c.png", "d.png", "e.png", "f\\g.png"]
    field = png_bytes(synthetic_smear(n_wbc=2, seed=10)[0])
    with TestClient(create_app(classifier, ClassicalSegmenter(), store=tmp_path / "c.sqlite")) as c:
        name = "slide 3\\f.png"
        r = c.post("/cases", data={"name": "BS", "user": "t", "names": json.dumps([name])},
                   files=[("files", (name, field, "image/png"))])
        assert r.status_code == 201, r.text
        assert [f["image"] for f in r.json()["fields"]] == [name]


def test_a_query_field_of_the_other_upload_route_is_refused_not_ignored(client: TestClient, smear: np.ndarray) -> None:
    """``/analyze?reframe=false`` (expecting /classify's effect) and ``/classify?annotated=true`` were answered 200
    with the field ignored (wbc 0.36.0), where ``/classify?reframe=nah`` is 422: a client got no effect and no word."""
    cell = [("files", ("c.png", png_bytes(synthetic_cell("lymphocyte", 96, seed=1)), "image/png"))]
    field = {"file": ("f.png", png_bytes(smear), "image/png")}
    r = client.post("/analyze?reframe=false", files=field)
    assert r.status_code == 422 and r.json()["error"] == "invalid_request", r.text
    assert r.json()["detail"] == ("reframe: a query field of /classify; /analyze does not take it (it would have no "
                                  "effect)")
    r = client.post("/classify?annotated=true", files=cell)
    assert r.status_code == 422 and r.json()["error"] == "invalid_request" and "annotated" in r.json()["detail"]
    assert client.post("/classify?reframe=false", files=cell).status_code == 200  # each route's own fields stand
    assert client.post("/analyze?annotated=true", files=field).status_code == 200


def test_a_query_field_of_the_other_upload_route_is_refused_in_an_app_mounted_under_a_prefix(
        classifier, smear: np.ndarray) -> None:
    """An integrator mounting the app in their own (``outer.mount("/wbc", app)``) got ``/wbc/classify?annotated=true``
    answered 200 without a word: the check compared the URL's path, which then holds the prefix, with ``/classify``."""
    from fastapi import FastAPI

    outer = FastAPI()
    outer.mount("/wbc", create_app(classifier, ClassicalSegmenter(), max_upload_mb=2))
    cell = [("files", ("c.png", png_bytes(synthetic_cell("lymphocyte", 96, seed=1)), "image/png"))]
    field = {"file": ("f.png", png_bytes(smear), "image/png")}
    with TestClient(outer) as c:
        r = c.post("/wbc/classify?annotated=true", files=cell)
        assert r.status_code == 422 and r.json()["error"] == "invalid_request", r.text
        assert r.json()["detail"].startswith("annotated: a query field of /analyze; /classify does not take it")
        r = c.post("/wbc/analyze?reframe=false", files=field)
        assert r.status_code == 422 and r.json()["detail"].startswith("reframe: a query field of /classify"), r.text
        assert c.post("/wbc/classify?reframe=false", files=cell).status_code == 200  # each route's own fields stand
