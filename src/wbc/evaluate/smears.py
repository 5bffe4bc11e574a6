"""Evaluate smear analysis: WBC detection, nucleus/cell segmentation, end-to-end subtype accuracy.

On BCCD by default, or on any YOLO- or VOC-labelled folder (:func:`load_labelled_folder`; TXL-PBC's
``sources.csv`` adds a per-origin breakdown).

Ground truth (read-only, under the data root):

* ``bccd/Annotations/*.xml``: Pascal VOC boxes; only ``WBC`` boxes are used.
* ``bccd/masks/BloodImage_Mask_NNNNN.png``: grey levels quantised to 0 background, 128 cytoplasm,
  255 nucleus (the "cell" mask is nucleus + cytoplasm: checked on overlays). Every BCCD image has one.
* ``bccd/single_wbc_labels.csv``: subtype of the images with exactly one WBC (another lab than PBC).

Detection is scored by greedy matching by confidence at IoU >= 0.5 (COCO's rule, below), AP by all-point
interpolation. The VOC boxes have known gaps (a few WBCs unannotated, one labelled "Platelets"): the
primary numbers use them as they are; ``detection_ignore_unannotated`` additionally treats detections
that fall on a *mask* cell that no WBC box covers (:func:`unboxed_mask_cells`) as neither right nor
wrong, and says how many (on a field without a mask every detection counts as in the primary numbers).
Detection is greedy by confidence, each detection taking the best IoU box not yet taken (as COCO does; VOC
counts a detection whose best box is taken as false even when another box clears the threshold: the two
differ only where two true boxes overlap at IoU 0.5 or more, which WBC boxes no longer do: since wbc 0.34.0 such a pair
is one cell boxed twice, :func:`merge_same_cell`). AP is null without any true box. Fields that are byte copies of
those wbc's shipped detector and U-Net trained on are left out of a split that is not a training one
(:func:`without_trained_fields`).
Segmentation Dice/IoU are computed per image over the union of all cells (the masks are semantic).
"""

from __future__ import annotations

import csv
import glob
import io
import re
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from wbc.errors import WbcError
from wbc.io import atomic_write_json, atomic_write_text, check_output_file, file_sha1, is_image_file, read_image
from wbc.labels import canonical_label
from wbc.protocols import ClassifierLike, SegmenterLike
from wbc.types import Cell

Box = tuple[float, float, float, float]


@dataclass
class BccdItem:
    """One labelled smear field (BCCD or any YOLO/VOC folder) with its ground truth."""

    name: str
    image: Path
    wbc_boxes: list[Box]
    mask: Path | None
    label: str | None  # canonical subtype when the image has exactly one labelled WBC (:func:`box_label` too)
    origin: str = ""  # the field's source, when the folder says (TXL-PBC's sources.csv)
    #: boxes whose class name is neither a WBC nor a red cell or platelet (name -> count): not scored, but reported
    unknown_boxes: dict[str, int] = field(default_factory=dict)
    #: the split the field was read from ("" when the folder defines none and every field is read)
    split: str = ""
    #: WBC boxes read as a second box of a cell already boxed (:func:`merge_same_cell`), left out of ``wbc_boxes``
    merged_boxes: int = 0
    #: WBC boxes a VOC file marks ``<difficult>1</difficult>``: neither a WBC to find nor a false detection (VOC's rule)
    ignore_boxes: list[Box] = field(default_factory=list)
    #: the name its one WBC box is given when that is a WBC type outside the classes (``Blast``: :func:`box_type`)
    other_type: str | None = None


SmearItem = BccdItem
#: Box class names (any case; ``_``, ``-`` as spaces; a plural ``s`` dropped) that mean a white blood cell. The
#: eight classes' names count too (:func:`wbc.labels.canonical_label`); these are the WBC types outside them that
#: leukaemia and lab datasets box (a blast left out of the truth made its correct detection a false positive).
WBC_NAMES: frozenset[str] = frozenset({
    "wbc", "white blood cell", "white_blood_cell", "leukocyte", "leucocyte",
    "blast", "blast cell", "myeloblast", "lymphoblast", "monoblast", "promonocyte", "prolymphocyte",
    "plasma cell", "plasmacyte", "atypical lymphocyte", "reactive lymphocyte", "variant lymphocyte",
    "abnormal lymphocyte", "large granular lymphocyte", "hairy cell", "smudge", "smudge cell", "basket cell",
})
#: Box class names that are known not to be WBCs (besides platelets): what a smear folder boxes beside them.
NON_WBC_NAMES: frozenset[str] = frozenset({"rbc", "red blood cell", "red cell", "erythrocyte", "thrombocyte", "plt"})


def _box_name(name: str) -> str:
    """A box class name as :data:`WBC_NAMES` spells it: lower case, words split by single spaces.

    >>> _box_name(" Plasma_Cells "), _box_name("WBCs")
    ('plasma cell', 'wbc')
    """
    n = re.sub(r"[\s_\-]+", " ", name.strip().lower())
    if n.endswith("s") and n[:-1] in WBC_NAMES | NON_WBC_NAMES:
        n = n[:-1]
    return n


def is_wbc_name(name: str) -> bool:
    """Whether a box class name means a WBC ("WBC", "leukocyte", a WBC subtype such as "neutrophil", or another WBC
    type such as "Blast", "Atypical lymphocyte": :data:`WBC_NAMES`)."""
    if _box_name(name) in WBC_NAMES:
        return True
    lab = canonical_label(name)
    return lab is not None and lab not in ("platelet",)


def is_known_non_wbc_name(name: str) -> bool:
    """Whether a box class name is known not to mean a WBC (a red cell, a platelet): other names that are not WBCs
    are reported, since they may be WBC types this list lacks."""
    return _box_name(name) in NON_WBC_NAMES or canonical_label(name) == "platelet"


def read_voc_boxes(xml_path: Path, name: str | None = "WBC", unknown: Counter[str] | None = None,
                   difficult: list[Box] | None = None, names: list[str] | None = None) -> list[Box]:
    """Boxes of one class (``None``: any WBC name, :func:`is_wbc_name`) from a Pascal VOC file, as
    (x0, y0, x1, y1) with x1/y1 exclusive; a box listed twice is kept once. ``unknown`` (with ``name`` None) counts
    the boxes whose name is neither a WBC nor :func:`is_known_non_wbc_name`. ``difficult`` (when given) receives the
    boxes marked ``<difficult>1</difficult>`` instead of the result: VOC's evaluation counts them neither missed nor
    found (LabelImg writes the flag from a checkbox; before wbc 0.36.0 they were WBCs to find). ``names`` (when
    given) receives the name of each box of the result as written (:func:`box_label`)."""
    try:
        root = ET.parse(xml_path).getroot()
    except FileNotFoundError:
        raise WbcError(f"{xml_path}: annotation file not found") from None
    except (ET.ParseError, OSError) as exc:
        raise WbcError(f"{xml_path}: not a readable Pascal VOC file ({exc})") from None
    out: list[Box] = []
    for obj in root.iter("object"):
        oname = (obj.findtext("name") or "").strip()
        if (oname != name) if name is not None else not is_wbc_name(oname):
            if name is None and unknown is not None and not is_known_non_wbc_name(oname):
                unknown[oname] += 1
            continue
        bb = obj.find("bndbox")
        if bb is None:
            continue
        try:
            x0, y0, x1, y1 = (float(bb.findtext(k) or 0) for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as exc:
            raise WbcError(f"{xml_path}: a {oname!r} box has a coordinate that is not a number ({exc})") from None
        hard = difficult is not None and (obj.findtext("difficult") or "").strip() == "1"
        _add_box(difficult if difficult is not None and hard else out, (x0, y0, x1 + 1.0, y1 + 1.0))
        if names is not None and not hard:
            names.append(oname)
    return out


def box_label(names: Sequence[str], n_boxes: int) -> str | None:
    """The subtype (a class of :mod:`wbc.labels`) a field's one WBC box is named by (``Neutrophil``, ``Lymphocyte``),
    so that a labelled folder gets end-to-end subtype scores as BCCD's ``single_wbc_labels.csv`` gives them; None
    when the field has another number of WBC boxes than one (after :func:`merge_same_cell`: ``n_boxes``), or its
    boxes (``names``, a box listed twice too) are named ``WBC``, a type outside the classes or more than one subtype.

    >>> box_label(["Neutrophil"], 1), box_label(["WBC"], 1), box_label(["Neutrophil", "Lymphocyte"], 1)
    ('neutrophil', None, None)
    """
    labels = {canonical_label(n) for n in names}
    return labels.pop() if n_boxes == 1 and len(labels) == 1 else None


#: WBC box names that name no type: a field boxed so has no subtype label.
GENERIC_WBC_NAMES: frozenset[str] = frozenset({"wbc", "white blood cell", "leukocyte", "leucocyte"})


def box_type(names: Sequence[str], n_boxes: int) -> str | None:
    """The name (as written) of a field's one WBC box when it is a WBC type outside the classes (``Blast``, ``Plasma
    cell``): such a field has a subtype label that no model of wbc can answer, so it is counted as not scored rather
    than left out without a word (before wbc 0.36.0 a folder of blasts was told it had no subtype label). None where
    :func:`box_label` applies, or the box is named ``WBC``, or the field has another number of WBC boxes than one.

    >>> box_type(["Blast"], 1), box_type(["Neutrophil"], 1), box_type(["WBC"], 1), box_type(["Blast", "blasts"], 1)
    ('Blast', None, None, 'Blast')
    """
    kinds = {_box_name(n) for n in names}
    if n_boxes != 1 or len(kinds) != 1 or kinds & GENERIC_WBC_NAMES or canonical_label(names[0]) is not None \
            or not is_wbc_name(names[0]):
        return None
    return names[0].strip()


def _add_box(boxes: list[Box], box: Box) -> None:
    """Append ``box`` unless ``boxes`` holds it already (every side within half a pixel): the same box listed twice is
    one cell (a TXL-PBC test field lists one WBC six times), in a YOLO or a VOC file alike (before wbc 0.33.0 a VOC
    copy counted as a second WBC, and a perfect detection scored recall 0.5)."""
    if all(max(abs(a - b) for a, b in zip(box, o, strict=True)) > 0.5 for o in boxes):
        boxes.append(box)


#: Two WBC boxes of one field overlapping at this IoU or more are one cell boxed twice (:func:`merge_same_cell`).
#: TXL-PBC boxes 8 of its WBCs twice with shifted corners (IoU 0.54-0.74: val c7e344a1, test 9a5a40ca, 6 train
#: fields), while two distinct WBCs' boxes overlap by 0.12 at most in BCCD and TXL-PBC (every split); the detector's
#: own suppression (:func:`wbc.segment.detector.suppress`) keeps no two detections at IoU 0.5, so no detector could
#: find both boxes of such a pair. Before wbc 0.34.0 the second box counted as a WBC missed.
SAME_CELL_IOU: float = 0.5


def merge_same_cell(boxes: Sequence[Box], iou: float = SAME_CELL_IOU) -> tuple[list[Box], int]:
    """``boxes`` without each one overlapping a box kept before it at IoU >= ``iou`` (one WBC boxed twice with shifted
    corners: the first box stands), and how many were dropped. For WBC boxes only: overlapping red cells are real.

    >>> merge_same_cell([(199, 78, 404, 252), (180, 95, 364, 252), (0, 0, 50, 50)])
    ([(199, 78, 404, 252), (0, 0, 50, 50)], 1)
    """
    kept: list[Box] = []
    for b in boxes:
        if all(box_iou(b, k) < iou for k in kept):
            kept.append(b)
    return kept, len(boxes) - len(kept)


def mask_path(bccd: Path, name: str) -> Path:
    return bccd / "masks" / f"{name.replace('BloodImage_', 'BloodImage_Mask_')}.png"


def read_gt_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(nucleus, cell) bool masks from a BCCD mask PNG (noisy grey levels quantised at 64 and 192).

    A 16-bit mask is read on the 8-bit scale (0 / 32896 / 65535 as 0 / 128 / 255; one holding 8-bit levels as they
    are). A label map of 0, 1 and 2 is a :class:`WbcError` naming the file: which label is the nucleus cannot be told,
    and read as grey levels it held no cell, every field scoring Dice 0. Before wbc 0.36.0 a 16-bit mask's cytoplasm
    was read as nucleus."""
    # from its bytes: OpenCV's own file opening crashes on a name that is no UTF-8
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise WbcError(f"{path}: cannot read mask ({exc.strerror or exc})") from None
    m = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if m is None:
        raise WbcError(f"{path}: cannot read mask")
    if m.ndim == 3:
        m = m[:, :, :3].max(axis=2)
    if m.dtype == np.uint16 and int(m.max()) > 255:
        m = m // 257
    if m.any() and int(m.max()) <= 2:
        levels = ", ".join(str(v) for v in np.unique(m).tolist())
        raise WbcError(f"{path}: a label map (values {levels}), not a mask of grey levels 0 background, 128 cytoplasm, "
                       "255 nucleus: which label is the nucleus cannot be told; save it with those levels")
    return m > 192, m > 64


def load_bccd(root: Path, split: str = "test", errors: list[tuple[str, str]] | None = None) -> list[BccdItem]:
    """The BCCD items of a split (``train``, ``val``, ``test``, ``trainval``).

    A field whose annotation cannot be read raises :class:`WbcError` naming it, or, given ``errors``, is left out
    and listed there as (file, message), so that one bad field does not lose the others' scores."""
    bccd = root / "bccd" if (root / "bccd").is_dir() else root
    split_file = bccd / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        if split_names(bccd):
            raise missing_split(bccd, split)
        raise WbcError(f"{split_file}: BCCD split not found (is --data-root the data root? --dataset names "
                       "another folder)")
    labels: dict[str, str] = {}
    lab_file = bccd / "single_wbc_labels.csv"
    if lab_file.is_file():
        for row in read_label_table(lab_file, ("image", "label")):
            lab = canonical_label(row["label"])
            if lab:
                labels[row["image"].strip()] = lab
    items = []
    for name in _read_label_text(split_file).split():
        mp = mask_path(bccd, name)
        image = _voc_image(bccd, name) or bccd / "JPEGImages" / f"{name}.jpg"  # missing: named by the field's error
        unknown: Counter[str] = Counter()
        difficult: list[Box] = []
        names: list[str] = []
        try:  # any WBC name, as the folder read without a split file: a lab's "Neutrophil" or "Blast" boxes too
            boxes, merged = merge_same_cell(read_voc_boxes(bccd / "Annotations" / f"{name}.xml", None, unknown,
                                                           difficult, names))
        except WbcError as exc:
            if errors is None:
                raise
            errors.append((str(image), str(exc)))
            continue
        items.append(
            BccdItem(
                name=name,
                image=image,
                wbc_boxes=boxes,
                mask=mp if mp.is_file() else None,
                label=labels.get(name) or box_label(names, len(boxes)),
                other_type=None if name in labels else box_type(names, len(boxes)),
                unknown_boxes=dict(unknown),
                split=split,
                merged_boxes=merged,
                ignore_boxes=difficult,
            )
        )
    return items


def _voc_image(folder: Path, stem: str) -> Path | None:
    """A VOC field's image, ``JPEGImages/<stem>.*`` in any image format (a lab's PNG or TIFF fields; before wbc 0.33.0
    a folder with a split file looked for ``.jpg`` alone, and every PNG field was "no such file")."""
    jpg = folder / "JPEGImages" / f"{stem}.jpg"
    if jpg.is_file():
        return jpg
    return next((p for p in sorted((folder / "JPEGImages").glob(f"{glob.escape(stem)}.*")) if is_image_file(p)), None)


def split_names(folder: Path) -> list[str]:
    """The splits a VOC folder defines: the ``ImageSets/Main/*.txt`` files' names (empty when it defines none)."""
    sets = folder / "ImageSets" / "Main"
    return sorted(f.stem for f in sets.glob("*.txt") if f.is_file()) if sets.is_dir() else []


def missing_split(folder: Path, split: str | None) -> WbcError:
    """The one-line refusal of a split that a folder with splits does not define: scoring every field under the
    split's name instead put training fields into "test" numbers (before wbc 0.33.0, silently)."""
    return WbcError(f"{folder}: no split {split!r} (ImageSets/Main/{split}.txt; splits here: "
                    f"{', '.join(split_names(folder))}); --split names one")


def _read_label_text(path: Path) -> str:
    """A label or class-name file's text, without the byte-order mark Notepad and Excel write ("UTF-8 with BOM":
    before wbc 0.36.0 it refused a ``classes.txt`` and a label file's first box); one that cannot be read or is not
    UTF-8 (a Latin-1 comment, a Windows tool's export) is a :class:`WbcError` naming it, so that it is one field's
    error, not a traceback."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise WbcError(f"{path}: not a UTF-8 text file (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise WbcError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_label_table(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a folder's label table (``single_wbc_labels.csv``, ``sources.csv``) as a spreadsheet may save it,
    read as manifests are since wbc 0.32.0 (:func:`wbc.data.read_manifest`): a byte-order mark ("CSV UTF-8"), ``;`` or
    tab separators (:func:`wbc.data.sniff_delimiter`), ``columns`` in any case. A file that is not UTF-8, is no CSV or
    lacks ``columns`` concerns every field: a :class:`WbcError` naming it (before wbc 0.33.0, a traceback)."""
    from wbc.data import sniff_delimiter

    text = _read_label_text(path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=sniff_delimiter(text))
        header = [name.strip() for name in reader.fieldnames or ()]
        reader.fieldnames = [name.lower() if name.lower() in columns else name for name in header]
        missing = [c for c in columns if c not in reader.fieldnames]
        if missing:
            raise WbcError(f"{path}: expected the columns {','.join(columns)} (found {','.join(header) or 'none'})")
        return [{k: v or "" for k, v in row.items() if k is not None} for row in reader]
    except csv.Error as exc:
        raise WbcError(f"{path}: not a readable CSV ({exc})") from None


def _data_yaml(folder: Path) -> Path | None:
    """A YOLO folder's ``data.yaml`` (or ``dataset.yaml``), None when it has neither."""
    return next((f for f in (folder / "data.yaml", folder / "dataset.yaml") if f.is_file()), None)


def yolo_class_names(folder: Path) -> list[str]:
    """The class names of a YOLO folder, from ``classes.txt`` or ``data.yaml`` (empty when it names none)."""
    for f in (folder / "classes.txt", folder / "labels" / "classes.txt"):
        if f.is_file():
            return [ln.strip() for ln in _read_label_text(f).splitlines() if ln.strip()]
    yml = _data_yaml(folder)
    return _yaml_names(yml) if yml is not None else []


YOLO_SPLITS = ("train", "val", "test")


def _read_data_yaml(path: Path) -> dict[Any, Any]:
    """A YOLO ``data.yaml`` as PyYAML reads it, as Ultralytics does (before wbc 0.36.0 a small reader of its own
    misread flow maps, comments and keys out of order). YAML that cannot be read, or a file that is no mapping of
    keys, is a :class:`WbcError` naming it."""
    import yaml

    try:
        doc = yaml.safe_load(_read_label_text(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        why = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise WbcError(f"{path}: not readable YAML ({where}{why})") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise WbcError(f"{path}: not a YOLO data.yaml (a YAML mapping of keys such as names: and val:)")
    return doc


def _yaml_splits(path: Path) -> dict[str, list[str]]:
    """The splits a YOLO data.yaml names, each with its paths (``val: val.txt`` or a list of them; list files or image
    folders); a key without a value (``test:  # optional``) names none. A value that is neither is a
    :class:`WbcError` naming the file."""
    out: dict[str, list[str]] = {}
    for key, value in _read_data_yaml(path).items():
        if key not in YOLO_SPLITS or value is None:
            continue
        vals = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in vals):
            raise WbcError(f"{path}: {key}: neither a path nor a list of paths (got {value!r})")
        if got := [str(v).strip() for v in vals if str(v).strip()]:
            out[key] = got
    return out


def found_under(path: Path, folder: Path) -> Path | None:
    """The longest tail of ``path`` that exists under ``folder``, or None: where a path written on another machine
    (``/home/me/data/images/val/f1.jpg`` in a list file that moved with its dataset) is now. Before wbc 0.35.0 such
    a path was looked for where it was written, and every listed field failed as "no such file".

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "images").mkdir(); (root / "images" / "f1.jpg").touch()
    >>> found_under(Path("/home/me/data/images/f1.jpg"), root) == root / "images" / "f1.jpg"
    True
    >>> found_under(Path("/home/me/data/images/f2.jpg"), root) is None
    True
    """
    parts = [q for q in path.parts[1 if path.is_absolute() else 0:] if q not in ("..", ".")]
    for k in range(len(parts)):
        if (cand := folder.joinpath(*parts[k:])).exists():
            return cand
    return None


def _listed_images(yml: Path, split: str, values: Sequence[str]) -> list[Path]:
    """The images of a split that ``data.yaml`` gives as list files (``train.txt``: one image path a line) or image
    folders, read as Ultralytics reads them: each path against the folder of ``data.yaml`` (a leading ``../`` also
    tried without it), a list file's lines against the list's folder, then against the folder of ``data.yaml``, then
    (a path written on another machine) by :func:`found_under`. A split path that is none of these ends the run,
    naming it."""
    folder, out = yml.parent, []
    for v in values:
        cands = [Path(v) if Path(v).is_absolute() else folder / v] + ([folder / v[3:]] if v.startswith("../") else [])
        p = next((c for c in cands if c.exists()), None) or found_under(Path(v), folder) or cands[0]
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if is_image_file(q))
        elif p.is_file():
            for line in _read_label_text(p).splitlines():
                if (e := line.strip()) and not e.startswith("#"):
                    q = Path(e) if Path(e).is_absolute() else p.parent / e
                    if not q.exists():
                        q = folder / e if (folder / e).exists() else found_under(Path(e), folder) or q
                    out.append(q)
        else:
            raise WbcError(f"{yml}: {split}: {v} not found (neither a list file nor a folder, read against {folder})")
    return list(dict.fromkeys(out))


def _yolo_label_path(img: Path, lab_dir: Path) -> Path:
    """The label file of a listed YOLO image, as Ultralytics finds it: the path's last ``images`` folder replaced by
    ``labels``, the suffix by ``.txt`` (``lab_dir/<stem>.txt`` for an image outside any ``images`` folder)."""
    parts = img.parts[:-1]
    if "images" not in parts:
        return lab_dir / f"{img.stem}.txt"
    k = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:k], "labels", *parts[k + 1:], f"{img.stem}.txt")


def yolo_wbc_classes(folder: Path) -> set[int]:
    """Class ids meaning WBC in a YOLO folder, from ``data.yaml`` / ``classes.txt`` names (default {0})."""
    names = yolo_class_names(folder)
    if not names:
        return {0}
    ids = {i for i, n in enumerate(names) if is_wbc_name(n)}
    if not ids:
        raise WbcError(f"{folder}: no WBC class among the YOLO class names {names}")
    return ids


def _yaml_names(path: Path) -> list[str]:
    """The class names of a YOLO data.yaml by id, from ``names:`` as a list or as a map of ids to names (its keys the
    ids, in any order, as Ultralytics reads it: 0 to n - 1); empty when it has none. Names that are neither (a map
    whose keys skip an id or are no ids, a single string) are a :class:`WbcError` naming the file: before wbc
    0.36.0 such names were misread, and a map in braces read as none, so class 0 (RBC in
    ``{0: RBC, 1: WBC}``) was scored as the WBC."""
    names = _read_data_yaml(path).get("names")
    if names is None:
        return []
    if isinstance(names, list):
        return [str(n).strip() for n in names]
    if isinstance(names, dict):
        ids = {k if isinstance(k, int) else int(k) if isinstance(k, str) and k.strip().isdigit() else -1: v
               for k, v in names.items() if not isinstance(k, bool)}
        if len(ids) != len(names) or sorted(ids) != list(range(len(ids))):
            raise WbcError(f"{path}: names: the keys must be the class ids 0 to {len(names) - 1} "
                           f"(found {', '.join(map(str, names))})")
        return [str(ids[i]).strip() for i in range(len(ids))]
    raise WbcError(f"{path}: names: neither a list of class names nor a map of class ids to names (got {names!r})")


def read_yolo_boxes(path: Path, width: int, height: int, classes: set[int], ids: list[int] | None = None
                    ) -> list[Box]:
    """WBC boxes from a YOLO label file (class cx cy w h, normalised) in pixels; missing file: none.
    A line of more than 6 numbers is a segmentation polygon (class x1 y1 x2 y2 ..., as Roboflow's and Ultralytics'
    segmentation exports write it), read as its bounding box, as Ultralytics reads it (before wbc 0.36.0 its first
    two points were read as the box's centre and size). Exact duplicates (within half a pixel) are kept once.
    ``ids`` (when given) receives the class id of each box of ``classes`` read (:func:`box_label`)."""
    out: list[Box] = []
    if not path.is_file():
        return out
    for k, line in enumerate(_read_label_text(path).splitlines(), 1):
        p = line.split()
        if not p:
            continue
        try:
            if len(p) > 6 and len(p) % 2:  # a polygon: its bounding box
                xs, ys = [float(v) for v in p[1::2]], [float(v) for v in p[2::2]]
                c, cx, cy = int(float(p[0])), (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
                w, h = max(xs) - min(xs), max(ys) - min(ys)
            elif len(p) > 6:
                raise ValueError
            else:
                c, cx, cy, w, h = int(float(p[0])), *(float(v) for v in p[1:5])
        except (ValueError, TypeError):
            raise WbcError(f"{path}:{k}: expected 'class cx cy w h' or a polygon 'class x1 y1 x2 y2 x3 y3 ...', got "
                           f"{line.strip()!r}") from None
        if c in classes:
            _add_box(out, ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height))
            if ids is not None:
                ids.append(c)
    return out


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) without decoding the pixels where the format allows, as :func:`wbc.io.read_image` reads the
    image: turned by its EXIF orientation (YOLO's normalised boxes are the photo's as shown)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            return (h, w) if im.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)
    except Exception:  # fall back to a full decode, which names the file on failure
        rgb = read_image(path)
        return rgb.shape[1], rgb.shape[0]


def load_labelled_folder(
    folder: Path, split: str | None = "test", errors: list[tuple[str, str]] | None = None
) -> list[BccdItem]:
    """Labelled smear fields from any folder in one of the common layouts:

    * BCCD / Pascal VOC: ``JPEGImages/`` + ``Annotations/*.xml`` (+ ``ImageSets/Main/<split>.txt``,
      ``masks/``): read by :func:`load_bccd`;
    * YOLO: ``images/[<split>/]`` + ``labels/[<split>/]*.txt``, or splits given as list files in ``data.yaml``
      (``val: val.txt``; class names from ``data.yaml`` or ``classes.txt``; TXL-PBC's ``sources.csv`` gives each
      field's origin);
    * flat: images beside same-named ``.xml`` (VOC) or ``.txt`` (YOLO) files.

    ``split``: the fields ``ImageSets/Main/<split>.txt``, ``images/<split>/`` or the list file (or folder)
    ``data.yaml``'s ``<split>:`` names (each item's ``split``); a folder that defines other splits but not this one is
    a :class:`WbcError` listing them, and only a folder that defines none (or ``split`` None) is read whole, its
    items' ``split`` "". Masks, where present, are ``masks/<stem>.png``
    with 0 background, 128 cytoplasm, 255 nucleus. ``errors``: as :func:`load_bccd` (a field whose labels cannot be
    read is listed there, not fatal). YOLO images without any label file beside them are a :class:`WbcError`: read as
    fields without a WBC, every detection counted as a false one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WbcError(f"{folder}: not a folder")
    if (folder / "Annotations").is_dir() and (folder / "JPEGImages").is_dir():
        if split and split_names(folder):  # a split the folder does not define is refused, never every field
            return load_bccd(folder, split, errors)
        items = []
        for x in sorted((folder / "Annotations").glob("*.xml")):
            img = _voc_image(folder, x.stem)
            if img is not None:
                mp = folder / "masks" / f"{x.stem}.png"
                mp = mp if mp.is_file() else mask_path(folder, x.stem)  # BCCD's BloodImage_Mask_NNNNN.png too
                if (got := _field_boxes(img, x, set(), {}, errors)) is not None:
                    items.append(BccdItem(x.stem, img, got.boxes, mp if mp.is_file() else None, got.label,
                                          unknown_boxes=got.unknown, merged_boxes=got.merged, ignore_boxes=got.ignore,
                                          other_type=got.other_type))
        return items
    origins: dict[str, str] = {}
    src = folder / "sources.csv"
    if src.is_file():
        origins = {r["stem"].strip(): r["origin"].strip() for r in read_label_table(src, ("stem", "origin"))}
    split_read = ""
    if (folder / "images").is_dir() and (folder / "labels").is_dir():
        img_dir, lab_dir = folder / "images", folder / "labels"
        subs = sorted(d.name for d in img_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
        yml = _data_yaml(folder)
        listed = _yaml_splits(yml) if yml is not None and split else {}
        source: Path = img_dir
        if split and (img_dir / split).is_dir():
            img_dir, split_read = img_dir / split, split
            # labels/<split>/ as YOLO lays them out, else labels/ itself (a folder with the images alone split)
            lab_dir = lab_dir / split if (lab_dir / split).is_dir() else lab_dir
            pairs = [(p, lab_dir / f"{p.stem}.txt") for p in sorted(img_dir.iterdir()) if is_image_file(p)]
        elif split and yml is not None and split in listed:  # Ultralytics' list files (val: val.txt), flat images/
            source, split_read = yml, split
            pairs = [(p, _yolo_label_path(p, lab_dir)) for p in _listed_images(yml, split, listed[split])]
        elif split and subs and not any(is_image_file(p) for p in img_dir.iterdir()):
            raise WbcError(f"{img_dir}: no split {split!r} (images/{split}/; splits here: {', '.join(subs)}); "
                           "--split names one")
        elif split and yml is not None and listed:  # before wbc 0.33.0 every field, training ones too, was scored
            raise WbcError(f"{yml}: no split {split!r} (splits here: {', '.join(listed)}); --split names one")
        else:
            pairs = [(p, lab_dir / f"{p.stem}.txt") for p in sorted(img_dir.iterdir()) if is_image_file(p)]
        if pairs and not any(lab.is_file() for _, lab in pairs):  # read as "no WBC" each detection was a false one
            raise WbcError(f"{pairs[0][1].parent}: no label file for any of the {len(pairs)} images in {source} "
                           f"(expected {pairs[0][1]} for {pairs[0][0].name})")
    else:
        pairs = []
        for p in sorted(folder.iterdir()):
            if not is_image_file(p):
                continue
            for ext in (".xml", ".txt"):
                if p.with_suffix(ext).is_file():
                    pairs.append((p, p.with_suffix(ext)))
                    break
    if not pairs:
        raise WbcError(f"{folder}: no labelled images found (expected a YOLO or Pascal VOC layout)")
    classes = yolo_wbc_classes(folder)
    names = yolo_class_names(folder)
    others = {i: n for i, n in enumerate(names) if not is_wbc_name(n) and not is_known_non_wbc_name(n)}
    items = []
    for img, lab in pairs:
        if (got := _field_boxes(img, lab, classes, others, errors, names)) is None:
            continue
        mp = folder / "masks" / f"{img.stem}.png"
        items.append(BccdItem(img.stem, img, got.boxes, mp if mp.is_file() else None, got.label,
                              origins.get(img.stem, ""), got.unknown, split_read, got.merged, got.ignore,
                              got.other_type))
    return items


class _Truth(NamedTuple):
    """One field's truth as :func:`_field_boxes` reads it."""

    boxes: list[Box]  # the WBC boxes
    unknown: dict[str, int]  # boxes named neither a WBC nor a known other cell, by name
    merged: int  # WBC boxes merged as a cell's second box (:func:`merge_same_cell`)
    ignore: list[Box]  # WBC boxes marked difficult (VOC)
    label: str | None  # the subtype its one WBC box is named by (:func:`box_label`)
    other_type: str | None  # the WBC type outside the classes its one WBC box is named by (:func:`box_type`)


def _field_boxes(
    img: Path, lab: Path, classes: set[int], others: Mapping[int, str], errors: list[tuple[str, str]] | None,
    class_names: Sequence[str] = (),
) -> _Truth | None:
    """One field's WBC boxes from its VOC ``.xml`` or YOLO ``.txt`` (``classes``: the WBC ids, ``class_names`` the
    names by id), the count of its boxes named neither a WBC nor a known other cell (YOLO: the ids ``others`` names),
    of the boxes merged as a cell's second box (:func:`merge_same_cell`), its boxes marked difficult and the subtype
    its one WBC box is named by; None when they cannot be read and ``errors`` takes the problem (else it is
    raised)."""
    try:
        names: list[str] = []
        if lab.suffix == ".xml":
            unknown: Counter[str] = Counter()
            difficult: list[Box] = []
            boxes, merged = merge_same_cell(read_voc_boxes(lab, None, unknown, difficult, names))
            return _Truth(boxes, dict(unknown), merged, difficult, box_label(names, len(boxes)),
                          box_type(names, len(boxes)))
        w, h = _image_size(img)
        ids: list[int] = []
        boxes, merged = merge_same_cell(read_yolo_boxes(lab, w, h, classes, ids))
        names = [class_names[i] if i < len(class_names) else "" for i in ids]
        return _Truth(boxes, _yolo_class_counts(lab, others), merged, [], box_label(names, len(boxes)),
                      box_type(names, len(boxes)))
    except WbcError as exc:
        if errors is None:
            raise
        errors.append((str(img), str(exc)))
        return None


def _yolo_class_counts(path: Path, names: Mapping[int, str]) -> dict[str, int]:
    """How many boxes of each class in ``names`` ({id: name}) a YOLO label file holds (lines already checked by
    :func:`read_yolo_boxes`)."""
    if not names or not path.is_file():
        return {}
    ids = Counter(int(float(p[0])) for p in map(str.split, _read_label_text(path).splitlines()) if p)
    return {names[i]: n for i, n in ids.items() if i in names}


# ------------------------------------------------------------------------ the fields wbc's own models trained on
#: TXL-PBC's sources (``sources.csv``'s ``origin``).
TXL_ORIGINS: tuple[str, ...] = ("bccd", "bcd", "pbc")
#: Segmenters trained on no field (``name``): `wbc evaluate-smears` keeps training copies for them.
UNTRAINED_SEGMENTERS: frozenset[str] = frozenset({"classical"})
#: Splits that are training data by name: their fields are scored as they are (:func:`without_trained_fields`).
TRAINING_SPLITS: tuple[str, ...] = ("train", "trainval")


def txl_rows(root: Path) -> list[dict[str, str]]:
    """TXL-PBC's ``sources.csv`` under the data root ``root`` (stem, split, origin, bccd_image)."""
    path = root / "txl_pbc" / "sources.csv"
    try:
        with path.open(newline="") as fh:
            return list(csv.DictReader(fh))
    except OSError as exc:
        raise WbcError(f"{path}: TXL-PBC not readable ({exc.strerror or exc}; is --data-root the data root?)") from None


def bccd_names(root: Path, split: str) -> set[str]:
    """The image names of a BCCD split under the data root ``root``."""
    path = root / "bccd" / "ImageSets" / "Main" / f"{split}.txt"
    try:
        return set(path.read_text().split())
    except OSError as exc:
        raise WbcError(f"{path}: BCCD split not readable ({exc.strerror or exc}; is --data-root the data root?)"
                       ) from None


def txl_files(root: Path, split: str, origins: tuple[str, ...] = TXL_ORIGINS,
              exclude_bccd: AbstractSet[str] = frozenset()) -> list[tuple[dict[str, str], Path]]:
    """The ``sources.csv`` rows of a TXL-PBC split's fields from ``origins`` with their image files, copies of the BCCD
    images ``exclude_bccd`` names left out (:func:`wbc.train.detector.load_txl` reads these)."""
    txl = root / "txl_pbc"
    return [(r, txl / "images" / split / f"{r['stem']}.jpg") for r in txl_rows(root)
            if r["split"] == split and r["origin"] in origins and r.get("bccd_image", "") not in exclude_bccd]


def training_files(root: Path, holdout: str | None = None, errors: list[tuple[str, str]] | None = None
                   ) -> tuple[set[str], list[Path]]:
    """What wbc's shipped detector trained on, without decoding it: the BCCD image names and the image files (BCCD
    train's fields whose annotation cannot be read are listed in ``errors`` when given, as :func:`load_bccd` does,
    instead of raising). It was not retrained when `wbc train-detector` began to leave out TXL-PBC train's resized
    copies of BCCD val and test fields (wbc 0.36.0, :func:`wbc.train.detector.txl_training_files`): it trained on
    them, and these files hold them, so that its scores leave out those BCCD fields; a detector trained since trained
    on a subset of these files."""
    keep_out = bccd_names(root, "test") | bccd_names(root, "val")
    origins = tuple(o for o in TXL_ORIGINS if o != holdout)
    files = [img for _, img in txl_files(root, "train", origins, keep_out)]
    names: set[str] = set()
    if holdout != "bccd":
        items = load_bccd(root, "train", errors)
        names = {it.name for it in items}
        files += [it.image for it in items]
    return names, files


def trained_on(root: Path, holdout: str | None = None) -> tuple[set[str], set[str]]:
    """The BCCD image names and the SHA-1 of every image file of :func:`training_files` (TXL-PBC's BCCD-origin fields
    are byte-identical copies of BCCD images). Here, below the training code, so that evaluation can leave those fields
    out without importing torch."""
    names, files = training_files(root, holdout)
    return names, {file_sha1(f) for f in files}


#: Side of the grey thumbnail that finds resized copies (:func:`field_thumbnail`).
THUMB_SIDE: int = 32
#: Mean absolute grey-level difference (0-255) of two thumbnails under which two fields are one field resized or
#: re-encoded: TXL-PBC's 67 BCD fields that are BCCD images resized to 416x416 are at 0.55 at most from their BCCD
#: image, and any two distinct fields of BCCD and TXL-PBC at 3.06 at least (BloodImage_00037 and 00038, two views of
#: one smear; a TXL-PBC field and a BCCD image it does not copy: 9.06 at least).
COPY_DISTANCE: float = 1.5


def field_thumbnail(path: Path) -> np.ndarray | None:
    """A field's grey :data:`THUMB_SIDE` px square thumbnail (whatever its size and aspect), the same for a copy
    resized or re-encoded, which SHA-1 does not see; None where OpenCV cannot read the file or it is under 4 px on a
    side (the field's own reading then names it). Decoded at a quarter of its size (cheap: about 0.3 ms a 640x480
    JPEG), from its bytes: OpenCV's own file opening crashed the process (SIGSEGV) on a name that is no UTF-8, before
    wbc 0.36.0."""
    try:
        g = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_4)
        if g is None or g.size == 0:
            return None
        return cv2.resize(g, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    except (OSError, cv2.error):  # unreadable, or a decoded size of 0 px (a 3 px strip: a traceback before 0.36.0)
        return None



@dataclass(frozen=True)
class TrainingIndex:
    """The SHA-1 and thumbnails of the training files that could be read, and a word on those that could not."""

    hashes: frozenset[str]
    thumbs: np.ndarray  # (n, THUMB_SIDE, THUMB_SIDE) float32
    not_checked: str | None

    def copies(self, path: Path) -> bool:
        """Whether the file at ``path`` is a copy of a training field: the same bytes, or resized or re-encoded."""
        if file_sha1(path) in self.hashes:
            return True
        t = field_thumbnail(path)
        return bool(t is not None and len(self.thumbs)
                    and float(np.abs(self.thumbs - t).mean(axis=(1, 2)).min()) < COPY_DISTANCE)


def training_index(root: Path) -> TrainingIndex:
    """:func:`training_files` under the data root ``root`` as a :class:`TrainingIndex`. A partial data root (a lab that
    keeps part of the public data) is no error: a training file that cannot be read is simply not a known copy."""
    errors: list[tuple[str, str]] = []
    try:
        _, files = training_files(root, errors=errors)
    except WbcError as exc:
        return TrainingIndex(frozenset(), np.zeros((0, THUMB_SIDE, THUMB_SIDE), np.float32), str(exc))
    return file_index(files, errors)


def file_index(files: Sequence[Path], errors: list[tuple[str, str]] | None = None) -> TrainingIndex:
    """The SHA-1 and thumbnails of ``files`` as a :class:`TrainingIndex`, to find their copies; a file that cannot be
    read is not indexed, listed in ``errors`` (when given) and counted in ``not_checked``."""
    errors = [] if errors is None else errors
    hashes: set[str] = set()
    thumbs: list[np.ndarray] = []
    for f in files:
        try:
            hashes.add(file_sha1(f))
        except OSError as exc:
            errors.append((str(f), f"{f}: {exc.strerror or exc}"))
            continue
        t = field_thumbnail(f)
        if t is not None:
            thumbs.append(t)
    note = None
    if errors:
        note = (f"{len(errors)} training field{'s' if len(errors) > 1 else ''} under the data root could not be read, "
                f"so copies of {'them' if len(errors) > 1 else 'it'} were not looked for (first: {errors[0][1]})")
    stack = np.stack(thumbs) if thumbs else np.zeros((0, THUMB_SIDE, THUMB_SIDE), np.float32)
    return TrainingIndex(frozenset(hashes), stack, note)


def without_trained_fields(items: Sequence[BccdItem], root: Path, split: str | None,
                           not_checked: list[str] | None = None) -> tuple[list[BccdItem], list[str] | None]:
    """``items`` without the fields that copy those wbc's shipped detector and U-Net trained on (:func:`trained_on`:
    BCCD train and TXL-PBC train under the data root ``root``): the same bytes (SHA-1), or, since wbc 0.34.0, the same
    field resized or re-encoded (:func:`field_thumbnail`: TXL-PBC's BCD fields include BCCD images resized to
    416x416); and the names left out.

    13 of TXL-PBC test's 84 fields (and 32 of its 177 val ones) copy BCCD *train* images (12 and 26 byte for byte):
    scored, they made test numbers partly training numbers (before wbc 0.34.0, without a word). A training split
    (:data:`TRAINING_SPLITS`) is scored whole, and so is every field where ``root`` lacks BCCD's splits or TXL-PBC's
    ``sources.csv`` (nothing to check against): the names are then None. Training files that cannot be read (a
    partial data root) are not looked for, and ``not_checked`` (when given) receives a sentence saying so.
    """
    if split in TRAINING_SPLITS or not ((root / "bccd" / "ImageSets" / "Main" / "train.txt").is_file()
                                        and (root / "txl_pbc" / "sources.csv").is_file()):
        return list(items), None
    index = training_index(root)
    if index.not_checked and not_checked is not None:
        not_checked.append(index.not_checked)
    kept: list[BccdItem] = []
    out: list[BccdItem] = []
    for it in items:
        try:
            copy = index.copies(it.image)
        except OSError:  # unreadable: scoring names it in ``errors``
            copy = False
        (out if copy else kept).append(it)
    return kept, [it.name for it in out]


def trained_note(metrics: Mapping[str, Any]) -> str:
    """The fields left out as copies of training fields, or why they were kept or not all looked for, in a sentence
    ("" when none).

    >>> print(trained_note({"trained_on_left_out": ["a", "b"]}))  # doctest: +NORMALIZE_WHITESPACE
    2 fields were left out: copies (byte for byte or resized) of fields wbc's shipped detector and U-Net trained on
    (BCCD train, TXL-PBC train; listed in metrics.json)
    """
    names = metrics.get("trained_on_left_out") or []
    if not names:
        return metrics.get("trained_on_not_checked") or ""
    return (f"{len(names)} field{'s were' if len(names) > 1 else ' was'} left out: copies (byte for byte or resized) "
            "of fields wbc's shipped detector and U-Net trained on (BCCD train, TXL-PBC train; listed in "
            "metrics.json)" + (f"; {metrics['trained_on_not_checked']}" if metrics.get("trained_on_not_checked")
                                  else ""))


def merged_note(metrics: Mapping[str, Any]) -> str:
    """The WBC boxes read as a cell's second box, in a sentence ("" when none).

    >>> print(merged_note({"merged_boxes": 1}))
    1 WBC box overlapping another of its field at IoU >= 0.5 was read as the same cell's (the first box stands)
    """
    n = int(metrics.get("merged_boxes") or 0)
    if not n:
        return ""
    return (f"{n} WBC box{'es' if n > 1 else ''} overlapping another of {'their' if n > 1 else 'its'} field at "
            f"IoU >= {SAME_CELL_IOU} {'were' if n > 1 else 'was'} read as the same cell's (the first box stands)")


def difficult_note(metrics: Mapping[str, Any]) -> str:
    """The WBC boxes marked difficult, left out of the truth, in a sentence ("" when none).

    >>> m = {"difficult_boxes": 2, "detection": {"ignored_on_difficult_boxes": 1}}
    >>> print(difficult_note(m))  # doctest: +NORMALIZE_WHITESPACE
    2 WBC boxes marked difficult (VOC) were neither WBCs to find nor false detections: 1 detection on them was not
    scored
    """
    n = int(metrics.get("difficult_boxes") or 0)
    if not n:
        return ""
    k = int(metrics.get("detection", {}).get("ignored_on_difficult_boxes") or 0)
    return (f"{n} WBC box{'es' if n > 1 else ''} marked difficult (VOC) {'were' if n > 1 else 'was'} neither WBCs to "
            f"find nor false detections: {k} detection{'s' if k != 1 else ''} on them {'was' if k == 1 else 'were'} "
            "not scored")


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_detections(
    pred: Sequence[Box], scores: Sequence[float], gt: Sequence[Box], iou_thr: float = 0.5
) -> tuple[list[bool], list[float], int]:
    """Greedy matching by score, each prediction taking the best box not yet taken (COCO's rule; VOC's differs where
    two true boxes overlap at ``iou_thr`` or more): per prediction (by descending score) whether it is a true positive
    and its best IoU; returns (tp flags in the *sorted* order, IoU of each match, number of ground truths)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    used = [False] * len(gt)
    tp: list[bool] = []
    ious: list[float] = []
    for i in order:
        best, bj = 0.0, -1
        for j, g in enumerate(gt):
            if used[j]:
                continue
            v = box_iou(pred[i], g)
            if v > best:
                best, bj = v, j
        if bj >= 0 and best >= iou_thr:
            used[bj] = True
            tp.append(True)
            ious.append(best)
        else:
            tp.append(False)
    return tp, ious, len(gt)


def on_ignored_boxes(pred: Sequence[Box], scores: Sequence[float], tp: Sequence[bool], ignore: Sequence[Box],
                     iou_thr: float = 0.5) -> list[bool]:
    """Per prediction, in :func:`match_detections`' sorted order (``tp``): whether it is no true positive but overlaps
    a box marked difficult at ``iou_thr`` or more, and so counts neither as found nor as false (VOC's rule for
    difficult objects; true boxes are matched first, as COCO matches its ignored boxes last)."""
    if not ignore:
        return [False] * len(tp)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return [not t and any(box_iou(pred[i], b) >= iou_thr for b in ignore) for i, t in zip(order, tp, strict=True)]


def average_precision(scores: Sequence[float], tp: Sequence[bool], n_gt: int) -> float | None:
    """All-point interpolated AP (VOC 2010+) from pooled detections; None (undefined) without any true box."""
    if n_gt == 0:
        return None
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    t = np.asarray(tp, np.float64)[order]
    ctp, cfp = np.cumsum(t), np.cumsum(1 - t)
    rec = ctp / n_gt
    prec = ctp / np.maximum(ctp + cfp, 1e-12)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def dice_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two bool masks (1, 1 when both are empty)."""
    inter = float(np.logical_and(pred, gt).sum())
    s = float(pred.sum() + gt.sum())
    union = s - inter
    if s == 0:
        return 1.0, 1.0
    return 2 * inter / s, inter / union


def paste_masks(cells: Sequence[Cell], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Full-image (nucleus, cell) bool masks from box-sized cell masks."""
    nuc = np.zeros(shape, bool)
    cell = np.zeros(shape, bool)
    for c in cells:
        x0, y0, x1, y1 = c.box
        nuc[y0:y1, x0:x1] |= c.nucleus_mask
        cell[y0:y1, x0:x1] |= c.cell_mask
    return nuc, cell


def unboxed_mask_cells(cell_mask: np.ndarray, boxes: Sequence[Box], min_iou: float = 0.3) -> np.ndarray:
    """Pixels of ground-truth mask cells that no WBC box covers (annotation gaps in the VOC boxes).

    A connected mask component whose bounding box overlaps every WBC box by IoU < ``min_iou`` (and
    is not mostly inside one) is a WBC the box annotators missed.
    """
    n, lab, stats, _ = cv2.connectedComponentsWithStats(cell_mask.astype(np.uint8), connectivity=8)
    out = np.zeros(cell_mask.shape, bool)
    for i in range(1, n):
        x, y, w, h, area = stats[i]
        if area < 200:
            continue
        cb = (float(x), float(y), float(x + w), float(y + h))
        inside = [
            max(0.0, min(cb[2], b[2]) - max(cb[0], b[0]))
            * max(0.0, min(cb[3], b[3]) - max(cb[1], b[1]))
            / max(1.0, w * h)
            for b in boxes
        ]
        if all(box_iou(cb, b) < min_iou for b in boxes) and all(v < 0.5 for v in inside):
            out |= lab == i
    return out


def _score(c: Cell) -> float:
    """Detection score for ranking (AP): the segmenter's own confidence."""
    return float(getattr(c, "score", 1.0))


def _prf(tp: int, fp: int, fn: int) -> dict[str, float | None]:
    """Precision, recall and F1 with their counts; each None (undefined) where it divides by nothing: recall and F1
    without any true box, so that a folder whose boxes were all left out of the truth cannot read as recall 1, and
    precision without any detection (before wbc 0.33.0 it read 1.000, "0 TP, 0 FP", beside recall 0).

    >>> _prf(0, 0, 1)["precision"], _prf(0, 0, 1)["f1"], _prf(2, 2, 0)["f1"]
    (None, 0.0, 0.6666666666666666)
    """
    p = tp / (tp + fp) if tp + fp else None
    if not tp + fn:
        return {"precision": p, "recall": None, "f1": None, "tp": tp, "fp": fp, "fn": fn}
    f1 = 2 * tp / (2 * tp + fp + fn)  # 2PR / (P + R), and 0 where nothing was found
    return {"precision": p, "recall": tp / (tp + fn), "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def rate(v: float | None) -> str:
    """A precision, recall, F1 or mean IoU for the terminal and ``summary.md``: three decimals, ``n/a`` when
    undefined."""
    return "n/a" if v is None else f"{v:.3f}"


def evaluate_segmentation(
    items: Sequence[BccdItem],
    segment: Callable[[np.ndarray], list[Cell]],
    classify: Callable[[np.ndarray, list[Cell]], list[str]] | None = None,
    iou_thr: float = 0.5,
    label_set: Sequence[str] = (),
) -> dict[str, Any]:
    """Detection, segmentation and (with ``classify``) subtype metrics over BCCD items.

    ``classify(rgb, cells)`` returns one canonical label per cell; the end-to-end check uses the images
    with one labelled WBC and compares the label of the detection best matching the WBC box. ``label_set``: the
    classes ``classify`` answers among (``--classes``; empty: any); a field labelled outside them can never be
    answered right, so it is not scored but counted in ``subtype.not_scored`` (label: fields) with what it was called
    in ``subtype.not_scored_called``, as ``wbc evaluate`` lists such cells (before wbc 0.31.0 it was scored as wrong:
    ``--classes neutrophil,lymphocyte`` that named every neutrophil and lymphocyte right read 0.75); so is a field
    whose one box names a WBC type outside every class (``BccdItem.other_type``, ``Blast``), under that name. A field
    whose image or mask cannot be read, or whose mask is not its size, is left out and listed in ``errors`` as (image,
    message): one bad file does not lose the other fields' scores; so is a field under ``wbc.analyze.MIN_SIDE`` px on
    a side, which `wbc analyze` refuses (since wbc 0.36.0).
    """
    all_scores: list[float] = []
    all_tp: list[bool] = []
    match_ious: list[float] = []
    n_gt = 0
    ign = {"tp": 0, "fp": 0, "ignored": 0}
    nd, ni, cd, ci = [], [], [], []
    per_image = []
    y_true: list[str] = []
    y_pred: list[str] = []
    outside: dict[str, Counter[str]] = {}  # label outside ``label_set`` -> what those fields were called
    seconds = 0.0
    errors: list[tuple[str, str]] = []
    from wbc.analyze import MIN_SIDE

    for it in items:
        try:
            rgb = read_image(it.image)
            if min(rgb.shape[:2]) < MIN_SIDE:  # as `wbc analyze` refuses it (a 3 px strip was scored as a field)
                raise WbcError(f"{it.image}: {rgb.shape[1]}x{rgb.shape[0]} is too small to hold a cell (minimum side "
                               f"{MIN_SIDE} px)")
            gt = read_gt_mask(it.mask) if it.mask is not None else None
            if gt is not None and gt[0].shape != rgb.shape[:2]:
                raise WbcError(f"{it.mask}: the mask is {gt[0].shape[1]}x{gt[0].shape[0]} pixels, its field "
                               f"{it.image.name} {rgb.shape[1]}x{rgb.shape[0]}")
        except WbcError as exc:
            errors.append((str(it.image), str(exc)))
            continue
        t0 = time.perf_counter()
        cells = segment(rgb)
        seconds += time.perf_counter() - t0
        boxes = [(float(x0), float(y0), float(x1), float(y1)) for x0, y0, x1, y1 in (c.box for c in cells)]
        scores = [_score(c) for c in cells]
        tp, ious, g = match_detections(boxes, scores, it.wbc_boxes, iou_thr)
        skip = on_ignored_boxes(boxes, scores, tp, it.ignore_boxes, iou_thr)
        all_scores += [v for v, s in zip(sorted(scores, reverse=True), skip, strict=True) if not s]
        all_tp += [t for t, s in zip(tp, skip, strict=True) if not s]
        match_ious += ious
        n_gt += g
        row: dict[str, Any] = {"image": it.name, "n_gt": g, "n_pred": len(cells), "tp": int(sum(tp))}
        if it.ignore_boxes:
            row.update(difficult_boxes=len(it.ignore_boxes), ignored_on_difficult=sum(skip))
        if it.origin:
            row["origin"] = it.origin
        if it.merged_boxes:
            row["merged_boxes"] = it.merged_boxes
        if gt is not None:
            gn, gc = gt
            pn, pc = paste_masks(cells, rgb.shape[:2])
            d1, i1 = dice_iou(pn, gn)
            d2, i2 = dice_iou(pc, gc)
            nd.append(d1)
            ni.append(i1)
            cd.append(d2)
            ci.append(i2)
            row.update(nucleus_dice=d1, cell_dice=d2)
            order = np.argsort(-np.asarray(scores), kind="stable")
            unboxed = unboxed_mask_cells(gc, [*it.wbc_boxes, *it.ignore_boxes])
            for k, flag, skipped in zip(order, tp, skip, strict=True):
                if skipped:
                    continue
                if flag:
                    ign["tp"] += 1
                    continue
                x0, y0, x1, y1 = cells[k].box
                m = cells[k].cell_mask
                if m.any() and unboxed[y0:y1, x0:x1][m].mean() > 0.5:
                    ign["ignored"] += 1
                else:
                    ign["fp"] += 1
        else:  # no mask: nothing tells an unannotated cell, so every detection counts as in ``detection``
            ign["tp"] += int(sum(tp))
            ign["fp"] += len(tp) - int(sum(tp)) - sum(skip)
        label = it.label or it.other_type
        if classify is not None and label is not None and len(it.wbc_boxes) == 1:
            predicted = "missed"
            if cells:
                labels = classify(rgb, cells)
                best = max(range(len(cells)), key=lambda k: box_iou(boxes[k], it.wbc_boxes[0]))
                predicted = labels[best] if box_iou(boxes[best], it.wbc_boxes[0]) >= iou_thr else "missed"
            row.update(label=label, predicted=predicted)
            if it.label is None or (label_set and it.label not in label_set):
                outside.setdefault(label, Counter())[predicted] += 1
                row["scored"] = False
            else:
                y_true.append(it.label)
                y_pred.append(predicted)
        per_image.append(row)
    tp_n = int(sum(all_tp))
    det: dict[str, Any] = dict(_prf(tp_n, len(all_tp) - tp_n, n_gt - tp_n))
    det["ap50"] = average_precision(all_scores, all_tp, n_gt)
    det["mean_iou_matched"] = float(np.mean(match_ious)) if match_ious else None  # none matched: no mean
    det["iou_threshold"] = iou_thr
    # detections on boxes marked difficult (VOC): neither true nor false
    det["ignored_on_difficult_boxes"] = sum(r.get("ignored_on_difficult", 0) for r in per_image)
    unknown: Counter[str] = Counter()
    for it in items:
        unknown.update(it.unknown_boxes)
    out: dict[str, Any] = {
        "n_images": len(per_image),
        "errors": [list(e) for e in errors],
        # box names read neither as a WBC nor as a red cell or platelet: if they are WBCs, the numbers miss them
        "unknown_box_names": dict(sorted(unknown.items())),
        # WBC boxes read as a cell's second box (merge_same_cell): the truth holds one box fewer for each
        "merged_boxes": sum(r.get("merged_boxes", 0) for r in per_image),
        # WBC boxes marked difficult (VOC), left out of the truth: not missed when not found
        "difficult_boxes": sum(r.get("difficult_boxes", 0) for r in per_image),
        "detection": det,
        "detection_ignore_unannotated": {
            **_prf(ign["tp"], ign["fp"], n_gt - ign["tp"]),
            "ignored_detections_on_unboxed_mask_cells": ign["ignored"],
        },
        "segmentation": {
            "n_images_with_masks": len(nd),
            "nucleus_dice": float(np.mean(nd)) if nd else None,
            "nucleus_iou": float(np.mean(ni)) if ni else None,
            "cell_dice": float(np.mean(cd)) if cd else None,
            "cell_iou": float(np.mean(ci)) if ci else None,
        },
        "seconds_per_image_segmentation": seconds / max(1, len(per_image)),
        "per_image": per_image,
    }
    origins = sorted({r["origin"] for r in per_image if r.get("origin")})
    if origins:
        out["per_origin"] = {}
        for o in origins:
            rows = [r for r in per_image if r.get("origin") == o]
            tp_o = sum(r["tp"] for r in rows)
            fp_o = sum(r["n_pred"] - r.get("ignored_on_difficult", 0) for r in rows) - tp_o
            out["per_origin"][o] = {
                "n_images": len(rows),
                **_prf(tp_o, fp_o, sum(r["n_gt"] for r in rows) - tp_o),
            }
    if classify is not None:
        out["subtype"] = {
            **subtype_metrics(y_true, y_pred),
            "not_scored": {lab: sum(c.values()) for lab, c in sorted(outside.items())},
            "not_scored_called": {lab: dict(c.most_common()) for lab, c in sorted(outside.items())},
        }
    return out


def subtype_metrics(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 over the classes present in the truth, and the confusion counts."""
    n = len(y_true)
    classes = sorted(set(y_true))
    f1s = {}
    for c in classes:
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred, strict=True))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred, strict=True))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred, strict=True))
        f1s[c] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    confusion: dict[str, dict[str, int]] = {}
    for t, p in zip(y_true, y_pred, strict=True):
        confusion.setdefault(t, {})
        confusion[t][p] = confusion[t].get(p, 0) + 1
    return {
        "n": n,
        "accuracy": sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / n if n else None,
        "macro_f1": float(np.mean(list(f1s.values()))) if f1s else None,
        "f1_per_class": f1s,
        "confusion": confusion,
    }


def no_subtype_note(metrics: Mapping[str, Any]) -> str:
    """Why a run with a classifier scored no subtype, in a sentence ("" when it scored some, or ran without one).

    >>> no_subtype_note({"subtype": {"n": 0, "not_scored": {}}})[:56]
    'no subtype was scored: no field has a subtype label (one'
    """
    sub = metrics.get("subtype")
    if not sub or sub["n"] or sub.get("not_scored"):
        return ""
    return ("no subtype was scored: no field has a subtype label (one WBC box named by its subtype, such as "
            "Neutrophil, or BCCD's single_wbc_labels.csv); --no-classifier scores the boxes alone")


def not_scored_note(subtype: Mapping[str, Any]) -> str:
    """The fields labelled outside the classes answered among (``--classes``) or with a WBC type no class names
    (``Blast``: its name as written, no class), and what they were called ("" when none).

    >>> not_scored_note({"not_scored": {"eosinophil": 3}, "not_scored_called": {"eosinophil": {"neutrophil": 3}}})
    '3 fields labelled outside the classes answered among (--classes) were not scored: eosinophil 3 (called \
neutrophil 3)'
    >>> not_scored_note({"not_scored": {"Blast": 1}, "not_scored_called": {"Blast": {"neutrophil": 1}}})
    "1 field labelled with a WBC type outside the model's classes was not scored: Blast 1 (called neutrophil 1)"
    """
    outside = subtype.get("not_scored") or {}
    called = subtype.get("not_scored_called") or {}
    said = []
    for types, which in ((False, "outside the classes answered among (--classes)"),
                         (True, "with a WBC type outside the model's classes")):
        labs = {lab: n for lab, n in outside.items() if (canonical_label(lab) is None) == types}
        if not labs:
            continue
        parts = [f"{lab} {n}" + (f" (called {', '.join(f'{c} {k}' for c, k in called[lab].items())})"
                                 if called.get(lab) else "") for lab, n in labs.items()]
        n = sum(labs.values())
        said.append(f"{n} field{'s' if n != 1 else ''} labelled {which} {'were' if n != 1 else 'was'} not scored: "
                    + "; ".join(parts))
    return ". ".join(said)


def summary_markdown(metrics: dict[str, Any]) -> str:
    """A short human-readable summary of :func:`evaluate_segmentation`'s output."""
    d = metrics["detection"]
    di = metrics["detection_ignore_unannotated"]
    s = metrics["segmentation"]
    lines = [
        f"# Smear evaluation: {metrics.get('dataset', 'BCCD')} {metrics.get('split') or 'every field (no splits)'} "
        f"({metrics['n_images']} images)",
        "",
        f"Segmenter: `{metrics.get('segmenter', '')}`; classifier: `{metrics.get('model_id', '')}`"
        + ("; each field's colours calibrated on its red cells." if metrics.get("colour_calibration") else "."),
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| WBC precision @IoU0.5 | {rate(d['precision'])} ({d['tp']} TP, {d['fp']} FP) |",
        f"| WBC recall @IoU0.5 | {rate(d['recall'])} ({d['fn']} missed) |",
        f"| WBC F1 | {rate(d['f1'])} |",
        f"| AP@0.5 | {'n/a (no WBC box)' if d['ap50'] is None else format(d['ap50'], '.3f')} |",
        f"| mean IoU of matched boxes | {rate(d['mean_iou_matched'])} |",
        f"| precision, unboxed mask cells ignored | {rate(di['precision'])} "
        f"({di['ignored_detections_on_unboxed_mask_cells']} ignored) |",
    ]
    if s["nucleus_dice"] is not None:
        lines += [
            f"| nucleus Dice / IoU | {s['nucleus_dice']:.3f} / {s['nucleus_iou']:.3f} |",
            f"| whole-cell Dice / IoU | {s['cell_dice']:.3f} / {s['cell_iou']:.3f} |",
        ]
    lines.append(
        f"| segmentation time per field | {1000 * metrics['seconds_per_image_segmentation']:.0f} ms |"
    )
    for o, v in metrics.get("per_origin", {}).items():
        lines.append(f"| {o}: recall / precision ({v['n_images']} images) | {rate(v['recall'])} / "
                     f"{rate(v['precision'])} |")
    sub = metrics.get("subtype")
    if sub and sub["n"]:
        lines += [
            f"| subtype accuracy (end to end, n={sub['n']}) | {sub['accuracy']:.3f} |",
            f"| subtype macro-F1 | {sub['macro_f1']:.3f} |",
            "",
            *(["Subtype labels come from a public Kaggle release of BCCD (another lab, camera and stain than",
               "the PBC training data; a few labels look wrong): read them as a transfer check, not as the",
               "classifier's accuracy."] if metrics.get("dataset", "BCCD") == "BCCD" else
              ["Subtype labels are the folder's own (single_wbc_labels.csv, or a field's one WBC box's name)."]),
        ]
    if sub and sub.get("not_scored"):
        lines += ["", not_scored_note(sub) + "."]
    if note := no_subtype_note(metrics):
        lines += ["", note[0].upper() + note[1:] + "."]
    if unknown := metrics.get("unknown_box_names"):
        lines += ["", "Boxes not read as WBCs, whose names are neither a WBC nor a red cell or platelet: "
                  + ", ".join(f"{k} ({v})" for k, v in unknown.items()) + "."]
    for note in (merged_note(metrics), difficult_note(metrics), trained_note(metrics)):
        if note:
            lines += ["", note + "."]
    errors = metrics.get("errors") or []
    if errors:
        lines += ["", f"{len(errors)} field(s) could not be read and were left out:", ""]
        lines += [f"- {msg}" for _, msg in errors[:50]]
        if len(errors) > 50:
            lines.append(f"- ... and {len(errors) - 50} more, listed in metrics.json")
    return "\n".join(lines) + "\n"


def evaluate_smears(
    data_root: Path,
    output: Path,
    segmenter: SegmenterLike,
    classifier: ClassifierLike | None = None,
    split: str = "test",
    limit: int | None = None,
    dataset: Path | None = None,
    keep_training_copies: bool | None = None,
) -> dict[str, Any]:
    """Run the whole evaluation and write ``metrics.json`` and ``summary.md`` to ``output``.

    ``dataset``: any YOLO- or VOC-labelled folder (:func:`load_labelled_folder`); default BCCD under
    ``data_root``. ``split`` picks ``images/<split>/``, ``data.yaml``'s list file or ``ImageSets/Main/<split>.txt``;
    a folder that defines other splits refuses one it lacks, and one that defines none is read whole
    (``metrics["split"]`` None). Fields whose files cannot be read are listed in ``errors`` (image, message) and left
    out of every score, and so are those that copy a field wbc's shipped models trained on (``trained_on_left_out``,
    :func:`without_trained_fields`), unless ``keep_training_copies``; None (default): kept for a segmenter trained on
    no field (:data:`UNTRAINED_SEGMENTERS`), whose scores they do not flatter.
    """
    from wbc.analyze import classify_cells, move_cells, red_cell_target_of, within_canvas

    check_output_file(output / "metrics.json")  # an unusable output ends the run before the fields, not after them
    load_errors: list[tuple[str, str]] = []
    items = (load_labelled_folder(dataset, split, load_errors) if dataset is not None
             else load_bccd(data_root, split, load_errors))
    if keep_training_copies is None:
        keep_training_copies = getattr(segmenter, "name", "") in UNTRAINED_SEGMENTERS
    not_checked: list[str] = []
    trained: list[str] | None = None
    if keep_training_copies:
        not_checked.append(f"copies of training fields were kept (segmenter {segmenter.name}"
                           f"{', trained on no field' if segmenter.name in UNTRAINED_SEGMENTERS else ''})")
    else:
        items, trained = without_trained_fields(items, data_root, split, not_checked)
    if limit:
        items = items[:limit]

    def segment(rgb: np.ndarray) -> list[Cell]:  # as `wbc analyze` segments: within any canvas
        field, (dx, dy) = within_canvas(rgb)
        cells = segmenter.segment(field)
        move_cells(cells, dx, dy)
        return cells

    classify = None
    if classifier is not None:

        def classify(rgb: np.ndarray, cells: list[Cell]) -> list[str]:
            field, (dx, dy) = within_canvas(rgb)
            move_cells(cells, -dx, -dy)
            classify_cells(field, cells, classifier)
            move_cells(cells, dx, dy)
            return [c.prediction.label if c.prediction else "" for c in cells]

    label_set = tuple(getattr(classifier, "label_set", ()) or ()) if classifier is not None else ()
    metrics = evaluate_segmentation(items, segment, classify, label_set=label_set)
    metrics["errors"] = [[f, m] for f, m in load_errors] + metrics["errors"]
    if metrics["errors"] and not metrics["n_images"]:
        raise WbcError(f"{dataset if dataset is not None else 'BCCD'}: none of the {len(metrics['errors'])} fields "
                       f"could be read (first problem: {metrics['errors'][0][1]})")
    metrics.update(
        dataset=str(dataset) if dataset is not None else "BCCD",
        # None where the folder defines no splits and every field was read: no split's name on all of them
        split=split if dataset is None or any(it.split for it in items) else None,
        segmenter=getattr(segmenter, "model_id", segmenter.name),
        model_id=getattr(classifier, "model_id", "") if classifier is not None else "",
        colour_calibration=classifier is not None and red_cell_target_of(classifier) is not None,
        # fields left out as copies of wbc's training fields; None: not checked (a training split, or no BCCD and
        # TXL-PBC under the data root)
        trained_on_left_out=trained,
        # why copies of training fields were kept or only partly looked for (None: looked for in full, or not at all)
        trained_on_not_checked=not_checked[0] if not_checked else None,
    )
    atomic_write_json(output / "metrics.json", metrics)
    atomic_write_text(output / "summary.md", summary_markdown(metrics))
    return metrics
