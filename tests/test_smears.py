"""`wbc evaluate-smears` on labelled folders with a bad file in them: the other fields are still scored."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from wbc.errors import WbcError
from wbc.evaluate.smears import evaluate_smears, is_wbc_name, load_bccd, load_labelled_folder, read_voc_boxes
from wbc.types import Cell

BOX = (20, 20, 50, 50)


class OneCell:
    """A stand-in segmenter: one cell on the one WBC box of every field below."""

    name = model_id = "fake"

    def segment(self, rgb: np.ndarray) -> list[Cell]:
        m = np.ones((BOX[3] - BOX[1], BOX[2] - BOX[0]), bool)
        return [Cell(0, BOX, m, m, score=0.9)]


def _yolo_folder(root: Path, n: int = 4) -> Path:
    """``n`` 100 x 100 fields, each with one WBC box and a full-size mask of it."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("WBC\n")
    x0, y0, x1, y1 = BOX
    for i in range(n):
        cv2.imwrite(str(root / "images" / f"f{i}.jpg"), np.full((100, 100, 3), 200, np.uint8))
        (root / "labels" / f"f{i}.txt").write_text(f"0 {(x0 + x1) / 200} {(y0 + y1) / 200} {(x1 - x0) / 100} "
                                                   f"{(y1 - y0) / 100}\n")
        mask = np.zeros((100, 100), np.uint8)
        mask[y0:y1, x0:x1] = 128
        cv2.imwrite(str(root / "masks" / f"f{i}.png"), mask)
    return root


def test_a_truncated_field_is_listed_and_the_others_scored(tmp_path: Path) -> None:
    """One truncated JPEG among four fields lost the whole run (no metrics.json) before wbc 0.29.0."""
    folder = _yolo_folder(tmp_path / "yolo")
    (folder / "images" / "f2.jpg").write_bytes(b"\xff\xd8\xff truncated")
    m = evaluate_smears(tmp_path, tmp_path / "out", OneCell(), dataset=folder)
    on_disk = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert on_disk["n_images"] == 3 and len(on_disk["errors"]) == 1
    assert on_disk["errors"][0][0].endswith("f2.jpg") and "f2.jpg" in on_disk["errors"][0][1]
    assert m["detection"]["recall"] == 1.0 and m["detection"]["tp"] == 3
    assert "f2.jpg" in (tmp_path / "out" / "summary.md").read_text()
    from typer.testing import CliRunner

    from wbc.cli import app

    res = CliRunner().invoke(app, ["evaluate-smears", "--dataset", str(folder), "--no-classifier", "--segmenter",
                                   "classical", "-o", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert "3 images" in res.output and "f2.jpg" in res.output and (tmp_path / "cli" / "metrics.json").is_file()


def test_a_mask_of_another_size_is_named_not_a_broadcast_error(tmp_path: Path) -> None:
    """A mask saved at half the field's size raised numpy's broadcast ValueError (a traceback)."""
    folder = _yolo_folder(tmp_path / "yolo")
    cv2.imwrite(str(folder / "masks" / "f1.png"), np.zeros((50, 50), np.uint8))
    m = evaluate_smears(tmp_path, tmp_path / "out", OneCell(), dataset=folder)
    assert m["n_images"] == 3 and m["segmentation"]["n_images_with_masks"] == 3
    [(field, msg)] = m["errors"]
    assert field.endswith("f1.jpg") and msg.startswith(str(folder / "masks" / "f1.png")) and "50x50" in msg


def test_a_missing_or_bad_annotation_is_a_one_line_error(tmp_path: Path) -> None:
    """A BCCD split naming a field without its .xml raised FileNotFoundError, a non-numeric <xmin> ValueError."""
    bccd = tmp_path / "bccd"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (bccd / d).mkdir(parents=True)
    x0, y0, x1, y1 = BOX
    for name in ("BloodImage_00001", "BloodImage_00002"):
        cv2.imwrite(str(bccd / "JPEGImages" / f"{name}.jpg"), np.full((100, 100, 3), 200, np.uint8))
    (bccd / "Annotations" / "BloodImage_00001.xml").write_text(
        f"<annotation><object><name>WBC</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1 - 1}</xmax>"
        f"<ymax>{y1 - 1}</ymax></bndbox></object></annotation>")
    (bccd / "ImageSets" / "Main" / "test.txt").write_text("BloodImage_00001\nBloodImage_00002\n")
    with pytest.raises(WbcError, match=r"BloodImage_00002\.xml: annotation file not found"):
        load_bccd(tmp_path)
    m = evaluate_smears(tmp_path, tmp_path / "out", OneCell())
    assert m["n_images"] == 1 and m["detection"]["recall"] == 1.0
    assert [e[0] for e in m["errors"]] == [str(bccd / "JPEGImages" / "BloodImage_00002.jpg")]
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><object><name>WBC</name><bndbox><xmin>ten</xmin></bndbox></object></annotation>")
    with pytest.raises(WbcError, match=r"bad\.xml: a 'WBC' box has a coordinate that is not a number"):
        read_voc_boxes(bad)
    (bccd / "ImageSets" / "Main" / "test.txt").write_text("BloodImage_00002\n")
    with pytest.raises(WbcError, match="none of the 1 fields could be read"):
        evaluate_smears(tmp_path, tmp_path / "out2", OneCell())


def test_wbc_types_outside_the_eight_classes_are_wbc_boxes(tmp_path: Path) -> None:
    """Boxes named Blast, Atypical lymphocyte, ... were dropped from the truth, so their correct detections counted as
    false positives; names neither a WBC nor a red cell or platelet are now reported."""
    assert all(is_wbc_name(n) for n in ("Blast", "blast cell", "Myeloblast", "atypical lymphocyte",
                                        "Reactive_lymphocyte", "variant lymphocyte", "Plasma cells", "Smudge", "WBCs"))
    assert not any(is_wbc_name(n) for n in ("RBC", "Platelets", "Artifact"))
    cv2.imwrite(str(tmp_path / "field.jpg"), np.full((100, 100, 3), 200, np.uint8))
    boxes = {"Neutrophil": BOX, "Blast": (60, 60, 90, 90), "RBC": (1, 1, 9, 9), "Artifact": (1, 80, 9, 90)}
    (tmp_path / "field.xml").write_text("<annotation>" + "".join(
        f"<object><name>{n}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1 - 1}</xmax><ymax>{y1 - 1}"
        "</ymax></bndbox></object>" for n, (x0, y0, x1, y1) in boxes.items()) + "</annotation>")
    [item] = load_labelled_folder(tmp_path, None)
    assert len(item.wbc_boxes) == 2 and item.unknown_boxes == {"Artifact": 1}

    class TwoCells(OneCell):
        def segment(self, rgb: np.ndarray) -> list[Cell]:
            m = np.ones((30, 30), bool)
            return [*super().segment(rgb), Cell(1, (60, 60, 90, 90), m, m, score=0.8)]

    m = evaluate_smears(tmp_path, tmp_path / "out", TwoCells(), dataset=tmp_path)
    assert (m["detection"]["precision"], m["detection"]["recall"]) == (1.0, 1.0)
    assert m["unknown_box_names"] == {"Artifact": 1}
    assert "Artifact (1)" in (tmp_path / "out" / "summary.md").read_text()
    yolo = _yolo_folder(tmp_path / "yolo", n=1)
    (yolo / "classes.txt").write_text("WBC\nBlast\ndebris\nRBC\n")
    (yolo / "labels" / "f0.txt").write_text("1 0.75 0.75 0.3 0.3\n2 0.05 0.05 0.05 0.05\n2 0.1 0.9 0.05 0.05\n"
                                             "3 0.5 0.05 0.05 0.05\n")
    [item] = load_labelled_folder(yolo, None)
    assert len(item.wbc_boxes) == 1 and item.unknown_boxes == {"debris": 2}


def test_a_voc_folder_with_a_split_file_reads_boxes_named_by_cell_type(tmp_path: Path) -> None:
    """With the standard ``ImageSets/Main/<split>.txt`` only boxes named exactly ``WBC`` were read: a lab's
    Neutrophil/Blast boxes left the truth, every correct detection was a false positive, nothing was reported, and
    recall over no box read 1.000."""
    d = tmp_path / "voc"
    (d / "JPEGImages").mkdir(parents=True)
    (d / "Annotations").mkdir()
    cv2.imwrite(str(d / "JPEGImages" / "f1.jpg"), np.full((100, 100, 3), 200, np.uint8))
    boxes = {"Neutrophil": BOX, "Blast": (60, 60, 90, 90), "RBC": (1, 1, 9, 9), "Schistocyte": (1, 80, 9, 90)}
    (d / "Annotations" / "f1.xml").write_text("<annotation>" + "".join(
        f"<object><name>{n}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1 - 1}</xmax><ymax>{y1 - 1}"
        "</ymax></bndbox></object>" for n, (x0, y0, x1, y1) in boxes.items()) + "</annotation>")
    without = load_labelled_folder(d, "test", [])
    (d / "ImageSets" / "Main").mkdir(parents=True)
    (d / "ImageSets" / "Main" / "test.txt").write_text("f1\n")
    with_split = load_labelled_folder(d, "test", [])
    assert len(without[0].wbc_boxes) == len(with_split[0].wbc_boxes) == 2
    assert with_split[0].unknown_boxes == without[0].unknown_boxes == {"Schistocyte": 1}
    m = evaluate_smears(tmp_path, tmp_path / "out", OneCell(), dataset=d)
    assert (m["detection"]["tp"], m["detection"]["fn"], m["unknown_box_names"]) == (1, 1, {"Schistocyte": 1})


def test_recall_without_any_true_box_is_undefined_not_one(tmp_path: Path) -> None:
    """A folder with no WBC box at all read "recall 1.000" beside precision 0: recall and F1 are now null (n/a)."""
    folder = _yolo_folder(tmp_path / "yolo", n=1)
    (folder / "labels" / "f0.txt").write_text("")
    m = evaluate_smears(tmp_path, tmp_path / "out", OneCell(), dataset=folder)
    d = m["detection"]
    assert (d["precision"], d["recall"], d["f1"], d["ap50"]) == (0.0, None, None, None)
    assert m["detection_ignore_unannotated"]["recall"] is None
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| WBC recall @IoU0.5 | n/a (0 missed) |" in summary and "| WBC F1 | n/a |" in summary
    from typer.testing import CliRunner

    from wbc.cli import app

    res = CliRunner().invoke(app, ["evaluate-smears", "--dataset", str(folder), "--no-classifier", "--segmenter",
                                   "classical", "-o", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert "recall n/a F1 n/a" in res.output


def test_a_label_file_that_is_not_utf8_is_one_field_s_error(tmp_path: Path) -> None:
    """A YOLO label file with a Latin-1 comment raised UnicodeDecodeError: a traceback and no results for any field.
    Now that field is listed in ``errors``; a class-name file that is not UTF-8 ends the run in one line."""
    for n in ("a", "b"):
        cv2.imwrite(str(tmp_path / f"{n}.jpg"), np.full((100, 100, 3), 200, np.uint8))
    (tmp_path / "a.txt").write_text("0 0.35 0.35 0.3 0.3\n")
    (tmp_path / "b.txt").write_bytes("0 0.35 0.35 0.3 0.3  # gro\xdf\n".encode("latin-1"))
    (tmp_path / "classes.txt").write_text("WBC\ndebris\n")
    errors: list[tuple[str, str]] = []
    items = load_labelled_folder(tmp_path, None, errors)
    assert [i.name for i in items] == ["a"] and len(items[0].wbc_boxes) == 1
    [(field, msg)] = errors
    assert field.endswith("b.jpg") and msg.startswith(f"{tmp_path / 'b.txt'}: not a UTF-8 text file")
    from typer.testing import CliRunner

    from wbc.cli import app

    res = CliRunner().invoke(app, ["evaluate-smears", "--dataset", str(tmp_path), "--no-classifier", "--segmenter",
                                   "classical", "-o", str(tmp_path / "out")])
    assert res.exit_code == 0 and "b.txt: not a UTF-8 text file" in res.output, res.output
    assert (tmp_path / "out" / "metrics.json").is_file()
    (tmp_path / "classes.txt").write_bytes("WBC\nd\xe9bris\n".encode("latin-1"))
    with pytest.raises(WbcError, match=r"classes\.txt: not a UTF-8 text file"):
        load_labelled_folder(tmp_path, None, [])
    res = CliRunner().invoke(app, ["evaluate-smears", "--dataset", str(tmp_path), "--no-classifier", "--segmenter",
                                   "classical", "-o", str(tmp_path / "out2")])
    assert isinstance(res.exception, WbcError) and "classes.txt: not a UTF-8 text file" in str(res.exception)


def test_an_output_that_is_a_file_ends_the_run_in_one_line_before_any_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """-o naming an existing file gave a 40-line FileExistsError after every field had been segmented and classified
    (minutes on BCCD, lost). Now it is one line naming the path, before the segmenter is even made."""
    from typer.testing import CliRunner

    import wbc.segment
    from wbc.cli import app

    folder = _yolo_folder(tmp_path / "yolo", n=2)
    taken = tmp_path / "afile"
    taken.write_text("mine")

    class Untouchable(OneCell):
        def segment(self, rgb: np.ndarray) -> list[Cell]:
            raise AssertionError("a field was segmented before the output was checked")

    monkeypatch.setattr(wbc.segment, "get_segmenter", lambda *a, **k: Untouchable())
    res = CliRunner().invoke(app, ["evaluate-smears", "--dataset", str(folder), "--no-classifier", "-o", str(taken)])
    assert isinstance(res.exception, WbcError), res.exception
    assert str(taken) in str(res.exception) and "\n" not in str(res.exception)
    with pytest.raises(WbcError, match="afile"):
        evaluate_smears(tmp_path, taken, Untouchable(), dataset=folder)
    assert taken.read_text() == "mine"


def test_a_label_outside_the_classes_answered_among_is_counted_not_scored(tmp_path: Path) -> None:
    """evaluate-smears --classes neutrophil,lymphocyte named all 9 neutrophils and lymphocytes of 12 BCCD fields right
    and still read accuracy 0.75, macro-F1 0.61: the 3 eosinophils, which it can never answer, were scored as errors
    (the artefact wbc evaluate fixed in 0.27.0). They are now counted apart, with what they were called."""
    from wbc.evaluate.smears import BccdItem, evaluate_segmentation, summary_markdown

    folder = _yolo_folder(tmp_path / "yolo", n=5)
    labels = ["neutrophil", "neutrophil", "eosinophil", "neutrophil", "eosinophil"]
    items = [BccdItem(f"f{i}", folder / "images" / f"f{i}.jpg", [tuple(map(float, BOX))], None, lab)
             for i, lab in enumerate(labels)]
    truth = iter(labels)

    def classify(rgb: np.ndarray, cells: list[Cell]) -> list[str]:  # right within {neutrophil}, else neutrophil
        lab = next(truth)
        return [lab if lab == "neutrophil" else "neutrophil"]

    m = evaluate_segmentation(items, OneCell().segment, classify, label_set=("neutrophil",))
    sub = m["subtype"]
    assert (sub["n"], sub["accuracy"], sub["macro_f1"]) == (3, 1.0, 1.0)
    assert sub["not_scored"] == {"eosinophil": 2} and sub["not_scored_called"] == {"eosinophil": {"neutrophil": 2}}
    assert "eosinophil" not in sub["confusion"] and [r.get("scored", True) for r in m["per_image"]] == [
        True, True, False, True, False]
    m.update(dataset="x", split="val")
    assert "2 fields labelled outside the classes answered among (--classes) were not scored: eosinophil 2 (called " \
        "neutrophil 2)" in summary_markdown(m)
    # without a label set every labelled field is scored, as before
    truth = iter(labels)
    assert evaluate_segmentation(items, OneCell().segment, classify)["subtype"]["n"] == 5


def test_a_yolo_box_on_a_photo_turned_by_its_exif_is_placed_on_the_photo_as_shown(tmp_path: Path) -> None:
    """YOLO boxes are fractions of the photo as shown; a phone's JPEG stored 60 x 100 with "turn 90 degrees to show"
    is read as shown (100 x 60, :func:`wbc.io.read_image`), so its boxes are scaled by the shown sides."""
    from PIL import Image

    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("WBC\n")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (60, 100), (200, 200, 200)).save(root / "images" / "p.jpg", exif=exif)
    (root / "labels" / "p.txt").write_text("0 0.5 0.25 0.2 0.5\n")  # x 40-60 of 100, y 0-30 of 60, as shown
    [item] = load_labelled_folder(root, None)
    assert [tuple(round(v) for v in b) for b in item.wbc_boxes] == [(40, 0, 60, 30)]


def _voc_folder(d: Path, stems: list[str], ext: str = ".jpg", boxes: int = 1) -> Path:
    """A VOC folder of 100 x 100 fields, each with ``boxes`` copies of one WBC box."""
    (d / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (d / "Annotations").mkdir(exist_ok=True)
    x0, y0, x1, y1 = BOX
    for stem in stems:
        cv2.imwrite(str(d / "JPEGImages" / f"{stem}{ext}"), np.full((100, 100, 3), 200, np.uint8))
        (d / "Annotations" / f"{stem}.xml").write_text("<annotation>" + f"<object><name>WBC</name><bndbox><xmin>{x0}"
                                                       f"</xmin><ymin>{y0}</ymin><xmax>{x1 - 1}</xmax><ymax>{y1 - 1}"
                                                       "</ymax></bndbox></object>" * boxes + "</annotation>")
    return d


def test_a_voc_split_that_is_not_there_is_refused_not_every_field_scored(tmp_path: Path) -> None:
    """A VOC folder with train.txt and val.txt scored every field, training fields included, under the name of the
    split asked for (the default "test", or a typo) when that split's file was missing."""
    from typer.testing import CliRunner

    from wbc.cli import app

    d = _voc_folder(tmp_path / "voc", [f"f{i}" for i in range(6)])
    (d / "ImageSets" / "Main").mkdir(parents=True)
    (d / "ImageSets" / "Main" / "train.txt").write_text("f0\nf1\nf2\nf3\n")
    (d / "ImageSets" / "Main" / "val.txt").write_text("f4\nf5\n")
    for split in ("test", "vall"):
        with pytest.raises(WbcError, match=rf"voc: no split '{split}' \(ImageSets/Main/{split}\.txt; splits here: "
                                           r"train, val\); --split names one"):
            evaluate_smears(tmp_path, tmp_path / "o", OneCell(), split=split, dataset=d)
    m = evaluate_smears(tmp_path, tmp_path / "o2", OneCell(), split="val", dataset=d)
    assert (m["n_images"], m["split"]) == (2, "val") and [r["image"] for r in m["per_image"]] == ["f4", "f5"]
    res = CliRunner().invoke(app, ["evaluate-smears", "--dataset", str(d), "--no-classifier", "--segmenter",
                                   "classical", "-o", str(tmp_path / "cli")])
    assert isinstance(res.exception, WbcError) and "no split 'test'" in str(res.exception)
    # a folder that defines no split is read whole, and says so rather than naming a split
    for f in (d / "ImageSets" / "Main").iterdir():
        f.unlink()
    m = evaluate_smears(tmp_path, tmp_path / "o3", OneCell(), split="test", dataset=d)
    assert (m["n_images"], m["split"]) == (6, None)
    assert "every field (no splits) (6 images)" in (tmp_path / "o3" / "summary.md").read_text().splitlines()[0]


def test_a_yolo_split_that_is_not_there_is_named_with_the_splits_that_are(tmp_path: Path) -> None:
    """images/train/ and images/val/ without images/test/ gave "no labelled images found (expected a YOLO or Pascal
    VOC layout)", which names neither the split nor the folder's splits."""
    folder = _yolo_folder(tmp_path / "yolo", n=2)
    for sub in ("train", "val"):
        (folder / "images" / sub).mkdir()
        (folder / "labels" / sub).mkdir()
    for i, sub in enumerate(("train", "val")):
        (folder / "images" / f"f{i}.jpg").rename(folder / "images" / sub / f"f{i}.jpg")
        (folder / "labels" / f"f{i}.txt").rename(folder / "labels" / sub / f"f{i}.txt")
    with pytest.raises(WbcError, match=r"images: no split 'test' \(images/test/; splits here: train, val\)"):
        load_labelled_folder(folder, "test")
    [item] = load_labelled_folder(folder, "val")
    assert (item.name, item.split, len(item.wbc_boxes)) == ("f1", "val", 1)


def test_a_yolo_folder_whose_data_yaml_lists_its_splits_scores_the_split_alone(tmp_path: Path) -> None:
    """Ultralytics' list-file splits (data.yaml ``train: train.txt``, images flat in images/): ``--split val`` scored
    all four fields, three of them training fields, and summary.md said "every field (no splits)"."""
    folder = _yolo_folder(tmp_path / "yolo")
    (folder / "classes.txt").unlink()
    (folder / "train.txt").write_text("".join(f"./images/f{i}.jpg\n" for i in range(3)))
    (folder / "val.txt").write_text("./images/f3.jpg\n")
    (folder / "data.yaml").write_text("train: train.txt\nval: val.txt  # held out\ntest:\nnc: 1\nnames: ['WBC']\n")
    m = evaluate_smears(tmp_path, tmp_path / "o", OneCell(), split="val", dataset=folder)
    assert (m["split"], m["n_images"], [r["image"] for r in m["per_image"]]) == ("val", 1, ["f3"])
    assert m["detection"]["recall"] == 1.0  # labels/f3.txt found for ./images/f3.jpg
    assert "yolo val (1 images)" in (tmp_path / "o" / "summary.md").read_text().splitlines()[0]
    # a split data.yaml does not name (test: is empty) is refused in one line naming those it does
    with pytest.raises(WbcError, match=r"data\.yaml: no split 'test' \(splits here: train, val\); --split names one"):
        load_labelled_folder(folder, "test")
    assert len(load_labelled_folder(folder, None)) == 4  # no split asked: every field, as before


def test_list_files_written_on_another_machine_are_read_where_the_dataset_is_now(tmp_path: Path) -> None:
    """A data.yaml and list files with absolute paths from the machine the dataset was made on (Ultralytics writes
    them so): every listed field was "no such file" and none was scored."""
    folder = _yolo_folder(tmp_path / "yolo")
    (folder / "train.txt").write_text("".join(f"/home/me/datasets/yolo/images/f{i}.jpg\n" for i in range(3)))
    (folder / "val.txt").write_text("/home/me/datasets/yolo/images/f3.jpg\n")
    (folder / "data.yaml").write_text("train: /home/me/datasets/yolo/train.txt\nval: /home/me/datasets/yolo/val.txt\n"
                                      "nc: 1\nnames: ['WBC']\n")
    m = evaluate_smears(tmp_path, tmp_path / "o", OneCell(), split="val", dataset=folder)
    assert (m["n_images"], m["errors"], [r["image"] for r in m["per_image"]]) == (1, [], ["f3"])
    assert m["detection"]["recall"] == 1.0


def test_voc_fields_in_another_image_format_are_read_with_a_split_file(tmp_path: Path) -> None:
    """With ImageSets/Main/<split>.txt only JPEGImages/<name>.jpg was looked for: PNG fields were each "no such file"
    and the run ended, though the same folder without the split file was read."""
    d = _voc_folder(tmp_path / "voc", ["f0", "f1", "f2"], ext=".png")
    (d / "ImageSets" / "Main").mkdir(parents=True)
    (d / "ImageSets" / "Main" / "val.txt").write_text("f0\nf1\nf2\n")
    m = evaluate_smears(tmp_path, tmp_path / "o", OneCell(), split="val", dataset=d)
    assert (m["n_images"], m["errors"], m["detection"]["recall"]) == (3, [], 1.0)


def test_yolo_labels_beside_a_split_image_folder_are_found_and_none_at_all_is_an_error(tmp_path: Path) -> None:
    """images/val/ with its label files in labels/ (not labels/val/): no label file was found, every field read as
    having no WBC, and every detection counted as a false positive (precision 0) without a word."""
    folder = _yolo_folder(tmp_path / "yolo", n=3)
    (folder / "images" / "val").mkdir()
    for i in range(3):
        (folder / "images" / f"f{i}.jpg").rename(folder / "images" / "val" / f"f{i}.jpg")
    m = evaluate_smears(tmp_path, tmp_path / "o", OneCell(), split="val", dataset=folder)
    d = m["detection"]
    assert (m["n_images"], d["tp"], d["fp"], d["recall"]) == (3, 3, 0, 1.0)
    for f in (folder / "labels").glob("*.txt"):
        f.unlink()
    with pytest.raises(WbcError, match=r"labels: no label file for any of the 3 images"):
        evaluate_smears(tmp_path, tmp_path / "o2", OneCell(), split="val", dataset=folder)


@pytest.mark.parametrize(("saved", "data"), [
    ("bom", b"\xef\xbb\xbfimage,label\nf0,NEUTROPHIL\n"),
    ("semicolons", b"Image;Label\r\nf0;NEUTROPHIL\r\n"),
    ("tabs", b"image\tlabel\nf0\tNEUTROPHIL\n"),
    ("latin1", b"image,label\nf0,Lymphozyt \xe4hnlich\n"),
    ("other columns", b"file,class\nf0,NEUTROPHIL\n"),
], ids=["bom", "semicolons", "tabs", "latin1", "other-columns"])
def test_a_spreadsheet_saved_label_table_is_read_or_named_in_one_line(tmp_path: Path, saved: str, data: bytes) -> None:
    """single_wbc_labels.csv saved by a spreadsheet (a byte-order mark, ';' in a European locale, a Latin-1 byte) ended
    evaluate-smears in a KeyError or UnicodeDecodeError traceback; sources.csv with a Latin-1 byte too. They are now
    read as manifests are (wbc.data.sniff_delimiter), or refused in one line naming the file."""
    from typer.testing import CliRunner

    from wbc.cli import app

    d = _voc_folder(tmp_path / "voc", ["f0"])
    (d / "ImageSets" / "Main").mkdir(parents=True)
    (d / "ImageSets" / "Main" / "test.txt").write_text("f0\n")
    (d / "single_wbc_labels.csv").write_bytes(data)
    if saved in ("latin1", "other columns"):
        why = "not a UTF-8 text file" if saved == "latin1" else r"expected the columns image,label \(found file,class\)"
        with pytest.raises(WbcError, match=rf"single_wbc_labels\.csv: {why}"):
            load_labelled_folder(d, "test")
        res = CliRunner().invoke(app, ["evaluate-smears", "--dataset", str(d), "--no-classifier", "--segmenter",
                                       "classical", "-o", str(tmp_path / "o")])
        assert isinstance(res.exception, WbcError) and "single_wbc_labels.csv" in str(res.exception)
        return
    [item] = load_labelled_folder(d, "test")
    assert item.label == "neutrophil"


def test_a_latin1_sources_csv_is_one_line_naming_it_and_a_spreadsheet_s_is_read(tmp_path: Path) -> None:
    folder = _yolo_folder(tmp_path / "yolo", n=1)
    (folder / "sources.csv").write_bytes(b"stem,origin\nf0,Klinik K\xf6ln\n")
    with pytest.raises(WbcError, match=r"sources\.csv: not a UTF-8 text file"):
        load_labelled_folder(folder, None)
    (folder / "sources.csv").write_bytes("\ufeffStem;Origin\r\nf0;Klinik Köln\r\n".encode())
    [item] = load_labelled_folder(folder, None)
    assert item.origin == "Klinik Köln"


def test_a_box_listed_twice_is_one_wbc_in_a_voc_folder_as_in_a_yolo_one(tmp_path: Path) -> None:
    """read_yolo_boxes kept a box listed twice once, read_voc_boxes kept both: a perfect detection scored recall 0.5
    and AP 0.5 in a VOC folder and 1.0 in the same YOLO one."""
    voc = _voc_folder(tmp_path / "voc", ["f0"], boxes=2)
    yolo = _yolo_folder(tmp_path / "yolo", n=1)
    line = (yolo / "labels" / "f0.txt").read_text()
    (yolo / "labels" / "f0.txt").write_text(line * 2)
    for folder in (voc, yolo):
        d = evaluate_smears(tmp_path, tmp_path / f"o_{folder.name}", OneCell(), dataset=folder)["detection"]
        assert (d["tp"], d["fn"], d["recall"], d["ap50"]) == (1, 0, 1.0, 1.0), folder.name


def test_precision_without_detections_and_iou_without_matches_are_undefined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A segmenter that found nothing read "precision 1.000 (0 TP, 0 FP)" and "mean IoU of matched boxes 0.000" with
    none matched; both are now null, "n/a" in summary.md and on the terminal."""
    from typer.testing import CliRunner

    import wbc.segment
    from wbc.cli import app

    class NoCell(OneCell):
        def segment(self, rgb: np.ndarray) -> list[Cell]:
            return []

    d = _voc_folder(tmp_path / "voc", ["f0"])
    m = evaluate_smears(tmp_path, tmp_path / "o", NoCell(), dataset=d)
    det = m["detection"]
    assert (det["precision"], det["recall"], det["f1"], det["mean_iou_matched"]) == (None, 0.0, 0.0, None)
    assert m["detection_ignore_unannotated"]["precision"] is None
    summary = (tmp_path / "o" / "summary.md").read_text()
    assert "| WBC precision @IoU0.5 | n/a (0 TP, 0 FP) |" in summary
    assert "| mean IoU of matched boxes | n/a |" in summary
    assert "| precision, unboxed mask cells ignored | n/a (0 ignored) |" in summary
    monkeypatch.setattr(wbc.segment, "get_segmenter", lambda *a, **k: NoCell())
    res = CliRunner().invoke(app, ["evaluate-smears", "--dataset", str(d), "--no-classifier", "-o",
                                   str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert "WBC precision n/a recall 0.000" in res.output and "mean IoU n/a" in res.output


def test_one_wbc_boxed_twice_with_shifted_corners_is_one_wbc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TXL-PBC val c7e344a1 (BCD) boxes its one WBC as (199, 78, 404, 252) and (180, 95, 364, 252), IoU 0.67: a
    detection of the cell scored recall 0.5 (BCD val recall 0.957 instead of 0.978). The second box is merged, and
    metrics.json, summary.md and the terminal say so."""
    from typer.testing import CliRunner

    import wbc.segment
    from wbc.cli import app
    from wbc.evaluate.smears import evaluate_segmentation

    class Found(OneCell):
        def segment(self, rgb: np.ndarray) -> list[Cell]:
            return [Cell(1, (190, 80, 395, 252), np.ones((172, 205), bool), np.ones((172, 205), bool), score=0.9)]

    folder = tmp_path / "lab"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    cv2.imwrite(str(folder / "images" / "f.png"), np.full((416, 416, 3), 200, np.uint8))

    def yolo(b: tuple[int, int, int, int]) -> str:
        return f"0 {(b[0] + b[2]) / 832} {(b[1] + b[3]) / 832} {(b[2] - b[0]) / 416} {(b[3] - b[1]) / 416}\n"

    (folder / "labels" / "f.txt").write_text(yolo((199, 78, 404, 252)) + yolo((180, 95, 364, 252)))
    [item] = load_labelled_folder(folder, None)
    m = evaluate_segmentation([item], Found().segment)
    assert (m["detection"]["recall"], m["detection"]["tp"], m["detection"]["fp"]) == (1.0, 1, 0)
    assert (len(item.wbc_boxes), item.merged_boxes, m["merged_boxes"]) == (1, 1, 1)
    evaluate_smears(tmp_path, tmp_path / "o", Found(), dataset=folder)
    note = "1 WBC box overlapping another of its field at IoU >= 0.5 was read as the same cell's"
    assert note in (tmp_path / "o" / "summary.md").read_text()
    monkeypatch.setattr(wbc.segment, "get_segmenter", lambda *a, **k: Found())
    res = CliRunner().invoke(app, ["evaluate-smears", "--dataset", str(folder), "--no-classifier", "-o",
                                   str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert note in " ".join(res.output.split())


def test_two_wbcs_overlapping_a_little_stay_two() -> None:
    """Only a near-copy is merged: two WBCs' boxes in BCCD and TXL-PBC overlap by IoU 0.12 at most."""
    from wbc.evaluate.smears import merge_same_cell

    a, b = (0.0, 0.0, 100.0, 100.0), (70.0, 0.0, 170.0, 100.0)  # IoU 0.18
    assert merge_same_cell([a, b]) == ([a, b], 0)


@pytest.mark.real_data
def test_txl_pbc_test_scores_leave_out_the_fields_wbc_trained_on(real_data: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """12 of TXL-PBC test's 84 fields are byte copies of BCCD *train* images, which the shipped detector and U-Net train
    on: `wbc evaluate-smears` and `benchmarks/smear_detection.py --split test` scored them (the documented test numbers
    were partly training numbers), while `--split val` of the benchmark left its 26 out. Both leave them out of any
    split but a training one, and say how many."""
    import sys

    from typer.testing import CliRunner

    import wbc.segment
    from wbc.cli import app
    from wbc.io import file_sha1

    txl = real_data / "txl_pbc"
    m = evaluate_smears(real_data, tmp_path / "o", OneCell(), split="test", dataset=txl)
    assert m["n_images"] == 71  # of 84: 12 byte copies, 1 resized (since wbc 0.34.0)
    from wbc.evaluate.smears import trained_on, without_trained_fields

    _, hashes = trained_on(real_data)
    assert len(m["trained_on_left_out"]) == 13
    images = {it.name: it.image for it in load_labelled_folder(txl, "test")}
    assert [r["image"] for r in m["per_image"] if file_sha1(images[r["image"]]) in hashes] == []
    summary = (tmp_path / "o" / "summary.md").read_text()
    assert "13 fields were left out: copies (byte for byte or resized) of fields" in " ".join(summary.split())
    monkeypatch.setattr(wbc.segment, "get_segmenter", lambda *a, **k: OneCell())
    res = CliRunner().invoke(app, ["evaluate-smears", "--dataset", str(txl), "--data-root", str(real_data),
                                   "--no-classifier", "-o", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert "13 fields were left out" in " ".join(res.output.split())

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from smear_detection import scored_fields

    for split, n_left in (("test", 13 + 5), ("val", 35 + 15)):  # the benchmark's documented counts (TXL-PBC + BCCD)
        fields, bccd, left = scored_fields(real_data, split, ["bccd", "bcd", "pbc"])
        assert left == n_left
        assert [it.name for it in fields + bccd if file_sha1(it.image) in hashes] == []
    train = load_bccd(real_data, "train")
    assert without_trained_fields(train, real_data, "train") == (train, None)  # a training split is scored whole


def _partial_root(root: Path) -> Path:
    """A data root with BCCD's split lists and TXL-PBC's ``sources.csv`` but none of TXL-PBC's train images (a lab that
    keeps only part of the public data), BCCD train's one field annotated."""
    main = root / "bccd" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for split, name in (("train", "BloodImage_00001"), ("val", "BloodImage_00002"), ("test", "BloodImage_00003")):
        (main / f"{split}.txt").write_text(f"{name}\n")
    (root / "bccd" / "Annotations").mkdir()
    (root / "bccd" / "JPEGImages").mkdir()
    (root / "bccd" / "Annotations" / "BloodImage_00001.xml").write_text(
        "<annotation><object><name>WBC</name><bndbox><xmin>20</xmin><ymin>20</ymin><xmax>50</xmax><ymax>50</ymax>"
        "</bndbox></object></annotation>")
    rng = np.random.default_rng(1)
    cv2.imwrite(str(root / "bccd" / "JPEGImages" / "BloodImage_00001.jpg"),
                np.clip(cv2.GaussianBlur(rng.random((120, 160, 3)), (0, 0), 6) * 2000 - 900, 0, 255).astype(np.uint8))
    (root / "txl_pbc").mkdir()
    (root / "txl_pbc" / "sources.csv").write_text("stem,split,origin,bccd_image\nmissing-field,train,pbc,\n")
    return root


def test_a_partial_data_root_still_scores_a_lab_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A data root missing TXL-PBC's train images lost `evaluate-smears --dataset` of a lab's own folder to a
    FileNotFoundError traceback: a training field that cannot be read is simply not a known copy, and a note says
    so."""
    from typer.testing import CliRunner

    import wbc.segment
    from wbc.cli import app

    root = _partial_root(tmp_path / "root")
    folder = _yolo_folder(tmp_path / "lab", 3)
    monkeypatch.setattr(wbc.segment, "get_segmenter", lambda *a, **k: OneCell())
    res = CliRunner().invoke(app, ["evaluate-smears", "--dataset", str(folder), "--data-root", str(root),
                                   "--no-classifier", "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["n_images"] == 3 and m["trained_on_left_out"] == []
    assert "missing-field.jpg" in m["trained_on_not_checked"]
    assert "1 training field under the data root could not be read" in " ".join(res.output.split())


def test_resized_and_byte_copies_of_training_fields_are_left_out_for_trained_segmenters_only(tmp_path: Path) -> None:
    """A training field resized (TXL-PBC's BCD fields are BCCD images resized to 416x416) has other bytes, so the
    SHA-1 check scored it as held out; and `--segmenter classical`, trained on nothing, lost the copies too."""
    root = _partial_root(tmp_path / "root")
    (root / "txl_pbc" / "images" / "train").mkdir(parents=True)  # a whole data root here
    cv2.imwrite(str(root / "txl_pbc" / "images" / "train" / "missing-field.jpg"),
                np.tile(np.linspace(0, 255, 160, dtype=np.uint8)[None, :, None], (120, 1, 3)))
    train = cv2.imread(str(root / "bccd" / "JPEGImages" / "BloodImage_00001.jpg"))
    folder = _yolo_folder(tmp_path / "lab", 3)
    cv2.imwrite(str(folder / "images" / "f0.jpg"), cv2.resize(train, (104, 104), interpolation=cv2.INTER_AREA))
    (folder / "images" / "f1.jpg").write_bytes((root / "bccd" / "JPEGImages" / "BloodImage_00001.jpg").read_bytes())
    for name in ("f0", "f1"):  # other sizes than their masks
        (folder / "masks" / f"{name}.png").unlink()
    m = evaluate_smears(root, tmp_path / "o", OneCell(), dataset=folder)
    assert sorted(m["trained_on_left_out"]) == ["f0", "f1"] and m["n_images"] == 1
    assert m["trained_on_not_checked"] is None

    class Classical(OneCell):
        name = "classical"

    m = evaluate_smears(root, tmp_path / "o2", Classical(), dataset=folder)
    assert m["n_images"] == 3 and m["trained_on_left_out"] is None
    assert "copies of training fields were kept" in m["trained_on_not_checked"]
    m = evaluate_smears(root, tmp_path / "o3", OneCell(), dataset=folder, keep_training_copies=True)
    assert m["n_images"] == 3


@pytest.mark.real_data
def test_resized_copies_of_training_fields_are_left_out(real_data: Path) -> None:
    """TXL-PBC's BCD fields are BCCD images resized to 416x416: 5965cf7e is BCCD train 00309, and TXL-PBC train holds
    five BCCD test images resized; the thumbnails of copies (<= 0.55) and of distinct fields (>= 3.06) stay apart."""
    from wbc.evaluate.smears import without_trained_fields

    _, left = without_trained_fields(load_labelled_folder(real_data / "txl_pbc", "test"), real_data, "test")
    assert "5965cf7e-14d0-5afc-9fde-6991173e60f1" in (left or []) and len(left or []) == 13
    _, left = without_trained_fields(load_bccd(real_data, "test"), real_data, "test")
    assert sorted(left or []) == ["BloodImage_00225", "BloodImage_00284", "BloodImage_00296", "BloodImage_00319",
                                  "BloodImage_00385"]
    from wbc.evaluate.smears import COPY_DISTANCE, field_thumbnail

    jpg = real_data / "bccd" / "JPEGImages"
    a, b = field_thumbnail(jpg / "BloodImage_00037.jpg"), field_thumbnail(jpg / "BloodImage_00038.jpg")
    assert a is not None and b is not None and float(np.abs(a - b).mean()) > 2 * COPY_DISTANCE  # two views, not a copy


def test_a_field_named_in_latin1_or_under_4_px_is_scored_or_named_never_a_crash(tmp_path: Path) -> None:
    """Looking for copies of training fields opened each field by name through OpenCV, which crashed the process
    (SIGSEGV, exit 139, nothing written) on a name that is no UTF-8 (``café.jpg`` saved in Latin-1), and a field 3 px
    high was a cv2.error traceback. The Latin-1 field is scored, the strip is its own one-line error (`wbc analyze`
    refuses it too), the others are scored. In a subprocess: the crash killed the process."""
    import os
    import subprocess
    import sys

    root = _partial_root(tmp_path / "root")
    (root / "txl_pbc" / "images" / "train").mkdir(parents=True)
    cv2.imwrite(str(root / "txl_pbc" / "images" / "train" / "missing-field.jpg"), np.full((120, 160, 3), 90, np.uint8))
    folder = _yolo_folder(tmp_path / "lab", 2)
    latin1 = Path(os.fsdecode(bytes(folder / "images") + b"/caf\xe9.jpg"))
    (folder / "images" / "f1.jpg").rename(latin1)
    (folder / "labels" / "f1.txt").rename(latin1.parent.parent / "labels" / f"{latin1.stem}.txt")
    (folder / "masks" / "f1.png").rename(latin1.parent.parent / "masks" / f"{latin1.stem}.png")
    cv2.imwrite(str(folder / "images" / "strip.png"), np.full((3, 1500, 3), 200, np.uint8))
    (folder / "labels" / "strip.txt").write_text("")
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "sys.path.insert(0, sys.argv[4])\n"
        "from test_smears import OneCell\n"
        "from wbc.evaluate.smears import evaluate_smears, field_thumbnail\n"
        "m = evaluate_smears(Path(sys.argv[1]), Path(sys.argv[3]), OneCell(), dataset=Path(sys.argv[2]))\n"
        "strip = field_thumbnail(Path(sys.argv[2]) / 'images' / 'strip.png')\n"
        "print(json.dumps([m['n_images'], m['errors'], m['trained_on_left_out'], strip is None]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(root), str(folder), str(tmp_path / "out"),
                        str(Path(__file__).parent)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-1000:])
    n, errors, left_out, no_thumbnail = json.loads(r.stdout.splitlines()[-1])
    assert n == 2 and left_out == [] and no_thumbnail  # f0 and the Latin-1 field scored
    assert len(errors) == 1 and errors[0][0].endswith("strip.png")
    assert errors[0][1].endswith("strip.png: 1500x3 is too small to hold a cell (minimum side 32 px)")
    from wbc.evaluate.smears import field_thumbnail

    thumb = field_thumbnail(latin1)
    assert thumb is not None and thumb.shape == (32, 32)


def test_a_byte_order_mark_in_classes_txt_or_a_label_file_is_read_past(tmp_path: Path) -> None:
    """Notepad's and Excel's "UTF-8 with BOM" left U+FEFF in the text: a classes.txt starting with it refused the run
    ("no WBC class among ['\\ufeffWBC', 'RBC']"), a label file starting with it lost its field ("expected 'class cx cy
    w h', got '\\ufeff0 ...'")."""
    folder = _yolo_folder(tmp_path / "lab", 1)
    (folder / "classes.txt").write_bytes("\ufeffWBC\nRBC\n".encode())
    label = folder / "labels" / "f0.txt"
    label.write_bytes(b"\xef\xbb\xbf" + label.read_bytes() + b"1 0.8 0.8 0.1 0.1\n")
    errors: list[tuple[str, str]] = []
    (item,) = load_labelled_folder(folder, None, errors)
    assert errors == [] and item.wbc_boxes == [pytest.approx(tuple(float(v) for v in BOX))]


def _two_class_yolo(folder: Path, data_yaml: bytes) -> Path:
    """One 200 x 100 field holding a class-0 box on its left and a class-1 box on its right."""
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    cv2.imwrite(str(folder / "images" / "a.png"), np.full((100, 200, 3), 200, np.uint8))
    (folder / "labels" / "a.txt").write_text("0 0.2 0.5 0.2 0.2\n1 0.7 0.5 0.2 0.2\n")
    (folder / "data.yaml").write_bytes(data_yaml)
    return folder


@pytest.mark.parametrize("data_yaml", [
    b"nc: 2\nnames: {0: RBC, 1: WBC}\n",  # a map in braces: read as no names, so class 0 (RBC) was the WBC
    b"nc: 2\nnames:\n  # the cell types\n  0: RBC\n  1: WBC\n",  # a comment line: read as a class name
    b"names:\n  1: WBC\n  0: RBC\n",  # keys out of order: read by position
    b"names:\n  0: RBC  # red\n  1: WBC  # white\n",  # trailing comments: 'WBC  # white', no WBC class
    b"\xef\xbb\xbfnames: [RBC, WBC]\n",  # a byte-order mark before names: read as no names
    b"names:\n- RBC\n- 'WBC'\n",
], ids=["flow map", "comment line", "keys out of order", "trailing comments", "bom", "block list"])
def test_data_yaml_class_names_are_read_as_yaml_reads_them(tmp_path: Path, data_yaml: bytes) -> None:
    """wbc's own small YAML reader misread valid data.yaml files that Ultralytics reads right, and where it read no
    names it took class 0 for the WBC: six BCCD test fields whose RBCs were class 0 scored recall 0 with every WBC
    found. Only the class-1 (WBC) box is the truth here."""
    (item,) = load_labelled_folder(_two_class_yolo(tmp_path / "lab", data_yaml), None)
    assert item.wbc_boxes == [(120.0, 40.0, 160.0, 60.0)]


@pytest.mark.parametrize(("data_yaml", "said"), [
    (b"names: {0: RBC, 2: WBC}\n", "names: the keys must be the class ids 0 to 1 (found 0, 2)"),
    (b"names: WBC\n", "names: neither a list of class names nor a map of class ids to names (got 'WBC')"),
    (b"names: [RBC, WBC\n", "not readable YAML (line 2: "),
    (b"- RBC\n- WBC\n", "not a YOLO data.yaml"),
    (b"names: [RBC, WBC]\nval: {a: 1}\n", "val: neither a path nor a list of paths"),
])
def test_data_yaml_names_that_cannot_be_read_end_the_run_in_one_line(tmp_path: Path, data_yaml: bytes,
                                                                     said: str) -> None:
    """Names wbc cannot read are no longer "no names, so class 0 is the WBC": one line naming data.yaml."""
    folder = _two_class_yolo(tmp_path / "lab", data_yaml)
    with pytest.raises(WbcError) as exc:
        load_labelled_folder(folder, "val")
    assert str(exc.value).startswith(f"{folder / 'data.yaml'}: ") and said in str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_yolo_segmentation_line_is_its_polygon_s_bounding_box(tmp_path: Path) -> None:
    """Roboflow's and Ultralytics' segmentation exports write 'class x1 y1 x2 y2 x3 y3 ...': its first two points were
    read as a box's centre and size, without a word (six BCCD test fields so labelled scored recall 0 with every WBC
    found). As Ultralytics reads it, a line of more than 6 numbers is a polygon and its box the polygon's bounds; a
    polygon with a coordinate missing is that field's one-line error."""
    folder = _yolo_folder(tmp_path / "lab", 2)
    (folder / "labels" / "f0.txt").write_text("0 0.20 0.25 0.50 0.20 0.45 0.50 0.25 0.45\n")  # box (20, 20, 50, 50)
    (folder / "labels" / "f1.txt").write_text("0 0.20 0.25 0.50 0.20 0.45 0.50 0.25\n")
    errors: list[tuple[str, str]] = []
    (item,) = load_labelled_folder(folder, None, errors)
    assert item.wbc_boxes == [pytest.approx(tuple(float(v) for v in BOX))]
    assert len(errors) == 1 and "f1.txt:1: expected 'class cx cy w h' or a polygon" in errors[0][1]


def test_a_16_bit_mask_reads_as_the_8_bit_one_and_a_label_map_is_named(tmp_path: Path) -> None:
    """A 16-bit mask (cytoplasm 128 x 257 = 32896) read its cytoplasm as nucleus (nucleus Dice 0.28 for 0.50), and a
    0/1/2 label map read as no cell at all (Dice 0 on every field), without a word. The label map is now the field's
    one-line error, the other fields scored."""
    from wbc.evaluate.smears import read_gt_mask

    lab = np.zeros((40, 40), np.uint8)
    lab[5:35, 5:35] = 1
    lab[15:25, 15:25] = 2
    for name, levels in (("m16.png", [0, 32896, 65535]), ("m8in16.png", [0, 128, 255])):
        cv2.imwrite(str(tmp_path / name), np.choose(lab, levels).astype(np.uint16))
        nucleus, cell = read_gt_mask(tmp_path / name)
        assert nucleus.sum() == 100 and cell.sum() == 900, name
    folder = _yolo_folder(tmp_path / "lab", 2)
    label_map = np.zeros((100, 100), np.uint8)
    label_map[BOX[1]:BOX[3], BOX[0]:BOX[2]] = 1
    label_map[30:40, 30:40] = 2
    cv2.imwrite(str(folder / "masks" / "f1.png"), label_map)
    m = evaluate_smears(tmp_path, tmp_path / "out", OneCell(), dataset=folder)
    assert m["n_images"] == 1 and m["segmentation"]["cell_dice"] == 1.0
    assert len(m["errors"]) == 1 and m["errors"][0][0].endswith("f1.jpg")
    assert m["errors"][0][1] == (f"{folder / 'masks' / 'f1.png'}: a label map (values 0, 1, 2), not a mask of grey "
                                 "levels 0 background, 128 cytoplasm, 255 nucleus: which label is the nucleus cannot "
                                 "be told; save it with those levels")


def _voc_object(name: str, difficult: int, box: tuple[int, int, int, int]) -> str:
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{box[0]}</xmin>"
            f"<ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>")


@pytest.mark.parametrize("with_split", [False, True], ids=["flat", "split file"])
def test_a_voc_box_marked_difficult_is_neither_missed_nor_a_false_detection(tmp_path: Path, with_split: bool) -> None:
    """VOC's evaluation leaves ``<difficult>1</difficult>`` objects out (LabelImg writes the flag from a checkbox): a
    difficult WBC not found was counted missed (recall 0.75 where VOC's devkit says 1.0), and a detection of one was
    a false positive. Field a: a WBC found, a difficult one not found; field b: a WBC found, a difficult one found
    twice."""
    from wbc.evaluate.smears import evaluate_segmentation, summary_markdown

    folder = tmp_path / "voc"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True)
    hard = {"a": (170, 60, 199, 99), "b": (100, 10, 139, 49)}
    for name in ("a", "b"):
        cv2.imwrite(str(folder / "JPEGImages" / f"{name}.png"), np.full((100, 200, 3), 220, np.uint8))
        (folder / "Annotations" / f"{name}.xml").write_text(
            f"<annotation>{_voc_object('WBC', 0, (10, 10, 49, 49))}{_voc_object('WBC', 1, hard[name])}</annotation>")
    if with_split:
        (folder / "ImageSets" / "Main" / "test.txt").write_text("a\nb\n")
    else:
        (folder / "ImageSets" / "Main").rmdir()
    items = load_labelled_folder(folder, "test" if with_split else None)
    found = {"a": [((10, 10, 50, 50), 0.8)],
             "b": [((10, 10, 50, 50), 0.6), ((100, 10, 140, 50), 0.9), ((101, 11, 140, 50), 0.7)]}
    fields = iter(items)

    def segment(rgb: np.ndarray) -> list[Cell]:
        out = []
        for box, score in found[next(fields).name]:
            m = np.ones((box[3] - box[1], box[2] - box[0]), bool)
            out.append(Cell(len(out), box, m, m, score=score))
        return out

    m = evaluate_segmentation(items, segment)
    d = m["detection"]
    assert (d["tp"], d["fp"], d["fn"], d["recall"], d["precision"], d["ap50"]) == (2, 0, 0, 1.0, 1.0, 1.0)
    assert m["difficult_boxes"] == 2 and d["ignored_on_difficult_boxes"] == 2
    assert m["detection_ignore_unannotated"]["fp"] == 0
    assert ("2 WBC boxes marked difficult (VOC) were neither WBCs to find nor false detections: 2 detections on them "
            "were not scored.") in summary_markdown(m)


@pytest.mark.parametrize("layout", ["yolo", "voc"])
def test_a_folder_whose_wbc_boxes_are_named_by_subtype_gets_end_to_end_subtype_scores(tmp_path: Path,
                                                                                       layout: str) -> None:
    """The help and README promised end-to-end subtypes on any YOLO or VOC folder, but every --dataset field's label
    was None: a folder boxing its one WBC a field as "Neutrophil" or "Lymphocyte" got no subtype line, and the
    classifier ran for nothing. A field's one WBC box named by a subtype is now its label; a field of two WBCs, or one
    boxed "WBC", has none; a run that scores no subtype says why."""
    from wbc.evaluate.smears import evaluate_segmentation

    fields = {"f0": ["Neutrophil"], "f1": ["Lymphocyte"], "f2": ["WBC"], "f3": ["Neutrophil", "Lymphocyte"]}
    other = (70, 70, 90, 90)  # a second WBC's box
    folder = _yolo_folder(tmp_path / "lab", 4)
    if layout == "yolo":
        classes = ["Neutrophil", "Lymphocyte", "WBC"]
        (folder / "classes.txt").write_text("\n".join(classes) + "\n")
        for name, boxed in fields.items():
            lines = [f"{classes.index(n)} {(b[0] + b[2]) / 200} {(b[1] + b[3]) / 200} {(b[2] - b[0]) / 100} "
                     f"{(b[3] - b[1]) / 100}" for n, b in zip(boxed, (BOX, other), strict=False)]
            (folder / "labels" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    else:  # the same boxes as flat VOC files beside the images
        for name, boxed in fields.items():
            (folder / "images" / f"{name}.jpg").rename(folder / f"{name}.jpg")
            objs = "".join(_voc_object(n, 0, (b[0], b[1], b[2] - 1, b[3] - 1))
                           for n, b in zip(boxed, (BOX, other), strict=False))
            (folder / f"{name}.xml").write_text(f"<annotation>{objs}</annotation>")
        import shutil

        for sub in ("images", "labels", "masks"):
            shutil.rmtree(folder / sub)
        (folder / "classes.txt").unlink()
    items = load_labelled_folder(folder, None)
    assert {it.name: it.label for it in items} == {"f0": "neutrophil", "f1": "lymphocyte", "f2": None, "f3": None}
    from wbc.evaluate.smears import no_subtype_note

    called = iter(["neutrophil", "neutrophil"])
    m = evaluate_segmentation(items, OneCell().segment, lambda rgb, cells: [next(called) for _ in cells])
    assert m["subtype"]["n"] == 2 and m["subtype"]["accuracy"] == 0.5 and no_subtype_note(m) == ""
    assert no_subtype_note({"subtype": {"n": 0, "not_scored": {}}}).startswith("no subtype was scored: no field has")


def test_a_field_boxed_as_a_wbc_type_outside_the_classes_is_counted_not_scored(tmp_path: Path) -> None:
    """A field whose one WBC box is named Blast (Plasma cell, Smudge cell: WBC types no class names) has a subtype
    label; it was left out of the subtype score without a word ("label": null, the n shrinking), and a folder of such
    fields alone was told it had no subtype label and to box its WBCs by subtype, which it did (wbc 0.36.0 before
    release). It is counted in not_scored under its name, in metrics.json, summary.md and the terminal's note."""
    import shutil

    from typer.testing import CliRunner

    from wbc.cli import app
    from wbc.evaluate.smears import evaluate_segmentation, no_subtype_note, not_scored_note, summary_markdown

    folder = _yolo_folder(tmp_path / "lab", 2)
    for name, boxed in {"f0": "Neutrophil", "f1": "Blast"}.items():  # a flat VOC folder
        (folder / "images" / f"{name}.jpg").rename(folder / f"{name}.jpg")
        (folder / f"{name}.xml").write_text(
            f"<annotation>{_voc_object(boxed, 0, (BOX[0], BOX[1], BOX[2] - 1, BOX[3] - 1))}</annotation>")
    for sub in ("images", "labels", "masks"):
        shutil.rmtree(folder / sub)
    (folder / "classes.txt").unlink()
    items = load_labelled_folder(folder, None)
    m = evaluate_segmentation(items, OneCell().segment, lambda rgb, cells: ["neutrophil" for _ in cells])
    sub = m["subtype"]
    assert (sub["n"], sub["not_scored"], sub["not_scored_called"]) == (1, {"Blast": 1}, {"Blast": {"neutrophil": 1}})
    assert [(r["label"], r.get("scored", True)) for r in m["per_image"]] == [("neutrophil", True), ("Blast", False)]
    said = "1 field labelled with a WBC type outside the model's classes was not scored: Blast 1 (called neutrophil 1)"
    assert not_scored_note(sub) == said and said in summary_markdown(m)
    m = evaluate_segmentation([it for it in items if it.name == "f1"], OneCell().segment,
                              lambda rgb, cells: ["neutrophil" for _ in cells])
    assert (m["subtype"]["n"], no_subtype_note(m)) == (0, "")
    (folder / "f0.jpg").unlink()
    out = CliRunner().invoke(app, ["evaluate-smears", "--dataset", str(folder), "--segmenter", "classical",
                                   "--output", str(tmp_path / "ev")]).output
    out = " ".join(out.split())
    assert "no field has a subtype label" not in out and "with a WBC type outside the model's classes" in out, out
