"""The case report: a printable HTML page (Jinja2, autoescaped) and a PDF (reportlab) per case.

Both show the differential with exact 95 % intervals, the reviewer's counts beside the model's, the flagged
cells' gallery, each field's warnings, the model id, the reviewer and the time, and a summary in plain words for
a reader who is not a specialist. A case that is not signed off yet is marked DRAFT on every page.
"""

from __future__ import annotations

import base64
import functools
import io
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wbc.cases.store import NOT_WBC, UNIDENTIFIABLE, CaseStore
from wbc.counts import fixed
from wbc.formats import confidence_text, threshold_text
from wbc.labels import PER_100_WBC

NAMES: dict[str, str] = {
    "basophil": "basophil", "eosinophil": "eosinophil", "erythroblast": "erythroblast", "ig": "immature granulocyte",
    "lymphocyte": "lymphocyte", "monocyte": "monocyte", "neutrophil": "neutrophil", "platelet": "platelet",
    NOT_WBC: "not a white blood cell", UNIDENTIFIABLE: "unidentifiable",
}
#: What each cell type is, for the plain-words summary.
ROLES: dict[str, str] = {
    "neutrophil": "the commonest white cells, first to fight bacteria",
    "lymphocyte": "cells of the immune system's memory and of the fight against viruses",
    "monocyte": "cells that clear debris and germs",
    "eosinophil": "cells involved in allergies and in fighting parasites",
    "basophil": "rare cells involved in allergic reactions",
    "ig": "young granulocytes that normally stay in the bone marrow",
    "erythroblast": "young red cells that normally stay in the bone marrow",
    "platelet": "cell fragments that help blood clot",
}
IMMATURE: tuple[str, ...] = ("ig", "erythroblast")


def display_name(label: str) -> str:
    return NAMES.get(label, label)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def names_list(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def reviewers_of(doc: Mapping[str, Any]) -> list[str]:
    """Who reviewed cells of the case (the audit trail's users), in the order they first did."""
    return list(dict.fromkeys(str(c["user"]) for c in doc["corrections"]))


def review_extent(doc: Mapping[str, Any]) -> str:
    """How much of the case a person looked at: ``reviewed 5 of 18 cells (4 of 14 flagged)``."""
    cells = doc["cells"]
    n_flagged = sum(1 for c in cells if c["model_review"])
    n_flagged_reviewed = sum(1 for c in cells if c["model_review"] and c["reviewed"])
    return (f"reviewed {doc['n_reviewed']} of {plural(len(cells), 'cell')} "
            f"({n_flagged_reviewed} of {n_flagged} flagged)")


def review_status(cell: Mapping[str, Any], signed: bool) -> str:
    """A gallery caption's last line: what became of the model's call, and who decided it."""
    if cell["changed"]:
        return f"final: {display_name(cell['label'])} (by {cell['reviewed_by']})"
    if cell["reviewed"]:
        return f"confirmed by {cell['reviewed_by']}"
    return "not opened: accepted at sign-off" if signed else "not reviewed yet"


def plain_summary(doc: Mapping[str, Any]) -> list[str]:
    """A few sentences for a non-specialist: who checked what, what was found, how sure the numbers are."""
    diff = doc["differential"]
    total = int(diff["total"])
    n_fields = len(doc["fields"])
    n_cells, n_reviewed = int(doc["n_cells"]), int(doc["n_reviewed"])
    reviewers = names_list(reviewers_of(doc))
    if not n_reviewed:
        extent = f"nobody has reviewed any of its {plural(n_cells, 'cell')} one by one"
    else:
        extent = f"{reviewers or 'the reviewer'} {review_extent(doc)} one by one"
    out = []
    if doc["signed_by"]:
        out.append(f"{doc['signed_by']} signed the result off on {(doc['signed_at'] or '')[:10]}. It covers "
                   f"{plural(n_fields, 'microscope image')} of this blood smear; {extent}.")
        if n_reviewed < n_cells:
            n_flagged = sum(1 for c in doc["cells"] if c["model_review"] and not c["reviewed"])
            flagged = f" ({n_flagged} of them flagged by the software for review)" if n_flagged else ""
            out.append(f"The other {n_cells - n_reviewed} were not opened{flagged}: the software's calls for them were "
                       "accepted at sign-off." if n_reviewed else f"None of them was opened{flagged}: the software's "
                       "calls were accepted at sign-off.")
    else:
        out.append(f"This is a draft: nobody has signed it off yet. It covers {plural(n_fields, 'microscope image')};"
                   f" so far {extent}.")
    if doc["n_changed"]:
        out.append(f"The software suggested a type for each cell; the reviewer corrected {doc['n_changed']} of "
                   f"{doc['n_cells']} suggestions, and the numbers below are the corrected ones.")
    elif doc["signed_by"] and n_reviewed == n_cells:
        out.append("The software suggested a type for each cell and the reviewer agreed with every suggestion.")
    elif doc["signed_by"] and n_reviewed:
        out.append("The software suggested a type for each cell; the reviewer changed none of those reviewed.")
    if n_warned := sum(1 for f in doc["fields"] if f.get("warnings")):
        which = "the microscope image" if n_fields == 1 else f"{n_warned} of the {n_fields} microscope images"
        out.append(f"The software warned about {which} (listed under \"Warnings about the fields\"); read the "
                   "numbers with those warnings in mind.")
    if total == 0:
        out.append("No white blood cell could be counted, so no differential is given.")
        out.extend(immature_sentences(doc))
        out.extend(excluded_sentences(doc))
        return out
    rows = sorted((r for r in diff["rows"] if r["count"]), key=lambda r: -r["count"])
    wbcs = [r for r in rows if r["class"] not in PER_100_WBC]  # NRBCs and platelets are counted per 100 WBCs
    top = [r for r in wbcs if r["count"] >= wbcs[min(1, len(wbcs) - 1)]["count"]]  # the two commonest, and ties
    parts = [f"{display_name(r['class'])}s ({fixed(r['percent'], 0)} %: {ROLES.get(r['class'], '')})" for r in top]
    listed = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
    out.append(f"{plural(total, 'white blood cell')} {'was' if total == 1 else 'were'} counted. The most common "
               f"were {listed}.")
    r0 = top[0]
    out.append(f"With {plural(total, 'cell')}, each percentage is an estimate: the true share of "
               f"{display_name(r0['class'])}s is likely (95 % confidence) between {fixed(r0['ci95_low'], 0)} % and "
               f"{fixed(r0['ci95_high'], 0)} %. Counting more cells narrows these ranges.")
    out.extend(immature_sentences(doc))
    out.extend(excluded_sentences(doc))
    out.append("This is a cell count, not a diagnosis: a doctor reads it with the lab's reference ranges and the "
               "patient's history.")
    return out


def excluded_sentences(doc: Mapping[str, Any]) -> list[str]:
    """What the summary says of the objects left out of the count (not a WBC, unidentifiable), also when no WBC was
    counted: before wbc 0.36.0 such a summary stopped at "no differential is given"."""
    excluded = doc["differential"]["excluded"]
    if excluded.get(NOT_WBC) or excluded.get(UNIDENTIFIABLE):
        return [f"{excluded.get(NOT_WBC, 0)} object(s) were not white blood cells and "
                f"{excluded.get(UNIDENTIFIABLE, 0)} could not be identified; they are not counted."]
    return []


def immature_sentences(doc: Mapping[str, Any]) -> list[str]:
    """What the summary says about cells that normally stay in the bone marrow (IGs, erythroblasts), the alarming
    finding of a differential: a reviewer's calls as confirmed, the model's calls nobody opened as the software's
    calls still awaiting a person's review (on BCCD the unopened ones were wrong), never as cells "seen"."""
    def listed(cells: list[Mapping[str, Any]]) -> str:
        n = Counter(str(c["label"]) for c in cells)
        return names_list([plural(n[k], display_name(k)) for k in IMMATURE if n[k]])

    immature = [c for c in doc["cells"] if c["label"] in IMMATURE]
    seen = [c for c in immature if c["reviewed"]]
    called = [c for c in immature if not c["reviewed"]]
    out = []
    if seen:
        out.append(f"The reviewer confirmed cells that normally stay in the bone marrow ({listed(seen)}).")
    if called:
        one = len(called) == 1
        them, they = ("it", "it is the software's call") if one else ("them", "they are the software's calls")
        when = (f"nobody opened {them} before sign-off, so {they}, not confirmed by a reviewer" if doc["signed_by"]
                else f"{they}, awaiting a reviewer's confirmation")
        out.append(f"The software called {listed(called)} (cells that normally stay in the bone marrow); {when}, "
                   "and counted as called.")
    return out


def report_context(store: CaseStore, case: int | str) -> dict[str, Any]:
    """What both reports show, computed once."""
    doc = store.case_document(case)
    crops = store.views(doc["id"])  # each cell as the slide shows it, not the classifier's (mirrored) crop
    model_rows = {r["class"]: r for r in doc["model_differential"]["rows"]}
    rows = []
    for r in doc["differential"]["rows"]:
        m = model_rows[r["class"]]
        rows.append({**r, "name": display_name(r["class"]), "rate": rate_text(r), "ci": ci_text(r),
                     "model_count": m["count"], "model_percent": m["percent"], "delta": r["count"] - m["count"]})
    for lab in (NOT_WBC, UNIDENTIFIABLE):
        n_model = 0  # the model never makes these calls
        rows.append({"class": lab, "name": display_name(lab), "count": doc["differential"]["excluded"][lab],
                     "total": None, "percent": None, "ci95_low": None, "ci95_high": None, "rate": "", "ci": "",
                     "model_count": n_model, "model_percent": None,
                     "delta": doc["differential"]["excluded"][lab] - n_model})
    flagged = [c for c in doc["cells"] if c["model_review"] or c["changed"]]
    threshold = float(doc.get("review_threshold") or 0.0)
    gallery = [{**c, "model_name": display_name(c["model_label"]), "name": display_name(c["label"]),
                "confidence": confidence_text(c["model_confidence"], threshold),
                "status": review_status(c, bool(doc["signed_by"])), "png": crops[c["id"]],
                "src": "data:image/png;base64," + base64.b64encode(crops[c["id"]]).decode()}
               for c in flagged]
    changes = Counter((c["model_label"], c["label"]) for c in doc["cells"] if c["changed"])
    fields = [{**f, "colours": "calibrated on its red cells" if f["colour_calibration"] else "as they came",
               "sha1_short": (f.get("sha1") or "")[:12] or "not recorded"} for f in doc["fields"]]
    return {"case": doc, "meta": report_meta(doc), "fields": fields, "rows": rows, "gallery": gallery,
            "summary": plain_summary(doc), "warnings": field_warnings(doc),
            "changes": [{"from": display_name(a), "to": display_name(b), "n": n}
                        for (a, b), n in changes.most_common()],
            "footer": FOOTER, "corrections_none": CORRECTIONS_NONE, "gallery_note": GALLERY_NOTE,
            "differential_note": differential_note(doc["differential"]["rows"]), "counted_note": counted_note(doc),
            "draft": not doc["signed_by"]}


def field_warnings(doc: Mapping[str, Any]) -> list[str]:
    """Each field's warnings as stored with the analysis, one line each (``field 2 (slide.tif): the file holds 3
    images; only the first was analysed: ...``): the signer attests to a count the warnings qualify (fields of a
    TIFF never analysed, no WBC found, cells unlike the training data), so the report must say them. A warning about
    cells a person has since reviewed says what became of them (:func:`since_reviewed`)."""
    cells: dict[int, list[Mapping[str, Any]]] = {}
    for c in doc["cells"]:
        cells.setdefault(c["field_id"], []).append(c)
    return [f"field {f['position']} ({f['image']}): {w}{since_reviewed(warned_cells(w, cells.get(f['id'], [])))}"
            for f in doc["fields"] for w in f.get("warnings") or []]


#: How the field warnings that speak of some of its cells begin or run (:func:`wbc.classify.outside_sentence`,
#: :func:`wbc.ood.ood_sentence`), with :data:`wbc.smear_look.NOT_A_SMEAR_WARNING`.
OUTSIDE_WARNING = "cells are most likely a class "
OOD_WARNING = " look unlike the model's training data"


def warned_cells(warning: str, cells: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The cells of its field a warning speaks of: those the model takes for a class outside those counted, those
    unlike the training data, every cell of a field that does not look like a smear; none for another warning."""
    from wbc.classify import outside_of
    from wbc.smear_look import NOT_A_SMEAR_REASON, NOT_A_SMEAR_WARNING

    if warning.startswith(NOT_A_SMEAR_WARNING):
        return [c for c in cells if NOT_A_SMEAR_REASON in c["model_reasons"]]
    if OUTSIDE_WARNING in warning:
        return [c for c in cells if any(outside_of(r) for r in c["model_reasons"])]
    if OOD_WARNING in warning:
        return [c for c in cells if c["ood"]]
    return []


#: At most this many reviewed cells are named after a warning; the others are counted.
SINCE_SHOWN = 5


def since_reviewed(cells: Sequence[Mapping[str, Any]]) -> str:
    """What became of the warned ``cells`` a person reviewed: ``; since reviewed: cell #7 marked not a white blood
    cell by A. Tech``, or "" when none was. A warning is stored as analysed ("each is counted in the class shown");
    before wbc 0.36.0 a signed report printed it unchanged under a differential that no longer counted the cell."""
    reviewed = [c for c in cells if c["reviewed"]]
    if not reviewed:
        return ""

    def fate(c: Mapping[str, Any]) -> str:
        what = ("confirmed" if not c["changed"] else "marked" if c["label"] in (NOT_WBC, UNIDENTIFIABLE)
                else "relabelled")
        return f"cell #{c['id']} {what} {display_name(c['label'])} by {c['reviewed_by']}"

    named = ", ".join(fate(c) for c in reviewed[:SINCE_SHOWN])
    more = f" and {len(reviewed) - SINCE_SHOWN} more" if len(reviewed) > SINCE_SHOWN else ""
    rest = f"; {len(cells) - len(reviewed)} not reviewed" if len(reviewed) < len(cells) else ""
    return f"; since reviewed: {named}{more}{rest}"


#: Under both reports' differential: the units, and that platelets are not counted (no smear cell is answered as one,
#: so no row reads as a measured 0 per 100 WBCs, as every case report did before wbc 0.30.0; one the model takes for a
#: platelet is flagged, since wbc 0.33.0).
DIFFERENTIAL_NOTE = ("erythroblasts per 100 white cells, outside the total; intervals are exact (Clopper-Pearson). "
                     "Platelets are not counted in smear analysis (a cell the model takes for one is flagged for "
                     "review).")
CORRECTIONS_NONE = "None: every call of the model was kept."
GALLERY_NOTE = ("Cells the model flagged for review (low confidence or unusual appearance) and cells the reviewer "
                "changed.")
#: Both reports' last words.
FOOTER = ("Research software: every call is a pre-classification by the software. The report says which calls a "
          "person reviewed and which were accepted at sign-off without being opened. Not a medical device.")


def counted_note(doc: Mapping[str, Any]) -> str:
    """How many white cells the differential counts and whose calls they are, as both reports and the review page
    say it: ``23 white cells counted: 2 reviewed, 21 the model's calls accepted at sign-off without being opened (21
    of them flagged for review)``. Before wbc 0.36.0 it read "(reviewed calls)" however few were reviewed."""
    total = int(doc["differential"]["total"])
    wbcs = {r["class"] for r in doc["differential"]["rows"] if r.get("unit") != "per 100 WBC"}
    counted = [c for c in doc["cells"] if c["label"] in wbcs]
    unopened = [c for c in counted if not c["reviewed"]]
    head = f"{total} white cells counted"
    if not counted:
        return head
    if not unopened:
        return f"{head}, every one reviewed"
    fate = "accepted at sign-off without being opened" if doc["signed_by"] else "not reviewed yet"
    n_flagged = sum(1 for c in unopened if c["model_review"])
    flagged = f" ({n_flagged} of them flagged for review)" if n_flagged else ""
    return f"{head}: {len(counted) - len(unopened)} reviewed, {len(unopened)} the model's calls {fate}{flagged}"


def differential_note(rows: Sequence[Mapping[str, Any]]) -> str:
    """:data:`DIFFERENTIAL_NOTE` for a differential of these rows: the erythroblasts' unit only where they have a row
    (a five-part case counts none, since wbc 0.31.0: :func:`wbc.cases.store.counted_classes`)."""
    if any(r["class"] == "erythroblast" for r in rows):
        return DIFFERENTIAL_NOTE
    return DIFFERENTIAL_NOTE.split("; ", 1)[1]


TEMPLATES = Path(__file__).resolve().parent / "templates"


def report_css() -> str:
    return (TEMPLATES / "report.css").read_text(encoding="utf-8")


def review_line(doc: Mapping[str, Any]) -> str:
    """The meta line: ``5 of 18 cells (4 of 14 flagged), by A. Tech``."""
    who = names_list(reviewers_of(doc))
    return review_extent(doc).removeprefix("reviewed ") + (f", by {who}" if who else "")


def settings_line(doc: Mapping[str, Any]) -> str:
    """How the case's fields were analysed besides the models (its ``settings``: `wbc analyze`'s and `wbc cases
    create`'s --classes, --tta, --pixel-size; the colours have their own line), which change the cells and counts:
    ``answered among every class of the model; each cell's answer averaged over 4 flips/rotations; pixel size 0.25 µm
    (given)``."""
    st = doc.get("settings")
    if not st:
        return "not recorded (a case stored before wbc 0.36.0)"
    classes = list(st.get("classes") or [])
    parts = [f"answered among {len(classes)} classes only ({', '.join(classes)})" if classes
             else "answered among every class of the model"]
    if tta := st.get("tta"):
        parts.append("each cell answered once, not averaged over flips/rotations" if tta == 1
                     else f"each cell's answer averaged over {tta} flips/rotations")
    if "pixel_size" in st:
        size = st["pixel_size"]
        parts.append(f"pixel size {size:g} µm (given)" if size else "pixel size measured from the red cells")
    return "; ".join(parts)


def colours_line(doc: Mapping[str, Any]) -> str:
    n = sum(1 for f in doc["fields"] if f["colour_calibration"])
    if not n:
        return "classified as they came"
    return f"{n} of {len(doc['fields'])} field(s) calibrated on their own red cells before classifying"


def report_meta(doc: Mapping[str, Any]) -> list[dict[str, str]]:
    """The report's head, the same lines in the HTML and the PDF: what was analysed, with what, by whom, who
    reviewed and signed it (``id``: the HTML element's id, or "")."""
    from wbc import __version__

    version = doc.get("wbc_version")
    made = f"wbc {version}" if version else "wbc version not recorded (a case stored before the store kept it)"
    if version != __version__:
        made += f"; this report by wbc {__version__}"
    threshold = float(doc.get("review_threshold") or 0.0)
    lines = [
        ("Case", doc["name"], "case-name"),
        ("Fields / cells", f"{len(doc['fields'])} / {doc['n_cells']} (the fields' files are listed below)", ""),
        ("Classifier", doc["model_id"] or "not recorded", "model"),
        ("Segmenter", doc.get("segmenter_id") or "not recorded", "segmenter"),
        ("Analysis", settings_line(doc), "settings"),
        ("Review threshold", f"{threshold_text(threshold)} (a cell the classifier is less sure of is flagged)", ""),
        ("Colours", colours_line(doc), "colours"),
        ("Software", made, "software"),
        ("Analysed", (doc["created_at"] or "") + (f" by {doc['created_by']}" if doc["created_by"] else ""), ""),
        ("Reviewed", review_line(doc), "reviewed"),
        ("Signed off by", doc["signed_by"] or "not signed off", "reviewer"),
        ("Signed off on", doc["signed_at"] or "–", ""),
    ]
    if doc["signed_by"]:
        lines.append(("Numbers", numbers_line(doc), "numbers"))
    return [{"label": a, "value": str(b), "id": i} for a, b, i in lines]


def numbers_line(doc: Mapping[str, Any]) -> str:
    """Where a signed-off case's differential comes from: the numbers signed off (and, when this wbc's counting rules
    make others of the same calls, both versions and the total each gives), or, for a case signed off before wbc
    0.31.0 kept them, re-computed by this wbc. Before, a signed case was silently re-printed by the newest rules."""
    from wbc import __version__

    if not doc["numbers_as_signed"]:
        return (f"re-computed by wbc {__version__} from the calls signed off: the case was signed off before wbc "
                "0.31.0, which kept no copy of the numbers signed, so they differ from these if the counting rules "
                "changed since")
    line = f"as signed off, computed by wbc {doc['numbers_by']}"
    if now := doc["numbers_now"]:
        line += (f"; wbc {now['wbc_version']} computes other numbers from the same calls "
                 f"({now['differential']['total']} white cells counted, not {doc['differential']['total']})")
    return line


def render_html(store: CaseStore, case: int | str, css_href: str | None = None) -> str:
    """The printable report page: self-contained (style and crops inline, nothing external), or with the
    style sheet at ``css_href`` (a server whose Content-Security-Policy forbids inline styles)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("wbc.cases", "templates"), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html").render(css_href=css_href, **report_context(store, case))


def _fmt(v: float | None) -> str:
    return "" if v is None else fixed(v)


def no_wbc(row: Mapping[str, Any]) -> bool:
    """Whether a differential row has no value: no WBC counted. Its numbers are None for a rate per 100 WBCs, but a WBC
    class keeps 0.0 with 0-100 (:func:`wbc.counts.differential_rows`, also in a case signed off before), which both
    reports printed as a share of "0.0" and "0.0–100.0" for a case of only NRBCs (before wbc 0.33.0)."""
    return row["percent"] is None or row.get("total") == 0


def ci_text(row: dict[str, Any]) -> str:
    """A differential row's 95 % interval as both reports print it (``0.6–80.6``), by the rule every output rounds with
    (:func:`wbc.counts.fixed`), or "" when it has none (:func:`no_wbc`)."""
    return "" if no_wbc(row) or row["ci95_low"] is None else f"{_fmt(row['ci95_low'])}–{_fmt(row['ci95_high'])}"


def rate_text(row: dict[str, Any]) -> str:
    """A differential row's percent as both reports print it: ``/100 WBC`` marks NRBCs and platelets, and such a
    rate with no WBC counted reads :data:`wbc.counts.NO_WBC_RATE` (its numbers are None), never a bare unit; a WBC
    class then has no share, "" (:func:`no_wbc`), as differential.csv and report.html leave it.

    >>> [rate_text(r) for r in ({"percent": 12.34, "unit": "percent"}, {"percent": 50.0, "unit": "per 100 WBC"},
    ...                         {"percent": None, "count": 6, "unit": "per 100 WBC"}, {"percent": None, "count": 0})]
    ['12.3', '50.0 /100 WBC', 'n/a (no WBC counted)', '']
    >>> rate_text({"percent": 0.0, "count": 0, "total": 0, "unit": "percent"})
    ''
    """
    from wbc.counts import NO_WBC_RATE

    if no_wbc(row):
        return NO_WBC_RATE if row.get("unit") == "per 100 WBC" and row.get("count") else ""
    return _fmt(row["percent"]) + (" /100 WBC" if row.get("unit") == "per 100 WBC" else "")


#: reportlab's built-in Helvetica has no Ł, Ż, Greek or Cyrillic (each drawn as a black square): the PDF's text is set
#: in DejaVu Sans, the TrueType font matplotlib ships (Helvetica only where it is missing).
_FONT_FILES = {"WbcSans": "DejaVuSans.ttf", "WbcSans-Bold": "DejaVuSans-Bold.ttf",
               "WbcSans-Oblique": "DejaVuSans-Oblique.ttf", "WbcSans-BoldOblique": "DejaVuSans-BoldOblique.ttf"}


@functools.cache
def _pdf_fonts() -> dict[str, str]:
    """Built-in font -> the Unicode font to draw with instead ({} when matplotlib's DejaVu files are missing)."""
    import matplotlib
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    if not all((folder / f).is_file() for f in _FONT_FILES.values()):
        return {}
    for name, f in _FONT_FILES.items():
        pdfmetrics.registerFont(TTFont(name, str(folder / f)))
    pdfmetrics.registerFontFamily("WbcSans", normal="WbcSans", bold="WbcSans-Bold", italic="WbcSans-Oblique",
                                  boldItalic="WbcSans-BoldOblique")
    return {"Helvetica": "WbcSans", "Helvetica-Bold": "WbcSans-Bold", "Helvetica-Oblique": "WbcSans-Oblique",
            "Helvetica-BoldOblique": "WbcSans-BoldOblique"}


#: DejaVu Sans has no CJK ideographs, kana or Hangul: a name in them ("山田 太郎", "김민준") was drawn as
#: boxes, silently (before wbc 0.35.0). Such runs are set in reportlab's built-in Adobe CID fonts (nothing downloaded
#: or embedded; a PDF reader draws them with its own Asian fonts): kana in Japanese, Hangul in Korean, ideographs in
#: Japanese beside kana, in Korean beside Hangul, else in Chinese, whose font has the most of them.
_CJK_FONTS = {"ja": "HeiseiKakuGo-W5", "ko": "HYGothic-Medium", "zh": "STSong-Light"}
_KANA = ((0x3040, 0x30FF), (0x31F0, 0x31FF), (0xFF65, 0xFF9F))
_HANGUL = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xAC00, 0xD7FF))
_HAN = ((0x2E80, 0x2FDF), (0x3000, 0x303F), (0x3190, 0x319F), (0x31C0, 0x31EF), (0x3200, 0x33FF),
        (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0xFE30, 0xFE4F), (0xFF00, 0xFFEF))


def _in(ch: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(a <= ord(ch) <= b for a, b in ranges)


@functools.cache
def _cjk_font(lang: str) -> str:
    """Register (once) and name the built-in CID font for ``lang`` (as its own bold and italic: it has none)."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont

    name = _CJK_FONTS[lang]
    pdfmetrics.registerFont(UnicodeCIDFont(name))
    pdfmetrics.registerFontFamily(name, normal=name, bold=name, italic=name, boldItalic=name)
    return name


def _drawable(ch: str, font: str) -> bool:
    """Whether ``font`` (a registered TrueType font, or a built-in one: Latin-1) has a glyph for ``ch``."""
    from reportlab.pdfbase import pdfmetrics

    glyphs = getattr(pdfmetrics.getFont(font).face, "charToGlyph", None)
    return ord(ch) in glyphs if glyphs is not None else ord(ch) < 256


def _runs(text: str, font: str, missing: set[str] | None = None) -> list[tuple[str, str]]:
    """``text`` cut into runs of one font each: ``font`` where it has the glyph, else a CJK font (:data:`_CJK_FONTS`).
    A character no font here draws stays in ``font`` (a box) and is added to ``missing``."""
    lang = "ja" if any(_in(c, _KANA) for c in text) else "ko" if any(_in(c, _HANGUL) for c in text) else "zh"
    runs: list[tuple[str, str]] = []
    for ch in text:
        use = font
        if not _drawable(ch, font):
            if _in(ch, _KANA):
                use = _cjk_font("ja")
            elif _in(ch, _HANGUL):
                use = _cjk_font("ko")
            elif _in(ch, _HAN):
                use = _cjk_font(lang)
            elif missing is not None and not ch.isspace() and ch.isprintable():
                missing.add(ch)
        if runs and runs[-1][1] == use:
            runs[-1] = (runs[-1][0] + ch, use)
        else:
            runs.append((ch, use))
    return runs


def _width(text: str, font: str, size: float) -> float:
    from reportlab.pdfbase.pdfmetrics import stringWidth

    return sum(stringWidth(run, f, size) for run, f in _runs(text, font))


def _fit(text: str, font: str, size: float, width: float) -> str:
    """``text`` shortened with an ellipsis to at most ``width`` points in ``font`` at ``size``."""
    if _width(text, font, size) <= width:
        return text
    while text and _width(text + "…", font, size) > width:
        text = text[:-1]
    return text + "…"


def render_pdf(store: CaseStore, case: int | str, warnings: list[str] | None = None) -> bytes:
    """The same report as a PDF (A4, reportlab), its text in a Unicode font (:func:`_pdf_fonts`) and CJK runs in a
    CJK font (:func:`_runs`). Characters no font here draws are said in one line, appended to ``warnings`` and
    printed under the title (not left as boxes, unsaid)."""
    from xml.sax.saxutils import escape

    from reportlab.lib import colors
    from reportlab.lib.enums import TA_RIGHT
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Image, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    ctx = report_context(store, case)
    doc = ctx["case"]
    styles = getSampleStyleSheet()
    fonts = _pdf_fonts()
    for style in styles.byName.values():
        if hasattr(style, "fontName"):  # paragraph styles (a list style has none)
            style.fontName = fonts.get(style.fontName, style.fontName)
    bold, regular = fonts.get("Helvetica-Bold", "Helvetica-Bold"), fonts.get("Helvetica", "Helvetica")
    missing: set[str] = set()

    def e(text: str) -> str:
        """Paragraph markup of ``text``: escaped, each run the main font lacks in a CJK font."""
        return "".join(escape(run) if f == regular else f'<font name="{f}">{escape(run)}</font>'
                       for run, f in _runs(text, regular, missing))

    cell_style = ParagraphStyle("cell", fontName=regular, fontSize=10, leading=12)

    def plain(text: str) -> Any:
        """A table cell's text: as it is, or a paragraph when it needs a CJK font."""
        return text if all(f == regular for _, f in _runs(text, regular)) else Paragraph(e(text), cell_style)

    story: list[Any] = []
    title = f"White-blood-cell differential: {doc['name']}"
    if ctx["draft"]:
        story.append(Paragraph("<font color='#b00020'><b>DRAFT: not signed off</b></font>", styles["Heading2"]))
    story.append(Paragraph(e(title), styles["Title"]))
    undrawable_at = len(story)
    t = Table([[Paragraph(f"<b>{e(m['label'])}</b>", styles["Normal"]), Paragraph(e(m["value"]), styles["Normal"])]
               for m in ctx["meta"]], colWidths=[35 * mm, 135 * mm])
    t.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("BOTTOMPADDING", (0, 0), (-1, -1), 2)]))
    story += [t, Spacer(1, 4 * mm), Paragraph("In plain words", styles["Heading2"])]
    story += [Paragraph(e(s), styles["Normal"]) for s in ctx["summary"]]
    story += [Spacer(1, 4 * mm), Paragraph("Differential", styles["Heading2"])]
    head = ["Class", "Count", "Percent", "95 % CI", "Model's count", "Change"]
    # a rate's text wraps within its column: drawn on one line, right-aligned, it ran over the count beside it
    rate = ParagraphStyle("rate", fontName=regular, fontSize=10, leading=12, alignment=TA_RIGHT)
    data = [head] + [[plain(r["name"]), str(r["count"]),
                      Paragraph(e(r["rate"]), rate),
                      r["ci"],
                      str(r["model_count"]), f"{r['delta']:+d}" if r["delta"] else ""] for r in ctx["rows"]]
    t = Table(data, repeatRows=1, colWidths=[44 * mm, 16 * mm, 33 * mm, 27 * mm, 32 * mm, 20 * mm])
    t.setStyle(TableStyle([("FONTNAME", (0, 0), (-1, -1), regular), ("FONTNAME", (0, 0), (-1, 0), bold),
                           ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
                           ("LINEBELOW", (0, 0), (-1, 0), 0.8, colors.black),
                           ("LINEBELOW", (0, 1), (-1, -1), 0.25, colors.grey)]))
    story += [t, Paragraph(f"{ctx['counted_note']}; {ctx['differential_note']}", styles["Italic"])]
    story += [Spacer(1, 3 * mm), Paragraph("Corrections by the reviewer", styles["Heading2"])]
    story += [Paragraph(e(f"{c['n']} × {c['from']} → {c['to']}"), styles["Normal"]) for c in ctx["changes"]]
    if not ctx["changes"]:
        story.append(Paragraph(CORRECTIONS_NONE, styles["Normal"]))
    story += [Spacer(1, 4 * mm), Paragraph("Fields", styles["Heading2"])]
    small = styles["BodyText"]
    data = [["Field", "File", "Size (px)", "Cells", "Colours", "SHA-1"]] + [
        [str(f["position"]), Paragraph(e(f["image"]), small), f"{f['width']} × {f['height']}", str(f["n_cells"]),
         Paragraph(e(f["colours"]), small), Paragraph(e(f["sha1_short"]), small)] for f in ctx["fields"]]
    t = Table(data, repeatRows=1, colWidths=[12 * mm, 58 * mm, 22 * mm, 12 * mm, 42 * mm, 24 * mm])
    t.setStyle(TableStyle([("FONTNAME", (0, 0), (-1, -1), regular), ("FONTNAME", (0, 0), (-1, 0), bold),
                           ("FONTSIZE", (0, 0), (-1, -1), 8), ("VALIGN", (0, 0), (-1, -1), "TOP"),
                           ("LINEBELOW", (0, 0), (-1, 0), 0.8, colors.black),
                           ("LINEBELOW", (0, 1), (-1, -1), 0.25, colors.grey)]))
    story.append(t)
    if ctx["warnings"]:
        story += [Spacer(1, 3 * mm), Paragraph("Warnings about the fields", styles["Heading2"])]
        item = ParagraphStyle("warning", parent=styles["Normal"], leftIndent=4 * mm, bulletIndent=0)
        story += [Paragraph(e(w), item, bulletText="•") for w in ctx["warnings"]]
    story += [Spacer(1, 4 * mm), Paragraph("Flagged and corrected cells", styles["Heading2"]),
              Paragraph(e(GALLERY_NOTE), styles["Italic"])]
    if ctx["gallery"]:
        cells = []
        for g in ctx["gallery"]:
            img = Image(io.BytesIO(g["png"]), width=26 * mm, height=26 * mm)
            cap = f"#{g['id']} · field {g['field']}<br/>model: {e(g['model_name'])} ({g['confidence']})"
            cap += f"<br/><b>{e(g['status'])}</b>" if g["changed"] else f"<br/>{e(g['status'])}"
            cells.append([img, Paragraph(cap, styles["BodyText"])])
        per_row = 3
        grid = []
        for i in range(0, len(cells), per_row):
            row: list[Any] = []
            for img, cap in cells[i : i + per_row]:
                row += [img, cap]
            row += [""] * (2 * per_row - len(row))
            grid.append(row)
        t = Table(grid, colWidths=[28 * mm, 29 * mm] * per_row)
        t.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
        story.append(t)
    else:
        story.append(Paragraph("No cell was flagged or corrected.", styles["Normal"]))
    story += [Spacer(1, 6 * mm), Paragraph(e(ctx["footer"]), styles["Italic"])]

    def on_page(canvas: Any, _doc: Any) -> None:
        from reportlab.pdfbase.pdfmetrics import stringWidth

        canvas.saveState()
        canvas.setFont(regular, 8)
        right = ("DRAFT · " if ctx["draft"] else "") + f"page {canvas.getPageNumber()}"
        room = 180 * mm - stringWidth(right, regular, 8) - 6 * mm  # a long name never runs into the page number
        x = 15 * mm
        for run, font in _runs(_fit(f"{doc['name']} · {doc['model_id']}", regular, 8, room), regular):
            canvas.setFont(font, 8)
            canvas.drawString(x, 10 * mm, run)
            x += stringWidth(run, font, 8)
        canvas.setFont(regular, 8)
        canvas.drawRightString(195 * mm, 10 * mm, right)
        canvas.restoreState()

    if missing:
        chars = ", ".join(f"{c} (U+{ord(c):04X})" for c in sorted(missing))
        said = f"the PDF's fonts cannot draw {chars}: printed as boxes; the HTML report shows them"
        if warnings is not None:
            warnings.append(said)
        story.insert(undrawable_at, Paragraph(escape(f"Note: {said}."), styles["Italic"]))
    buf = io.BytesIO()
    pdf = SimpleDocTemplate(buf, pagesize=A4, title=title, author=doc["signed_by"] or "wbc",
                            leftMargin=15 * mm, rightMargin=15 * mm, topMargin=15 * mm, bottomMargin=18 * mm)
    pdf.build(story, onFirstPage=on_page, onLaterPages=on_page)
    return buf.getvalue()
