"""Batch tools that lose nothing: every bad file is one readable per-file error and the good files' results
are written; pixel bombs are refused from the header, before decoding; the output is checked before work;
console output escapes user paths. Real files, real decoders, the real ``wbc`` command in a subprocess.
"""

from __future__ import annotations

import csv
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from wbc.classify import MAX_CELL_PIXELS, classify_paths, review_reason
from wbc.errors import ImageReadError, ImageTooLargeError
from wbc.io import check_output_file, decode_image, image_size, iter_image_paths, read_image
from wbc.model import load_model
from wbc.synthetic import png_bomb, synthetic_cell, synthetic_smear

sys.path.insert(0, str(Path(__file__).parent))
from test_analyze import make_colour_classifier


def write_png(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
    return path


def bmp_header(width: int, height: int) -> bytes:
    """A BMP that claims ``width`` x ``height`` (1 bit per pixel) and holds no pixels: Pillow's territory."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 1, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 8, 0, 0, 14 + len(info) + 8) + info + bytes(8)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_colour_classifier(tmp_path_factory.mktemp("bs") / "tiny.onnx", size=48)


@pytest.fixture(scope="module")
def hostile_cells(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two good cells beside everything a hostile user might drop into the folder."""
    d = tmp_path_factory.mktemp("cells")
    write_png(d / "good_a.png", synthetic_cell("neutrophil", 96, seed=1))
    write_png(d / "good_b.png", synthetic_cell("lymphocyte", 96, seed=2))
    (d / "bomb_40k_1bit.png").write_bytes(png_bomb(40000, 40000))
    (d / "smear_12k.png").write_bytes(png_bomb(12000, 12000))
    write_png(d / "dot_1x1.png", np.zeros((1, 1, 3), np.uint8))
    (d / "not_an_image.png").write_bytes(b"hello, I am text")
    (d / "huge_header.bmp").write_bytes(bmp_header(40000, 40000))
    jpg = cv2.imencode(".jpg", synthetic_cell("monocyte", 96))[1].tobytes()
    (d / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    return d


def run_wbc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200", WBC_NO_REEXEC="1")
    return subprocess.run([sys.executable, "-m", "wbc", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


def assert_one_line_error(out: subprocess.CompletedProcess[str], *words: str) -> None:
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    for w in words:
        assert w in lines[0], out.stderr


# --------------------------------------------------------------------------- decoding


def test_header_sizes_without_decoding() -> None:
    assert image_size(png_bomb(30000, 20000)) == (20000, 30000)
    jpg = cv2.imencode(".jpg", np.zeros((7, 9, 3), np.uint8))[1].tobytes()
    assert image_size(jpg) == (7, 9)
    with pytest.raises(ImageTooLargeError, match="far too large"):  # Pillow's bomb check, as a readable error
        image_size(bmp_header(40000, 40000), "x.bmp")
    assert image_size(b"no header here") is None


def test_a_pixel_bomb_is_refused_before_decoding() -> None:
    """30000x30000 RGB PNG: 2.6 MB on disk, 2.7 GB decoded; refused with the process staying small."""
    script = textwrap.dedent("""
        def peak_mb():  # this process's peak RSS (VmHWM; ru_maxrss would include the forking pytest's)
            line = [x for x in open("/proc/self/status") if x.startswith("VmHWM")][0]
            return int(line.split()[1]) // 1024
        from wbc.errors import ImageTooLargeError
        from wbc.io import decode_image
        from wbc.synthetic import png_bomb
        try:
            decode_image(png_bomb(30000, 30000, rgb=True), "bomb.png")
        except ImageTooLargeError as exc:
            print(peak_mb(), exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    peak_mb, msg = out.stdout.split(" ", 1)
    assert "bomb.png: 30000x30000 pixels is over the limit" in msg
    assert int(peak_mb) < 400, out.stdout  # a decoded copy alone would be 2700 MB


def test_opencv_errors_become_readable_per_file_errors() -> None:
    # with the header check lifted, OpenCV itself refuses the 1.6-gigapixel PNG with a cv2.error
    with pytest.raises(ImageReadError, match=r"big\.png: not a readable image \(error: .*\)"):
        decode_image(png_bomb(40000, 40000), "big.png", max_pixels=2**40)
    with pytest.raises(ImageReadError, match="not a readable image"):
        decode_image(b"\x89PNG\r\n\x1a\n" + bytes(40), "junk.png")


def damaged_png(rgb: np.ndarray) -> bytes:
    """A PNG one flipped byte damaged: its first IDAT chunk's length, so that OpenCV (libpng: CRC error) fails and
    Pillow raises SyntaxError ("broken PNG file"), an exception no caller caught before wbc 0.32.0."""
    b = bytearray(cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))[1].tobytes())
    b[b.index(b"IDAT") - 1] ^= 43
    return bytes(b)


def test_a_png_pillow_calls_broken_is_one_line_naming_pillows_reason() -> None:
    with pytest.raises(ImageReadError, match=r"^x\.png: not a readable image \(broken PNG file \(chunk .*\)\)$"):
        decode_image(damaged_png(synthetic_cell("neutrophil", 96, seed=1)), "x.png")


def test_a_png_pillow_calls_broken_loses_only_itself_in_classify_analyze_and_the_http_api(
        model_file: Path, tmp_path: Path) -> None:
    """One byte of bit rot in one PNG ended the whole `wbc classify` run with a traceback, made ``/classify`` answer
    500 for every upload beside it and ``wbc.analyze_images(errors=[])`` raise (Pillow's SyntaxError escaped)."""
    import wbc
    from wbc.segment import get_segmenter

    good = write_png(tmp_path / "good.png", synthetic_cell("neutrophil", 96, seed=1))
    bad = tmp_path / "rot.png"
    bad.write_bytes(damaged_png(synthetic_cell("lymphocyte", 96, seed=2)))
    clf = load_model(model_file, threads=1)
    res = classify_paths([good, bad], clf, workers=1)
    assert [Path(p.path).name for p in res.predictions] == ["good.png"]
    assert [(Path(p).name, "broken PNG file" in m) for p, m in res.errors] == [("rot.png", True)]

    field = write_png(tmp_path / "field.png", synthetic_smear(n_wbc=1, seed=1)[0])
    (tmp_path / "rot_field.png").write_bytes(damaged_png(synthetic_smear(n_wbc=1, seed=2)[0]))
    errors: list[tuple[str, str]] = []
    out = wbc.analyze_images([field, tmp_path / "rot_field.png"], clf, get_segmenter("classical"), errors=errors)
    assert len(out) == 1 and [Path(p).name for p, _ in errors] == ["rot_field.png"]
    assert "broken PNG file" in errors[0][1]

    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from wbc.serve.app import create_app

    with TestClient(create_app(clf, get_segmenter("classical"), max_upload_mb=2)) as client:
        r = client.post("/classify", files=[("files", (p.name, p.read_bytes(), "image/png")) for p in (good, bad)])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n"] == 1 and [e["filename"] for e in body["errors"]] == ["rot.png"]
    assert "broken PNG file" in body["errors"][0]["error"]


def test_classify_keeps_the_good_cells_and_names_every_bad_file(hostile_cells: Path, model_file: Path) -> None:
    clf = load_model(model_file, threads=1)
    res = classify_paths(list(iter_image_paths([hostile_cells])), clf, batch_size=4, workers=2)
    assert sorted(Path(p.path).name for p in res.predictions) == ["good_a.png", "good_b.png"]
    errors = {Path(p).name: msg for p, msg in res.errors}
    assert set(errors) == {"bomb_40k_1bit.png", "smear_12k.png", "dot_1x1.png", "not_an_image.png",
                           "huge_header.bmp", "cut.jpg"}
    assert "40000x40000" in errors["bomb_40k_1bit.png"] and "single-cell" in errors["bomb_40k_1bit.png"]
    assert "12000x12000" in errors["smear_12k.png"] and f"{MAX_CELL_PIXELS:,}" in errors["smear_12k.png"]
    assert "1x1 is too small" in errors["dot_1x1.png"]
    assert "far too large" in errors["huge_header.bmp"]
    assert "truncated" in errors["cut.jpg"] and "not a readable image" in errors["not_an_image.png"]
    for msg in errors.values():
        assert "\n" not in msg and "Traceback" not in msg


def test_review_reason_never_reads_equal() -> None:
    r = review_reason(0.98951, 0.99)  # both 0.99 at two decimals: the old "confidence 0.99 < 0.99"
    c, t = r.removeprefix("confidence ").split(", below the review threshold ")
    assert c != t and float(c) < float(t)
    assert review_reason(0.5, 0.83) == "confidence 0.50, below the review threshold 0.83"


def test_ood_warning_for_lab_staff_has_no_command_line_advice() -> None:
    from wbc.ood import ood_warning
    from wbc.types import Prediction

    preds = [Prediction("monocyte", 0.5, True, {}, ood=True) for _ in range(5)]
    msg = ood_warning(preds) or ""
    assert "unlike the model's training data" in msg and "`" not in msg and "wbc " not in msg


# --------------------------------------------------------------------------- outputs checked first


def test_output_file_checks(tmp_path: Path) -> None:
    assert check_output_file(tmp_path / "new" / "p.csv") == tmp_path / "new" / "p.csv"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(Exception, match="is a file, not a folder"):
        check_output_file(tmp_path / "afile" / "p.csv")
    with pytest.raises(Exception, match="is a folder"):
        check_output_file(tmp_path)
    unwritable = Path("/proc/wbc-no-such/p.csv") if os.geteuid() == 0 else tmp_path / "ro" / "p.csv"
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
    with pytest.raises(Exception, match="cannot write there"):
        check_output_file(unwritable)


def test_wbc_classify_names_the_links_to_missing_images_it_leaves_out(model_file: Path, tmp_path: Path) -> None:
    """A folder's links to images that are gone were left out of the run without a word; now each is a "skipped"
    line, past ten counted, as unreadable files are, and (since wbc 0.35.0) every one is in ``<stem>.errors.csv``:
    before, the eleventh on were named nowhere and no errors file was written."""
    d = tmp_path / "cells"
    d.mkdir()
    write_png(d / "good.png", synthetic_cell("neutrophil", 96, seed=1))
    for i in range(12):
        (d / f"link{i:02d}.png").symlink_to(tmp_path / f"gone{i:02d}.png")
    out = run_wbc("classify", str(d), "--model", str(model_file), "--output", str(tmp_path / "p.csv"),
                  "--threads", "1")
    assert out.returncode == 0, out.stderr
    named = [ln for ln in out.stderr.splitlines() if "link to a missing file" in ln]
    assert len(named) == 11 and f"skipped {d / 'link00.png'}: link to a missing file" in named[0], out.stderr
    assert "2 more file(s), every one named in" in named[-1] and "p.errors.csv" in out.stderr
    rows = list(csv.reader((tmp_path / "p.errors.csv").open(encoding="utf-8-sig")))[1:]
    assert [r[0] for r in rows] == [str(d / f"link{i:02d}.png") for i in range(12)]
    assert all(r[1] == f"{r[0]}: link to a missing file ({tmp_path / f'gone{i:02d}.png'})" for i, r in enumerate(rows))


def test_wbc_analyze_lists_every_link_to_a_missing_field_in_errors_csv(model_file: Path, tmp_path: Path) -> None:
    """An unmounted share's fields (links to files that are gone) were named on the terminal alone, the first ten;
    since wbc 0.35.0 each is a row of errors.csv, as a field that could not be read."""
    d = tmp_path / "fields"
    d.mkdir()
    write_png(d / "good.png", synthetic_smear(n_wbc=2, seed=3)[0])
    for i in range(12):
        (d / f"field_{i:02d}.jpg").symlink_to(Path("/nonexistent-share") / f"field_{i:02d}.jpg")
    out = run_wbc("analyze", str(d), "--model", str(model_file), "--segmenter", "classical", "--no-report",
                  "--output", str(tmp_path / "out"), "--threads", "1")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out" / "good.json").is_file()
    rows = list(csv.reader((tmp_path / "out" / "errors.csv").open(encoding="utf-8-sig")))[1:]
    assert [r[0] for r in rows] == [str(d / f"field_{i:02d}.jpg") for i in range(12)]
    assert all("link to a missing file" in r[1] for r in rows)
    assert "2 more file(s), every one named in" in out.stderr


def test_overlapping_inputs_list_a_link_left_out_once(model_file: Path, tmp_path: Path) -> None:
    """A folder and its own subfolder given together: a link to a missing image under both was written twice to the
    errors CSV and counted twice among the files that could not be read (before wbc 0.35.0), by `wbc classify` and
    `wbc analyze` alike; now once, as the run takes each file once."""
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    write_png(d / "good.png", synthetic_cell("neutrophil", 96, seed=1))
    (d / "sub" / "x.png").symlink_to(tmp_path / "gone.png")
    out = run_wbc("classify", str(d), str(d / "sub"), "--model", str(model_file), "--output",
                  str(tmp_path / "p.csv"), "--threads", "1")
    assert out.returncode == 0, out.stderr
    rows = list(csv.reader((tmp_path / "p.errors.csv").open(encoding="utf-8-sig")))[1:]
    assert [Path(r[0]).name for r in rows] == ["x.png"], rows
    assert "1 file(s) could not be read" in out.stderr
    out = run_wbc("analyze", str(d), str(d / "sub"), "--model", str(model_file), "--segmenter", "classical",
                  "--no-report", "--output", str(tmp_path / "out"), "--threads", "1")
    assert out.returncode == 0, out.stderr
    rows = list(csv.reader((tmp_path / "out" / "errors.csv").open(encoding="utf-8-sig")))[1:]
    assert [Path(r[0]).name for r in rows] == ["x.png"], rows
    assert "1 file(s) failed" in out.stderr


def test_wbc_classify_counts_a_file_reached_twice_once(model_file: Path, tmp_path: Path) -> None:
    """A link to a cell already in the run, and overlapping inputs (a folder and a file in it), classified and counted
    one cell two or three times, inflating its class in the differential; each file is now answered once, under the
    path first reached, and the run says how many were left out."""
    from typer.testing import CliRunner

    from wbc.cli import app

    cells = tmp_path / "study" / "all"
    cells.mkdir(parents=True)
    a = write_png(cells / "a.png", synthetic_cell("neutrophil", 96, seed=1))
    write_png(cells / "b.png", synthetic_cell("lymphocyte", 96, seed=2))
    (tmp_path / "study" / "selected").mkdir()
    (tmp_path / "study" / "selected" / "a_again.png").symlink_to(a)
    out = tmp_path / "p.csv"
    res = CliRunner().invoke(app, ["classify", str(tmp_path / "study"), str(cells), str(a), "--model", str(model_file),
                                   "-o", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert [r.split(",")[0] for r in out.read_text().splitlines()[1:]] == [str(cells / "a.png"), str(cells / "b.png")]
    assert "2 cells classified" in res.output
    assert "note: 4 path(s) led to a file already in the run" in " ".join(res.output.split())


def test_wbc_classify_names_every_unreadable_file_in_a_csv_beside_its_output(model_file: Path, tmp_path: Path) -> None:
    """Past the tenth, unreadable files were only counted ("skipped 4 more file(s)"), named nowhere: now every one is
    in ``<output stem>.errors.csv`` (``path,error``, as `wbc analyze`'s ``errors.csv``), which a later run without
    errors removes. Written to a stream (``-o /dev/stdout``: here a link to a FIFO), every one is named on stderr."""
    import csv
    import threading

    from typer.testing import CliRunner

    from wbc.cli import app

    d = tmp_path / "in"
    d.mkdir()
    write_png(d / "ok.png", synthetic_cell("neutrophil", 96, seed=1))
    for i in range(14):
        (d / f"bad_{i:02}.jpg").write_text("x")
    out = tmp_path / "run" / "p.csv"
    args = ["--model", str(model_file), "--threads", "1"]
    res = CliRunner().invoke(app, ["classify", str(d), "-o", str(out), *args])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "run" / "p.errors.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["path", "error"] and [r[0] for r in rows[1:]] == [str(d / f"bad_{i:02}.jpg") for i in range(14)]
    said = " ".join(res.output.split())
    assert f"4 more file(s), every one named in {tmp_path / 'run' / 'p.errors.csv'}" in said
    assert f"14 file(s) could not be read, listed in {tmp_path / 'run' / 'p.errors.csv'}" in said
    res = CliRunner().invoke(app, ["classify", str(d / "ok.png"), "-o", str(out), *args])
    assert res.exit_code == 0 and not (tmp_path / "run" / "p.errors.csv").exists()  # an earlier run's: removed

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "stdout").symlink_to(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    try:
        res = CliRunner().invoke(app, ["classify", str(d), "-o", str(tmp_path / "stdout"), *args])
        reader.join(10)
    finally:
        if reader.is_alive():
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            reader.join(10)
    assert res.exit_code == 0, res.output
    assert got and got[0].startswith("path,label") and len(got[0].splitlines()) == 2
    assert (tmp_path / "stdout").is_symlink() and fifo.is_fifo()
    assert all(f"skipped {d / f'bad_{i:02}.jpg'}" in res.output for i in range(14)) and "more file(s)" not in res.output
    assert not list(tmp_path.glob("*.errors.csv"))


@pytest.mark.slow
def test_wbc_classify_end_to_end_on_a_hostile_folder(hostile_cells: Path, model_file: Path, tmp_path: Path) -> None:
    """The command writes the good cells' CSV, lists each bad file on one line, and escapes paths."""
    odd = tmp_path / "cells[/x]"  # rich markup in a user path
    odd.mkdir(parents=True)
    for p in hostile_cells.iterdir():
        (odd / p.name).write_bytes(p.read_bytes())
    (odd / "phone").mkdir()  # a phone's and a camera's photos wbc has no decoder for: said, not skipped in silence
    for name in ("IMG_0001.HEIC", "IMG_0002.heic", "cell.dng"):
        (odd / "phone" / name).write_bytes(b"\x00" * 64)
    out = run_wbc("classify", str(odd), "--model", str(model_file), "--output", str(tmp_path / "p.csv"),
                  "--threads", "1")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "[/x]" in out.stderr
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("path,label")
    assert out.stderr.count("skipped") == 6
    assert "note: 3 files in formats wbc cannot read were left out (.heic 2, .dng 1)" in out.stderr
    # bad output paths fail at once, in one line
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(run_wbc("classify", str(odd), "--model", str(model_file), "--output", str(tmp_path)),
                          "is a folder")
    assert_one_line_error(run_wbc("classify", str(odd), "--model", str(model_file), "--output",
                                  str(tmp_path / "afile" / "p.csv")), "is a file")


@pytest.mark.slow
def test_wbc_analyze_writes_the_good_fields_beside_a_bomb(model_file: Path, tmp_path: Path) -> None:
    d = tmp_path / "fields[/x]"
    d.mkdir(parents=True)
    smear, *_ = synthetic_smear(n_wbc=2, seed=3)
    write_png(d / "good.png", smear)
    (d / "bomb.png").write_bytes(png_bomb(30000, 30000, rgb=True))
    (d / "smear_12k.png").write_bytes(png_bomb(12000, 12000))
    out = run_wbc("analyze", str(d), "--model", str(model_file), "--segmenter", "classical",
                  "--output", str(tmp_path / "out"), "--threads", "1")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "[/x]" in out.stderr
    assert (tmp_path / "out" / "good.json").is_file() and (tmp_path / "out" / "good.png").is_file()
    errors = (tmp_path / "out" / "errors.csv").read_text()
    assert "bomb.png" in errors and "30000x30000" in errors and "12000x12000" in errors
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(run_wbc("analyze", str(d), "--model", str(model_file), "--output",
                                  str(tmp_path / "afile")), "not a folder")


def test_a_tiff_of_several_fields_says_only_the_first_was_analysed(model_file: Path, tmp_path: Path) -> None:
    """A scanner's multi-page TIFF held fields that were never analysed, and nothing said so. Its pyramid (pages
    marked as reduced-resolution copies) is one field."""
    tifffile = pytest.importorskip("tifffile")
    from wbc.batch import Job, analyze_job
    from wbc.segment import get_segmenter

    fields = [synthetic_smear(n_wbc=1, seed=s)[0] for s in (1, 2)]
    with tifffile.TiffWriter(tmp_path / "stack.tif") as tif:
        for f in fields:
            tif.write(f, photometric="rgb")
    with tifffile.TiffWriter(tmp_path / "pyramid.tif") as tif:
        tif.write(fields[0], photometric="rgb")
        tif.write(fields[0][::2, ::2], photometric="rgb", subfiletype=1)
    classifier, segmenter = load_model(model_file), get_segmenter("classical")
    texts = {name: analyze_job(Job(str(tmp_path / f"{name}.tif"), name), classifier, segmenter, draw=False).json_text
             for name in ("stack", "pyramid")}
    assert "holds 2 images; only the first was analysed" in texts["stack"]
    assert texts["pyramid"] and "only the first" not in texts["pyramid"]


def test_a_tiff_of_several_cells_is_flagged_and_said_in_classify_and_the_http_api(model_file: Path,
                                                                                  tmp_path: Path) -> None:
    """An ImageJ stack of cell crops was answered as one cell, in `wbc classify`, ``classify_images`` and
    ``/classify``, with nothing saying that the other pages were never classified."""
    from PIL import Image

    cells = [Image.fromarray(synthetic_cell(c, 96, seed=i)) for i, c in enumerate(["neutrophil", "lymphocyte"])]
    cells[0].save(tmp_path / "stack.tif", save_all=True, append_images=cells[1:])
    cells[1].save(tmp_path / "one.tif")
    clf = load_model(model_file, threads=1)
    res = classify_paths([tmp_path / "stack.tif", tmp_path / "one.tif"], clf, workers=1)
    stack, one = res.predictions
    assert stack.review and "the file holds 2 images; only the first was classified" in stack.reasons
    assert not any("only the first" in r for r in one.reasons)
    from wbc.classify import several_images_note

    assert res.several_images_note() == several_images_note(res.predictions)
    assert (res.several_images_note() or "").startswith("1 of 2 files holds several images; only the first of each")

    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from wbc.segment import get_segmenter
    from wbc.serve.app import create_app

    with TestClient(create_app(clf, get_segmenter("classical"), max_upload_mb=2)) as client:
        r = client.post("/classify", files=[("files", (n, (tmp_path / n).read_bytes(), "image/tiff"))
                                            for n in ("stack.tif", "one.tif")])
    body = r.json()
    assert r.status_code == 200 and body["warnings"] and res.several_images_note() in body["warnings"]
    assert "the file holds 2 images; only the first was classified" in body["results"][0]["review_reasons"]


def test_read_image_refuses_a_field_over_the_analysis_limit_from_its_header(tmp_path: Path) -> None:
    from wbc.analyze import MAX_ANALYZE_PIXELS

    (tmp_path / "big.png").write_bytes(png_bomb(12000, 12000))
    with pytest.raises(ImageTooLargeError, match="12000x12000"):
        read_image(tmp_path / "big.png", max_pixels=MAX_ANALYZE_PIXELS)


def test_a_camera_s_whole_frame_of_one_cell_is_classified_and_the_cell_found(tmp_path: Path) -> None:
    """A 12 MP photo of one cell (refused as "too large" until wbc 0.26.0) is read, and re-framing finds the cell:
    the network sees it large, where a plain resize of the frame would show a speck."""
    from wbc.classify import read_cell
    from wbc.reframe import framing_stats_of

    cell = cv2.resize(synthetic_cell("neutrophil", size=96, seed=3), (400, 400), interpolation=cv2.INTER_CUBIC)
    frame = np.empty((3000, 4000, 3), np.uint8)
    frame[:] = cell[:8, :8].reshape(-1, 3).mean(0).astype(np.uint8)  # the crop's own background
    frame[1300:1700, 1800:2200] = cell
    path = tmp_path / "camera_12mp.jpg"
    cv2.imwrite(str(path), frame[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert 12_000_000 <= 3000 * 4000 <= MAX_CELL_PIXELS
    clf = load_model(None, threads=1)
    res = classify_paths([path], clf, workers=1)
    assert res.errors == [] and len(res.predictions) == 1
    seen = read_cell(path, 160, framing_stats_of(clf))
    plain = cv2.resize(frame, (160, 160), interpolation=cv2.INTER_AREA)

    def dark(rgb: np.ndarray) -> int:  # pixels well below the background: the cell
        return int((rgb.astype(int).sum(2) < frame[0, 0].astype(int).sum() - 120).sum())

    assert dark(seen) > 20 * dark(plain) > 0


def test_names_manifests_and_outputs_that_gave_tracebacks(model_file: Path, tmp_path: Path) -> None:
    """Each of these ended in a Python traceback in wbc 0.26.0, or overwrote an input."""
    import csv

    from typer.testing import CliRunner

    from wbc.cli import app
    from wbc.data import read_manifest
    from wbc.errors import WbcError

    runner = CliRunner()
    cells = tmp_path / "cells"
    cells.mkdir()
    write_png(cells / "ok.png", synthetic_cell("neutrophil", 96, seed=1))
    latin = os.fsdecode(b"caf\xe9.png")  # a Latin-1 name from an old camera or a Windows share
    # (OpenCV cannot open such a name itself); another cell: a copy of ok.png's bytes is counted once since wbc 0.35.0
    (cells / latin).write_bytes(cv2.imencode(".png", synthetic_cell("neutrophil", 96, seed=2)[:, :, ::-1])[1].tobytes())
    res = runner.invoke(app, ["classify", str(cells), "--model", str(model_file), "-o", str(tmp_path / "p.csv"),
                              "--report", str(tmp_path / "p.html"), "--threads", "1"])
    assert res.exit_code == 0, res.output
    rows = (tmp_path / "p.csv").read_bytes().splitlines()
    assert len(rows) == 3 and any(b"caf\xe9.png" in r for r in rows)  # the name's own bytes
    # the output is one of the inputs, or an image (`-o cells/*.jpg` in a shell: the first image the output, the
    # others inputs): refused, the image kept
    for out in (cells / "ok.png", tmp_path / "elsewhere.jpg"):
        res = runner.invoke(app, ["classify", str(cells), "--model", str(model_file), "-o", str(out)])
        assert res.exit_code == 1 and "is an image" in str(res.exception or res.output)
    assert (cells / "ok.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "elsewhere.jpg").exists()
    # a manifest saved by a spreadsheet as "CSV UTF-8" (a byte-order mark), one in Latin-1, a folder
    with (tmp_path / "bom.csv").open("w", encoding="utf-8-sig", newline="") as fh:
        csv.writer(fh).writerows([["path", "label"], [str(cells / "ok.png"), "neutrophil"]])
    assert [s.label for s in read_manifest(tmp_path / "bom.csv")] == ["neutrophil"]
    (tmp_path / "latin.csv").write_bytes("path,label\ncafé.png,neutrophil\n".encode("latin-1"))
    for bad, words in ((tmp_path / "latin.csv", "not a UTF-8 text file"), (cells, "is a folder")):
        with pytest.raises(WbcError, match=words):
            read_manifest(bad)
    # a path with rich markup in it is printed as it is
    res = runner.invoke(app, ["evaluate", str(tmp_path / "bom.csv"), "--split", "all", "--model", str(model_file),
                              "-o", str(tmp_path / "ev[/v2]"), "--bootstrap", "100"])
    assert res.exit_code == 0 and f"wrote {tmp_path / 'ev[/v2]'}/metrics.json" in res.output, res.output


class _FailsOnce:
    """A segmenter whose first field fails as ONNX Runtime does when a large field's buffer cannot be allocated."""

    name, model_id, pixel_size = "fails-once", "fails-once-v1", None

    def __init__(self) -> None:
        from wbc.segment.classical import ClassicalSegmenter

        self.inner, self.calls = ClassicalSegmenter(), 0

    def segment(self, rgb: np.ndarray) -> list:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested "
                               "buffer of size 860160000\nstack trace of the allocator")
        return self.inner.segment(rgb)


def test_a_runtime_error_in_one_field_does_not_stop_the_batch(model_file: Path, tmp_path: Path) -> None:
    """Only WbcError, MemoryError, cv2.error and ValueError became a field's error row: ONNX Runtime's own errors (a
    large field it could not allocate for) ended `wbc analyze` with a traceback, and the fields after it were never
    analysed. Any exception of one field is its row in errors.csv, on one line; the others are written. The Ray
    engine's actors run the same function (wbc.distributed.FieldAnalyzer)."""
    from wbc.batch import analyze_paths
    from wbc.distributed import FieldAnalyzer

    for seed in (1, 2, 3):
        write_png(tmp_path / f"field{seed}.png", synthetic_smear(n_wbc=1, seed=seed)[0])
    out = tmp_path / "out"
    summary = analyze_paths([tmp_path], out, load_model(model_file), _FailsOnce(), draw=False)
    assert sorted(p.name for p in out.glob("field*.json")) == ["field2.json", "field3.json"]
    assert summary.analyzed == 2 and len(summary.errors) == 1
    error = summary.errors[0][1]
    assert error.endswith("field1.png: analysis failed (RuntimeError: [ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : "
                          "Failed to allocate memory for requested buffer of size 860160000)"), error
    assert "Failed to allocate memory" in (out / "errors.csv").read_text()
    actor = FieldAnalyzer.__new__(FieldAnalyzer)  # the Ray actor's per-field work, without Ray
    actor.classifier, actor.segmenter, actor.draw = load_model(model_file), _FailsOnce(), False
    paths = [str(tmp_path / f"field{s}.png") for s in (1, 2)]
    rows = actor({"path": np.array(paths, dtype=object), "stem": np.array(["a", "b"], dtype=object),  # as read
                  "data": np.array([Path(p).read_bytes() for p in paths], dtype=object),
                  "read_error": np.array(["", ""], dtype=object)})
    assert "analysis failed (RuntimeError" in rows["error"][0] and rows["error"][1] == "" and rows["json"][1]


def test_a_disk_that_fills_up_mid_run_ends_wbc_analyze_in_one_line(model_file: Path, tmp_path: Path) -> None:
    """A full disk under --output ended `wbc analyze` with a 43-line traceback (wbc 0.31.0); the fields written
    before it stay. The second field's PNG finds the disk full."""
    for seed in (1, 2):
        write_png(tmp_path / f"field{seed}.png", synthetic_smear(n_wbc=1, seed=seed)[0])
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import errno, sys
        from pathlib import Path
        import wbc.batch, wbc.io
        write = wbc.io.atomic_write_bytes
        def full(path, data):
            if Path(path).name == "field2.png":
                raise OSError(errno.ENOSPC, "No space left on device")
            write(path, data)
        wbc.batch.atomic_write_bytes = wbc.io.atomic_write_bytes = full
        from wbc.cli import main
        sys.argv = ["wbc", "analyze", {str(tmp_path)!r}, "--model", {str(model_file)!r}, "--segmenter", "classical",
                    "--threads", "1", "--output", {str(out)!r}]
        main()
        """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, COLUMNS="200", WBC_NO_REEXEC="1"))
    assert_one_line_error(r, f"{out / 'field2.png'}: cannot write (No space left on device); the fields written "
                             "before it are kept")
    assert (out / "field1.json").is_file() and (out / "field1.png").is_file()


def test_a_segmenter_model_of_the_wrong_kind_ends_wbc_analyze_in_one_line(model_file: Path, tmp_path: Path) -> None:
    """`--segmenter learned --segmenter-model wbc_detector.onnx` ended with an IndexError traceback."""
    from wbc.paths import DEFAULT_DETECTOR

    write_png(tmp_path / "field.png", synthetic_smear(n_wbc=1, seed=1)[0])
    assert_one_line_error(run_wbc("analyze", str(tmp_path / "field.png"), "--model", str(model_file), "--segmenter",
                                  "learned", "--segmenter-model", str(DEFAULT_DETECTOR), "--output",
                                  str(tmp_path / "out"), "--no-report"),
                          "wbc_detector.onnx", "needs a U-Net segmenter")


def test_wbc_classify_refuses_a_report_named_as_one_of_its_csvs(model_file: Path, tmp_path: Path) -> None:
    """``--report`` naming ``-o`` (or ``<stem>.errors.csv``) replaced that CSV with the HTML page, exit 0, the terminal
    still naming the CSV: refused in one line before any work, as `wbc adapt` and `wbc pick-cells` refuse it."""
    from typer.testing import CliRunner

    from wbc.cli import app

    cell = write_png(tmp_path / "a.png", synthetic_cell("neutrophil", 96, seed=1))
    out = tmp_path / "p.csv"
    for report in (out, tmp_path / "p.errors.csv"):
        res = CliRunner().invoke(app, ["classify", str(cell), "--model", str(model_file), "-o", str(out),
                                       "--report", str(report), "--threads", "1"])
        assert res.exit_code == 1 and "--report would overwrite" in str(res.exception), res.output
        assert not out.exists() and not report.exists()


def test_wbc_classify_counts_a_copy_under_another_name_once(model_file: Path, tmp_path: Path) -> None:
    """A cell downloaded twice (``a.png``, ``a (1).png``) or exported into two folders was classified and counted
    once per copy, without a word, where `wbc analyze` counts such a field once: now one is kept (in one folder the
    shortest name, ``a.png``, not the ``a (1).png`` sorted before it), each copy named on the terminal and in
    ``p.copies.csv`` and left out of the CSV, as `wbc analyze` does; copies of a file that fails each fail."""
    import csv
    import shutil

    from typer.testing import CliRunner

    from wbc.cli import app

    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    a = write_png(d / "a.png", synthetic_cell("neutrophil", 96, seed=1))
    shutil.copy(a, d / "a (1).png")
    shutil.copy(a, d / "sub" / "a.png")
    write_png(d / "b.png", synthetic_cell("lymphocyte", 96, seed=2))
    (d / "empty.jpg").write_bytes(b"")
    (d / "empty (1).jpg").write_bytes(b"")
    out = tmp_path / "p.csv"
    res = CliRunner().invoke(app, ["classify", str(d), "--model", str(model_file), "-o", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    with open(out, newline="") as fh:
        assert [r["path"] for r in csv.DictReader(fh)] == [str(d / "a.png"), str(d / "b.png")]
    said = " ".join(res.output.split())
    assert "2 cells classified" in said
    for copy in (d / "a (1).png", d / "sub" / "a.png"):
        assert (f"skipped {copy}: the same image as another input, classified and counted once ({d / 'a.png'} "
                "has the same bytes)") in said
    with open(tmp_path / "p.copies.csv", newline="") as fh:
        assert list(csv.reader(fh)) == [["path", "same_bytes_as"], [str(d / "a (1).png"), str(d / "a.png")],
                                        [str(d / "sub" / "a.png"), str(d / "a.png")]]
    with open(tmp_path / "p.errors.csv", newline="") as fh:
        assert sorted(r[0] for r in list(csv.reader(fh))[1:]) == [str(d / "empty (1).jpg"), str(d / "empty.jpg")]


def test_every_byte_copy_left_out_is_named_in_a_file_beside_the_outputs(model_file: Path, tmp_path: Path) -> None:
    """Past the tenth, the byte copies `wbc classify` and `wbc analyze` left out were named nowhere (only counted on
    the terminal), so the files handed in could not be reconciled with the CSV's rows: since wbc 0.35.0 every one is
    a row of ``<stem>.copies.csv`` / ``copies.csv`` with the file kept, ``cell.png`` rather than ``cell (1).png``."""
    import shutil

    d = tmp_path / "in"
    d.mkdir()
    cell = write_png(d / "cell.png", synthetic_cell("neutrophil", 96, seed=1))
    names = [f"cell ({i}).png" for i in range(1, 13)]
    for n in names:
        shutil.copy(cell, d / n)
    out = run_wbc("classify", str(d), "--model", str(model_file), "--output", str(tmp_path / "p.csv"),
                  "--threads", "1")
    assert out.returncode == 0, out.stderr
    assert [r["path"] for r in csv.DictReader((tmp_path / "p.csv").open())] == [str(cell)]
    rows = list(csv.reader((tmp_path / "p.copies.csv").open(encoding="utf-8-sig")))
    assert rows[0] == ["path", "same_bytes_as"] and sorted(r[0] for r in rows[1:]) == sorted(str(d / n) for n in names)
    assert all(r[1] == str(cell) for r in rows[1:])
    assert "2 more file(s), every one named in" in out.stderr and "p.copies.csv" in out.stderr
    write_png(d / "field.png", synthetic_smear(n_wbc=2, seed=3)[0])
    shutil.copy(d / "field.png", d / "field (1).png")
    for _ in range(2):  # a resumed run names them all again
        out = run_wbc("analyze", str(d), "--model", str(model_file), "--segmenter", "classical", "--no-report",
                      "--output", str(tmp_path / "out"), "--threads", "1")
        assert out.returncode == 0, out.stderr
        rows = list(csv.reader((tmp_path / "out" / "copies.csv").open(encoding="utf-8-sig")))[1:]
        assert sorted(rows) == sorted([[str(d / n), str(cell)] for n in names]
                                      + [[str(d / "field (1).png"), str(d / "field.png")]])
        assert (tmp_path / "out" / "field.json").is_file() and not (tmp_path / "out" / "field (1).json").exists()


@pytest.mark.parametrize("ext", ["gif", "png", "webp"])
def test_an_animated_file_of_cells_is_flagged_like_a_tiff_stack(model_file: Path, tmp_path: Path, ext: str) -> None:
    """Three cells saved as an animated GIF, APNG or WebP were answered for the first frame, unflagged, the other two
    in no count and nothing said: flagged, with the frame count, as a multi-page TIFF is; a still file is not."""
    from PIL import Image

    from wbc.io import tiff_fields

    frames = [Image.fromarray(synthetic_cell(c, 96, seed=i))
              for i, c in enumerate(("neutrophil", "lymphocyte", "monocyte"))]
    frames[0].save(tmp_path / f"three.{ext}", save_all=True, append_images=frames[1:])
    frames[1].save(tmp_path / f"one.{ext}")
    assert tiff_fields((tmp_path / f"one.{ext}").read_bytes()) == 1
    res = classify_paths([tmp_path / f"three.{ext}", tmp_path / f"one.{ext}"], load_model(model_file, threads=1),
                         workers=1)
    three, one = res.predictions
    assert three.review and "the file holds 3 images; only the first was classified" in three.reasons
    assert not any("only the first" in r for r in one.reasons)
    assert (res.several_images_note() or "").startswith("1 of 2 files holds several images")


def test_classes_all_in_the_api_answers_among_every_class_whatever_with_classes_chose(model_file: Path,
                                                                                      tmp_path: Path) -> None:
    """``classify_images(..., classes="all")`` kept a ``with_classes("5part")`` label set, where "all" means every
    class (as ``/classify``'s ``classes=all``): it answers as the unrestricted classifier does, on every path."""
    from wbc.classify import classify_arrays

    cell = write_png(tmp_path / "a.png", synthetic_cell("neutrophil", 96, seed=1))
    clf = load_model(model_file, threads=1)
    plain = classify_paths([cell], clf, workers=1).predictions[0]
    restricted = clf.with_classes("basophil")
    assert classify_paths([cell], restricted, workers=1).predictions[0].label == "basophil"
    for res in (classify_paths([cell], restricted, workers=1, classes="all"),
                classify_arrays([cell.read_bytes()], restricted, workers=1, classes="all")):
        got = res.predictions[0]
        assert (got.label, got.confidence, got.reasons) == (plain.label, plain.confidence, plain.reasons)


def test_a_model_folder_and_a_fifo_input_are_named_as_what_they_are(model_file: Path, tmp_path: Path) -> None:
    """``--model runs/default`` (the run folder, not its model.onnx) said "model file not found", and a FIFO named
    as an input "no such file or folder": each message now names the real problem."""
    from wbc.errors import ModelError

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.onnx").write_bytes(model_file.read_bytes())
    with pytest.raises(ModelError, match=r"is a folder; give the model's \.onnx file \(it holds model\.onnx\)"):
        load_model(run, threads=1)
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageReadError, match=r"pipe\.jpg: not a regular file"):
        list(iter_image_paths([fifo]))
