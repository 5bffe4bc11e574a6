"""Review and sign-off in a real browser (Debian chromium via Playwright) against a real uvicorn server and a
real SQLite case store: create a case from three fields, reclassify two cells with the keyboard alone, sign
off, read the report, export the corrections and adapt a model from them with `wbc adapt --method head`.

Skipped with a reason when chromium or Playwright is missing (apt-get install chromium); the page may only
talk to the server (any other request fails the test).
"""

from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from browser import BROWSER_MARKS, live_server, watch

pytestmark = [*BROWSER_MARKS, pytest.mark.slow]
pytest.importorskip("uvicorn")
pytest.importorskip("sqlalchemy")

from test_serve import classifier, model_path  # noqa: E402, F401  (session fixtures)
from wbc.cases import CaseStore  # noqa: E402
from wbc.cases.export import export_cases  # noqa: E402
from wbc.segment.classical import ClassicalSegmenter  # noqa: E402
from wbc.serve.app import create_app  # noqa: E402
from wbc.synthetic import synthetic_smear  # noqa: E402


@pytest.fixture(scope="module")
def served(classifier, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:  # noqa: F811
    store = tmp_path_factory.mktemp("review") / "cases.sqlite"
    with live_server(create_app(classifier, ClassicalSegmenter(), max_upload_mb=10, store=store)) as base:
        yield base, store


def tab_to(page, selector: str, limit: int = 40) -> None:
    """Press Tab until the focused element matches ``selector`` (keyboard only, as a user would)."""
    for _ in range(limit):
        if page.evaluate("s => document.activeElement && document.activeElement.matches(s)", selector):
            return
        page.keyboard.press("Tab")
    pytest.fail(f"Tab never reached {selector}")


def test_review_by_keyboard_sign_off_export_and_adapt(chromium, served, model_path: Path,  # noqa: F811
                                                      tmp_path: Path) -> None:
    base, store_path = served
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"field <{i}>.png")
        cv2.imwrite(str(paths[-1]), synthetic_smear(n_wbc=2, seed=20 + i)[0][:, :, ::-1])

    ctx = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    errors = watch(page, only=base)
    page.goto(base + "/review")
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)

    # create the case: type, choose files, submit, all from the keyboard but the file chooser
    page.focus("#reviewer")
    page.keyboard.type("Ann <Tech>")
    page.focus("#case-name")
    page.keyboard.type("Case <b>1</b>")
    page.set_input_files("#case-files", [str(x) for x in paths])
    tab_to(page, "#create-case")
    page.keyboard.press("Enter")
    page.wait_for_selector("#case:not([hidden])", timeout=90_000)
    assert page.locator("#case-heading").inner_text() == "Case Case <b>1</b>"  # shown as text, not markup
    doc = page.evaluate("state.doc")
    n_cells = doc["n_cells"]
    assert len(doc["fields"]) == 3 and n_cells >= 4
    classes = doc["classes"]

    # flagged cells come first in the gallery
    order = page.evaluate("state.order")
    flags = [next(c for c in doc["cells"] if c["id"] == i)["model_review"] for i in order]
    assert flags == sorted(flags, reverse=True)

    # keyboard only: Tab into the gallery, then number keys; focus moves on to the next cell
    tab_to(page, "#gallery .tile[aria-selected=true]")
    changed = []
    for _ in range(2):
        cid = page.evaluate("state.sel")
        cell = next(c for c in page.evaluate("state.doc.cells") if c["id"] == cid)
        new = next(c for c in ("lymphocyte", "monocyte", "eosinophil") if c != cell["label"])
        before = page.locator(f"#review-diff tr[data-class={new}] td.count").inner_text()
        page.keyboard.press(str(classes.index(new) + 1))
        page.wait_for_function("([id, lab]) => state.doc.cells.find(c => c.id === id).label === lab",
                               arg=[cid, new])
        after = page.locator(f"#review-diff tr[data-class={new}] td.count").inner_text()
        assert int(after) == int(before) + 1  # the differential updated at once
        assert page.evaluate("state.sel") != cid  # on to the next cell
        assert page.evaluate("document.activeElement.matches('.tile')")
        changed.append((cid, cell["model_label"], new))
    assert page.locator("#review-diff tr.differs").count() >= 1

    # the field view shows the same cells as outlines, and the keys work there too
    page.keyboard.press("f")
    assert page.locator("#fields").is_visible() and page.locator("#fields g[data-cell]").count() == n_cells
    captions = page.locator("#fields figcaption").all_inner_texts()
    calibrated = [bool(f["colour_calibration"]) for f in doc["fields"]]
    assert calibrated == ["calibrated on its red cells" in c for c in captions]  # each field says so, or not
    page.keyboard.press("g")

    # sign off by keyboard
    tab_to(page, "#sign-off")
    page.keyboard.press("Enter")
    assert page.locator("#confirm-box").is_visible()
    assert "Ann <Tech>" in page.locator("#confirm-text").inner_text()
    page.keyboard.press("Enter")  # focus is on the confirm button
    page.wait_for_selector("#signed-text:not([hidden])")
    assert "Ann <Tech>" in page.locator("#signed-text").inner_text()
    assert page.locator("#case-status").inner_text().startswith("Signed off")

    # read-only now: a number key changes nothing
    tab_to(page, "#gallery .tile[aria-selected=true]")
    page.keyboard.press("1")
    page.wait_for_selector("#review-status:has-text('read-only')")
    assert page.locator("#label-menu button:not([disabled])").count() == 0

    report = page.request.get(base + page.locator("#report-link").get_attribute("href"))
    assert report.ok and "Ann &lt;Tech&gt;" in report.text() and "DRAFT" not in report.text()
    assert page.request.get(base + page.locator("#pdf-link").get_attribute("href")).body()[:4] == b"%PDF"
    ctx.close()
    assert not errors, errors

    store = CaseStore.open(store_path)
    doc = store.case_document("Case <b>1</b>")
    assert doc["signed_by"] == "Ann <Tech>"
    assert [(c["cell_id"], c["old_label"], c["new_label"]) for c in doc["corrections"]] == changed
    reviewed = export_cases(store, tmp_path / "reviewed")  # by default only the cells a person reviewed
    assert reviewed.n_cells == len(changed) and reviewed.n_unreviewed == n_cells - len(changed)
    export = tmp_path / "corrections"
    summary = export_cases(store, export, include_accepted=True)  # and the model's calls accepted at sign-off
    store.close()
    assert summary.n_cells == n_cells
    rows = list(csv.DictReader((export / "manifest.csv").open()))
    for cid, _, new in changed:
        row = next(r for r in rows if int(r["cell_id"]) == cid)
        assert (row["label"], row["label_source"], row["reviewer"]) == (new, "reviewed", "Ann <Tech>")
    assert sum(r["label_source"] == "accepted_at_sign_off" for r in rows) == n_cells - len(changed)

    out = tmp_path / "adapted.onnx"
    env = dict(os.environ, WBC_NO_REEXEC="1")
    run = subprocess.run([sys.executable, "-m", "wbc", "adapt", "--method", "head", "--model", str(model_path),
                          "--data", str(export), "--output", str(out), "--threads", "1"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert out.is_file() and f"adapted on {n_cells} cells" in run.stderr.replace("\n", " ")


# ---------------------------------------------------------------------------- races and failed requests


def make_case(base: str, name: str, seed: int, n_wbc: int = 2) -> int:
    """A case of one synthetic field, created through the API (as another reviewer's browser would)."""
    import httpx

    png = cv2.imencode(".png", synthetic_smear(n_wbc=n_wbc, seed=seed)[0][:, :, ::-1])[1].tobytes()
    r = httpx.post(base + "/cases", data={"name": name, "user": "setup"},
                   files=[("files", ("field.png", png, "image/png"))], timeout=120)
    assert r.status_code == 201 and r.json()["n_cells"] >= 1, r.text
    return int(r.json()["id"])


def case_on_server(base: str, case_id: int) -> dict:
    import httpx

    return httpx.get(f"{base}/cases/{case_id}", timeout=30).json()


@pytest.fixture()
def review(chromium, served) -> Iterator[tuple[object, str]]:
    base, _ = served
    ctx = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    errors = watch(page, only=base)
    page.goto(base + "/review")
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    page.fill("#reviewer", "Ann")
    page.dispatch_event("#reviewer", "change")
    yield page, base
    ctx.close()
    assert not errors, errors


def open_case(page, case_id: int) -> None:
    page.click(f"button.open-case[data-case='{case_id}']")
    page.wait_for_function("id => state.doc && state.doc.id === id", arg=case_id)


def open_new_case(page, base: str, name: str, seed: int, n_wbc: int = 2) -> int:
    """A new case (:func:`make_case`), the page reloaded to list it, and opened; its id."""
    c = make_case(base, name, seed, n_wbc)
    page.reload()
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    open_case(page, c)
    return c


def test_a_sign_off_asked_for_one_case_never_signs_another(review) -> None:
    page, base = review
    a, b = make_case(base, "sign A", 40), make_case(base, "sign B", 41)
    page.reload()
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    open_case(page, a)
    page.click("#sign-off")
    assert "sign A" in page.locator("#confirm-text").inner_text()
    open_case(page, b)  # from the case list, above the open confirmation
    assert page.locator("#confirm-box").is_hidden()
    page.evaluate("signOff()")  # even a click that reached the (now hidden) confirm button signs nothing
    page.click("#sign-off")  # ... and so does going Back to the first case
    page.go_back()
    page.wait_for_function("id => state.doc && state.doc.id === id", arg=a)
    assert page.locator("#confirm-box").is_hidden()
    page.evaluate("signOff()")
    page.wait_for_timeout(300)
    assert case_on_server(base, a)["signed_by"] is None and case_on_server(base, b)["signed_by"] is None

    page.click("#sign-off")  # the confirmed case, and only it, is signed off
    page.click("#confirm-sign-off")
    page.wait_for_selector("#signed-text:not([hidden])")
    assert case_on_server(base, a)["signed_by"] == "Ann" and case_on_server(base, b)["signed_by"] is None


def test_a_case_changed_by_someone_else_after_the_confirmation_is_not_signed_off(review) -> None:
    """The confirmation names the differential the page shows; a colleague's relabel after it made the signer attest
    to counts they never saw (wbc 0.28.0). The page's own relabels count as seen; another's refuses the sign-off, and
    the page shows the case as it is now."""
    import httpx

    page, base = review
    a = make_case(base, "stale", 45)
    page.reload()
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    open_case(page, a)
    page.focus("#gallery .tile[aria-selected=true]")
    page.keyboard.press("9")  # this page's own correction: seen
    page.wait_for_selector("#review-status:has-text('Not a WBC')")
    page.click("#sign-off")
    cell = case_on_server(base, a)["cells"][-1]["id"]
    r = httpx.post(f"{base}/cases/{a}/cells/{cell}/label", json={"label": "unidentifiable", "user": "Bo"}, timeout=30)
    assert r.status_code == 200
    page.click("#confirm-sign-off")
    page.wait_for_selector("#review-status:has-text('Not signed off')")
    assert "changed after it was shown" in page.locator("#review-status").inner_text()
    assert case_on_server(base, a)["signed_by"] is None
    page.wait_for_function("state.doc.corrections.length === 2")  # reloaded: the colleague's change is shown
    page.click("#sign-off")
    page.click("#confirm-sign-off")
    page.wait_for_selector("#signed-text:not([hidden])")
    assert case_on_server(base, a)["signed_by"] == "Ann"


def test_a_confirmation_on_a_stale_page_leaves_a_colleague_s_label(review) -> None:
    """The page sends the call it shows with each label: a cell a colleague relabelled after the page loaded the case
    is not overwritten by Enter's "confirm" (before wbc 0.31.0 it was, silently), and the page shows it as it is now."""
    import httpx

    page, base = review
    c = open_new_case(page, base, "stale confirm", 47)
    page.focus("#gallery .tile[aria-selected=true]")
    cell = page.evaluate("state.sel")
    r = httpx.post(f"{base}/cases/{c}/cells/{cell}/label", json={"label": "unidentifiable", "user": "Bo"}, timeout=30)
    assert r.status_code == 200
    page.keyboard.press("Enter")  # confirms the call this page still shows
    page.wait_for_selector("#review-status:has-text('Not saved')")
    assert "nothing was saved" in page.locator("#review-status").inner_text()
    doc = case_on_server(base, c)
    assert [x["label"] for x in doc["cells"] if x["id"] == cell] == ["unidentifiable"]
    assert [(x["user"], x["new_label"]) for x in doc["corrections"]] == [("Bo", "unidentifiable")]
    page.wait_for_function("id => state.doc.cells.find((x) => x.id === id).label === 'unidentifiable'", arg=cell)


def test_a_failed_label_request_says_so_and_the_next_one_works(review) -> None:
    page, base = review
    c = open_new_case(page, base, "network", 42)
    calls: list[str] = []

    def first_fails(route) -> None:  # the server restarting, or the network gone, for one request
        calls.append(route.request.url)
        if len(calls) == 1:
            route.abort()
        else:
            route.continue_()

    page.route("**/label", first_fails)
    page.focus("#gallery .tile[aria-selected=true]")
    page.keyboard.press("9")
    page.wait_for_selector("#review-status:has-text('Not saved: no answer from the server')")
    assert page.evaluate("state.busy") is False
    page.keyboard.press("9")  # the same key again: saved now
    page.wait_for_selector("#review-status:has-text('Not a WBC')")
    assert len(calls) == 2 and case_on_server(base, c)["n_reviewed"] == 1


def test_a_label_answer_after_another_case_was_opened_stays_with_its_case(review) -> None:
    page, base = review
    a, b = make_case(base, "slow A", 43), make_case(base, "slow B", 44)
    page.reload()
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    open_case(page, a)
    # hold the label request until the other case is open (a slow server under load)
    page.evaluate("""() => { const f = window.fetch; window.fetch = (u, o) => String(u).endsWith('/label')
        ? new Promise((res) => { window.releaseLabel = () => res(f(u, o)); }) : f(u, o); }""")
    page.focus("#gallery .tile[aria-selected=true]")
    page.keyboard.press("9")
    page.wait_for_function("typeof window.releaseLabel === 'function'")
    open_case(page, b)
    page.evaluate("window.releaseLabel()")
    page.wait_for_selector("#review-status:has-text('slow A')")
    assert case_on_server(base, a)["n_reviewed"] == 1
    shown, server_b = page.evaluate("state.doc"), case_on_server(base, b)
    assert shown["id"] == b and shown["n_reviewed"] == 0
    assert shown["differential"] == server_b["differential"]
    assert page.locator("#review-diff tr[data-class=not_wbc] td.count").inner_text() == "0"


def test_a_case_of_only_nrbcs_and_platelets_shows_no_rate(review) -> None:
    """With no WBC counted a case's erythroblasts have no rate per 100 WBCs (null in the API since wbc 0.29.0): the
    page showed an empty cell, as for a class never seen. The platelets taken for WBCs are "not a WBC" (a case has no
    platelet class since wbc 0.30.0). A WBC class has no share either: it read "0.0" (wbc 0.32.0), where the case
    report and differential.csv give none."""
    import httpx

    page, base = review
    c = make_case(base, "no WBC", 46)
    cells = case_on_server(base, c)["cells"]
    for cell, label in zip(cells, ["erythroblast"] + ["not_wbc"] * (len(cells) - 1), strict=True):
        r = httpx.post(f"{base}/cases/{c}/cells/{cell['id']}/label", json={"label": label, "user": "Bo"}, timeout=30)
        assert r.status_code == 200
    page.reload()
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    open_case(page, c)
    row = page.locator("#review-diff tr[data-class=erythroblast] td").all_inner_texts()
    assert row[:3] == ["1", "n/a (no WBC counted)", ""], row
    for cls in ("lymphocyte", "neutrophil"):
        row = page.locator(f"#review-diff tr[data-class={cls}] td").all_inner_texts()
        assert row[:3] == ["0", "", ""], row
    caption = page.locator("#review-diff-caption").inner_text()
    assert caption.startswith("0 white cells counted") and "† per 100 white cells, outside the total" in caption
    page.click("#sign-off")  # the confirmation counts the WBCs, not every cell (wbc 0.28.0: "0 cells counted")
    assert "? 0 white cells counted, " in page.locator("#confirm-text").inner_text()


def test_the_differential_caption_says_how_many_counted_cells_were_reviewed(review) -> None:
    """The caption read "N white cells counted (reviewed calls)" whatever was reviewed (before wbc 0.36.0): of a case
    nobody had opened too. It says what the case report says (wbc.cases.report.counted_note), before and after a
    label."""
    from wbc.cases.report import counted_note

    page, base = review
    c = open_new_case(page, base, "counted note", 48, n_wbc=3)
    caption = page.locator("#review-diff-caption").inner_text()
    doc = case_on_server(base, c)
    assert "reviewed calls" not in caption and caption.startswith(counted_note(doc) + "; model's counts"), caption
    cell = next(x["id"] for x in doc["cells"] if x["label"] != "erythroblast")  # a counted cell
    page.click(f"#gallery [data-cell='{cell}']")
    page.keyboard.press("Enter")  # confirms its call
    page.wait_for_function("id => state.doc.cells.find((c) => c.id === id).reviewed", arg=cell)
    doc = case_on_server(base, c)
    assert doc["n_reviewed"] == 1
    assert page.locator("#review-diff-caption").inner_text().startswith(counted_note(doc) + "; model's counts")


def test_a_field_s_caption_says_what_became_of_the_cells_its_warning_speaks_of(review, served,
                                                                               classifier) -> None:  # noqa: F811
    """The Fields view's caption showed a warning as analysed ("... (platelet 1): each is counted in the class shown
    and flagged for review") beside the outline labelled "Not a WBC" (before wbc 0.36.0). It says, as the case report
    does (wbc.cases.report.since_reviewed), what became of the cell, at once after the label."""
    from test_cases import _field_with_cells
    from wbc.cases.store import create_case_from_fields
    from wbc.classify import outside_reason, outside_sentence

    page, base = review
    rgb, res = _field_with_cells([((40, 40, 140, 140), "neutrophil", 0.9, True),
                                  ((300, 300, 400, 400), "lymphocyte", 0.99, False)])
    res.cells[0].prediction.reasons.append(outside_reason("platelet", 0.96, chosen=False))
    res.warnings.append(outside_sentence({"platelet": 1}, 2, {"platelet"}))
    store = CaseStore.open(served[1])  # the server's store: a case made by `wbc cases create`, say
    c = create_case_from_fields(store, "warned field", [("f.png", rgb, res)], classifier)
    store.close()
    page.reload()
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    open_case(page, c)
    page.keyboard.press("f")
    caption = page.locator("#fields figcaption").inner_text()
    assert caption.endswith("each is counted in the class shown and flagged for review"), caption
    warned = next(x["id"] for x in case_on_server(base, c)["cells"] if x["model_label"] == "neutrophil")
    page.click(f"#fields g[data-cell='{warned}']")
    page.keyboard.press("9")  # Not a WBC
    page.wait_for_function("id => state.doc.cells.find((c) => c.id === id).reviewed", arg=warned)
    caption = page.locator("#fields figcaption").inner_text()
    assert caption.endswith(f"flagged for review; since reviewed: cell #{warned} marked Not a WBC by Ann"), caption


def test_a_label_at_the_field_s_right_edge_is_not_cut_off(review, served, classifier) -> None:  # noqa: F811
    """In the Fields view a cell's label began at its box's left and ran past the field's right edge, where the SVG cut
    it: "31 Neut…", "31 Not a…" (before wbc 0.36.0). Such a label ends within the field."""
    from test_cases import _field_with_cells
    from wbc.cases.store import create_case_from_fields

    page, _ = review
    rgb, res = _field_with_cells([((560, 103, 640, 210), "lymphocyte", 0.6, True),
                                  ((40, 40, 140, 140), "neutrophil", 0.99, False)])
    store = CaseStore.open(served[1])
    c = create_case_from_fields(store, "edge label", [("edge.png", rgb, res)], classifier)
    store.close()
    page.reload()
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    open_case(page, c)
    page.keyboard.press("f")
    boxes = page.evaluate("""() => [...document.querySelectorAll('#fields g[data-cell] text')].map((t) => {
        const b = t.getBBox(); return [t.textContent, b.x, b.x + b.width]; })""")
    assert len(boxes) == 2
    for text, left, right in boxes:
        assert left >= 0 and right <= 640, (text, left, right)
    assert next(left for text, left, _ in boxes if text.endswith("Neutrophil")) == pytest.approx(40, abs=1)


def test_a_five_part_case_s_caption_names_no_rate_per_100(chromium, classifier, tmp_path: Path) -> None:  # noqa: F811
    """A five-part case (`wbc serve --classes 5part`) has no erythroblast row, yet its differential's caption explained
    "† per 100 white cells, outside the total", a mark no row carried. The web page's caption and the case report
    name such rates only for rows they show; so does the review page."""
    app = create_app(classifier, ClassicalSegmenter(), max_upload_mb=10, store=tmp_path / "five.sqlite",
                     classes="5part")
    with live_server(app) as base:
        c = make_case(base, "five-part", 47)
        ctx = chromium.new_context(viewport={"width": 1400, "height": 1000})
        page = ctx.new_page()
        errors = watch(page, only=base)
        page.goto(base + "/review")
        page.wait_for_selector("body[data-ready=true]", timeout=15_000)
        open_case(page, c)
        assert page.locator("#review-diff tr[data-class=erythroblast]").count() == 0
        caption = page.locator("#review-diff-caption").inner_text()
        assert "white cells counted" in caption and "†" not in caption, caption
        assert caption.endswith("beside them. Platelets are not counted in smear analysis.")
        ctx.close()
    assert not errors, errors


def slow_labels(page, ms: int) -> None:
    """Each label request answered ``ms`` late: a loaded server, a hospital network."""
    page.evaluate("""ms => { const f = window.fetch; window.fetch = (u, o) => String(u).endsWith('/label')
        ? new Promise((res) => setTimeout(() => res(f(u, o)), ms)) : f(u, o); }""", ms)


def test_label_keys_pressed_faster_than_the_server_answers_each_label_their_own_cell(review) -> None:
    """A key pressed while the last label was saving was dropped without a word; the selection then moved on, and the
    reviewer's next key labelled the cell after the one it was meant for (before wbc 0.32.0). Each key now labels the
    cell selected when it is pressed, in order, the selection moving on at once, and the page shows what is saving."""
    page, base = review
    c = open_new_case(page, base, "fast keys", 48, n_wbc=4)
    ids, classes = page.evaluate("[state.order.slice(0, 3), state.doc.classes]")
    assert len(ids) == 3
    wanted = ["lymphocyte", "monocyte", "neutrophil"]
    slow_labels(page, 800)
    page.focus("#gallery .tile[aria-selected=true]")
    for label in wanted:  # at a reviewer's pace: each key before the last one's answer
        page.keyboard.press(str(classes.index(label) + 1))
    saving = page.evaluate("() => [!document.querySelector('#saving')?.hidden, "
                           "document.querySelector('#saving')?.textContent, "
                           "document.querySelectorAll('#gallery .tile.saving').length]")
    page.wait_for_function("() => !state.busy", timeout=15_000)
    page.wait_for_timeout(500)
    doc = case_on_server(base, c)
    assert [(x["cell_id"], x["new_label"]) for x in doc["corrections"]] == list(zip(ids, wanted, strict=True))
    shown = {x["id"]: x["label"] for x in page.evaluate("state.doc.cells")}
    assert [shown[i] for i in ids] == wanted
    assert saving[0] and saving[1].startswith(f"Saving cell {ids[0]} (Lymphocyte), cell {ids[1]} (Monocyte)")
    assert saving[2] == 3  # each cell given a label shows it is saving
    assert page.locator("#saving").is_hidden() and page.locator("#gallery .tile.saving").count() == 0


@pytest.mark.parametrize("width", [1001, 1280, 1920])
def test_the_differential_shows_the_models_counts_whole_at_desktop_widths(chromium, served, width: int) -> None:
    """The side column was 420 px and the table's numbers never wrap: a 200-cell case's table was 403 px in a 386 px
    panel, its Model column cut off ("11" for 118, nothing for 2) behind a scrollbar at every desktop width (before
    wbc 0.32.0). The rows here are the server's own (POST /differential), a wide case's counts."""
    base, _ = served
    c = make_case(base, f"wide counts {width}", 49)
    counts = {"neutrophil": 112, "lymphocyte": 52, "monocyte": 18, "eosinophil": 12, "basophil": 2, "ig": 4,
              "erythroblast": 112}
    model = {"neutrophil": 118, "lymphocyte": 49, "monocyte": 16, "eosinophil": 11, "basophil": 2, "ig": 6,
             "erythroblast": 110}
    ctx = chromium.new_context(viewport={"width": width, "height": 900})
    page = ctx.new_page()
    errors = watch(page, only=base)
    page.goto(f"{base}/review?case={c}")
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    edges = page.evaluate("""async ([counts, model]) => {
        const post = async (c) => (await (await fetch('/differential', { method: 'POST',
            headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ counts: c }) })).json());
        const d = await post(counts), m = await post(model);
        state.doc.differential = { rows: d.differential, total: d.total, excluded: { not_wbc: 13, unidentifiable: 1 } };
        state.doc.model_differential = { rows: m.differential, total: m.total, excluded: {} };
        renderDifferential();
        const t = document.getElementById('review-diff'), wrap = t.parentElement.getBoundingClientRect();
        return { wrap: wrap.right, scrolls: t.parentElement.scrollWidth - t.parentElement.clientWidth,
                 cells: [...t.querySelectorAll('tr > :last-child')].map((x) => x.getBoundingClientRect().right) };
    }""", [counts, model])
    shown = page.locator("#review-diff tbody tr td:last-child").all_inner_texts()
    ctx.close()
    assert edges["scrolls"] <= 0 and max(edges["cells"]) <= edges["wrap"] + 0.5, edges  # not scrolled away
    assert shown[:7] == [str(model[r]) for r in sorted(model)]  # basophil ... neutrophil, whole
    assert not errors, errors


def test_a_label_that_cannot_be_saved_sends_none_given_after_it_and_says_which(review) -> None:
    """Labels are saved in the order given; when one fails, those queued behind it are not sent (the case may have
    changed, the server may be gone): the page names each, and selects the cell that failed, never another."""
    page, base = review
    c = open_new_case(page, base, "queue fails", 50, n_wbc=4)
    ids, classes = page.evaluate("[state.order.slice(0, 3), state.doc.classes]")
    page.evaluate("""() => { const f = window.fetch; let n = 0; window.fetch = (u, o) => String(u).endsWith('/label')
        ? new Promise((res, rej) => setTimeout(() => (n++ ? res(f(u, o)) : rej(new TypeError('network down'))), 800))
        : f(u, o); }""")
    page.focus("#gallery .tile[aria-selected=true]")
    for label in ("lymphocyte", "monocyte", "neutrophil"):
        page.keyboard.press(str(classes.index(label) + 1))
    page.wait_for_function("() => !state.busy", timeout=15_000)
    status = page.locator("#review-status").inner_text()
    assert status.startswith("Not saved: no answer from the server (network down)"), status
    assert f"Not sent either: cell {ids[1]} (Monocyte), cell {ids[2]} (Neutrophil)" in status, status
    assert page.evaluate("state.sel") == ids[0] and page.locator("#saving").is_hidden()
    assert case_on_server(base, c)["corrections"] == []
    page.keyboard.press(str(classes.index("lymphocyte") + 1))  # the failed cell's key again: saved, on that cell
    page.wait_for_selector("#review-status:has-text('Lymphocyte')")
    assert [(x["cell_id"], x["new_label"]) for x in case_on_server(base, c)["corrections"]] == [(ids[0], "lymphocyte")]


def test_escape_closes_the_sign_off_confirmation(review) -> None:
    """The confirmation is an alertdialog; Escape did nothing (before wbc 0.32.0). It closes it, as Cancel does."""
    page, base = review
    open_new_case(page, base, "confirm escape", 58)
    page.click("#sign-off")
    assert page.locator("#confirm-box").is_visible()
    page.keyboard.press("Escape")
    assert page.locator("#confirm-box").is_hidden() and page.evaluate("state.confirming") is None
    assert page.evaluate("document.activeElement.id") == "sign-off"


def test_a_label_while_the_sign_off_confirmation_is_open_closes_it(review) -> None:
    """The confirmation kept its numbers while a menu click relabelled a cell, and its Sign off was then refused as if a
    colleague had changed the case (before wbc 0.32.0). The label closes it; asked again, it gives the new numbers."""
    page, base = review
    c = open_new_case(page, base, "confirm open", 51)
    page.click("#sign-off")
    assert "0 changed by review" in page.locator("#confirm-text").inner_text()
    label = next(x for x in ("lymphocyte", "monocyte") if x != page.evaluate("state.doc.cells[0].label"))
    page.click(f"#gallery [data-cell='{page.evaluate('state.doc.cells[0].id')}']")
    page.click(f"#label-menu button[data-label={label}]")
    assert page.locator("#confirm-box").is_hidden()  # closed: its numbers are no longer the case's
    page.wait_for_function("() => !state.busy")
    page.click("#sign-off")
    assert "1 changed by review" in page.locator("#confirm-text").inner_text()
    page.click("#confirm-sign-off")
    page.wait_for_selector("#signed-text:not([hidden])")
    assert case_on_server(base, c)["signed_by"] == "Ann"


def test_back_to_the_case_list_closes_the_case(review) -> None:
    """Back to /review left the last case on screen and open to labels under the list's address (before wbc 0.32.0)."""
    page, base = review
    a = make_case(base, "back A", 52)
    page.reload()
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    open_case(page, a)
    page.go_back()
    page.wait_for_function("() => location.search === ''")
    assert page.locator("#case").is_hidden() and page.evaluate("state.doc") is None
    page.keyboard.press("9")  # no case: no label
    page.wait_for_timeout(300)
    assert case_on_server(base, a)["corrections"] == []


def test_of_two_opens_clicked_in_a_row_the_last_one_is_shown(review) -> None:
    """On a slow link the first of two Opens clicked in a row replaced the second when its answer came last (before wbc
    0.32.0)."""
    page, base = review
    a, b = make_case(base, "race A", 59), make_case(base, "race B", 53)
    page.reload()
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    page.evaluate("""a => { const f = window.fetch; window.fetch = (u, o) => String(u) === `/cases/${a}`
        ? new Promise((res) => { window.releaseA = () => res(f(u, o)); }) : f(u, o); }""", a)
    page.click(f"button.open-case[data-case='{a}']")
    page.wait_for_function("() => typeof window.releaseA === 'function'")
    open_case(page, b)
    page.evaluate("window.releaseA()")
    page.wait_for_timeout(500)
    assert page.evaluate("state.doc.id") == b and page.url.endswith(f"?case={b}")
    assert page.locator("#case-heading").inner_text() == "Case race B"


def test_a_case_opened_signed_off_leaves_the_reviewer_box_free_for_a_new_case(chromium, served, tmp_path) -> None:
    """The Reviewer box was locked while a signed-off case was shown: a browser that opened one from a bookmark could
    not type a name, and a case it created had no creator (before wbc 0.32.0)."""
    import httpx

    base, _ = served
    c = make_case(base, "signed bookmark", 54)
    r = httpx.post(f"{base}/cases/{c}/sign-off", json={"user": "Bo"}, timeout=30)
    assert r.status_code == 200, r.text
    ctx = chromium.new_context(viewport={"width": 1400, "height": 1000})  # a new browser: no name remembered
    page = ctx.new_page()
    errors = watch(page, only=base)
    page.goto(f"{base}/review?case={c}")
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    assert page.locator("#case-status").inner_text().startswith("Signed off")
    assert page.locator("#reviewer").is_enabled()
    page.fill("#reviewer", "Cy")
    page.fill("#case-name", "from a signed one")
    field = tmp_path / "field.png"
    cv2.imwrite(str(field), synthetic_smear(n_wbc=2, seed=55)[0][:, :, ::-1])
    page.set_input_files("#case-files", str(field))
    page.click("#create-case")
    page.wait_for_selector("#cases-status:has-text('Case created')", timeout=90_000)
    page.wait_for_function("id => state.doc.id !== id", arg=c)  # said before the list reloads and the case shows
    new = page.evaluate("state.doc.id")
    ctx.close()
    assert case_on_server(base, new)["created_by"] == "Cy"
    assert not errors, errors


def test_the_case_list_counts_the_changes_a_label_makes(review) -> None:
    """The case list was loaded with the page only: after relabels its Changed read 2 beside the case header's 3
    (before wbc 0.32.0)."""
    page, base = review
    c = open_new_case(page, base, "list count", 56)
    page.focus("#gallery .tile[aria-selected=true]")
    page.keyboard.press("9")
    page.wait_for_selector("#review-status:has-text('Not a WBC')")
    changed = page.locator(f"#case-list tr:has(button[data-case='{c}']) td").nth(3).inner_text()
    assert changed == "1" and "· 1 changed ·" in page.locator("#case-meta").inner_text()


def test_the_top_3_gives_the_models_call_with_the_digits_of_its_flag(review) -> None:
    """"Model: Eosinophil (98.5 %)" over "Top 3: Eosinophil 99 %": the probabilities were rounded to whole percent, the
    very reading a flagged cell's confidence is kept from (before wbc 0.32.0)."""
    page, base = review
    open_new_case(page, base, "top 3", 57)
    page.evaluate("""() => { const c = state.doc.cells.find((x) => x.id === state.sel);
        Object.assign(c, { model_label: 'eosinophil', label: 'eosinophil', model_confidence: 0.985, model_review: true,
          model_probabilities: { eosinophil: 0.985, neutrophil: 0.0125, monocyte: 0.0025 } });
        state.doc.review_threshold = 0.9863; renderDetail(); }""")
    detail = page.locator("#cell-detail dd").all_inner_texts()
    assert detail[2] == "Eosinophil (98.5 %)", detail
    assert detail[3] == "Eosinophil 98.5 %, Neutrophil 1.3 %, Monocyte 0.3 %", detail


def test_leaving_while_labels_are_saving_asks_first(review) -> None:
    """A reload, a closed tab or a link followed while labels were waiting to be saved dropped them without a word
    (before wbc 0.34.0): the browser now asks first, and only then."""
    page, base = review
    c = open_new_case(page, base, "leave early", 49)
    held: list = []
    page.route("**/label", lambda route: held.append(route))  # a slow link: the label is not answered yet
    page.focus("#gallery .tile[aria-selected=true]")
    page.keyboard.press("9")  # not a WBC
    page.wait_for_function("() => state.saving !== null")
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.type), d.dismiss()))  # "Leave site?" answered Cancel
    with contextlib.suppress(Exception):  # the page went away: no question was asked
        page.evaluate("() => location.reload()")
    page.wait_for_timeout(500)
    assert dialogs == ["beforeunload"]
    assert page.evaluate("state.doc && state.doc.id") == c  # still the page, its label still on its way
    for route in held:
        route.continue_()
    page.wait_for_function("() => !state.busy && state.saving === null", timeout=15_000)
    assert case_on_server(base, c)["n_reviewed"] == 1  # the label held, then saved
    page.reload()  # nothing unsaved: no question
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    assert dialogs == ["beforeunload"]


def test_a_case_keeps_a_file_name_with_a_quote(review, tmp_path: Path) -> None:
    """A browser sends a " in a file name as %22: the case, its report and its export named the field a%22b.png
    (before wbc 0.34.0). The page sends the chosen names beside the files."""
    page, base = review
    path = tmp_path / 'field "1".png'
    cv2.imwrite(str(path), synthetic_smear(n_wbc=2, seed=50)[0][:, :, ::-1])
    page.fill("#case-name", "quoted name")
    page.set_input_files("#case-files", str(path))
    page.click("#create-case")
    page.wait_for_selector("#case:not([hidden])", timeout=90_000)
    assert [f["image"] for f in page.evaluate("state.doc.fields")] == ['field "1".png']
    assert [f["image"] for f in case_on_server(base, page.evaluate("state.doc.id"))["fields"]] == ['field "1".png']


def test_a_new_case_with_a_field_moved_after_it_was_chosen_is_refused_naming_it(review, tmp_path: Path) -> None:
    """Chromium cannot read a chosen file moved or rewritten since it was chosen: New case said "Not created: no answer
    from the server (Failed to fetch)", the file unnamed (before wbc 0.37.0)."""
    page, _ = review
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for i, p in enumerate(paths):
        cv2.imwrite(str(p), synthetic_smear(n_wbc=2, seed=60 + i)[0][:, :, ::-1])
    page.fill("#case-name", "moved field")
    page.set_input_files("#case-files", [str(p) for p in paths])
    paths[1].rename(tmp_path / "b moved.png")
    page.click("#create-case")
    page.wait_for_selector("#cases-status:has-text('Not created')", timeout=30_000)
    assert page.locator("#cases-status").inner_text() == ("Not created: b.png: could not be read from disk (moved, "
                                                          "deleted or changed since it was chosen): choose it again.")
    assert page.locator("#create-case").is_enabled()
