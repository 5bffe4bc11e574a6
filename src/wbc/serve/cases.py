"""Cases over HTTP: create a case from uploaded fields, review it cell by cell, sign it off, print its report.

An :class:`fastapi.APIRouter` that :func:`wbc.serve.app.create_app` includes; the store is
``app.state.case_store`` (a :class:`wbc.cases.CaseStore`, ``None``: these routes answer 503). The review
page is ``/review`` (static ``review.html`` + ``review.js``). Authentication, Origin and Host checks are
:mod:`wbc.serve.security`'s: its ``API_KEY`` dependency is on this router (and on the whole app).

Errors: unknown case or cell 404, a signed-off case 409 (read-only), a case or cell changed since the client showed
it 409, a bad label or name 422, a store locked by another program, read-only or unreachable 503, each with the
app's JSON error body.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from wbc.cases.store import (
    CaseChangedError,
    CaseError,
    CaseNotFoundError,
    CaseSignedError,
    CaseStore,
    CaseStoreUnavailableError,
)
from wbc.errors import WbcError
from wbc.serve.app import UploadRoute
from wbc.serve.security import API_KEY, Identity, require_api_key

# API keys etc. (wbc.serve.security); the app applies the same dependency to every route as well. UploadRoute: a
# field named by `filename*` alone is a file (wbc.serve.app.UploadRequest)
router = APIRouter(tags=["cases"], dependencies=[API_KEY], route_class=UploadRoute)

#: A case's, field's or cell's id in a path: what the store's integer column holds (a larger one is 422, not an
#: overflow deep in the database driver).
Id = Annotated[int, PathParam(ge=1, le=2**63 - 1)]


class LabelIn(BaseModel):
    """The reviewer's call for one cell."""

    label: str = Field(..., examples=["lymphocyte", "not_wbc", "unidentifiable"])
    user: str = Field(..., max_length=120, examples=["A. Tech"])
    note: str = Field("", max_length=2000)
    #: the cell's call as the client's page showed it; a cell relabelled since is not changed (409 ``changed``), so a
    #: stale page never undoes a colleague's correction. The review page always sends it; without it, no check.
    expected: str | None = Field(None, max_length=40, examples=["neutrophil"], description=(
        "The cell's call as the client showed it; a cell relabelled since is left as it is (409 `changed`), so a "
        "stale page never undoes a colleague's correction. Omitted: no check."))


class SignOffIn(BaseModel):
    user: str = Field(..., max_length=120, examples=["A. Tech"])
    #: how many corrections the signer's page showed (its ``corrections``, plus its own since), confirmations
    #: included; a case with another number is not signed off (409 ``changed``). The review page always sends it;
    #: without it, no check.
    corrections_seen: int | None = Field(None, ge=0, examples=[2], description=(
        "How many corrections the signer was shown: every row of the case's `corrections`, a confirmation (the same "
        "label) as much as a change, not the number of changed cells (`n_changed`). A case with another number "
        "(changed since) is not signed off (409 `changed`, naming the corrections saved since): show it again. "
        "Omitted: no check."))


class CaseLine(BaseModel):
    """One case of ``GET /cases`` (:meth:`wbc.cases.store.CaseSummary.to_dict`)."""

    id: int
    name: str
    created_at: str | None
    created_by: str
    model_id: str
    n_fields: int
    n_cells: int
    n_changed: int
    signed_by: str | None
    signed_at: str | None
    status: str = Field(..., examples=["open", "signed off"])


class CasesBody(BaseModel):
    """The 200 body of ``GET /cases``."""

    cases: list[CaseLine]


class LabelBody(BaseModel):
    """The 200 body of ``POST /cases/{id}/cells/{cell_id}/label``: the cell (with ``old_label``) and the case's new
    tallies (:meth:`wbc.cases.CaseStore.tallies`)."""

    cell: dict[str, Any]
    differential: dict[str, Any]
    model_differential: dict[str, Any]
    n_reviewed: int
    n_changed: int


class CaseBody(BaseModel):
    """A case as ``POST /cases`` (201) and ``GET /cases/{id}`` answer it (:meth:`CaseStore.case_document`); its
    fields, cells, corrections and differentials as docs/api.md and docs/review.md describe them."""

    id: int
    name: str
    created_at: str | None
    created_by: str
    model_id: str
    segmenter_id: str
    wbc_version: str | None
    classes: list[str]
    labels: list[str]
    counted: list[str] | None
    review_threshold: float
    settings: dict[str, Any] | None = Field(None, description=(
        "How the fields were analysed besides the models: `classes` (the label set, [] for every class), `tta` (views "
        "averaged per cell), `colour_calibration`, `pixel_size` (micrometres per pixel given; null: measured from the "
        "red cells). Null for a case stored before wbc 0.36.0."))
    signed_by: str | None
    signed_at: str | None
    signed_client: str | None
    status: str = Field(..., examples=["open", "signed off"])
    fields: list[dict[str, Any]]
    cells: list[dict[str, Any]]
    corrections: list[dict[str, Any]]
    differential: dict[str, Any]
    model_differential: dict[str, Any]
    numbers_by: str
    numbers_as_signed: bool | None
    numbers_now: dict[str, Any] | None
    n_cells: int
    n_flagged: int
    n_reviewed: int
    n_changed: int


def problem(status: int, error: str, detail: str) -> HTTPException:
    from wbc.serve.app import UploadProblem

    return UploadProblem(status, error, detail)


def store_of(request: Request) -> CaseStore:
    store = getattr(request.app.state, "case_store", None)
    if store is None:
        raise problem(503, "no_case_store", "this server has no case store (start it with `wbc serve --store ...`)")
    return store


def not_found_detail(exc: CaseNotFoundError) -> str:
    """The store's "not found" message without the store's address (``... not found in sqlite:////srv/...``: a file
    path, or a database's user, host and port), which the command line names for the person who chose the store
    and an HTTP client has no business knowing.

    >>> not_found_detail(CaseNotFoundError("case 9 not found in postgresql+psycopg://wbc:***@db01:5432/cases"))
    'case 9 not found'
    >>> not_found_detail(CaseNotFoundError("cell 5 is not in case 'S-1'"))
    "cell 5 is not in case 'S-1'"
    """
    head, sep, _where = str(exc).partition(" not found in ")
    return f"{head} not found" if sep else str(exc)


def call(fn: Any, *args: Any) -> Any:
    """Run a store call, turning case errors into 404 / 409 / 422, and a store that cannot be used now into 503 (its
    detail names no file or host of the server's)."""
    try:
        return fn(*args)
    except CaseStoreUnavailableError as exc:
        raise problem(503, "store_unavailable", exc.detail) from None
    except CaseNotFoundError as exc:
        raise problem(404, "not_found", not_found_detail(exc)) from None
    except CaseSignedError as exc:
        raise problem(409, "signed_off", str(exc)) from None
    except CaseChangedError as exc:
        raise problem(409, "changed", str(exc)) from None
    except CaseError as exc:
        raise problem(422, "invalid_case", str(exc)) from None


@router.get("/review", include_in_schema=False)
def review_page() -> FileResponse:
    from wbc.serve.app import STATIC_DIR

    return FileResponse(STATIC_DIR / "review.html", media_type="text/html")


@router.get("/review/report.css", include_in_schema=False)
def report_css() -> Response:
    """The report's style sheet (the served report links it: the CSP forbids inline styles)."""
    from wbc.cases.report import report_css as css

    return Response(css(), media_type="text/css")


@router.get("/cases", summary="Every case in the store, newest last", response_model=None,
            responses={200: {"model": CasesBody, "description": "The cases"}})
def list_cases(request: Request) -> dict[str, Any]:
    return {"cases": [c.to_dict() for c in call(store_of(request).list_cases)]}


@router.post("/cases", status_code=201, summary="Analyse one or more smear fields as a new case",
             responses={201: {"model": CaseBody, "description": "The new case"}})
async def create_case(
    request: Request,
    name: Annotated[str, Form(max_length=200, description="Case name (sample or accession number).")],
    files: Annotated[list[UploadFile | str] | None, File(description="Smear fields (field name `files`, repeated).")
                     ] = None,
    user: Annotated[str, Form(max_length=120, description="Who created the case.")] = "",
    names: Annotated[str | None, Form(description="The files' names as chosen, a JSON list in the order of `files` "
                                      "(a browser sends a \" in a file name as %22).")] = None,
) -> JSONResponse:
    """Every field is analysed as ``/analyze`` does, each in an inference slot (waited for without holding a thread:
    :func:`wbc.serve.app.in_inference_slot`); the case is created only if every field could be read (otherwise 422
    with each file's problem), so a case never silently misses a field: a text part where a field was expected
    (``-F files=b.jpg``, its ``@`` forgotten) is one, refused before any field is analysed (before wbc 0.36.0 it was
    left out, and the case created without it)."""
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile as StarletteUploadFile

    from wbc.analyze import MAX_ANALYZE_PIXELS, analyze_bytes
    from wbc.cases.store import PreparedField, create_case_from_fields, prepare_field
    from wbc.serve.app import (
        UploadProblem,
        in_inference_slot,
        part_name,
        read_upload_bytes,
        smear_answered,
        text_part_problem,
    )

    store = store_of(request)
    smear_answered(request.app.state.classifier)  # a server of `--classes platelet`: no case could count a cell
    uploads = [f for f in files or [] if isinstance(f, StarletteUploadFile)]
    if not uploads:
        raise UploadProblem(400, "missing_file", "no file in the request: send smear fields in the field 'files'")
    if texts := [text_part_problem(f, "files", f"field{i + 1}") for i, f in enumerate(files or [])
                 if isinstance(f, str)]:
        raise UploadProblem(422, "unreadable_image", f"{len(texts)} of {len(files or [])} field(s) sent as text, not "
                            "as files; no case was created", texts)
    state = request.app.state
    if len(uploads) > state.max_files:
        raise UploadProblem(413, "too_many_files", f"{len(uploads)} files; the limit is {state.max_files}")
    # a name or user the store would refuse is refused before any field waits for a slot and is analysed
    await run_in_threadpool(call, check_new_case, store, name, user)
    fnames = chosen_names([part_name(up, f"field{i + 1}") for i, up in enumerate(uploads)], names)
    # the same file twice (chosen twice, or a copy under another name) would count its cells twice: refused
    # before anything is analysed, naming both
    digests: list[str] = await run_in_threadpool(lambda: [upload_digest(up) for up in uploads])
    seen: dict[str, str] = {}
    for fname, digest in zip(fnames, digests, strict=True):
        if digest in seen:
            raise UploadProblem(422, "duplicate_field", f"{fname} is the same image as {seen[digest]} (identical "
                                f"file content, SHA-1 {digest[:12]}): send each field once; no case was created")
        seen[digest] = fname
    # wbc's own drawing of a field (`wbc analyze`'s annotated PNG, tagged so) is no field: `wbc analyze` and `wbc cases
    # create` leave it out of folders (wbc.batch.drop_annotated_fields); uploaded, it counted each cell again, plus
    # "cells" in its drawn labels (before wbc 0.36.0)
    tagged = [fname for fname, up in zip(fnames, uploads, strict=True) if await run_in_threadpool(annotated_upload, up)]
    if tagged:
        which = f"{tagged[0]} is an annotated result" if len(tagged) == 1 else \
            f"{len(tagged)} of {len(uploads)} files are annotated results"
        raise UploadProblem(422, "annotated_field", f"{which} of wbc (a field with its cells outlined and labelled by "
                            "`wbc analyze`), not a smear field: send the field itself; no case was created",
                            [{"filename": f, "error": f"{f}: an annotated result of wbc, not a smear field"}
                             for f in tagged])
    clf, seg = state.classifier, state.segmenter
    fields: list[PreparedField] = []
    errors: list[dict[str, str]] = []

    def analyse(up: UploadFile, fname: str, digest: str) -> PreparedField:
        # decoded inside the slot: one large image at a time, refused from its header past /analyze's limit; kept
        # as its PNG and crops, as many fields' pixels would otherwise sit in memory until the last
        data = read_upload_bytes(up, state.max_bytes, MAX_ANALYZE_PIXELS, fname)
        rgb, res = analyze_bytes(data, fname, clf, seg, max_pixels=MAX_ANALYZE_PIXELS)  # a multi-field TIFF said
        return prepare_field(fname, rgb, res, clf, digest)

    for i, (up, fname, digest) in enumerate(zip(uploads, fnames, digests, strict=True)):
        try:  # a case's later fields waited their turn already: never refused for a full queue half-way
            fields.append(await in_inference_slot(state, functools.partial(analyse, up, fname, digest), queued=i > 0))
        except WbcError as exc:
            errors.append({"filename": fname, "error": str(exc)})
        except UploadProblem:
            raise
        except Exception as exc:  # as in wbc analyze: ONNX Runtime's own errors too; the case is not created
            errors.append({"filename": fname, "error": f"{fname}: analysis failed ({exc.__class__.__name__})"})
    if errors:
        raise UploadProblem(422, "unreadable_image", f"{len(errors)} of {len(uploads)} field(s) could not be "
                            "analysed; no case was created", errors)
    seg_id = str(getattr(seg, "model_id", "") or getattr(seg, "name", ""))
    case_id = await run_in_threadpool(call, create_case_from_fields, store, name, fields, clf, seg_id, user, seg)
    return JSONResponse(await run_in_threadpool(call, store.case_document, case_id), status_code=201)


def chosen_names(sent: list[str], names: str | None) -> list[str]:
    """Each field's file name: the one ``names`` (a JSON list) gives for it where a browser sends that name as
    ``sent`` (the part's), else the part's.

    A browser sends a ``"`` in a multipart file name as ``%22`` (CR, LF as ``%0D``, ``%0A``) and a ``%`` as it is (the
    HTML standard), so ``a%22b.png`` may be ``a"b.png`` or a file named so: only the client knows. The review page
    sends the chosen names; one with a control character is not taken. Before wbc 0.34.0 a case, its report and its
    export named the field ``a%22b.png``."""
    from wbc.serve.app import UploadProblem

    if names is None:
        return sent
    try:
        given = json.loads(names)
    except (ValueError, RecursionError):  # '[[[[...' nested past Python's limit: a 500 in wbc 0.34.0
        given = None
    if not (isinstance(given, list) and len(given) == len(sent) and all(isinstance(n, str) for n in given)):
        raise UploadProblem(422, "invalid_request", f"names: a JSON list of {len(sent)} file name(s), one per file")

    def as_sent(n: str) -> str:
        return n.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")

    return [n if n.isprintable() and as_sent(n) == part else part for n, part in zip(given, sent, strict=True)]


def check_new_case(store: CaseStore, name: str, user: str) -> None:
    """Raise the :class:`CaseError` the store would raise for a new case ``name`` by ``user`` (a name blank, ``#ID``,
    too long, with a control character, or taken; a user with a control character), before its fields are analysed:
    before wbc 0.33.0 every field waited for a slot and was analysed first, for a 422 at the end. The store checks
    again in the transaction that creates the case (:meth:`CaseStore.create_case_with_fields`), which two requests
    for one name may race to."""
    import re

    from wbc.cases.store import MAX_USER, CaseAmbiguousError, clean_name, no_control

    n = clean_name(name)
    no_control(" ".join(str(user or "").split())[:MAX_USER], "user name")  # as the store cleans `created_by`
    try:
        store.case_id(n)
    except CaseNotFoundError:
        return
    except CaseAmbiguousError:
        pass  # a case has this name (in two spellings, or digits that are another case's id too)
    else:
        if re.fullmatch(r"[0-9]{1,18}", n) and all(c.name != n for c in store.list_cases()):
            return  # digits found as another case's id only: no case has this name
    raise CaseError(f"a case named {n!r} already exists")


def annotated_upload(upload: UploadFile) -> bool:
    """Whether an uploaded file is an annotated field wbc wrote (:func:`wbc.batch.is_tagged_png`; the file is left at
    its start)."""
    from wbc.batch import is_tagged_png

    upload.file.seek(0)
    head = upload.file.read(128)
    upload.file.seek(0)
    return is_tagged_png(head)


def upload_digest(upload: UploadFile) -> str:
    """The SHA-1 of an uploaded file's bytes, read in chunks (the file is left at its start)."""
    import hashlib

    h = hashlib.sha1()
    upload.file.seek(0)
    while chunk := upload.file.read(1 << 20):
        h.update(chunk)
    upload.file.seek(0)
    return h.hexdigest()


@router.get("/cases/{case_id}", summary="A case: fields, cells (model's and reviewer's calls), corrections",
            response_model=None, responses={200: {"model": CaseBody, "description": "The case"}})
def get_case(request: Request, case_id: Id) -> dict[str, Any]:
    return call(store_of(request).case_document, case_id)


#: The ``v`` of an image URL (``image_url``, ``view_url``, ``crop_url`` of a case's document): its content version.
Version = Annotated[str | None, Query(max_length=64, description=(
    "The image's content version, as the case's document gives it in the URL; another one: 404. Without it the "
    "answer is revalidated (`no-cache`, `ETag`)."))]
#: Versioned image URLs name their content: a browser may keep them (private: never a proxy).
VERSIONED_CACHE = "private, max-age=3600"


def image_answer(request: Request, version: str, v: str | None, what: str, png: Callable[[], bytes]) -> Response:
    """A case's image, cached by the browser only under the URL that names its content (``?v=``, the case document's):
    every store numbers its cases, fields and cells from 1, and before wbc 0.31.0 ``/cases/1/cells/1/view`` was
    kept for an hour, so a server restarted with another store showed the previous store's cell under the new
    case's call. Another ``v`` (a page of another store, or of an older analysis) is 404, never this store's image;
    no ``v``: the answer is revalidated each time (``no-cache``, its ETag the version; 304 when it is unchanged)."""
    if v is not None and v != version:
        raise problem(404, "not_found", f"{what} has another content version than {v!r} (an image of another case "
                      "store, or one analysed since): reload the case")
    etag = f'"{version}"'
    headers = {"ETag": etag, "Cache-Control": VERSIONED_CACHE if v is not None else "private, no-cache"}
    if etag in [t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(call(png), media_type="image/png", headers=headers)


@router.get("/cases/{case_id}/fields/{field_id}/image", summary="A field's image (PNG)",
            response_class=Response, responses={200: {"content": {"image/png": {}}}})
def field_image(request: Request, case_id: Id, field_id: Id, v: Version = None) -> Response:
    store = store_of(request)
    return image_answer(request, call(store.field_version, case_id, field_id), v, f"field {field_id}",
                        functools.partial(store.field_png, case_id, field_id))


@router.get("/cases/{case_id}/cells/{cell_id}/crop",
            summary="A cell's crop as framed for the classifier, in the field's own colours (PNG)",
            response_class=Response, responses={200: {"content": {"image/png": {}}}})
def cell_crop(request: Request, case_id: Id, cell_id: Id, v: Version = None) -> Response:
    store = store_of(request)
    return image_answer(request, call(store.cell_version, case_id, cell_id), v, f"cell {cell_id}",
                        functools.partial(store.crop_png, case_id, cell_id))


@router.get("/cases/{case_id}/cells/{cell_id}/view",
            summary="A cell as the slide shows it: its field cut around its box, nothing mirrored (PNG)",
            response_class=Response, responses={200: {"content": {"image/png": {}}}})
def cell_view(request: Request, case_id: Id, cell_id: Id, v: Version = None) -> Response:
    """What the review page shows a reviewer (`/crop` is what the classifier saw: mirrored beyond the field's edge)."""
    store = store_of(request)
    return image_answer(request, call(store.cell_version, case_id, cell_id), v, f"cell {cell_id}",
                        functools.partial(store.view_png, case_id, cell_id))


@router.post("/cases/{case_id}/cells/{cell_id}/label", summary="Reclassify (or confirm) one cell", response_model=None,
             responses={200: {"model": LabelBody, "description": "The cell and the case's new differentials"}})
def label_cell(request: Request, case_id: Id, cell_id: Id, body: LabelIn,
               who: Annotated[Identity, Depends(require_api_key)]) -> dict[str, Any]:
    """The label is a class, ``not_wbc`` or ``unidentifiable``; answers the cell and the new differential.
    The audit trail records the typed ``user`` and the API key (``client``) the change came through. With ``expected``
    (the call the client showed), a cell relabelled since is left as it is: 409 ``changed``."""
    store = store_of(request)
    cell = call(store.reclassify, case_id, cell_id, body.label, body.user, body.note, who.name, body.expected)
    return {"cell": cell, **call(store.tallies, case_id)}


@router.post("/cases/{case_id}/sign-off", summary="Sign the case off; it is read-only afterwards", response_model=None,
             responses={200: {"model": CaseBody, "description": "The case, signed off"}})
def sign_off(request: Request, case_id: Id, body: SignOffIn,
             who: Annotated[Identity, Depends(require_api_key)]) -> dict[str, Any]:
    return call(store_of(request).sign_off, case_id, body.user, who.name, body.corrections_seen)


@router.get("/cases/{case_id}/report", summary="The printable case report (HTML)", response_class=HTMLResponse)
def report_html(request: Request, case_id: Id) -> HTMLResponse:
    from wbc.cases.report import render_html

    return HTMLResponse(call(render_html, store_of(request), case_id, "/review/report.css"))


@router.get("/cases/{case_id}/report.pdf", summary="The case report (PDF)", response_class=Response,
            responses={200: {"content": {"application/pdf": {}}}})
def report_pdf(request: Request, case_id: Id) -> Response:
    from wbc.cases.report import render_pdf

    store = store_of(request)
    name = call(store.case_document, case_id)["name"]
    from wbc.cases.store import safe_stem

    return Response(call(render_pdf, store, case_id), media_type="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="wbc_case_{safe_stem(name)}.pdf"'})


def attach_cases(app: Any, store: CaseStore | str | None) -> None:
    """Open the case store (a store, a SQLAlchemy URL or a path; None: none) and add the case routes to ``app``.

    The routes carry :mod:`wbc.serve.security`'s API-key dependency (the router's own) and get the app's
    middleware (Host, Origin, headers).
    """
    if store is not None and not isinstance(store, CaseStore):
        store = CaseStore.open(store)
    from wbc.serve.app import error_responses

    app.state.case_store = store
    app.include_router(router, responses=error_responses(404, 409, 503))
