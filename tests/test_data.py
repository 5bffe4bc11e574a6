from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from wbc.data import read_manifest, scan_folder, stratified_split, write_manifest
from wbc.errors import WbcError
from wbc.labels import CLASSES, canonical_label, parse_mapping
from wbc.synthetic import make_dataset


@pytest.mark.parametrize(("raw", "want"), [
    ("NEUTROPHIL", "neutrophil"), ("Eosinophils", "eosinophil"), ("IG", "ig"), ("lymphocytes", "lymphocyte"),
    ("Immature_Granulocytes", "ig"), ("platelets", "platelet"), ("RBC", None), ("", None),
])
def test_canonical_labels(raw: str, want: str | None) -> None:
    assert canonical_label(raw) == want


@pytest.mark.parametrize(("raw", "want"), [
    ("eosi", "eosinophil"), ("lymp", "lymphocyte"), ("mixt", None),  # LISC's folders
    ("NGS", "neutrophil"), ("NGB", "neutrophil"), ("LYT", "lymphocyte"), ("MON", "monocyte"), ("EBO", "erythroblast"),
    ("MYB", "ig"), ("LYA", None), ("MYO", None),  # Matek's: atypical lymphocytes and blasts are not guessed
    ("Neutrophil, segmented", "neutrophil"), ("Neutrophil, band", "neutrophil"), ("Metamyelocyte", "ig"),
    ("Lymphocyte, variant form", None), ("Large Lymph", "lymphocyte"), ("small_lymphocytes", "lymphocyte"),
    ("SNE", "neutrophil"), ("band cells", "neutrophil"), ("small cells", None), ("neutrophil/eosinophil", None),
    ("Immature granulocytes (IG)", "ig"), ("IG (immature granulocytes)", "ig"),
    ("erythroblasts (NRBC)", "erythroblast"), ("NRBC (nucleated red blood cells)", "erythroblast"),
    ("Immature granulocytes, lymphocytes", None),
])
def test_public_datasets_spellings_are_known_and_ambiguous_ones_are_not_guessed(raw: str, want: str | None) -> None:
    assert canonical_label(raw) == want


def test_mapping_renames_before_canonicalising() -> None:
    m = parse_mapping(["band=neutrophil", "SEG = neutrophil"])
    assert canonical_label("band", m) == "neutrophil" and canonical_label("seg", m) == "neutrophil"
    with pytest.raises(ValueError, match="OLD=NEW"):
        parse_mapping(["oops"])


def test_scan_maps_folders_and_reports_strays(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", n_per_class=3, size=32, classes=["neutrophil", "lymphocyte"])
    (root / "neutrophil").rename(root / "NEUTROPHILS")
    (root / "mystery").mkdir()
    (root / "mystery" / "x.png").write_bytes(b"x")
    (root / "Monocyte").mkdir()
    (root / "lymphocyte" / "readme.txt").write_text("hi")
    res = scan_folder(root)
    assert res.counts() == Counter({"neutrophil": 3, "lymphocyte": 3})
    reasons = {Path(p).name: r for p, r in res.skipped}
    assert reasons == {"mystery": "unknown class folder", "Monocyte": "empty class folder",
                       "readme.txt": "not an image file"}


def test_scan_errors_clearly_on_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(WbcError, match="dataset folder not found"):
        scan_folder(tmp_path / "nope")
    with pytest.raises(WbcError, match="no images"):
        scan_folder(tmp_path)


def test_split_is_stratified_seeded_and_keeps_duplicates_together(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", n_per_class=20, size=24, classes=["neutrophil", "lymphocyte"])
    for i in range(5):  # exact copies of one file under new names
        shutil.copy(root / "neutrophil" / "neutrophil_000.png", root / "neutrophil" / f"dup_{i}.png")
    samples = scan_folder(root).samples
    a = stratified_split(samples, seed=3)
    b = stratified_split(samples, seed=3)
    assert [(s.path, s.split) for s in a] == [(s.path, s.split) for s in b]
    assert [s.split for s in stratified_split(samples, seed=4)] != [s.split for s in a]
    splits = {s.path.name: s.split for s in a}
    assert len({splits[f"dup_{i}.png"] for i in range(5)} | {splits["neutrophil_000.png"]}) == 1
    lym = Counter(s.split for s in a if s.label == "lymphocyte")
    assert lym == {"train": 14, "val": 3, "test": 3}


def test_folds_cover_train_and_val_only(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", n_per_class=20, size=24, classes=["neutrophil"])
    s = stratified_split(scan_folder(root).samples, folds=4)
    assert {x.fold for x in s if x.split == "test"} == {-1}
    assert Counter(x.fold for x in s if x.split != "test") == {0: 5, 1: 4, 2: 4, 3: 4}


def test_folds_are_balanced_across_classes(tmp_path: Path) -> None:
    """Each class's fold count restarted at 0, so every class's remainder went to the first folds: seven classes of
    six cells gave folds of 15, 15 and 7 (balanced: 12-13), and a class of two cells was missing from the last; seven
    classes of seven gave 21, 14 and 14."""
    classes = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil"]
    root = make_dataset(tmp_path / "d", n_per_class=7, size=24, classes=classes)
    s = stratified_split(scan_folder(root).samples, fractions=(1.0, 0.0, 0.0), folds=3)
    sizes = Counter(x.fold for x in s)
    assert sum(sizes.values()) == 49 and max(sizes.values()) - min(sizes.values()) <= 1


def test_manifest_roundtrip_relative_to_root(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", n_per_class=4, size=24, classes=["monocyte"])
    s = stratified_split(scan_folder(root).samples)
    write_manifest(tmp_path / "m.csv", s, root=tmp_path)
    assert "d/monocyte/monocyte_000.png" in (tmp_path / "m.csv").read_text()
    back = read_manifest(tmp_path / "m.csv", root=tmp_path)
    assert [(x.path.resolve(), x.label, x.split, x.sha1) for x in back] == [
        (x.path.resolve(), x.label, x.split, x.sha1) for x in s]
    assert all(x.split == "test" for x in read_manifest(tmp_path / "m.csv", split="test", root=tmp_path))


def test_real_pbc_classes_are_canonical(real_data: Path) -> None:
    folders = sorted(p.name for p in (real_data / "pbc").iterdir() if p.is_dir())
    assert sorted(canonical_label(f) for f in folders) == sorted(CLASSES)


def test_manifest_rows_cut_short_or_with_a_spreadsheet_fold_read(tmp_path: Path) -> None:
    """A row cut short by an editor has None in its missing cells (label, split), and a spreadsheet writes fold 1
    as "1.0": read as empty cells and as 1, not a traceback later (`wbc adapt` skips unlabelled rows)."""
    p = tmp_path / "m.csv"
    p.write_text("path,label,split,fold,sha1\na.png,basophil,test,1.0,\nb.png\nc.png,eosinophil,train\n,,,,\n")
    rows = read_manifest(p, root=tmp_path)
    assert [(s.path.name, s.label, s.split, s.fold, s.sha1) for s in rows] == [
        ("a.png", "basophil", "test", 1, ""), ("b.png", "", "", -1, ""), ("c.png", "eosinophil", "train", -1, "")]
    assert [s.path.name for s in read_manifest(p, split="train", root=tmp_path)] == ["c.png"]


@pytest.mark.parametrize(("row", "msg"), [
    ("a.png,basophil,test,one", r"m\.csv: row 3: fold 'one' is not a number"),
    ("a.png,basophil,test,1.5", r"m\.csv: row 3: fold '1.5' is not a whole number"),
    (",basophil,test,1", r"m\.csv: row 3: no path"),
])
def test_bad_manifest_rows_are_named(tmp_path: Path, row: str, msg: str) -> None:
    p = tmp_path / "m.csv"
    p.write_text(f"path,label,split,fold\nok.png,basophil,test,0\n{row}\n")
    with pytest.raises(WbcError, match=msg):
        read_manifest(p, root=tmp_path)


def test_a_labs_own_split_and_fold_columns_in_another_spelling_are_not_taken_for_wbcs(tmp_path: Path) -> None:
    """Spreadsheet spellings of ``path`` and ``label`` are read (since wbc 0.32.0), but lower-casing every column took a
    lab's own "Fold" (A/B) column for wbc's, and `wbc train --data` refused the manifest. A "Split" or "Fold" column
    whose values are not wbc's stays the lab's own; one whose values are (Train) is wbc's (since wbc 0.36.0)."""
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "m.csv").write_text("Path;Label;Split;Fold\na.png;Neutrophil;Train;A\n", encoding="utf-8")
    (s,) = read_manifest(tmp_path / "m.csv")
    assert (s.path, s.label, s.split, s.fold) == (tmp_path / "a.png", "Neutrophil", "train", -1)
    (tmp_path / "m.csv").write_text("Path;Label;Split;Fold\na.png;Neutrophil;A;2\n", encoding="utf-8")
    (s,) = read_manifest(tmp_path / "m.csv")
    assert (s.split, s.fold) == ("", -1)  # no SHA1 column: not a manifest wbc wrote, and its folds are the lab's


def test_a_labs_own_fold_column_is_not_taken_for_a_runs_cross_validation_folds(tmp_path: Path) -> None:
    """A lab's ``Path,Label,Split,Fold`` manifest with its own folds 1..5 had them read as wbc's (since 96eab69), and
    `wbc evaluate lab.csv --split all` said its val rows trained the run's cross-validation members. A ``Fold`` so spelt
    is wbc's only beside wbc's ``sha1`` column, which every manifest wbc writes has."""
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "m.csv").write_text("Path,Label,Split,Fold\na.png,neutrophil,Val,1\n", encoding="utf-8")
    (s,) = read_manifest(tmp_path / "m.csv")
    assert (s.split, s.fold) == ("val", -1)
    (tmp_path / "m.csv").write_text("Path,Label,Split,Fold,SHA1\na.png,neutrophil,Val,1,\n", encoding="utf-8")
    (s,) = read_manifest(tmp_path / "m.csv")
    assert (s.split, s.fold) == ("val", 1)
    (tmp_path / "m.csv").write_text("path,label,split,fold\na.png,neutrophil,val,1\n", encoding="utf-8")
    (s,) = read_manifest(tmp_path / "m.csv")
    assert s.fold == 1  # wbc's own column name, as a run writes it


def test_a_spreadsheets_spellings_of_the_splits_are_read(tmp_path: Path) -> None:
    """``Train,Validation,Test``, the usual spreadsheet spelling, had one value outside wbc's: the whole ``Split``
    column was taken for the lab's own, and `wbc train` dealt the lab's Test rows into train and val without a word
    (a lower-case ``split`` header was refused over the same file). Both read as wbc's splits now."""
    (tmp_path / "m.csv").write_text("Path,Label,Split\na.png,neutrophil,Train\nb.png,neutrophil,Validation\n"
                                    "c.png,neutrophil,Test\n", encoding="utf-8")
    assert [s.split for s in read_manifest(tmp_path / "m.csv", root=tmp_path)] == ["train", "val", "test"]
    (tmp_path / "m.csv").write_text("path,label,split\na.png,neutrophil,TRAINING\nb.png,neutrophil,Valid\n"
                                    "c.png,neutrophil,testing\nd.png,neutrophil,Val\n", encoding="utf-8")
    assert [s.split for s in read_manifest(tmp_path / "m.csv", root=tmp_path)] == ["train", "val", "test", "val"]
    assert [s.path.name for s in read_manifest(tmp_path / "m.csv", "val", root=tmp_path)] == ["b.png", "d.png"]


def test_a_split_column_mixing_splits_with_other_values_is_refused(tmp_path: Path) -> None:
    """A ``Split`` column with a value that names no split among rows that do (a typo, ``Verification``) was dropped
    whole, and the lab's test rows trained on; it is refused in one line naming the row and the value."""
    (tmp_path / "m.csv").write_text("Path,Label,Split\na.png,neutrophil,Train\nb.png,neutrophil,Verification\n"
                                    "c.png,neutrophil,Test\n", encoding="utf-8")
    with pytest.raises(WbcError, match=r"m\.csv: row 3: Split 'Verification' is not a split"):
        read_manifest(tmp_path / "m.csv", root=tmp_path)


def test_a_spreadsheet_split_column_is_read(tmp_path: Path) -> None:
    """A spreadsheet-saved ``Path,Label,Split`` manifest (a byte-order mark, capitals) had no split column for wbc: its
    test rows were dealt into train and val by `wbc train`, and `wbc evaluate` said "splits here: none"."""
    (tmp_path / "m.csv").write_text("\ufeffPath,Label, SPLIT ,SHA1\na.png,neutrophil,Test,\n"
                                    f"b.png,lymphocyte,train,{'AB' * 20}\n", encoding="utf-8")
    rows = read_manifest(tmp_path / "m.csv", root=tmp_path)
    assert [s.split for s in rows] == ["test", "train"] and rows[1].sha1 == "ab" * 20
    assert [s.path.name for s in read_manifest(tmp_path / "m.csv", "test", root=tmp_path)] == ["a.png"]
