"""Cases over HTTP (wbc.serve.cases): real app, real models, a real SQLite store, FastAPI's TestClient."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("sqlalchemy")
from fastapi.testclient import TestClient

from wbc.cases import CaseStore
from wbc.segment.classical import ClassicalSegmenter
from wbc.serve.app import create_app
from wbc.synthetic import synthetic_smear

sys.path.insert(0, str(Path(__file__).parent))
from test_serve import classifier, model_path, png_bytes  # noqa: F401  (session fixtures)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cases_api") / "cases.sqlite"


@pytest.fixture(scope="module")
def client(classifier, store_path: Path) -> Iterator[TestClient]:  # noqa: F811
    app = create_app(classifier, ClassicalSegmenter(), max_upload_mb=5, store=store_path)
    with TestClient(app) as c:
        yield c


def fields(n: int = 2) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"field <{i}>.png", png_bytes(synthetic_smear(n_wbc=2, seed=10 + i)[0]), "image/png"))
            for i in range(n)]


def new_case(client: TestClient, name: str, n: int = 2) -> dict:
    r = client.post("/cases", data={"name": name, "user": "analyser"}, files=fields(n))
    assert r.status_code == 201, r.text
    return r.json()


def test_create_review_sign_off_report(client: TestClient, classifier, store_path: Path) -> None:  # noqa: F811
    doc = new_case(client, "API case 1")
    assert doc["status"] == "open" and doc["model_id"] == classifier.model_id and len(doc["fields"]) == 2
    assert [f["image"] for f in doc["fields"]] == ["field <0>.png", "field <1>.png"]
    assert doc["n_cells"] >= 2 and doc["created_by"] == "analyser"
    cid, cell = doc["id"], doc["cells"][0]

    img = client.get(f"/cases/{cid}/fields/{doc['fields'][0]['id']}/image")
    assert img.status_code == 200 and img.headers["content-type"] == "image/png" and img.content[:4] == b"\x89PNG"
    crop = client.get(f"/cases/{cid}/cells/{cell['id']}/crop")
    assert crop.status_code == 200 and crop.content[:4] == b"\x89PNG"

    new = next(c for c in doc["classes"] if c != cell["model_label"])
    r = client.post(f"/cases/{cid}/cells/{cell['id']}/label", json={"label": new, "user": "A. Tech"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cell"]["label"] == new and body["cell"]["model_label"] == cell["model_label"]
    row = {d["class"]: d for d in body["differential"]["rows"]}
    assert row[new]["count"] >= 1 and row[new]["ci95_high"] > row[new]["ci95_low"]
    assert body["n_changed"] == 1
    r = client.post(f"/cases/{cid}/cells/{cell['id']}/label", json={"label": "not_wbc", "user": "A. Tech"})
    assert r.json()["differential"]["excluded"]["not_wbc"] == 1

    assert client.post(f"/cases/{cid}/cells/{cell['id']}/label", json={"label": "cat", "user": "A"}
                       ).status_code == 422
    assert client.post(f"/cases/{cid}/cells/999999/label", json={"label": new, "user": "A"}).status_code == 404
    assert client.get("/cases/999999").status_code == 404

    r = client.post(f"/cases/{cid}/sign-off", json={"user": "Dr. Who"})
    assert r.status_code == 200 and r.json()["signed_by"] == "Dr. Who"
    r = client.post(f"/cases/{cid}/cells/{cell['id']}/label", json={"label": new, "user": "A. Tech"})
    assert r.status_code == 409 and r.json()["error"] == "signed_off" and "read-only" in r.json()["detail"]
    assert client.post(f"/cases/{cid}/sign-off", json={"user": "X"}).status_code == 409

    doc = client.get(f"/cases/{cid}").json()
    assert [c["new_label"] for c in doc["corrections"]] == [new, "not_wbc"]
    assert {c["client"] for c in doc["corrections"]} == {"anonymous"}  # no API keys on this server
    listed = {c["name"]: c for c in client.get("/cases").json()["cases"]}
    assert listed["API case 1"]["status"] == "signed off"

    page = client.get(f"/cases/{cid}/report")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Dr. Who" in page.text
    pdf = client.get(f"/cases/{cid}/report.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")

    store = CaseStore.open(store_path)  # the same file, read by the library
    assert store.case_document("API case 1")["signed_by"] == "Dr. Who"
    store.close()


def test_bad_uploads_create_no_case(client: TestClient) -> None:
    before = len(client.get("/cases").json()["cases"])
    r = client.post("/cases", data={"name": "bad"},
                    files=[*fields(1), ("files", ("broken.png", b"not an image", "image/png"))])
    assert r.status_code == 422 and r.json()["errors"][0]["filename"] == "broken.png"
    assert client.post("/cases", data={"name": "none"}).status_code in (400, 422)
    new_case(client, "dup", 1)
    r = client.post("/cases", data={"name": "dup"}, files=fields(1))
    assert r.status_code == 422 and "already exists" in r.json()["detail"]
    assert len(client.get("/cases").json()["cases"]) == before + 1


def test_ids_past_the_store_s_integers_and_fields_past_the_pixel_limit_get_4xx(client: TestClient) -> None:
    """An id of 2**63 answered 500 (the database driver's overflow); an 8000 x 8000 field was decoded whole before
    it was refused, and every field's pixels were held until the last was analysed (wbc 0.26.0)."""
    big = 2**63
    for r in (client.get(f"/cases/{big}"), client.get(f"/cases/1/cells/{big}/crop"),
              client.get(f"/cases/1/fields/{big}/image"), client.get(f"/cases/{big}/report"),
              client.post(f"/cases/{big}/sign-off", json={"user": "A"})):
        assert r.status_code == 422, r.text
    assert client.get(f"/cases/{big - 1}").status_code == 404
    _, wide = cv2.imencode(".png", np.full((8000, 8000, 3), 230, np.uint8))
    r = client.post("/cases", data={"name": "too wide"}, files=[("files", ("wide.png", wide.tobytes(), "image/png"))])
    assert r.status_code == 422 and "40,000,000" in r.json()["errors"][0]["error"]


def test_review_page_is_served_and_linked(client: TestClient) -> None:
    r = client.get("/review")
    assert r.status_code == 200 and "review.js" in r.text
    assert "/review" in client.get("/").text


def test_api_keys_guard_cases_and_the_key_is_in_the_audit_trail(classifier, tmp_path: Path) -> None:  # noqa: F811
    from wbc.serve.settings import ServeSettings

    key = "k" * 24
    app = create_app(classifier, ClassicalSegmenter(), store=tmp_path / "c.sqlite",
                     settings=ServeSettings(api_keys=[key]))
    with TestClient(app) as c:
        assert c.get("/cases").status_code == 401
        assert c.get("/review/report.css").status_code == 401
        h = {"X-API-Key": key}
        r = c.post("/cases", data={"name": "keyed"}, files=fields(1), headers=h)
        assert r.status_code == 201, r.text
        doc = r.json()
        cell = doc["cells"][0]
        assert c.post(f"/cases/{doc['id']}/cells/{cell['id']}/label", json={"label": "not_wbc", "user": "A"}
                      ).status_code == 401
        assert c.post(f"/cases/{doc['id']}/cells/{cell['id']}/label", json={"label": "not_wbc", "user": "A"},
                      headers=h).status_code == 200
        assert c.post(f"/cases/{doc['id']}/sign-off", json={"user": "A"}, headers=h).status_code == 200
        doc = c.get(f"/cases/{doc['id']}", headers=h).json()
    assert doc["corrections"][0]["client"].startswith("key:") and doc["signed_client"].startswith("key:")


def test_without_a_store_the_case_routes_answer_503(classifier) -> None:  # noqa: F811
    with TestClient(create_app(classifier, ClassicalSegmenter())) as c:
        r = c.get("/cases")
        assert r.status_code == 503 and "--store" in r.json()["detail"]


def test_the_same_image_twice_makes_no_case(client: TestClient) -> None:
    """Choosing the same file twice in the page's file chooser analysed and counted it twice (wbc 0.27.0)."""
    same = png_bytes(synthetic_smear(n_wbc=2, seed=30)[0])
    files = [("files", ("a.png", same, "image/png")), ("files", ("b.png", png_bytes(synthetic_smear(seed=31)[0]),
                                                                 "image/png")),
             ("files", ("a copy.png", same, "image/png"))]
    r = client.post("/cases", data={"name": "DUPWEB", "user": "me"}, files=files)
    assert r.status_code == 422 and r.json()["error"] == "duplicate_field", r.text
    assert r.json()["detail"].startswith("a copy.png is the same image as a.png (identical file content")
    assert all(c["name"] != "DUPWEB" for c in client.get("/cases").json()["cases"])
    r = client.post("/cases", data={"name": "DUPWEB", "user": "me"}, files=files[:2])
    assert r.status_code == 201 and [f["image"] for f in r.json()["fields"]] == ["a.png", "b.png"]


def test_a_case_made_over_http_records_how_its_fields_were_analysed(client: TestClient, classifier) -> None:  # noqa: F811
    """A case records its analysis settings (the server's label set, views per cell, colour calibration, pixel size)
    for its report, as `wbc cases create` does (since wbc 0.36.0: none was recorded)."""
    from wbc.classify import tta_views_of

    doc = new_case(client, "settings", 1)
    assert doc["settings"] == {"classes": [], "tta": tta_views_of(classifier, smear=True),
                               "colour_calibration": doc["settings"]["colour_calibration"], "pixel_size": None}
    assert client.get(f"/cases/{doc['id']}").json()["settings"] == doc["settings"]
    assert "pixel size measured from the red cells" in client.get(f"/cases/{doc['id']}/report").text


def test_post_cases_refuses_an_annotated_png_of_wbc(client: TestClient) -> None:
    """A field and wbc's annotated PNG of it chosen together made a case of both: the drawing's cells counted again,
    plus "cells" in its labels (before wbc 0.36.0). `wbc analyze` leaves such a PNG out; the page refuses it by name."""
    from wbc.batch import tag_annotated

    field = png_bytes(synthetic_smear(n_wbc=2, seed=32)[0])
    files = [("files", ("field.png", field, "image/png")),
             ("files", ("field_annotated.png", tag_annotated(field), "image/png"))]
    r = client.post("/cases", data={"name": "ANNOT", "user": "me"}, files=files)
    assert r.status_code == 422 and r.json()["error"] == "annotated_field", r.text
    assert r.json()["detail"].startswith("field_annotated.png is an annotated result of wbc"), r.text
    assert [e["filename"] for e in r.json()["errors"]] == ["field_annotated.png"]
    assert all(c["name"] != "ANNOT" for c in client.get("/cases").json()["cases"])
    assert client.post("/cases", data={"name": "ANNOT", "user": "me"}, files=files[:1]).status_code == 201


def test_a_case_name_the_store_refuses_is_refused_before_any_field_is_analysed(classifier,  # noqa: F811
                                                                              tmp_path: Path) -> None:
    """The store checked a new case's name (taken, blank) and user (a control character) only once every field had
    waited for a slot and been analysed (wbc 0.32.0): 20 large fields under an accession number already used took
    minutes of everyone's slots for a 422. They are checked first now; a name of digits that is only another case's id
    is no name taken."""
    calls = []

    class Counting(ClassicalSegmenter):
        def segment(self, rgb: np.ndarray) -> list:
            calls.append(1)
            return super().segment(rgb)

    app = create_app(classifier, Counting(), max_upload_mb=5, store=tmp_path / "cases.sqlite")
    with TestClient(app) as c:
        assert c.post("/cases", data={"name": "S-1"}, files=fields(1)).status_code == 201
        assert c.post("/cases", data={"name": "20261207001"}, files=fields(1)).status_code == 201
        before = len(calls)
        for name, user, said in (("S-1", "", "a case named 'S-1' already exists"),
                                 ("  S-1 ", "", "a case named 'S-1' already exists"),
                                 ("20261207001", "", "a case named '20261207001' already exists"),
                                 ("   ", "", "a case needs a name"), ("#3", "", "#ID means the case with that id"),
                                 ("S-2", "a\x00b", "user name holds a control character (U+0000)")):
            r = c.post("/cases", data={"name": name, "user": user}, files=fields(3))
            assert r.status_code == 422 and r.json()["error"] == "invalid_case", r.text[:300]
            assert said in r.json()["detail"], r.json()
        assert len(calls) == before, f"{len(calls) - before} fields analysed for requests bound to be refused"
        assert c.post("/cases", data={"name": "2"}, files=fields(1)).status_code == 201  # case 2's id, no case's name


def test_a_case_from_a_multi_page_tiff_says_what_it_left_out(client: TestClient) -> None:
    """POST /cases analysed the first image of a scanner's 3-field TIFF and said nothing, where /analyze and
    `wbc analyze` warn (wbc 0.28.0): the field carries the same warning, shown on the review page."""
    from PIL import Image

    pages = [Image.fromarray(synthetic_smear(n_wbc=2, seed=s)[0]) for s in (1, 2, 3)]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    r = client.post("/cases", data={"name": "TIFF 3 fields"},
                    files={"files": ("slide.tif", buf.getvalue(), "image/tiff")})
    assert r.status_code == 201, r.text
    assert r.json()["fields"][0]["warnings"][-1] == (
        "the file holds 3 images; only the first was analysed: save each field as a file of its own")


def test_a_sign_off_of_a_case_changed_since_it_was_shown_is_refused(client: TestClient) -> None:
    """The review page's confirmation names the differential it shows; a colleague's relabel after it still let the
    sign-off through, attesting to counts the signer never saw (wbc 0.28.0). ``corrections_seen`` is checked in the
    sign-off's transaction; without it (scripts) there is no check."""
    doc = new_case(client, "stale sign-off", 1)
    cid, cell = doc["id"], doc["cells"][0]
    seen = len(doc["corrections"])
    relabel = client.post(f"/cases/{cid}/cells/{cell['id']}/label", json={"label": "not_wbc", "user": "B"})
    assert relabel.status_code == 200
    r = client.post(f"/cases/{cid}/sign-off", json={"user": "A", "corrections_seen": seen})
    assert r.status_code == 409 and r.json()["error"] == "changed", r.text
    detail = r.json()["detail"]
    assert "has 1 correction(s) now (1 change(s), 0 confirmation(s)), not the 0 given" in detail, detail
    assert "the last 1 came since (cell " in detail and "-> not_wbc by B at " in detail, detail
    # the page's user has no command line and no number to give: the page counts by itself (0.37.0 before release)
    assert "wbc cases" not in detail and "give 1" not in detail and "show it again" in detail, detail
    assert client.get(f"/cases/{cid}").json()["signed_by"] is None
    assert client.post(f"/cases/{cid}/sign-off", json={"user": "A", "corrections_seen": -1}).status_code == 422
    r = client.post(f"/cases/{cid}/sign-off", json={"user": "A", "corrections_seen": seen + 1})
    assert r.status_code == 200 and r.json()["signed_by"] == "A"


def test_a_label_made_on_a_stale_page_is_refused_not_overwriting_a_colleague_s(client: TestClient) -> None:
    """Two pages show one case; B relabels a cell, then A's page, still showing the model's call, confirms it. Before
    wbc 0.31.0 A's request was taken as a change back (both 200): B's correction was gone and the signed report said
    "every call of the model was kept". With ``expected`` (the call A's page showed) it is refused, 409 ``changed``."""
    doc = new_case(client, "stale label")
    cid, cell = doc["id"], doc["cells"][0]
    shown = cell["label"]  # what both pages show: the model's call
    other = next(c for c in doc["classes"] if c != shown)
    r = client.post(f"/cases/{cid}/cells/{cell['id']}/label", json={"label": other, "user": "B", "expected": shown})
    assert r.status_code == 200, r.text
    r = client.post(f"/cases/{cid}/cells/{cell['id']}/label", json={"label": shown, "user": "A", "expected": shown})
    assert r.status_code == 409 and r.json()["error"] == "changed", r.text
    assert repr(other) in r.json()["detail"] and "by B" in r.json()["detail"]
    now = client.get(f"/cases/{cid}").json()
    assert now["cells"][0]["label"] == other and now["cells"][0]["reviewed_by"] == "B"
    assert [(c["user"], c["new_label"]) for c in now["corrections"]] == [("B", other)]
    # a client that sends no `expected` (before wbc 0.31.0) is answered as before
    r = client.post(f"/cases/{cid}/cells/{cell['id']}/label", json={"label": shown, "user": "A"})
    assert r.status_code == 200 and r.json()["cell"]["label"] == shown


def test_a_locked_store_is_one_line_and_a_503(classifier, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    """Another program holds the SQLite store's write lock (a backup, a database browser) past the busy timeout: the
    Python API raised sqlalchemy's OperationalError (a traceback in `wbc cases create`, after every field was
    analysed) and a label over HTTP was a bare-text 500. Now it is a one-line CaseError and a JSON 503 that names no
    file of the server's."""
    import sqlite3

    import wbc.cases.store as store_module
    from wbc.cases import CaseError

    monkeypatch.setattr(store_module, "SQLITE_BUSY_TIMEOUT_S", 0.2, raising=False)  # 30 s before wbc 0.31.0
    path = tmp_path / "cases.sqlite"
    store = CaseStore.open(path)
    with TestClient(create_app(classifier, ClassicalSegmenter(), max_upload_mb=5, store=store)) as c:
        doc = new_case(c, "locked", 1)
        cell = doc["cells"][0]["id"]
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the other program's write lock
        try:
            with pytest.raises(CaseError, match="database is locked: another program is writing to it") as err:
                store.reclassify(doc["id"], cell, "not_wbc", "A")
            assert "\n" not in str(err.value) and str(path) in str(err.value)
            r = c.post(f"/cases/{doc['id']}/cells/{cell}/label", json={"label": "not_wbc", "user": "A"})
            assert r.status_code == 503 and r.json()["error"] == "store_unavailable", r.text
            assert "busy" in r.json()["detail"] and str(tmp_path) not in r.text
            assert c.get(f"/cases/{doc['id']}").status_code == 200  # reading goes on (the write-ahead log)
        finally:
            other.rollback()
            other.close()
        r = c.post(f"/cases/{doc['id']}/cells/{cell}/label", json={"label": "not_wbc", "user": "A"})
        assert r.status_code == 200
    store.close()


def test_a_404_names_no_store_path(client: TestClient, store_path: Path) -> None:
    """Every case route's 404 said where the store lives ("case 999 not found in sqlite:////srv/..."; for
    PostgreSQL the database's user, host and port) to any client (wbc 0.28.0)."""
    doc = new_case(client, "leak", 1)
    for r in (client.get("/cases/999"), client.get("/cases/999/report"), client.get("/cases/999/report.pdf"),
              client.get("/cases/999/cells/1/crop"), client.get("/cases/999/fields/1/image"),
              client.post("/cases/999/sign-off", json={"user": "A"}),
              client.post("/cases/999/cells/1/label", json={"label": "not_wbc", "user": "A"})):
        assert r.status_code == 404 and r.json()["detail"] == "case 999 not found", r.text
        assert str(store_path.parent) not in r.text and "sqlite" not in r.text
    r = client.get(f"/cases/{doc['id']}/cells/999999/crop")
    assert r.status_code == 404 and "sqlite" not in r.text and "999999" in r.json()["detail"]


def test_a_field_of_another_declared_content_type_is_422_listed_as_the_docs_say(client: TestClient) -> None:
    """docs/api.md gave 415 for a part whose declared content type is no image; `POST /cases` answers 422
    `unreadable_image`, listing the file (wbc 0.30.0's docs). Its row now says so."""
    field = png_bytes(synthetic_smear(n_wbc=2, seed=10)[0])
    r = client.post("/cases", data={"name": "typed"}, files=[("files", ("field1.jpg", field, "text/plain"))])
    assert r.status_code == 422 and r.json()["error"] == "unreadable_image", r.text
    assert [e["filename"] for e in r.json()["errors"]] == ["field1.jpg"] and "text/plain" in r.text
    docs = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text(encoding="utf-8")
    row = next(line for line in docs.splitlines() if "declared content type is not an image" in line)
    assert "`POST /cases`: 422, listed per file" in row, row


def test_docs_api_names_how_field_images_and_crops_are_cached(client: TestClient) -> None:
    """docs/api.md said every answer but static files was ``no-store``; field images and crops are cached privately
    for an hour (so the review page does not fetch them again after each relabel), which it now says."""
    doc = new_case(client, "cached", 1)
    docs = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text(encoding="utf-8")
    for url in (doc["fields"][0]["image_url"], doc["cells"][0]["crop_url"]):
        r = client.get(url)
        assert r.status_code == 200 and f"`{r.headers['cache-control']}`" in docs, url
    assert client.get(f"/cases/{doc['id']}").headers["cache-control"] == "no-store"


def test_the_review_page_s_pictures_are_the_cells_as_the_slide_shows_them(client: TestClient) -> None:
    """The review page showed each cell's crop as framed for the classifier (`/crop`), which mirrors the field beyond
    its edge: a cell at the edge looked doubled (wbc 0.29.0). `/view` cuts the cell from its field, nothing mirrored,
    and the page asks for that."""
    from wbc.cases.store import cell_view, decode_png

    doc = new_case(client, "views", 1)
    cid, field = doc["id"], doc["fields"][0]
    rgb = decode_png(client.get(f"/cases/{cid}/fields/{field['id']}/image").content)
    for cell in doc["cells"]:
        r = client.get(cell["view_url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.headers["cache-control"] == "private, max-age=3600"
        assert np.array_equal(decode_png(r.content), cell_view(rgb, cell["box"]))
    assert client.get(f"/cases/{cid}/cells/999999/view").status_code == 404
    js = (Path(__file__).resolve().parents[1] / "src" / "wbc" / "serve" / "static" / "review.js").read_text()
    assert "c.view_url" in js and "crop" not in js


def test_case_images_are_cached_only_under_urls_that_name_their_content(classifier, tmp_path: Path) -> None:  # noqa: F811
    """Every store numbers its cases, fields and cells from 1, and `/cases/1/cells/1/view` was kept for an hour: after
    `wbc serve` restarted with another store, the review page showed the previous store's cell under the new case's
    call (wbc 0.30.0). The case document's image URLs now carry their content version; a URL of another store is 404,
    and an image asked for without one is revalidated."""
    docs = []
    for i, seed in enumerate((10, 11)):  # two stores, one case each: the same ids
        with TestClient(create_app(classifier, ClassicalSegmenter(), store=tmp_path / f"store{i}.sqlite")) as c:
            field = png_bytes(synthetic_smear(n_wbc=2, seed=seed)[0])
            r = c.post("/cases", data={"name": "S-1"}, files=[("files", ("f.png", field, "image/png"))])
            assert r.status_code == 201, r.text
            docs.append(r.json())
    (a, b), (fa, fb) = (d["cells"][0] for d in docs), (d["fields"][0] for d in docs)
    assert (docs[0]["id"], a["id"], fa["id"]) == (docs[1]["id"], b["id"], fb["id"]) == (1, 1, 1)
    for x, y in ((a, b), (fa, fb)):
        urls = [u for u in ("view_url", "crop_url", "image_url") if u in x]
        assert urls and all(x[u].split("?v=")[0] == y[u].split("?v=")[0] and x[u] != y[u] for u in urls)

    with TestClient(create_app(classifier, ClassicalSegmenter(), store=tmp_path / "store1.sqlite")) as c:
        for mine, other in ((b["view_url"], a["view_url"]), (b["crop_url"], a["crop_url"]),
                            (fb["image_url"], fa["image_url"])):
            r = c.get(mine)
            assert r.status_code == 200 and r.headers["cache-control"] == "private, max-age=3600", mine
            stale = c.get(other)  # the previous store's page asking this store: never this store's image
            assert stale.status_code == 404 and stale.json()["error"] == "not_found", other
            assert "reload the case" in stale.json()["detail"]
            bare = c.get(mine.split("?")[0])  # an API client without `v`: asked again each time
            assert bare.headers["cache-control"] == "private, no-cache" and bare.content == r.content
            again = c.get(mine.split("?")[0], headers={"If-None-Match": bare.headers["etag"]})
            assert again.status_code == 304 and not again.content
        relabelled = c.post(f"/cases/1/cells/{b['id']}/label", json={"label": "not_wbc", "user": "A"}).json()["cell"]
        assert relabelled["view_url"] == b["view_url"]  # a relabel changes no picture


def test_a_five_part_server_s_case_counts_five_classes_and_a_reviewer_may_still_call_ig(
        classifier, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    """A case made by `wbc serve --classes 5part` stored the model's classes as its differential's rows: its
    differential, report and JSON listed ig and erythroblast at 0, counts that lab never makes (wbc 0.30.0). Its
    differential now counts the five classes; the reviewer's menu keeps every class, and a cell called ig adds the
    ig row."""
    from test_cases import pdf_paragraphs
    from wbc.cases.export import export_cases
    from wbc.cases.report import display_name, report_context

    five = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    app = create_app(classifier, ClassicalSegmenter(), max_upload_mb=5, store=tmp_path / "cases.sqlite",
                     classes="5part")
    with TestClient(app) as client:
        doc = new_case(client, "five-part", 1)
        cid, cell = doc["id"], doc["cells"][0]
        for d in (doc, client.get(f"/cases/{cid}").json()):
            assert [r["class"] for r in d["differential"]["rows"]] == five
            assert [r["class"] for r in d["model_differential"]["rows"]] == five
        assert doc["counted"] == five
        assert "ig" in doc["classes"] and "ig" in doc["labels"] and "erythroblast" in doc["labels"]  # the menu
        page = client.get(f"/cases/{cid}/report").text
        for c in ("ig", "erythroblast"):
            assert f"<td>{display_name(c).capitalize()}</td>" not in page
        assert "erythroblasts per 100" not in page  # no row of theirs to give a unit for
        store = app.state.case_store
        assert [r["class"] for r in report_context(store, cid)["rows"]][:5] == five
        assert "erythroblasts per 100" not in pdf_paragraphs(monkeypatch, store, cid)

        r = client.post(f"/cases/{cid}/cells/{cell['id']}/label", json={"label": "ig", "user": "A. Tech"})
        assert r.status_code == 200, r.text
        rows = {x["class"]: x for x in r.json()["differential"]["rows"]}
        with_ig = [c for c in doc["classes"] if c in {"ig", *five}]  # in the model's order
        assert list(rows) == with_ig and rows["ig"]["count"] == 1
        assert [x["class"] for x in r.json()["model_differential"]["rows"]] == with_ig
        doc = client.get(f"/cases/{cid}").json()
        assert {x["class"]: x["count"] for x in doc["differential"]["rows"]}["ig"] == 1
        assert "erythroblast" not in [x["class"] for x in doc["differential"]["rows"]]
        assert f"<td>{display_name('ig').capitalize()}</td>" in client.get(f"/cases/{cid}/report").text
        assert client.post(f"/cases/{cid}/sign-off", json={"user": "Dr. Who"}).status_code == 200
        out = export_cases(store, tmp_path / "export", cases=[cid])
        assert out.counts == {"ig": 1}


def test_every_json_answer_is_typed_in_openapi_and_validates_against_it(client: TestClient) -> None:
    """Sign-off answers the whole case, yet /openapi.json described it, the label route's answer, /differential,
    /health and GET /cases as "any object" (wbc 0.36.0): a generated client got ``dict[str, Any]`` for them. Each now
    names its body's model, and the answers validate against it (/model, the model's metadata, stays an object)."""
    jsonschema = pytest.importorskip("jsonschema")
    spec = client.get("/openapi.json").json()
    untyped = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for status in ("200", "201"):
                schema = op["responses"].get(status, {}).get("content", {}).get("application/json", {}).get("schema")
                if schema is not None and "$ref" not in schema and path != "/model":
                    untyped.append(f"{method} {path}")
    assert untyped == []

    def check(path: str, method: str, answer: dict, status: str = "200") -> None:
        ref = spec["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        jsonschema.validate(answer, {"$ref": ref, "components": spec["components"]})

    doc = new_case(client, "API typed", n=1)
    cid, cell = doc["id"], doc["cells"][0]
    r = client.post(f"/cases/{cid}/cells/{cell['id']}/label", json={"label": "not_wbc", "user": "A. Tech"})
    assert r.status_code == 200, r.text
    check("/cases/{case_id}/cells/{cell_id}/label", "post", r.json())
    r = client.post(f"/cases/{cid}/sign-off", json={"user": "Dr. Who"})
    assert r.status_code == 200, r.text
    check("/cases/{case_id}/sign-off", "post", r.json())
    check("/cases", "get", client.get("/cases").json())
    check("/health", "get", client.get("/health").json())
    check("/differential", "post", client.post("/differential", json={"counts": {"neutrophil": 5}}).json())


def test_docs_api_maps_each_name_to_one_the_code_gives(client: TestClient) -> None:
    """docs/api.md's table of one quantity's names across routes and the Python API (the review of wbc 0.37.0 found a
    client needs one): every name it gives is a field the route answers or an attribute of the Python type."""
    import dataclasses
    import re

    import wbc.types
    from wbc.serve.app import AnalyzeBody, CellPrediction, ClassifyBody, SmearCell

    text = (Path(__file__).parent.parent / "docs" / "api.md").read_text(encoding="utf-8")
    table = text.split("### One quantity, its names", 1)[1].split("\n\n")[2]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    assert len(rows) >= 10
    doc = new_case(client, "API names", n=1)
    case_names = set(doc) | set(doc["cells"][0]) | set(doc["fields"][0])
    known = [set(AnalyzeBody.model_fields) | set(SmearCell.model_fields),
             set(ClassifyBody.model_fields) | set(CellPrediction.model_fields), case_names]
    for row in rows:
        assert len(row) == 5, row
        for names, cell in zip(known, row[1:4], strict=True):
            assert cell == "—" or re.fullmatch(r"`(\w+)`", cell)[1] in names, (row, cell)
        if row[4] != "—":
            cls, attr = re.fullmatch(r"`(\w+)\.(\w+)`", row[4]).groups()
            assert attr in {f.name for f in dataclasses.fields(getattr(wbc.types, cls))}, row
