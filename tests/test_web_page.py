"""The web page in a real browser: Debian chromium driven by Playwright against a real uvicorn server.

Skipped with a reason when chromium or Playwright is missing; Playwright never downloads a browser here
(the system chromium is launched by path) and the page only ever talks to 127.0.0.1.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from browser import BROWSER_MARKS, live_server, watch

pytestmark = BROWSER_MARKS
pytest.importorskip("uvicorn")

from test_serve import classifier, model_path  # noqa: E402, F401  (session fixtures)
from wbc.segment.classical import ClassicalSegmenter  # noqa: E402
from wbc.serve.app import create_app  # noqa: E402
from wbc.synthetic import synthetic_cell  # noqa: E402


def draw_smear(seed: int = 0) -> np.ndarray:
    """A 480x360 field: pale pink background, red discs with pale centres, one WBC (purple lobed
    nucleus in lighter cytoplasm) in the middle."""
    rng = np.random.default_rng(seed)
    h, w = 360, 480
    img = np.full((h, w, 3), (236, 214, 220), np.uint8)
    wbc = (240, 180)
    for _ in range(60):
        x, y = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        if np.hypot(x - wbc[0], y - wbc[1]) < 70:
            continue
        cv2.circle(img, (x, y), 22, (205, 120, 130), -1, cv2.LINE_AA)
        cv2.circle(img, (x, y), 8, (220, 160, 168), -1, cv2.LINE_AA)
    cv2.circle(img, wbc, 42, (200, 180, 215), -1, cv2.LINE_AA)
    for dx, dy in ((-12, -6), (10, -10), (4, 12)):
        cv2.circle(img, (wbc[0] + dx, wbc[1] + dy), 15, (110, 60, 150), -1, cv2.LINE_AA)
    return cv2.GaussianBlur(img, (0, 0), 1.0)


@pytest.fixture(scope="module")
def base_url(classifier) -> Iterator[str]:  # noqa: F811
    with live_server(create_app(classifier, ClassicalSegmenter(), max_upload_mb=5)) as base:
        yield base


@pytest.fixture()
def page(chromium, base_url: str) -> Iterator[object]:
    ctx = chromium.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    pg = ctx.new_page()
    errors = watch(pg, only=base_url)  # the page must never reach beyond the server (offline use)
    pg.goto(base_url + "/")
    pg.wait_for_selector("body[data-ready=true]", timeout=15_000)
    yield pg
    ctx.close()
    assert not errors, errors


def test_smear_upload_shows_annotated_image_table_and_differential(page, tmp_path: Path) -> None:
    p = tmp_path / "smear field.png"
    cv2.imwrite(str(p), draw_smear()[:, :, ::-1])
    page.set_input_files("#file-input", str(p))
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)

    img = page.locator("img.annotated")
    assert img.count() == 1 and img.is_visible()
    assert img.evaluate("i => i.complete && i.naturalWidth") == 480
    rows = page.locator("table.cells tbody tr")
    assert rows.count() == 1
    label = rows.first.locator("td.label").inner_text().strip().lower()
    assert label  # a class name, shown in words
    review = rows.first.get_attribute("class") == "review"
    assert (rows.first.locator(".badge.review").count() == 1) == review
    assert page.locator("#diff-table tbody tr").count() == len(page.evaluate("state.meta.smear_label_set"))
    assert "1 cell" in page.locator("#diff-caption").inner_text()
    assert page.locator("#errors").is_hidden()
    assert page.locator("#sign-out").is_hidden()  # no keys, no session: nothing to sign out of

    rows.first.focus()  # selecting a row outlines the cell on the image
    assert page.locator(".highlight").is_visible()

    with page.expect_download() as dl:
        page.click("#dl-json")
    doc = json.loads(Path(dl.value.path()).read_text())
    assert doc["results"][0]["image"] == "smear field.png" and doc["results"][0]["n_cells"] == 1
    assert "annotated_png" not in doc["results"][0]
    calibrated = "colours calibrated" in page.locator(".card-meta").first.inner_text()
    assert calibrated == (doc["results"][0]["colour_calibration"] is not None)
    with page.expect_download() as dl:
        page.click("#dl-cells")
    cells = list(csv.DictReader(Path(dl.value.path()).read_text().splitlines()))
    shown = doc["results"][0]["cells"][0]["review_reasons"]  # a synthetic cell: flagged, with its reasons
    assert len(cells) == 1 and shown and cells[0]["review_reasons"] == "; ".join(shown)
    with page.expect_download() as dl:
        page.click("#dl-diff")
    lines = Path(dl.value.path()).read_text().splitlines()
    assert lines[0] == "image,class,count,total,percent,ci95_low,ci95_high,unit"  # differential.csv's, since 0.33.0
    assert any(line.startswith("ALL,") for line in lines)


def test_single_cell_mode_and_bad_files_are_reported(page, tmp_path: Path) -> None:
    paths = []
    for i, label in enumerate(["lymphocyte", "neutrophil"]):
        paths.append(tmp_path / f"{label}.png")
        cv2.imwrite(str(paths[-1]), synthetic_cell(label, 96, seed=i)[:, :, ::-1])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    page.check("input[name=mode][value=cells]")
    assert page.locator("#opt-annotated").is_hidden()
    page.set_input_files("#file-input", [str(p) for p in [*paths, bad]])
    assert page.locator("#run-button").inner_text() == "Classify"
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)

    rows = page.locator("table.cells tbody tr")
    assert rows.count() == 2
    assert page.locator("table.cells img.thumb").count() == 2
    assert page.locator("#errors").is_visible()
    assert "broken.jpg" in page.locator("#error-list").inner_text()
    assert "2 of 3" in page.locator("#status").inner_text()


def smear_file(tmp_path: Path, name: str = "field.png", seed: int = 0) -> Path:
    """A field written as ``name``; fields of one run need seeds of their own: a copy is analysed once (since wbc
    0.36.0)."""
    p = tmp_path / name
    cv2.imwrite(str(p), draw_smear(seed)[:, :, ::-1])
    return p


def test_one_run_at_a_time_even_when_the_mode_is_switched_meanwhile(page, tmp_path: Path) -> None:
    page.set_input_files("#file-input", str(smear_file(tmp_path)))
    # hold /analyze until the test lets it go (a large field takes a while)
    page.evaluate("""() => { const f = window.fetch; window.held = [];
        window.fetch = (u, o) => String(u).startsWith('/analyze')
          ? new Promise((res) => window.held.push(() => res(f(u, o)))) : f(u, o); }""")
    page.click("#run-button")
    page.wait_for_function("() => window.held.length === 1")
    page.check("input[name=mode][value=cells]")  # ordinary use while waiting
    page.check("input[name=mode][value=smear]")
    assert page.locator("#run-button").is_disabled()
    page.evaluate("() => { run(); }")  # a second start (Enter in the form) is ignored too
    page.evaluate("window.held.splice(0).forEach((go) => go())")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
    assert page.evaluate("window.held.length") == 0
    assert page.locator("#cards article").count() == 1
    assert "1 of 1" in page.locator("#status").inner_text()
    assert "1 cell" in page.locator("#diff-caption").inner_text()


def test_a_file_chosen_twice_is_analysed_and_counted_once(page, tmp_path: Path) -> None:
    """The smear mode posted a field downloaded twice (``field (1).png``) to /analyze twice and pooled its cells twice,
    where `wbc analyze` counts it once (wbc 0.35.0); the single-cell mode sent copies in other requests (over 200
    files) unseen by /classify. The page keeps each image once, as the command line keeps it, and names the copy."""
    original, other = tmp_path / "field.bmp", tmp_path / "other.bmp"  # BMP: the same size, other bytes: both kept
    for path, seed in ((original, 0), (other, 1)):
        cv2.imwrite(str(path), draw_smear(seed)[:, :, ::-1])
    copy = tmp_path / "field (1).bmp"
    copy.write_bytes(original.read_bytes())
    assert original.stat().st_size == other.stat().st_size
    page.set_input_files("#file-input", [str(copy), str(original), str(other)])
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
    assert page.locator("#cards article").count() == 2  # field.bmp and the other, not the copy
    assert "field (1).bmp" not in page.locator("#cards").inner_text()
    assert page.locator("#note-list").inner_text() == ("field (1).bmp: the same image as another input, analysed and "
                                                       "counted once (field.bmp has the same bytes)")
    assert page.locator("#errors").is_hidden()  # every file was analysed: no "could not be analysed" box
    cells = []
    for i, label in enumerate(["lymphocyte", "neutrophil"]):
        cells.append(tmp_path / f"{label}.png")
        cv2.imwrite(str(cells[-1]), synthetic_cell(label, 96, seed=i)[:, :, ::-1])
    (tmp_path / "lymphocyte (1).png").write_bytes(cells[0].read_bytes())
    page.check("input[name=mode][value=cells]")
    page.set_input_files("#file-input", [str(p) for p in [*cells, tmp_path / "lymphocyte (1).png"]])
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
    assert page.locator("table.cells tbody tr").count() == 2
    assert "lymphocyte (1).png: the same image as another input, classified and counted once" in page.locator(
        "#note-list").inner_text()
    assert page.locator("#errors").is_hidden()
    with page.expect_download() as dl:
        page.click("#dl-json")
    doc = json.loads(Path(dl.value.path()).read_text())  # as /classify gives copies: not among the errors
    assert doc["errors"] == [] and doc["copies"] == [{"filename": "lymphocyte (1).png", "same_as": "lymphocyte.png"}]
    assert doc["warnings"] == [page.locator("#note-list li").inner_text()]


def test_a_copy_of_a_file_that_could_not_be_analysed_is_listed_with_its_problem(page, tmp_path: Path) -> None:
    """Two empty files (an interrupted transfer) or two downloads cut at the same byte: the page called the second
    "classified and counted once" before knowing the first could not be read, where `wbc classify` and /classify list
    each with the problem (wbc.batch.with_failed_copies)."""
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), synthetic_cell("lymphocyte", 96, seed=0)[:, :, ::-1])
    cut = good.read_bytes()[:300]
    for name, data in (("cell.png", cut), ("cell (1).png", cut), ("a.png", b""), ("b.png", b"")):
        (tmp_path / name).write_bytes(data)
    names = ["good.png", "cell.png", "cell (1).png", "a.png", "b.png"]
    page.check("input[name=mode][value=cells]")
    page.set_input_files("#file-input", [str(tmp_path / n) for n in names])
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
    listed = page.locator("#error-list li").all_inner_texts()
    assert page.locator("#notes").is_hidden() and not any("the same image" in line for line in listed), listed
    assert listed[-2:] == ["a.png: file is empty", "b.png: file is empty"]
    cell = next(line for line in listed if line.startswith("cell.png: "))
    assert listed[listed.index(cell) + 1] == "cell (1).png" + cell[len("cell.png"):]  # after it, as errors.csv lists
    page.check("input[name=mode][value=smear]")  # the smear mode, its copies' lines the same way
    field = tmp_path / "field.png"
    cv2.imwrite(str(field), draw_smear()[:, :, ::-1])
    page.set_input_files("#file-input", [str(field), str(tmp_path / "a.png"), str(tmp_path / "b.png")])
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
    assert page.locator("#error-list li").all_inner_texts() == ["a.png: file is empty", "b.png: file is empty"]
    assert page.locator("#notes").is_hidden()


def test_no_answer_for_the_pooled_differential_ends_the_run_with_a_message(page, tmp_path: Path) -> None:
    page.route("**/differential", lambda route: route.abort())  # the server stopped at that moment
    page.set_input_files("#file-input", str(smear_file(tmp_path)))
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=30_000)
    assert page.locator("#run-button").is_enabled() and page.locator("#progress-wrap").is_hidden()
    assert "pooled differential could not be computed" in page.locator("#error-list").inner_text()
    assert page.locator("#diff-table tbody tr").count() == 0


def test_a_second_run_shows_and_downloads_none_of_the_first_runs_pooled_numbers(page, tmp_path: Path) -> None:
    """A new run cleared the cards but not the summary tiles nor the pooled differential, and the downloads stayed
    live: until its last field was done the page showed this run's cards under the last run's tiles and differential,
    and **Download differential CSV** wrote this run's fields followed by the last run's ``ALL`` rows (wbc 0.31.0)."""
    page.set_input_files("#file-input", [str(smear_file(tmp_path, f"{i}.png", i)) for i in range(3)])  # run 1: 3 fields
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
    first = page.locator("#diff-caption").inner_text()
    assert "pooled over 3 fields" in first
    page.evaluate("""() => { const f = window.fetch; window.held = [];
        window.fetch = (u, o) => String(u).startsWith('/analyze')
          ? new Promise((res) => window.held.push(() => res(f(u, o)))) : f(u, o); }""")  # run 2: /analyze held
    page.set_input_files("#file-input", [str(smear_file(tmp_path, "a.png", 3)), str(smear_file(tmp_path, "b.png", 4))])
    page.click("#run-button")
    page.wait_for_function("() => window.held.length === 1")
    page.evaluate("window.held.splice(0).forEach((go) => go())")
    page.wait_for_function("() => window.held.length === 1")  # the first field answered, the second asked for
    assert page.locator("#results").is_visible() and page.locator("#cards article").count() == 1
    assert page.locator("#diff-caption").inner_text() != first
    assert page.locator("#stats .stat").count() == 0 and page.locator("#diff-table tbody tr").count() == 0
    assert all(page.locator(b).is_disabled() for b in ("#dl-json", "#dl-cells", "#dl-diff"))
    page.evaluate("window.held.splice(0).forEach((go) => go())")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
    assert "pooled over 2 fields" in page.locator("#diff-caption").inner_text()
    with page.expect_download() as dl:
        page.click("#dl-diff")
    rows = list(csv.DictReader(Path(dl.value.path()).read_text().splitlines()))
    assert sorted({r["image"] for r in rows}) == ["ALL", "a.png", "b.png"]
    pooled = {r["class"]: int(r["count"]) for r in rows if r["image"] == "ALL"}
    fields = {c: sum(int(r["count"]) for r in rows if r["image"] != "ALL" and r["class"] == c) for c in pooled}
    assert pooled == fields


CSV_VALUES = ["=1+2.jpg", "@SUM(1+1).jpg", "+cmd", "-2+3", "\tx", "\rx", "'=x", "''@x", "'-scan.png", "-0.5", "+1e5",
              "-1_000", " -3 ", "\t5", "-.5", "-5.", "-inf", "-nan", "-1e999", "-0x10", "-", "=", "cell_1.png", "ALL",
              "lymphocyte", "a,b", 'say "hi"', "", "\u00e9=1"]


def test_csv_cells_are_neutralised_as_the_library_does(page, tmp_path: Path) -> None:
    from wbc.formats import neutralise

    line = page.evaluate("vals => csvLine([...vals, 3, -1, 0.25, null])", CSV_VALUES)
    assert next(csv.reader([line])) == [str(neutralise(v)) for v in CSV_VALUES] + ["3", "-1", "0.25", ""]

    # and the downloads themselves: a file name that a spreadsheet would run
    page.set_input_files("#file-input", str(smear_file(tmp_path, "@SUM(1+1).png")))
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
    for button in ("#dl-cells", "#dl-diff"):
        with page.expect_download() as dl:
            page.click(button)
        rows = list(csv.reader(Path(dl.value.path()).read_text().splitlines()))
        assert rows[1][0] == "'@SUM(1+1).png", (button, rows[1])


def test_cells_with_the_same_file_name_each_show_their_own_image(page, tmp_path: Path) -> None:
    paths = []
    for i, (folder, name, label, size) in enumerate([("a", "cell_001.png", "neutrophil", 96),
                                                     ("b", "cell_001.png", "eosinophil", 120),
                                                     ("c", 'odd "name".png', "lymphocyte", 80)]):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / name)
        cv2.imwrite(str(paths[-1]), synthetic_cell(label, size, seed=i)[:, :, ::-1])
    page.check("input[name=mode][value=cells]")
    page.set_input_files("#file-input", [str(p) for p in paths])
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
    assert page.locator("table.cells tbody tr").count() == 3
    page.wait_for_function("[...document.querySelectorAll('img.thumb')].every((i) => i.complete)")
    widths = page.eval_on_selector_all("table.cells tbody tr",
                                       "rows => rows.map((r) => { const i = r.querySelector('img.thumb'); "
                                       "return i ? i.naturalWidth : null; })")
    assert widths == [96, 120, 80]  # each row its own file, in upload order


def test_a_server_answering_five_classes_shows_only_those(chromium, classifier, tmp_path: Path) -> None:  # noqa: F811
    """Only the five rows, and, since wbc 0.31.0, a caption that names no rate per 100 white cells: it said
    "erythroblasts and platelets per 100 white cells" (smear mode: "erythroblasts") beside five rows, none of them."""
    cell = tmp_path / "cell.png"
    cv2.imwrite(str(cell), synthetic_cell("lymphocyte", 96, seed=3)[:, :, ::-1])
    with live_server(create_app(classifier, ClassicalSegmenter(), classes="5part")) as base:  # wbc serve --classes
        ctx = chromium.new_context()
        pg = ctx.new_page()
        errors = watch(pg, only=base)
        pg.goto(base + "/")
        pg.wait_for_selector("body[data-ready=true]", timeout=15_000)
        assert "5 of 8 classes" in pg.locator("#mi-model").inner_text()
        pg.check("input[name=mode][value=cells]")
        pg.set_input_files("#file-input", str(cell))
        pg.click("#run-button")
        pg.wait_for_selector("#status:has-text('Done')", timeout=60_000)
        shown = pg.eval_on_selector_all("#diff-table tbody th", "ths => ths.map((th) => th.innerText)")
        captions = [pg.locator("#diff-caption").inner_text()]
        pg.check("input[name=mode][value=smear]")
        analyse_one_field(pg, tmp_path)
        captions.append(pg.locator("#diff-caption").inner_text())
        ctx.close()
    assert sorted(shown) == ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]
    for caption in captions:
        assert "per 100 white cells" not in caption and "percent of the white cells with an exact" in caption, caption
    assert not errors, errors


def called(page, labels: list[str]) -> None:
    """The server's /analyze answers with their cells called ``labels`` (copies of the field's first cell): the
    calls a real model makes on a field of NRBCs or platelets, which a synthetic smear does not give. The pooled
    differential is still the server's own (POST /differential)."""
    page.evaluate("""labels => { const f = window.fetch;
        window.fetch = async (u, o) => {
          const resp = await f(u, o);
          if (!String(u).startsWith('/analyze') || !resp.ok) return resp;
          const body = await resp.json();
          body.cells = labels.map((label, i) => ({ ...body.cells[0], id: i + 1, label }));
          body.n_cells = labels.length;
          return new Response(JSON.stringify(body), { status: 200, headers: { 'Content-Type': 'application/json' } });
        }; }""", labels)


def analyse_one_field(page, tmp_path: Path) -> None:
    page.set_input_files("#file-input", str(smear_file(tmp_path)))
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
    assert page.locator("#errors").is_hidden(), page.locator("#error-list").inner_text()


def diff_cells(page, label: str) -> list[str]:
    return page.locator(f"#diff-table tbody tr:has(th:text-is('{label}')) td").all_inner_texts()


def test_a_field_of_only_nrbcs_and_platelets_shows_no_rate(page, tmp_path: Path) -> None:
    """With no WBC counted the API gives an erythroblast's or platelet's rate per 100 WBCs as null (since wbc
    0.29.0): the page read ``d.percent.toFixed`` and showed no differential at all. A WBC class has no share either:
    the table read "0.0 %, 0.0–100.0 %" under "there are no percentages", and the differential CSV wrote 0, 0, 100
    where ``wbc analyze``'s differential.csv leaves them empty (before wbc 0.32.0); its rows are the same now."""
    from collections import Counter

    from wbc.formats import write_differential_csv

    called(page, ["erythroblast", "erythroblast", "platelet"])
    analyse_one_field(page, tmp_path)
    assert diff_cells(page, "Erythroblast")[:3] == ["2", "n/a (no WBC counted)", ""]
    assert diff_cells(page, "Platelet")[:3] == ["1", "n/a (no WBC counted)", ""]
    assert diff_cells(page, "Lymphocyte")[:3] == ["0", "", ""]
    assert page.locator("#diff-table tbody .bar").count() == 0  # no 0-100 % whisker drawn either
    assert "3 cells, 0 white cells among them" in page.locator("#diff-caption").inner_text()
    assert page.locator("#diff-note").inner_text().startswith("No white cell counted")
    with page.expect_download() as dl:
        page.click("#dl-diff")
    got = list(csv.reader(Path(dl.value.path()).read_text().splitlines()))
    labels = page.evaluate("state.runs[0].data.cells.map((c) => c.label)")
    write_differential_csv(tmp_path / "differential.csv", [{"image": "x", "counts": Counter(labels)}],
                           [r[1] for r in got[1:] if r[0] == "ALL"])  # what wbc analyze writes for these cells
    expected = list(csv.reader((tmp_path / "differential.csv").read_text().splitlines()))
    assert [r for r in got if r[0] in ("image", "ALL")] == [r for r in expected if r[0] in ("image", "ALL")]
    assert all(r[4:7] == ["", "", ""] for r in got[1:] if r[3] == "0")  # a field's own rows too, if it has no WBC


def test_a_rate_per_100_wbcs_is_drawn_and_said_in_its_unit(page, tmp_path: Path) -> None:
    """9 platelets beside 4 WBCs: the bar's fill was 225 % of its width and a screen reader heard "225.0 %, 95 % CI
    62.8 % to 100.0 %", the interval cut at 100 (wbc 0.28.0)."""
    from wbc.counts import per_100_interval

    called(page, ["platelet"] * 9 + ["lymphocyte"] * 4)
    analyse_one_field(page, tmp_path)
    from wbc.counts import fixed

    lo, hi = (fixed(float(fixed(100 * v, 4))) for v in per_100_interval(9, 4))  # the API's 4 decimals, half up
    assert diff_cells(page, "Platelet")[:3] == ["9", "225.0 /100 WBC", f"{lo}–{hi} /100 WBC"]  # the unit said
    bar = page.locator("#diff-table tbody tr:has(th:text-is('Platelet')) .bar")
    said = bar.get_attribute("aria-label")
    assert f"225.0 per 100 white cells, 95 % CI {lo} to {hi} per 100 white cells" in said, said
    assert "%" not in said.replace("95 % CI", "")
    widths = bar.evaluate("b => [b.offsetWidth, b.querySelector('.fill').offsetWidth, b.querySelector('.ci').offsetLeft"
                          " + b.querySelector('.ci').offsetWidth]")
    assert widths[1] <= widths[0] and widths[2] <= widths[0] + 1, widths
    lymph = page.locator("#diff-table tbody tr:has(th:text-is('Lymphocyte')) .bar").get_attribute("aria-label")
    assert lymph.startswith("Lymphocyte 100.0 %, 95 % CI")  # a share of the WBCs keeps its percent


def test_the_few_cells_note_counts_the_wbcs(page, tmp_path: Path) -> None:
    """120 platelets and 4 lymphocytes: the note's "Only N cells" threshold counted every cell, so 4 WBCs read as
    enough for a differential (wbc 0.28.0)."""
    called(page, ["platelet"] * 120 + ["lymphocyte"] * 4)
    analyse_one_field(page, tmp_path)
    assert page.locator("#diff-note").inner_text().startswith("Only 4 white cells counted: the intervals are wide.")
    assert "124 cells, 4 white cells among them;" in page.locator("#diff-caption").inner_text()


def test_single_cells_unlike_the_training_data_are_said_so(page, base_url: str, tmp_path: Path) -> None:
    """`/analyze`'s out-of-distribution sentence was shown above a field's cells, but `/classify` gave none, so a page
    of another lab's single cells showed a differential without it (wbc 0.29.0)."""
    import httpx

    paths = [tmp_path / "lymphocyte.png", tmp_path / "green.png"]
    cv2.imwrite(str(paths[0]), synthetic_cell("lymphocyte", 96, seed=0)[:, :, ::-1])
    green = np.full((96, 96, 3), (20, 200, 20), np.int16) + np.random.default_rng(0).integers(-6, 7, (96, 96, 3))
    cv2.imwrite(str(paths[1]), green.astype(np.uint8)[:, :, ::-1])  # nothing like a stained cell's colours
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    expected = httpx.post(f"{base_url}/classify", files=files, timeout=60).json()["warnings"]
    assert expected and "look unlike the model's training data" in expected[0]
    page.check("input[name=mode][value=cells]")
    page.set_input_files("#file-input", [str(p) for p in paths])
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
    assert page.locator(".image-card .warning").all_inner_texts() == [f"Note: {expected[0]}"]


def test_a_smear_differential_has_no_platelet_row(page, tmp_path: Path) -> None:
    """Smear analysis never answers "platelet", yet the pooled differential read "Platelet 0 0.0 /100 WBC 0.0-532.5",
    a measured-looking rate (wbc 0.29.0): no such row, and the caption says platelets are not counted. Single-cell
    mode, where a crop may be a platelet, keeps it."""
    analyse_one_field(page, tmp_path)
    shown = page.eval_on_selector_all("#diff-table tbody th", "ths => ths.map((th) => th.innerText.trim())")
    assert "Platelet" not in shown and "Erythroblast" in shown
    caption = page.locator("#diff-caption").inner_text()
    assert "Platelets are not counted in smear analysis" in caption and "platelets per 100" not in caption
    cell = tmp_path / "cell.png"
    cv2.imwrite(str(cell), synthetic_cell("lymphocyte", 96, seed=3)[:, :, ::-1])
    page.check("input[name=mode][value=cells]")
    page.set_input_files("#file-input", str(cell))
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
    shown = page.eval_on_selector_all("#diff-table tbody th", "ths => ths.map((th) => th.innerText.trim())")
    assert "Platelet" in shown


def test_the_page_rounds_and_shows_confidences_as_the_reports_do(page) -> None:
    """The page rounded with toFixed (the binary value, so 0.15 read 0.1; a half up, so 31.25 read 31.3) and the
    reports with Python's format (a half to even: 31.2): the same differential differed on screen and on paper
    (wbc 0.29.0). common.js's fixed, confidenceText and thresholdText give wbc.counts.fixed's and wbc.formats' text."""
    from decimal import Decimal

    from wbc.counts import fixed
    from wbc.formats import confidence_text, threshold_text

    values = [31.25, 6.25, 0.15, 2.675, 12.5, 37.5, 18.75, 0.05, 0.0, 99.95, 100.0, 52.6515, 0.1489, 225.0, 1e-5,
              -0.25, 40.2256, 11.0193, 58.6588]
    for digits in (0, 1, 2):
        got = page.evaluate("([vs, d]) => vs.map((v) => fixed(v, d))", [values, digits])
        assert got == [fixed(v, digits) for v in values], digits
    thr = 0.9863332509994507
    confs = [0.9854, 0.9863, 0.9864, 0.9996, 0.998, 1.0, 0.5, 0.98612, 0.7634]
    got = page.evaluate("([cs, t]) => cs.map((c) => confidenceText(c, t))", [confs, thr])
    assert got == [confidence_text(c, thr, 1, 100) for c in confs]
    assert got[:2] == ["98.5", "98.630"]  # 0.9854 under 0.9863 is not "99", nor 0.9863 above it "98.6"
    # nor one of 0.98597 "98.60" under a threshold shown as 98.6 (compared as values), nor a rounded 0.986 "98.600000"
    confs = [0.98597, 0.98604, 0.9859723448753357, 0.985972, 0.986, 0.98600000143]
    for digits in (0, 1, 2):
        got = page.evaluate("([cs, t, d]) => cs.map((c) => confidenceText(c, t, d))", [confs, thr, digits])
        assert got == [confidence_text(c, thr, digits, 100) for c in confs], digits
        assert all(Decimal(g) != Decimal("98.6") for g in got[:4]), got
    assert got[:5] == ["98.597", "98.604", "98.597", "98.597", "98.60"]
    got = page.evaluate("([cs, t]) => cs.map((c) => confidenceText(c, t, 2, 1))", [confs, thr])
    assert got == [confidence_text(c, thr) for c in confs] and got[0] == "0.98597"
    thresholds = [thr, 0.99, 0.5, 0.9999, 0.995]
    got = page.evaluate("ts => ts.map((t) => thresholdText(t))", thresholds)
    assert got == [threshold_text(t, 1, 100) for t in thresholds] and got[0] == "98.6"


def test_the_review_threshold_reads_with_the_digits_a_confidence_has(chromium, classifier, tmp_path: Path  # noqa: F811
                                                                      ) -> None:
    """A model's threshold of 0.9863 read "Review below 99 % confidence" over a cell of 98.5 % flagged and one of
    98.6 % not (wbc 0.29.0): it reads 98.6 %, in the header and beside the results."""
    import copy
    import dataclasses

    strict = copy.copy(classifier)
    strict.info = dataclasses.replace(classifier.info, review_threshold=0.9863332509994507)
    with live_server(create_app(strict, ClassicalSegmenter())) as base:
        ctx = chromium.new_context()
        pg = ctx.new_page()
        errors = watch(pg, only=base)
        pg.goto(base + "/")
        pg.wait_for_selector("body[data-ready=true]", timeout=15_000)
        header = pg.locator("#mi-threshold").inner_text()
        analyse_one_field(pg, tmp_path)
        tile = pg.locator(".stat:has-text('Review if confidence below') .value").inner_text()
        ctx.close()
    assert header == "98.6 % confidence" and tile == "98.6 %"
    assert not errors, errors


def test_a_run_that_analyses_nothing_keeps_the_last_results(page, tmp_path: Path) -> None:
    """A run whose every file failed (unreadable, or a server gone) cleared the last run's cards, differential and
    downloads before it had anything to show, and then showed nothing (before wbc 0.34.0)."""
    analyse_one_field(page, tmp_path)
    caption, rows = page.locator("#diff-caption").inner_text(), page.locator("#diff-table tbody tr").count()
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 50)
    page.set_input_files("#file-input", str(bad))
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('No file')", timeout=60_000)
    said = page.locator("#error-list").inner_text()
    assert "broken.png" in said and "the results below are those of the run before" in said
    assert page.locator("#results").is_visible() and page.locator("#cards article").count() == 1
    assert page.locator("#diff-caption").inner_text() == caption
    assert page.locator("#diff-table tbody tr").count() == rows
    assert page.locator("#stats .stat").count() == 4
    with page.expect_download() as dl:
        page.click("#dl-json")  # the downloads are the run shown's, its errors (none) too
    doc = json.loads(Path(dl.value.path()).read_text())
    assert [r["image"] for r in doc["results"]] == ["field.png"] and doc["errors"] == [] and doc["differential"]


def test_a_refused_pooled_differential_is_said(page, tmp_path: Path) -> None:
    """A 4xx/5xx from POST /differential (a keyed server's rate limit: the run's own requests use up the key's
    bucket) was taken for no rows: an empty differential under a caption and a note, and no error (before wbc
    0.34.0)."""
    body = json.dumps({"error": "rate_limited", "detail": "more than 5 requests a minute with this key; slow down",
                       "errors": []})
    page.route("**/differential", lambda r: r.fulfill(status=429, content_type="application/json", body=body))
    page.set_input_files("#file-input", str(smear_file(tmp_path)))
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
    assert page.locator("#error-list").inner_text() == ("The pooled differential could not be computed: the server "
                                                        "answered (429: more than 5 requests a minute with this key; "
                                                        "slow down).")
    assert page.locator("#diff-table tbody tr").count() == 0 and page.locator("#stats .stat").count() == 0
    assert page.locator("#diff-caption").inner_text() == "" and page.locator("#diff-note").inner_text() == ""


def test_single_cells_refused_as_a_batch_named_and_the_json_keeps_warnings_and_errors(page, tmp_path: Path) -> None:
    """A request of several cells refused whole (429, 503, 413) was blamed on its first file alone; the JSON download
    left out /classify's warnings and the files that could not be read; and a " in a file name read %22, as the
    browser sends it, on the page and in the downloads (before wbc 0.34.0)."""
    paths = [tmp_path / "lymphocyte.png", tmp_path / 'odd "name".png', tmp_path / "green.png"]
    for i, (p, label) in enumerate(zip(paths[:2], ["lymphocyte", "neutrophil"], strict=True)):
        cv2.imwrite(str(p), synthetic_cell(label, 96, seed=i)[:, :, ::-1])
    green = np.full((96, 96, 3), (20, 200, 20), np.int16) + np.random.default_rng(0).integers(-6, 7, (96, 96, 3))
    cv2.imwrite(str(paths[2]), green.astype(np.uint8)[:, :, ::-1])  # unlike the training data: a warning
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    page.check("input[name=mode][value=cells]")

    body = json.dumps({"error": "rate_limited", "detail": "more than 5 requests a minute with this key; slow down",
                       "errors": []})
    page.route("**/classify", lambda r: r.fulfill(status=429, content_type="application/json", body=body))
    page.set_input_files("#file-input", [str(p) for p in paths])
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('No file')", timeout=60_000)
    assert page.locator("#error-list").inner_text() == ("3 files (lymphocyte.png to green.png): more than 5 requests "
                                                        "a minute with this key; slow down")
    page.unroute("**/classify")

    page.set_input_files("#file-input", [str(p) for p in [*paths, bad]])
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
    names = [p.name for p in paths]
    assert page.locator("table.cells .filename").all_inner_texts() == names
    notes = [t.removeprefix("Note: ") for t in page.locator(".image-card .warning").all_inner_texts()]
    assert notes and "look unlike the model's training data" in notes[0]
    with page.expect_download() as dl:
        page.click("#dl-json")
    doc = json.loads(Path(dl.value.path()).read_text())
    [run] = doc["results"]
    assert run["warnings"] == notes and [r["filename"] for r in run["results"]] == names
    assert len(doc["errors"]) == 1 and doc["errors"][0].startswith("broken.jpg: ")
    with page.expect_download() as dl:
        page.click("#dl-cells")
    assert [r["image"] for r in csv.DictReader(Path(dl.value.path()).read_text().splitlines())] == names


def test_the_differential_csv_is_written_as_wbc_analyze_writes_it(page, tmp_path: Path) -> None:
    """The page wrote the API's 4 decimals as JavaScript prints them (16.6667, 0, 3900) where wbc analyze's
    differential.csv has wbc.counts.half_up(v, 2) as Python prints a float (16.67, 0.0, 3900.0), and a " in a field's
    file name as %22, as the browser sends it (before wbc 0.34.0). Rounding the API's 4 decimals again is not enough:
    a bound of x.xx495 given as x.xx50 rounds down in differential.csv (1 value in 230)."""
    from wbc.counts import differential_rows, half_up
    from wbc.formats import differential_unit, write_differential_csv

    keys = ("class", "count", "total", "percent", "ci95_low", "ci95_high")
    classes = ["erythroblast", "lymphocyte", "neutrophil"]
    rows, expected, twice = [], [], 0
    for n in range(61):  # every count up to 60 WBCs, as shares and as rates per 100 WBCs
        for k in range(n + 1):
            counts = {"lymphocyte": k, "neutrophil": n - k, "erythroblast": k}
            api_rows, csv_rows = (differential_rows(counts, classes, "", digits) for digits in (4, 2))
            for api, csv_row in zip(api_rows, csv_rows, strict=True):
                rows.append({**dict(zip(keys, api[1:], strict=True)), "unit": differential_unit(api[1])})
                expected.append(["" if v is None or not n else str(v) for v in csv_row[4:]])
                twice += any(v is not None and half_up(v, 2) != w for v, w in zip(api[4:], csv_row[4:], strict=True))
    assert twice > 20  # the rows whose 4 decimals round again to another value
    assert page.evaluate("rows => rows.map(csvShare)", rows) == expected

    paths = [smear_file(tmp_path, 'a "b".png'), smear_file(tmp_path, "c.png", 1)]
    page.set_input_files("#file-input", [str(p) for p in paths])
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
    names = [p.name for p in paths]
    assert page.locator("article.image-card h3").all_inner_texts() == names
    with page.expect_download() as dl:
        page.click("#dl-diff")
    got = list(csv.reader(Path(dl.value.path()).read_text().splitlines()))
    docs = page.evaluate("state.runs.map((r) => ({ image: r.data.image, counts: r.data.counts }))")
    write_differential_csv(tmp_path / "differential.csv", docs, [r[1] for r in got[1:] if r[0] == "ALL"])
    assert got == list(csv.reader((tmp_path / "differential.csv").read_text().splitlines()))
    assert {r[0] for r in got[1:]} == {*names, "ALL"}
    with page.expect_download() as dl:
        page.click("#dl-cells")
    assert {r["image"] for r in csv.DictReader(Path(dl.value.path()).read_text().splitlines())} == set(names)


UNREADABLE = "could not be read from disk (moved, deleted or changed since it was chosen): choose it again"


def test_a_file_moved_after_it_was_chosen_fails_alone_and_is_named(page, tmp_path: Path) -> None:
    """Chromium cannot read a chosen file moved or rewritten since it was chosen: its upload failed the whole request
    as "no answer from the server (Failed to fetch)", every cell of a /classify request with it, and named no file
    (before wbc 0.37.0). The page reads each file before it sends it: that file fails alone, said so."""
    cells = []
    for i, label in enumerate(["lymphocyte", "neutrophil", "monocyte"]):
        cells.append(tmp_path / f"{label}.png")
        cv2.imwrite(str(cells[-1]), synthetic_cell(label, 96, seed=i)[:, :, ::-1])
    page.check("input[name=mode][value=cells]")
    page.set_input_files("#file-input", [str(p) for p in cells])
    cells[1].rename(tmp_path / "moved.png")
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
    assert page.locator("table.cells .filename").all_inner_texts() == ["lymphocyte.png", "monocyte.png"]
    assert page.locator("#error-list").inner_text() == f"neutrophil.png: {UNREADABLE}"

    fields = [smear_file(tmp_path, "a.png", 0), smear_file(tmp_path, "b.png", 1)]
    page.check("input[name=mode][value=smear]")
    page.set_input_files("#file-input", [str(p) for p in fields])
    fields[0].rename(tmp_path / "a moved.png")
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
    assert page.locator("#cards h3").all_inner_texts() == ["b.png"]
    assert page.locator("#error-list").inner_text() == f"a.png: {UNREADABLE}"


def hold_analyze_after_the_first(page) -> list:
    """/analyze answered for the first field, then never again (a frozen server): the routes held."""
    seen: list = []

    def route(r) -> None:
        seen.append(r)
        if len(seen) == 1:
            r.continue_()

    page.route("**/analyze*", route)
    return seen


def test_stop_ends_a_run_the_server_no_longer_answers_keeping_what_was_analysed(page, tmp_path: Path) -> None:
    """A server that stopped answering left the page waiting for ever: no way to cancel, the downloads of the fields
    already analysed disabled, a reload (losing them) the only way out (before wbc 0.37.0)."""
    hold_analyze_after_the_first(page)
    fields = [smear_file(tmp_path, f"{c}.png", i) for i, c in enumerate("abc")]
    page.set_input_files("#file-input", [str(p) for p in fields])
    assert page.locator("#stop-button").is_hidden()
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Analysing 2 of 3')", timeout=60_000)
    page.click("#stop-button")
    page.wait_for_selector("#status:has-text('Stopped')", timeout=10_000)
    assert page.locator("#status").inner_text().startswith("Stopped: 1 of 3 file(s) analysed")
    assert page.locator("#error-list").inner_text() == "2 files (b.png to c.png): not analysed: the run was stopped"
    assert page.locator("#cards h3").all_inner_texts() == ["a.png"] and page.locator("#stop-button").is_hidden()
    assert page.locator("#run-button").is_enabled() and page.locator("#dl-json").is_enabled()
    with page.expect_download() as dl:
        page.click("#dl-json")
    doc = json.loads(Path(dl.value.path()).read_text())
    assert [r["image"] for r in doc["results"]] == ["a.png"] and doc["differential"]


def test_a_request_unanswered_for_the_timeout_ends_the_run(page, tmp_path: Path) -> None:
    hold_analyze_after_the_first(page)
    page.evaluate("() => { state.requestTimeoutS = 2; }")
    fields = [smear_file(tmp_path, f"{c}.png", i) for i, c in enumerate("abc")]
    page.set_input_files("#file-input", [str(p) for p in fields])
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Stopped')", timeout=60_000)
    assert page.locator("#error-list li").all_inner_texts() == [
        "b.png: no answer from the server in 2 s",
        "c.png: not analysed: the run ended when the server stopped answering",
        "The pooled differential could not be computed: no answer from the server in 2 s."]
    assert page.locator("#cards h3").all_inner_texts() == ["a.png"] and page.locator("#dl-cells").is_enabled()


def test_single_cells_over_several_requests_get_the_runs_sentences_once(chromium, classifier, base_url: str,  # noqa: F811
                                                                         tmp_path: Path) -> None:
    """A run of more than one /classify request showed each request's sentences, "lymphocyte.png to green.png: 1 of 2
    cells ...", with the request's counts, not the run's as `wbc classify` words them (before wbc 0.37.0)."""
    import httpx
    from PIL import Image

    paths = []
    for i, label in enumerate(["lymphocyte", "neutrophil", "monocyte"]):
        paths.append(tmp_path / f"{label}.png")
        cv2.imwrite(str(paths[-1]), synthetic_cell(label, 96, seed=i)[:, :, ::-1])
    green = np.full((96, 96, 3), (20, 200, 20), np.int16) + np.random.default_rng(0).integers(-6, 7, (96, 96, 3))
    paths.append(tmp_path / "green.png")
    cv2.imwrite(str(paths[-1]), green.astype(np.uint8)[:, :, ::-1])  # unlike the training data
    frames = [Image.fromarray(synthetic_cell("eosinophil", 96, seed=s)) for s in (7, 8)]
    paths.append(tmp_path / "stack.tif")
    frames[0].save(paths[-1], save_all=True, append_images=frames[1:])  # a file of two images
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    expected = httpx.post(f"{base_url}/classify", files=files, timeout=60).json()["warnings"]  # the five at once
    assert len(expected) == 2, expected
    with live_server(create_app(classifier, ClassicalSegmenter(), max_files=2)) as base:  # three requests
        ctx = chromium.new_context()
        pg = ctx.new_page()
        errors = watch(pg, only=base)
        pg.goto(base + "/")
        pg.wait_for_selector("body[data-ready=true]", timeout=15_000)
        pg.check("input[name=mode][value=cells]")
        pg.set_input_files("#file-input", [str(p) for p in paths])
        pg.click("#run-button")
        pg.wait_for_selector("#status:has-text('Done')", timeout=60_000)
        shown = [t.removeprefix("Note: ") for t in pg.locator(".image-card .warning").all_inner_texts()]
        with pg.expect_download() as dl:
            pg.click("#dl-json")
        doc = json.loads(Path(dl.value.path()).read_text())
        ctx.close()
    assert shown == expected and doc["results"][0]["warnings"] == expected
    assert not errors, errors


@pytest.mark.parametrize("case", ["every sentence", "a smear's platelets", "one of eight unusual"])
def test_the_runs_sentences_are_worded_as_wbc_classify_words_them(page, case: str) -> None:
    """The page words a run's sentences itself, from its cells' reasons (runNotes): each one as `wbc classify`'s
    (wbc.classify's notes, wbc.ood.ood_warning) for the same cells, the advice past the counts taken from a
    request's own sentence."""
    from wbc.classify import (
        other_cells_note,
        other_cells_reason,
        outside_note,
        outside_reason,
        several_images_note,
        several_images_reason,
    )
    from wbc.formats import prediction_to_dict
    from wbc.ood import ood_warning
    from wbc.types import Prediction

    preds = [Prediction("lymphocyte", 0.5, True, {"lymphocyte": 0.5}, path=f"c{i}.png") for i in range(8)]

    def outside(p: Prediction, other: str, chosen: bool = True) -> None:
        p.outside = other
        p.reasons.append(outside_reason(other, 0.8, chosen))

    if case == "every sentence":
        for p, other in zip(preds, ["ig", "platelet", "platelet"], strict=False):
            outside(p, other)
        preds[3].other_cells = 1
        preds[3].reasons.append(other_cells_reason(1))
        preds[4].reasons.append(several_images_reason(3))
        preds[0].ood = preds[5].ood = True  # 2 of 8: 25 %, the advice to adapt
    elif case == "a smear's platelets":
        outside(preds[0], "platelet", chosen=False)
        outside(preds[1], "ig")
        preds[1].reasons.append(outside_reason("platelet", 0.7, chosen=False))  # the first one names the cell's
    else:
        preds[7].ood = True  # 12.5 %: Python's half to even, "12%"
    expected = [w for w in (outside_note(preds), other_cells_note(preds), several_images_note(preds),
                            ood_warning(preds)) if w]
    said = [w for w in (ood_warning(preds[:4]), ood_warning(preds[4:])) if w]  # two requests' own sentences
    results = [prediction_to_dict(p) for p in preds]
    shown = page.evaluate("([results, said]) => runNotes(results, said)", [results, said])
    assert shown == expected and expected


def test_a_run_that_analyses_nothing_keeps_the_last_runs_problems_and_notes_on_screen(page, tmp_path: Path) -> None:
    """The last run's results stayed, but its copies counted once and its problems went from the screen while its JSON
    download kept them; and its status said "Done: 1 of 3 file(s) analysed" above the copy's "analysed and counted
    once" (before wbc 0.37.0)."""
    field = smear_file(tmp_path, "f1.png")
    (tmp_path / "f1 (1).png").write_bytes(field.read_bytes())
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 50)
    page.set_input_files("#file-input", [str(field), str(tmp_path / "f1 (1).png"), str(broken)])
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
    assert page.locator("#status").inner_text().startswith("Done: 2 of 3 file(s) analysed (1 a copy of another, "
                                                           "counted once) in ")
    first_errors = page.locator("#error-list li").all_inner_texts()
    notes = page.locator("#note-list li").all_inner_texts()
    assert len(first_errors) == 1 and first_errors[0].startswith("broken.png: ") and len(notes) == 1
    again = tmp_path / "broken2.png"
    again.write_bytes(b"\x89PNG\r\n\x1a\n" + b"y" * 50)
    page.set_input_files("#file-input", str(again))
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('No file')", timeout=60_000)
    said = page.locator("#error-list li").all_inner_texts()
    assert said[1:] == ["Nothing was analysed this time: the results below are those of the run before.",
                        f"From the run before: {first_errors[0]}"] and said[0].startswith("broken2.png: ")
    assert page.locator("#notes").is_visible() and page.locator("#note-list li").all_inner_texts() == notes
    with page.expect_download() as dl:
        page.click("#dl-json")
    doc = json.loads(Path(dl.value.path()).read_text())
    assert doc["errors"] == first_errors and doc["warnings"] == notes


def test_a_file_is_tied_to_its_own_answer_when_another_of_its_name_fails(page, tmp_path: Path) -> None:
    """Two chosen files named ``cell.png`` (two samples' folders), one unreadable, and ``cell (1).png``, a copy of the
    readable one: the page matched /classify's errors to files by name, so both ``cell.png`` failed, the good one lost
    its thumbnail, and its copy was listed as unreadable too ("Done: 1 of 3"), in the JSON download alike (0.37.0
    before release, whose /classify gives each entry the ``index`` of its part)."""
    (tmp_path / "s1").mkdir()
    (tmp_path / "s2").mkdir()
    good, bad, copy = tmp_path / "s1" / "cell.png", tmp_path / "s2" / "cell.png", tmp_path / "s1" / "cell (1).png"
    cv2.imwrite(str(good), synthetic_cell("lymphocyte", 88, seed=0)[:, :, ::-1])
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    copy.write_bytes(good.read_bytes())
    page.check("input[name=mode][value=cells]")
    page.set_input_files("#file-input", [str(good), str(bad), str(copy)])
    page.click("#run-button")
    page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
    assert page.locator("#status").inner_text().startswith(
        "Done: 2 of 3 file(s) analysed (1 a copy of another, counted once) in ")
    unreadable = "cell.png: not a readable image (UnidentifiedImageError)"
    assert page.locator("#error-list li").all_inner_texts() == [unreadable]
    assert page.locator("#note-list li").all_inner_texts() == [
        "cell (1).png: the same image as another input, classified and counted once (cell.png has the same bytes)"]
    page.wait_for_function("[...document.querySelectorAll('img.thumb')].every((i) => i.complete)")
    assert page.eval_on_selector_all("table.cells tbody img.thumb", "i => i.map((x) => x.naturalWidth)") == [88]
    with page.expect_download() as dl:
        page.click("#dl-json")
    doc = json.loads(Path(dl.value.path()).read_text())
    assert doc["copies"] == [{"filename": "cell (1).png", "same_as": "cell.png"}]
    assert doc["errors"] == [unreadable]
    assert [(r["filename"], r["index"]) for r in doc["results"][0]["results"]] == [("cell.png", 0)]


def test_the_json_download_gives_each_cell_its_file_s_place_in_the_run(chromium, classifier,  # noqa: F811
                                                                        tmp_path: Path) -> None:
    """A run sent in several /classify requests (a server's ``max_files``, or over 200 files) downloaded each request's
    ``index`` as it came, 0, 1, 0, 1, 0: repeated, and no file's place, though docs/api.md says to key on ``index``.
    Each result now carries its file's place among the files chosen (an unreadable file and a copy keep theirs), and
    each row its own thumbnail."""
    paths = []
    for i, label in enumerate(["lymphocyte", "neutrophil", "monocyte", "eosinophil"]):
        paths.append(tmp_path / f"c{i}.png")
        cv2.imwrite(str(paths[-1]), synthetic_cell(label, 80 + 8 * i, seed=i)[:, :, ::-1])
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    (tmp_path / "c0 (1).png").write_bytes(paths[0].read_bytes())
    chosen = [paths[0], tmp_path / "bad.png", paths[1], tmp_path / "c0 (1).png", paths[2], paths[3]]
    with live_server(create_app(classifier, ClassicalSegmenter(), max_files=2)) as base:  # three requests
        ctx = chromium.new_context(accept_downloads=True)
        pg = ctx.new_page()
        errors = watch(pg, only=base)
        pg.goto(base + "/")
        pg.wait_for_selector("body[data-ready=true]", timeout=15_000)
        pg.check("input[name=mode][value=cells]")
        pg.set_input_files("#file-input", [str(p) for p in chosen])
        pg.click("#run-button")
        pg.wait_for_selector("#status:has-text('Done')", timeout=60_000)
        pg.wait_for_function("[...document.querySelectorAll('img.thumb')].every((i) => i.complete)")
        widths = pg.eval_on_selector_all("table.cells tbody img.thumb", "i => i.map((x) => x.naturalWidth)")
        with pg.expect_download() as dl:
            pg.click("#dl-json")
        doc = json.loads(Path(dl.value.path()).read_text())
        ctx.close()
    assert [(r["filename"], r["index"]) for r in doc["results"][0]["results"]] == [
        ("c0.png", 0), ("c1.png", 2), ("c2.png", 4), ("c3.png", 5)]
    assert widths == [80, 88, 96, 104]
    assert doc["errors"] == ["bad.png: not a readable image (UnidentifiedImageError)"]
    assert not errors, errors
