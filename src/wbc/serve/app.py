"""The FastAPI application: classify single cells, analyse smear fields, serve the web page.

One app holds one classifier and one segmenter, loaded when the app is built (``app.state``), so
requests never pay for model loading and two apps in one process never share state. Inference is
CPU-bound, so it runs in worker threads, at most ``max_concurrent`` at once (:func:`in_inference_slot`), so that
a burst of uploads queues instead of thrashing the CPU; a queued upload waits without holding a thread, so the
page and every other route still get one.

Every problem with an upload (empty, not an image, truncated, too large, wrong content type, missing
field) is answered with a 4xx JSON body ``{"error", "detail", "errors": [{"filename", "error"}]}``;
:mod:`wbc.errors` messages name the file. Nothing here imports torch.
"""

from __future__ import annotations

import base64
import platform
import re
from collections.abc import Callable, Coroutine, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import anyio
import cv2
import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser, parse_options_header
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import wbc
from wbc.errors import ImageReadError, WbcError
from wbc.formats import differential_dicts as differential  # the API's JSON: wbc.formats
from wbc.formats import prediction_to_dict
from wbc.protocols import ClassifierLike, SegmenterLike, checked_classifier

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Default limit on one request's body (all files together), in MiB.
DEFAULT_MAX_UPLOAD_MB: float = 25.0
#: Most files one ``/classify`` request may carry (each is a small single-cell image).
DEFAULT_MAX_FILES: int = 500
#: Declared content types accepted for an image part; the bytes are what is checked in the end.
ACCEPTED_TYPES: tuple[str, ...] = ("image/", "application/octet-stream", "binary/octet-stream")
#: Batch size for single-cell inference.
BATCH_SIZE: int = 64
#: Most requests that wait for an inference slot by default (``wbc serve --max-queue``); one more is answered 503.
DEFAULT_MAX_QUEUE: int = 32
#: How much of an upload is read before its request waits for a slot: any image's header (:func:`check_upload`).
HEADER_BYTES: int = 1 << 20

T = TypeVar("T")


class UploadProblem(HTTPException):
    """A 4xx answer about one or more uploaded files.

    FastAPI's :class:`HTTPException`, so that FastAPI re-raises it as is when it comes out of body parsing
    (the size limit) instead of turning it into "400 error parsing the body".
    """

    def __init__(self, status_code: int, error: str, detail: str,
                 files: Sequence[dict[str, Any]] = (), headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.error = error
        self.files = list(files)


def error_body(error: str, detail: str, files: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {"error": error, "detail": detail, "errors": list(files)}


class FileError(BaseModel):
    """One uploaded file's problem; ``index``: its part's place in a ``/classify`` request (since wbc 0.37.0)."""

    filename: str = Field(..., examples=["scan.jpg"])
    index: int | None = Field(None, examples=[1], description=(
        "`/classify`: the part's 0-based place among the request's `files` parts (names may repeat); absent "
        "elsewhere."))
    error: str = Field(..., examples=["scan.jpg: truncated JPEG (no end-of-image marker)"])


class ErrorBody(BaseModel):
    """The body of every 4xx answer (:func:`error_body`, :mod:`wbc.serve.security`'s): ``error`` is what a client
    switches on, ``detail`` a sentence for people, ``errors`` each file's problem (often empty)."""

    error: str = Field(..., examples=["unreadable_image"])
    detail: str = Field(..., examples=["scan.jpg: truncated JPEG (no end-of-image marker)"])
    errors: list[FileError]


class CellPrediction(BaseModel):
    """One single-cell image's answer (:func:`wbc.formats.prediction_to_dict`)."""

    filename: str = Field(..., examples=["cell1.jpg"])
    label: str = Field(..., examples=["neutrophil"])
    confidence: float = Field(..., examples=[0.991237])
    review: bool
    review_reasons: list[str]
    ood: bool
    probabilities: dict[str, float]
    index: int = Field(..., examples=[0], description="The part's 0-based place among the request's `files` parts.")
    sha1: str = Field(..., description="SHA-1 of the part's bytes.")


class DifferentialRow(BaseModel):
    """One class's row of a differential (:func:`wbc.formats.differential_dicts`); ``percent`` and the interval are
    null for a rate per 100 WBCs with no WBC counted."""

    class_: str = Field(..., alias="class", examples=["neutrophil"])
    count: int
    total: int
    percent: float | None
    ci95_low: float | None
    ci95_high: float | None
    unit: str = Field(..., examples=["percent", "per 100 WBC"])


class DifferentialBody(BaseModel):
    """The 200 body of ``POST /differential``."""

    total: int = Field(..., description="The WBCs counted (erythroblasts and platelets are counted per 100 WBCs).")
    differential: list[DifferentialRow]


class HealthBody(BaseModel):
    """The 200 body of ``GET /health``."""

    status: str = Field(..., examples=["ok"])
    model_id: str
    classes: list[str]
    label_set: list[str]
    segmenter: dict[str, str] = Field(..., examples=[{"name": "learned", "model_id": "wbc-detector-..."}])
    versions: dict[str, str] = Field(..., examples=[{"wbc": "0.37.0", "python": "3.11.9"}])
    limits: dict[str, float]
    security: dict[str, Any]


class CopyOf(BaseModel):
    """An upload left out as a byte copy of another (classified and counted once, as `wbc classify` counts it)."""

    filename: str = Field(..., examples=["cell (1).jpg"])
    index: int = Field(..., examples=[2], description="The copy's 0-based place among the request's `files` parts.")
    same_as: str = Field(..., examples=["cell.jpg"])
    same_as_index: int = Field(..., examples=[0], description="The place of the part classified in its stead.")


class TtaUnsure(BaseModel):
    """The cells one view is unsure of, answered again by more views (:func:`wbc.classify.tta_unsure_of`)."""

    below: float = Field(..., examples=[0.7])
    views: int = Field(..., examples=[4])


class ClassifySettings(BaseModel):
    """What besides the model decided ``/classify``'s answers (:func:`wbc.batch.classify_settings`)."""

    classes: list[str] = Field(..., description="The label set answered among; []: every class of the model.")
    tta: int = Field(..., description="Views (flips/rotations) averaged per cell: the request's `tta`, else the "
                     "model's own (`tta_views` in /model).")
    tta_unsure: TtaUnsure | None = Field(..., description="Cells one view named below `below` confidence were "
                                         "answered again by the mean of `views` rotations (`tta_unsure` in /model); "
                                         "null: not done (a request's `tta`, 1 included, or the model's own views).")
    reframe: bool = Field(..., description="Whether cells framed unlike the training crops were re-framed.")
    model_sha1: str | None = Field(..., description="SHA-1 of the classifier's file; null: a model with no file.")


class AnalyzeSettings(BaseModel):
    """What besides the models decided ``/analyze``'s answers, as `wbc analyze` records it
    (:func:`wbc.batch.run_settings`)."""

    classes: list[str] = Field(..., description="The label set answered among; []: every class of the model.")
    tta: int | None = Field(..., description="Views (flips/rotations) averaged per cell.")
    colour_calibration: bool = Field(..., description="Whether fields are calibrated to the training colours.")
    pixel_size: float | None = Field(..., description="Micrometres per pixel given; null: measured per field.")
    model_sha1: str | None = Field(..., description="SHA-1 of the classifier's file; null: a model with no file.")
    segmenter_sha1: str | None = Field(None, description="SHA-1 of the segmenter's file; absent: one with none.")


class ClassifyBody(BaseModel):
    """The 200 body of ``POST /classify`` (docs/api.md)."""

    model_id: str
    wbc_version: str = Field(..., examples=["0.37.0"])
    settings: ClassifySettings
    n: int
    n_review: int
    results: list[CellPrediction]
    counts: dict[str, int]
    differential: list[DifferentialRow]
    warnings: list[str]
    errors: list[FileError]
    copies: list[CopyOf]


class SmearCell(BaseModel):
    """One WBC of a field (:func:`wbc.formats.cell_to_dict`): polygons are lists of ``[x, y]`` points."""

    id: int
    box: list[int]
    nucleus: list[list[list[int]]]
    cell: list[list[list[int]]]
    area_px: int
    nucleus_area_px: int
    touches_border: bool
    detection_score: float
    label: str | None
    confidence: float | None
    review: bool | None
    review_reasons: list[str]
    ood: bool | None
    probabilities: dict[str, float]


class AnalyzeBody(BaseModel):
    """The 200 body of ``POST /analyze``: ``wbc analyze``'s ``<stem>.json`` (:func:`wbc.formats.result_to_dict`, its
    ``settings``, ``sha1`` and ``wbc_version`` too: :func:`wbc.batch.stamped`) plus ``n_review``, ``differential``
    and, asked for, ``annotated_png``."""

    image: str
    width: int
    height: int
    model_id: str
    segmenter: str
    counts: dict[str, int]
    n_cells: int
    cells: list[SmearCell]
    warnings: list[str]
    colour_calibration: dict[str, list[float]] | None
    settings: AnalyzeSettings
    sha1: str = Field(..., description="SHA-1 of the uploaded file's bytes.")
    wbc_version: str = Field(..., examples=["0.37.0"])
    n_review: int
    differential: list[DifferentialRow]
    annotated_png: str | None = Field(None, description="Base64 PNG; only with `annotated=true`.")


#: What each 4xx status means, in /openapi.json (docs/api.md, "Errors", has the full table).
ERROR_STATUSES: dict[int, str] = {
    400: "`host_not_allowed` (a Host not served here), `missing_file`, `too_many_files` (two fields to /analyze), "
         "`invalid_multipart` (a body the form parser cannot read, or cut before its closing boundary)",
    401: "`unauthorized`: no valid API key (a server with keys; every route but /health, the login form and /logout)",
    403: "`cross_site`: a request from another site that changes something, or a CORS preflight not allowed",
    404: "`not_found`: no such case, field or cell, or an image URL of another content version, or no such path",
    405: "`method_not_allowed`: the path takes other methods (`Allow`)",
    408: "`body_timeout`: the request body stalled (less than 1 KiB in 30 s: `WBC_BODY_MIN_BYTES`, "
         "`WBC_BODY_TIMEOUT_S`)",
    409: "`signed_off`: the case is read-only; `changed`: a sign-off's `corrections_seen` is not the case's number of "
         "corrections, confirmations included (it changed after it was shown), or a label's "
         "`expected` is not the cell's call now (someone relabelled it since)",
    413: "`too_large` (also a form text field over 1 MiB), `too_many_pixels`, `too_many_files`",
    415: "`unsupported_media_type` (not multipart/form-data), `unreadable_image` / `no_readable_image` (not an image)",
    422: "`invalid_request`, `unreadable_image`, `no_readable_image`, `unprocessable`, `analysis_failed`, "
         "`bad_classes`, `invalid_counts`, `invalid_case`, `duplicate_field`, `annotated_field`",
    429: "`rate_limited`: over the API key's rate limit (`Retry-After`)",
    503: "`busy`: too many requests wait for an inference slot (`Retry-After`); `no_case_store`: the server runs "
         "without a case store; `store_unavailable`: the store is locked by another program, read-only or unreachable "
         "(try again)",
}


def framework_error(request: Request, exc: StarletteHTTPException) -> tuple[str, str]:
    """The ``error`` and ``detail`` of a refusal by Starlette or FastAPI themselves, which carry no code of wbc's: a
    body the form parser cannot read (400 ``invalid_multipart``), a path not served (404 ``not_found``), a method not
    allowed (405 ``method_not_allowed``), else ``http_error``. Before wbc 0.33.0 all were ``http_error``, a code
    docs/api.md did not list."""
    where = f"{request.method} {request.url.path}"
    ctype = request.headers.get("content-type", "").lower()
    if exc.status_code == 400 and ctype.startswith("multipart/"):
        return "invalid_multipart", f"the request body is not valid multipart/form-data: {exc.detail}"
    if exc.status_code == 404:
        return "not_found", f"nothing here: {where} (the routes are listed at /openapi.json)"
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow") or ""
        return "method_not_allowed", f"{where}: method not allowed" + (f" (allowed: {allow})" if allow else "")
    return "http_error", str(exc.detail)


#: The multipart field of each upload route, and whether it takes several files (:func:`upload_schemas`).
UPLOAD_FIELDS: dict[str, tuple[str, bool]] = {"/analyze": ("file", False), "/classify": ("files", True),
                                              "/cases": ("files", True)}


def upload_schemas(spec: dict[str, Any]) -> None:
    """Describe the upload routes' files in ``spec`` (an OpenAPI document, changed in place) as they are taken: one
    required binary ``file`` for /analyze, a required array of at least one for /classify and ``POST /cases``. The
    routes type them leniently (any list, text too, none) to answer a missing file with their own 400, and FastAPI
    documented exactly that: before wbc 0.33.0 a client generated from the schema offered ``file: list[bytes | str] |
    None``."""
    binary = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
    schemas = spec.get("components", {}).get("schemas", {})
    for path, (field, several) in UPLOAD_FIELDS.items():
        body = spec.get("paths", {}).get(path, {}).get("post", {}).get("requestBody")
        ref = ((body or {}).get("content", {}).get("multipart/form-data", {}).get("schema", {}).get("$ref", ""))
        schema = schemas.get(ref.rsplit("/", 1)[-1])
        if body is None or schema is None or field not in schema.get("properties", {}):
            continue
        prop = schema["properties"][field]
        kept = {k: prop[k] for k in ("title", "description") if k in prop}
        schema["properties"][field] = {"type": "array", "items": binary, "minItems": 1, **kept} if several else {
            **binary, **kept}
        schema["required"] = [*schema.get("required", []), field]
        body["required"] = True


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these statuses, each with :class:`ErrorBody`, the shape the server sends (FastAPI
    would document a 422 as its own ``{"detail": [{loc, msg, type}]}``, which no answer of wbc's has)."""
    return {s: {"model": ErrorBody, "description": ERROR_STATUSES[s]} for s in statuses}


# --------------------------------------------------------------------------- request size limit


class BodyLimitMiddleware:
    """Answer 413 when a request body is over ``max_bytes``, before or while it is received.

    ``Content-Length`` is checked first (no byte is read); chunked uploads are counted as they arrive.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> UploadProblem:
        mb = self.max_bytes / 2**20
        return UploadProblem(413, "too_large", f"upload is larger than the limit of {mb:g} MiB "
                             "(start the server with --max-upload-mb to change it)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _send_json(send, 413, error_body("too_large", self._too_large().detail))
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return msg

        await self.app(scope, limited, send)


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    resp = JSONResponse(body, status_code=status)
    await send({"type": "http.response.start", "status": status, "headers": resp.raw_headers})
    await send({"type": "http.response.body", "body": resp.body})


# --------------------------------------------------------------------------- multipart parts: file names, text


class FileNameStarParser(MultiPartParser):
    """Starlette's multipart parser, taking a part named by ``filename*`` alone (RFC 5987/7578, as urllib3 before
    1.25 names a non-ASCII file) as the file it is: Starlette reads ``filename=`` only, so before wbc 0.36.0 such a
    part was a text field, and its image was answered "no file in the request" or left out. Its name is read from the
    part's header by :func:`part_name`."""

    def on_headers_finished(self) -> None:
        part = self._current_part
        disposition = part.content_disposition or b""
        if FILENAME_STAR.search(disposition) and b"filename" not in parse_options_header(disposition)[1]:
            part.content_disposition = disposition + b'; filename=""'  # a file; part_name reads its real name
        super().on_headers_finished()


#: A ``filename*`` parameter in a part's Content-Disposition (python-multipart's parser drops it).
FILENAME_STAR = re.compile(rb";\s*filename\*", re.IGNORECASE)
#: A name that is RFC 2047 encoded words only (``=?utf-8?B?Y2Fmw6kuanBn?=``), as .NET's HttpClient and PowerShell
#: send a non-ASCII file name in ``filename=``.
ENCODED_WORDS = re.compile(r"\s*(=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=\s*)+")


class UploadRequest(Request):
    """A request whose multipart body is read by :class:`FileNameStarParser`; anything else as Starlette reads it."""

    async def _get_form(self, **limits: Any) -> FormData:
        ctype = parse_options_header(self.headers.get("content-type"))[0]
        if self._form is None and ctype == b"multipart/form-data":
            try:
                async with aclosing(self.stream()) as stream:
                    self._form = await FileNameStarParser(self.headers, stream, **limits).parse()
            except MultiPartException as exc:  # as Starlette answers it (400: invalid_multipart, too_many_files)
                raise StarletteHTTPException(400, detail=exc.message) from None
        return await super()._get_form(**limits)


class UploadRoute(APIRoute):
    """A route reading its request as :class:`UploadRequest` (FastAPI's documented way to change the request)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_file_names(request: Request) -> Response:
            return await handler(UploadRequest(request.scope, request.receive))

        return with_file_names


def part_name(upload: UploadFile, fallback: str) -> str:
    """The file name an upload part gives, decoded: ``filename*`` (RFC 5987, ``utf-8''caf%C3%A9.jpg``) before
    ``filename``, and a ``filename`` of RFC 2047 encoded words (``=?utf-8?B?...?=``, .NET's HttpClient and
    PowerShell) decoded; its folders left out (:func:`file_name_alone`: before wbc 0.37.0 only a Windows path was cut,
    and ``../../slide2/cell.jpg`` came back whole). ``fallback`` where the part names no file (or a name that
    decodes to a control character). Before wbc 0.36.0 results, errors and a case's fields were named
    ``=?utf-8?B?Y2Fmw6kuanBn?=`` for ``café.jpg``."""
    from email.header import decode_header, make_header
    from email.message import Message
    from email.utils import collapse_rfc2231_value

    name = upload.filename or ""
    try:
        disposition = upload.headers.get("content-disposition", "")
        if FILENAME_STAR.search(disposition.encode("latin-1", "replace")):
            header = Message()
            header["content-disposition"] = disposition
            star = [v for k, v in header.get_params([], header="content-disposition")
                    if k.lower() == "filename" and isinstance(v, tuple)]
            if star:
                name = collapse_rfc2231_value(star[0])
        elif ENCODED_WORDS.fullmatch(name):
            name = str(make_header(decode_header(name)))
    except Exception:  # a header no decoder takes (a bad charset): the name as sent
        name = upload.filename or ""
    name = file_name_alone(name)
    return name if name and name.isprintable() else file_name_alone(upload.filename or "") or fallback


#: A Windows path: a drive (``C:\``; python-multipart cuts a plain ``filename`` so), a share (``\\server``), or a
#: browser's ``...\fakepath\``.
WINDOWS_PATH = re.compile(r"[A-Za-z]:\\|\\\\|.*\\fakepath\\", re.IGNORECASE)


def file_name_alone(name: str) -> str:
    r"""``name`` without its folders: cut at its last ``/`` (never part of a file name), and at its last ``\`` only in
    a Windows path (:data:`WINDOWS_PATH`): on Linux and macOS a ``\`` is part of a name (``slide 3\cell.png``, kept
    whole as before wbc 0.37.0), and browsers send a file's name without its folders.

    >>> [file_name_alone(n) for n in ("../../slide2/cell.jpg", "C:\\fakepath\\cell.jpg", "\\\\lab\\s\\cell.jpg", "a/")]
    ['cell.jpg', 'cell.jpg', 'cell.jpg', '']
    >>> file_name_alone("slide 3\\cell.png")
    'slide 3\\cell.png'
    """
    if WINDOWS_PATH.match(name):
        name = name.replace("\\", "/")
    return name.rsplit("/", 1)[-1]


def text_part_problem(value: str, field: str, fallback: str) -> dict[str, str]:
    """The ``errors`` entry for a text part where a file was expected (``curl -F files=b.png``, its ``@``
    forgotten): named by its text when that reads as a file name, else by ``fallback`` (its place). Before wbc 0.36.0
    such a part beside real files was left out without a word: ``/classify`` answered the others, ``POST /cases``
    created the case without it."""
    name = value.strip()
    if not (0 < len(name) <= 255 and name.isprintable()):
        name = fallback
        what = f"a text part of {len(value):,} characters"
    else:
        what = "text"
    return {"filename": name, "error": f"{name}: sent as {what} in the field {field!r}, not as a file (no filename "
                                       f"parameter; curl: -F {field}=@{name if what == 'text' else 'FILE'})"}


# --------------------------------------------------------------------------- pure helpers


def check_content_type(upload: UploadFile, name: str | None = None) -> str | None:
    """A message when the part's declared content type cannot be an image, else None; ``name``: what the request's
    answer calls the file (default: its file name, else ``upload``)."""
    ctype = (upload.content_type or "").split(";")[0].strip().lower()
    if not ctype or any(ctype.startswith(t) for t in ACCEPTED_TYPES):
        return None
    name = name or part_name(upload, "upload")
    return f"{name}: content type {ctype} is not an image (send image/png, image/jpeg, ...)"


class WrongContentType(ImageReadError):
    """An upload whose declared content type cannot be an image: answered 415, told apart by its type, never by
    its message (which starts with the user's file name)."""


def check_upload(upload: UploadFile, max_bytes: int, max_pixels: int, name: str | None = None) -> None:
    """The cheap checks of an upload, before its request waits for an inference slot: the declared content type, the
    size, and the pixel count from the header in its first :data:`HEADER_BYTES` (a pixel bomb is refused at once).

    Its bytes stay where the form parser put them (Starlette spools a part over 1 MiB to a temporary file) until the
    slot: read before it, each waiting request held its whole body in memory (wbc 0.32.0). A header that the first
    MiB does not settle (or that is damaged) is checked again in the slot, whole (:func:`read_upload_bytes`).
    Raises :class:`WbcError` naming the file and the problem.
    """
    import os

    from wbc.errors import ImageTooLargeError
    from wbc.io import check_pixels

    name = name or part_name(upload, "upload")
    problem = check_content_type(upload, name)
    if problem:
        raise WrongContentType(problem)
    upload.file.seek(0, os.SEEK_END)
    size = upload.file.tell()
    upload.file.seek(0)
    if size > max_bytes:
        raise ImageReadError(f"{name}: file is larger than the limit of {max_bytes / 2**20:g} MiB")
    head = upload.file.read(HEADER_BYTES)
    upload.file.seek(0)
    try:
        dims = header_size(head, name) if head else None
    except ImageTooLargeError:
        raise
    except WbcError:  # a header cut at HEADER_BYTES: the whole file decides, in the slot
        dims = None
    if dims is not None:
        check_pixels(dims, name, max_pixels)


def read_upload_bytes(upload: UploadFile, max_bytes: int, max_pixels: int, name: str | None = None) -> bytes:
    """The uploaded file's bytes, after the cheap checks: content type, size, and the pixel count read from
    the image header (so a few-MB "bomb" of billions of pixels is refused before any decoding). Read inside the
    inference slot (:func:`check_upload` comes before it).

    Raises :class:`WbcError` naming the file (``name``, default its file name) and the problem.
    """
    from wbc.io import check_pixels

    name = name or part_name(upload, "upload")
    problem = check_content_type(upload, name)
    if problem:
        raise WrongContentType(problem)
    upload.file.seek(0)
    data = upload.file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageReadError(f"{name}: file is larger than the limit of {max_bytes / 2**20:g} MiB")
    size = header_size(data, name) if data else None
    if size is not None:
        check_pixels(size, name, max_pixels)
    return data


def header_size(data: bytes, name: str) -> tuple[int, int] | None:
    """:func:`wbc.io.image_size`, any failure of a header parser a :class:`WbcError` naming the file: a crafted
    header must cost its own file only, never a 500 for the whole request (a Radiance number of 5,000 digits raised
    ValueError in wbc 0.34.0, and ``/classify`` lost the other files' answers)."""
    from wbc.classify import unreadable_message
    from wbc.io import image_size

    try:
        return image_size(data, name)
    except WbcError:
        raise
    except Exception as exc:  # a parser's bug: this file is unreadable, the others go on
        raise ImageReadError(unreadable_message(name, exc)) from None


def decode_upload(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Decode checked upload bytes to uint8 RGB, whole (every decoder failure becomes a :class:`WbcError`); single
    cells are decoded by :func:`wbc.classify.decode_cell_views`."""
    from wbc.io import decode_image

    return decode_image(data, name, max_pixels=max_pixels)


def read_upload(upload: UploadFile, max_bytes: int, max_pixels: int | None = None) -> np.ndarray:
    """Check and decode one uploaded file to uint8 RGB, or raise :class:`WbcError` naming the file."""
    from wbc.io import MAX_PIXELS

    limit = max_pixels or MAX_PIXELS
    data = read_upload_bytes(upload, max_bytes, limit)
    return decode_upload(data, part_name(upload, "upload"), limit)


async def in_inference_slot(state: Any, fn: Callable[[], T], queued: bool = False) -> T:
    """``fn()`` in a worker thread once one of the app's ``state.inference_slots`` is free.

    The request waits for its slot without holding a thread. Waiting inside a thread (on a semaphore) let 40
    queued uploads take every one of AnyIO's worker threads, and the page, /review, crops, /login and sign-off,
    which need one, hung behind them (wbc 0.28.0). The limiter is made here, on the event loop, at first use:
    AnyIO before 4.2 (which the FastAPI versions wbc allows may bring) cannot make one outside a running loop.

    At most ``state.max_queue`` requests wait: one more is answered 503 ``busy`` with ``Retry-After``, so that what
    waiting requests hold (their uploads, up to ``--max-upload-mb`` each) is bounded; before wbc 0.33.0 the queue had
    no bound. ``queued``: the request waited its turn already (a case's later fields), and is never refused.
    """
    if state.inference_limiter is None:  # no await between the test and the assignment: one limiter per app
        state.inference_limiter = anyio.CapacityLimiter(state.inference_slots)
    limiter = state.inference_limiter
    if not queued and limiter.available_tokens < 1 and limiter.statistics().tasks_waiting >= state.max_queue:
        raise UploadProblem(503, "busy", f"the server is busy: {state.max_queue} requests are waiting for an inference "
                            "slot already; try again shortly", headers={"Retry-After": str(QUEUE_RETRY_AFTER_S)})
    return await anyio.to_thread.run_sync(fn, limiter=limiter)


#: The ``Retry-After`` (seconds) of a request refused because the queue is full.
QUEUE_RETRY_AFTER_S: int = 5


def png_base64(rgb: np.ndarray) -> str:
    ok, enc = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise WbcError("could not encode the annotated image")
    return base64.b64encode(enc.tobytes()).decode("ascii")


def hex_colour(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


def model_metadata(classifier: ClassifierLike, segmenter: SegmenterLike) -> dict[str, Any]:
    """What a caller needs to know about the loaded models (no large arrays: OOD statistics, head)."""
    from dataclasses import asdict

    from wbc.analyze import red_cell_target_of, smear_label_set
    from wbc.classify import tta_unsure_of, tta_views_of
    from wbc.crops import cell_fraction_of
    from wbc.reframe import framing_stats_of
    from wbc.render import colour_of

    info = classifier.info
    return {
        "model_id": classifier.model_id,
        "classes": classifier.classes,
        # the classes this server answers among (`wbc serve --classes`); a request's `classes` overrides them
        "label_set": list(tuple(getattr(classifier, "label_set", ()) or ()) or classifier.classes),
        # the classes /analyze answers among, its differential's rows: the label set less platelets (no smear cell is
        # one: wbc.analyze.smear_label_set)
        "smear_label_set": smear_label_set(classifier),
        "input_size": int(info.input_size),
        "review_threshold": float(info.review_threshold),
        "review_target_accuracy": float(info.review_target_accuracy),
        "temperature": float(info.temperature),
        "class_prior": dict(getattr(info, "class_prior", {}) or {}),
        # the same, estimated over one named label set (`classes` of /classify), {label-set key: {class: frequency}}
        "class_priors": dict((info.extra or {}).get("class_priors", {}) or {}),
        "reframe": asdict(framing_stats_of(classifier)),
        "tta_views": {"classify": tta_views_of(classifier), "analyze": tta_views_of(classifier, smear=True)},
        # /classify's cells named below `below` confidence with one view are answered by `views` rotations; null: off
        "tta_unsure": tta_unsure_of(classifier),
        "architecture": info.architecture,
        "version": info.version,
        "training_data": info.training_data,
        "created": info.created,
        "metrics": info.metrics,
        "ood_flags": bool(info.ood),
        # what /analyze calibrates each field's red cells and glass to (wbc.analyze.calibrate_field); null: not
        "colour_calibration": red_cell_target_of(classifier),
        "cell_fraction": float(cell_fraction_of(classifier)),
        "segmenter": {"name": getattr(segmenter, "name", ""), "model_id": getattr(segmenter, "model_id", "")},
        # as the annotated PNGs (render's palette: the model's classes, whatever the label set)
        "colours": {c: hex_colour(colour_of(c, classifier.classes)) for c in classifier.classes},
    }


def versions() -> dict[str, str]:
    import fastapi
    import onnxruntime

    return {"wbc": wbc.__version__, "python": platform.python_version(), "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__, "fastapi": fastapi.__version__}


CLASSES_HELP = ("Answer only among these classes, e.g. `5part` or `neutrophil,lymphocyte` (probabilities "
                "renormalised over them; the field repeated, `classes=neutrophil&classes=lymphocyte`, names them all; "
                "`all`: every class of the model); default: the server's label set (`label_set` in /model: every "
                "class of the model unless `wbc serve --classes` names fewer; /analyze leaves platelets out, "
                "`smear_label_set`).")


def merged_classes(values: Sequence[str] | None) -> str | None:
    """The ``classes`` query field's values as one comma list (``chosen_classes``, ``parse_class_set`` take it), empty
    items left out: a client building the query from a list repeats the field, and before wbc 0.36.0 only its last value
    was kept, a one-class label set answering a neutrophil "lymphocyte" with confidence 1.0. None: not given, nor when
    no item is left (``classes=``, ``classes=,``: the server's label set, one rule for both).

    >>> merged_classes(["neutrophil", "lymphocyte"]), merged_classes(None)
    ('neutrophil,lymphocyte', None)
    >>> merged_classes([""]), merged_classes([" , "]), merged_classes(["", "5part,"])
    (None, None, '5part')
    """
    items = [i.strip() for v in values or () for i in v.split(",") if i.strip()]
    return ",".join(items) if items else None


def copies_notes(copies: Sequence[dict[str, Any]]) -> list[str]:
    """``/classify``'s warnings for the uploads left out as byte copies of another, in `wbc classify`'s words, the
    first :data:`MAX_NAMED` one by one (``copies`` lists them all)."""
    notes = [f"{c['filename']}: the same image as another input, classified and counted once ({c['same_as']} has the "
             "same bytes)" for c in copies[:MAX_NAMED]]
    if len(copies) > MAX_NAMED:
        notes.append(f"{len(copies) - MAX_NAMED:,} more files are copies of others, each classified and counted once "
                     "(listed in `copies`)")
    return notes


#: The query fields that one upload route takes and the other does not: sent to the other, a client expecting their
#: effect would get none, so they are refused (:func:`refuse_other_route_fields`).
ROUTE_ONLY_FIELDS: dict[str, tuple[str, str]] = {"annotated": ("/analyze", "/classify"),
                                                 "reframe": ("/classify", "/analyze")}


def refuse_other_route_fields(request: Request, route: str) -> None:
    """422 ``invalid_request`` for a query field of the other upload route (``/analyze?reframe=false``,
    ``/classify?annotated=true``), in the words of the route's own query refusals: before wbc 0.37.0 it was taken
    without a word and had no effect. Other unknown fields are left alone, as FastAPI leaves them. ``route``: the
    route answering (``"/classify"``), named by its handler, not read from the URL, whose path holds the prefix of an
    app mounted in another (``/wbc/classify``)."""
    wrong = [f"{field}: a query field of {owner}; {route} does not take it (it would have no effect)"
             for field, (owner, other) in ROUTE_ONLY_FIELDS.items()
             if other == route and field in request.query_params]
    if wrong:
        raise UploadProblem(422, "invalid_request", "; ".join(wrong))


TTA_HELP = ("Average each cell's answer over this many flips/rotations (1-8); default: the model's own for "
            "/classify, at least 4 for smear cells (`tta_views` in /model).")


def chosen_classes(classifier: Any, classes: str | None, tta: int | None = None) -> Any:
    """The classifier restricted to the ``classes`` query field (``wbc classify --classes``; 422 if unknown),
    averaging over ``tta`` views when the request names a number (``--tta``)."""
    if tta is not None:
        classifier = classifier.with_tta(tta)
    if not classes:
        return classifier
    try:
        return classifier.with_classes(classes)
    except WbcError as exc:
        raise UploadProblem(422, "bad_classes", str(exc)) from None


def smear_answered(classifier: Any, classes: str | None = None) -> list[str]:
    """The classes a smear field is answered among (:func:`wbc.analyze.smear_label_set`), or 422 ``bad_classes``
    naming the label set (the request's ``classes``, else the server's) when it holds none: before wbc 0.33.0
    ``/analyze?classes=platelet`` called every cell a platelet, with an empty differential."""
    from wbc.analyze import no_smear_class, smear_label_set

    answered = smear_label_set(classifier)
    if not answered:
        named = classes or ",".join(getattr(classifier, "label_set", ()) or classifier.classes)
        raise UploadProblem(422, "bad_classes", str(no_smear_class(named)))
    return answered


DIFFERENTIAL_CLASSES_HELP = ("The differential's rows: these classes (`5part`, names; `smear_label_set` in /model "
                             "for pooled /analyze answers), plus any class counted; default: the server's label set "
                             "(`label_set` in /model). Repeated, `classes=neutrophil&classes=lymphocyte`, it names "
                             "them all.")


#: The largest count ``POST /differential`` takes (far beyond any slide; the exact interval needs a finite float).
MAX_COUNT = 10**12
#: How many unknown class names ``POST /differential``'s refusal names (the others are counted).
MAX_NAMED = 5


def a_few(items: Sequence[str]) -> str:
    """The first :data:`MAX_NAMED` of ``items``, and how many more: 200,000 unknown names made a 2 MB message (wbc
    0.32.0).

    >>> a_few(["'a'", "'b'"]), a_few([str(i) for i in range(7)])
    ("'a', 'b'", '0, 1, 2, 3, 4 and 2 more')
    """
    more = len(items) - MAX_NAMED
    return ", ".join(items[:MAX_NAMED]) + (f" and {more:,} more" if more > 0 else "")


class CountsIn(BaseModel):
    """Cell counts per class, e.g. pooled over several fields by the caller."""

    counts: dict[str, int] = Field(..., examples=[{"neutrophil": 58, "lymphocyte": 30, "monocyte": 7}])


# --------------------------------------------------------------------------- the app


def unparsed_body(cause: BaseException | None) -> str:
    """The detail for FastAPI's "error parsing the body", by its ``cause``: FastAPI answers it for any error reading a
    body, not only JSON nested past Python's recursion limit (a Latin-1 client's body too), so no one cause is
    guessed."""
    if isinstance(cause, RecursionError):
        return "the request body could not be parsed: JSON nested too deep"
    if isinstance(cause, UnicodeDecodeError):
        return (f"the request body is not UTF-8 JSON (byte 0x{cause.object[cause.start]:02x} at position "
                f"{cause.start}); send JSON encoded as UTF-8")
    return "the request body could not be parsed"


def create_app(
    classifier: ClassifierLike | None = None,
    segmenter: SegmenterLike | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    model_path: str | Path | None = None,
    segmenter_method: str = "auto",
    segmenter_path: str | Path | None = None,
    threads: int = 1,
    max_concurrent: int | None = None,
    max_files: int = DEFAULT_MAX_FILES,
    store: Any = None,
    settings: Any = None,
    classes: str | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
) -> FastAPI:
    """The wbc HTTP API and web page.

    ``classifier`` / ``segmenter``: already-loaded models (tests, embedding in another app); when None
    they are loaded here, once, from ``model_path`` (default: the shipped model) and
    ``segmenter_method`` / ``segmenter_path``. ``max_upload_mb`` limits one request's body (413 above
    it). ``max_concurrent`` inference calls run at once, each on ``threads`` threads; others wait their turn without
    holding a thread (default: :func:`wbc.serve.settings.default_inference_slots`, one call per core), at most
    ``max_queue`` of them (one more: 503 ``busy``; :func:`in_inference_slot`). ``store``:
    the case store for review and sign-off (a :class:`wbc.cases.CaseStore`, a SQLAlchemy URL or a path; None: no
    cases).
    ``settings``: a :class:`wbc.serve.settings.ServeSettings` (API keys, Host/Origin allow-lists, rate
    limit, body deadline); None reads them from the environment (``WBC_API_KEYS``, ...). Every route but
    ``/health`` and the login form then needs a key (:mod:`wbc.serve.security`). ``classes``: the server's
    default label set (``"5part"``, ``wbc serve --classes``; ``label_set`` in ``/model`` and ``/health``).
    """
    from wbc.serve.security import (
        API_KEY,
        PUBLIC_PATHS,
        Authenticator,
        JsonCORSMiddleware,
        SecurityMiddleware,
        describe,
        login_router,
        normal_origin,
    )
    from wbc.serve.settings import ServeSettings, load_settings

    settings = settings if isinstance(settings, ServeSettings) else load_settings()
    authenticator = Authenticator(settings.all_keys(), settings)
    if max_upload_mb <= 0:
        raise WbcError(f"max_upload_mb must be positive, got {max_upload_mb}")
    if max_queue < 0:
        raise WbcError(f"max_queue must be 0 or more, got {max_queue}")
    if classifier is None:
        from wbc.model import load_model

        classifier = load_model(model_path, threads=threads)
    if segmenter is None:
        from wbc.segment import get_segmenter

        segmenter = get_segmenter(segmenter_method, segmenter_path, threads=threads)
    # one line for a wrapper lacking a member the routes and /model read (before: an AttributeError building the app)
    classifier = checked_classifier(classifier)
    # before the metadata below is built from it; "" is refused as `wbc classify --classes ""` refuses it (before, a
    # `wbc serve --classes "$UNSET"` server answered among every class, platelets included, unsaid)
    if classes is not None:
        classifier = cast(Any, classifier).with_classes(classes)  # wbc.model.Classifier.with_classes

    max_bytes = int(max_upload_mb * 2**20)
    app = FastAPI(
        title="wbc",
        version=wbc.__version__,
        description="White-blood-cell classification and smear differentials. Research use only: "
        "not a medical device; cells flagged `review` need a human.",
        # Swagger UI and ReDoc load their scripts from a CDN: off, so nothing fails offline.
        docs_url=None,  # the schema stays at /openapi.json
        redoc_url=None,
        dependencies=[API_KEY],  # every route, this module's and every included router's (wbc.serve.security)
        responses=error_responses(400, 401, 403, 408, 413, 415, 422, 429),  # the case routes add theirs
    )
    app.router.route_class = UploadRoute  # the routes below read `filename*` parts as files (UploadRequest)
    built_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """The schema, with the routes open without a key (``PUBLIC_PATHS``: /health) marked so, not as the app-wide
        key dependency makes them look, and the upload routes' files as they are taken (:func:`upload_schemas`)."""
        if app.openapi_schema is None:
            spec = built_openapi()  # kept as app.openapi_schema: changed in place here
            for path, ops in spec.get("paths", {}).items():
                for op in ops.values() if path in PUBLIC_PATHS else ():
                    op["security"] = []  # neither a key nor its rate limit applies
                    op.get("responses", {}).pop("401", None)
                    op.get("responses", {}).pop("429", None)
            upload_schemas(spec)
        return cast(dict[str, Any], app.openapi_schema)

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.classifier = classifier
    app.state.segmenter = segmenter
    app.state.max_bytes = max_bytes
    app.state.max_files = max_files
    if max_concurrent is None:
        from wbc.serve.settings import default_inference_slots

        max_concurrent = default_inference_slots(threads)
    app.state.inference_slots = max(1, max_concurrent)
    app.state.inference_limiter = None  # made on the event loop at first use: in_inference_slot
    app.state.max_queue = max_queue
    app.state.metadata = model_metadata(classifier, segmenter)
    app.state.authenticator = authenticator
    app.state.settings = settings
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_bytes)
    if settings.allowed_origins:
        # --allowed-origin: that site's pages may call the API with fetch() and read the answers. Inside the security
        # middleware, which passes the browser's preflight (OPTIONS, which carries no key) to it after the Host check;
        # it answers those origins only (others: wbc's JSON 403)
        app.add_middleware(JsonCORSMiddleware,
                           allow_origins=sorted({normal_origin(o) for o in settings.allowed_origins}),
                           allow_methods=["GET", "POST"], allow_headers=["X-API-Key", "Authorization", "Content-Type"],
                           max_age=600)
    app.add_middleware(SecurityMiddleware, authenticator=authenticator)  # outermost: before the body is read
    app.include_router(login_router)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own caps, 1,000 file parts and 1,000 text parts: 413, as past the server's limit
        if exc.status_code == 400 and str(exc.detail).startswith(("Too many files", "Too many fields")):
            detail = f"{exc.detail} (this server takes {app.state.max_files} files a request)"
            return JSONResponse(error_body("too_many_files", detail), status_code=413)
        if exc.status_code == 400 and getattr(exc, "error", None) is None:  # two more of theirs, mapped since 0.35.0
            if str(exc.detail).startswith("Field exceeded maximum size"):  # a form text field over 1 MiB
                return JSONResponse(error_body("too_large", f"{exc.detail} (a text field of the form)"), 413)
            if str(exc.detail) == "There was an error parsing the body":  # FastAPI's for any error reading a body
                return JSONResponse(error_body("invalid_request", unparsed_body(exc.__cause__)), 422)
        error, detail = getattr(exc, "error", None), str(exc.detail)
        if error is None:  # Starlette's or FastAPI's own: named by status, as docs/api.md's table lists them
            error, detail = framework_error(request, exc)
        body = error_body(error, detail, getattr(exc, "files", ()))
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
        return JSONResponse(error_body("invalid_request", "; ".join(parts) or "invalid request"), 422)

    @app.exception_handler(WbcError)
    async def _wbc_error(request: Request, exc: WbcError) -> JSONResponse:
        return JSONResponse(error_body("unprocessable", str(exc)), 422)

    async def require_files(request: Request, files: Sequence[UploadFile | str] | None, field: str
                            ) -> list[UploadFile | str]:
        """Every part of the field, files and text alike, in the request's order, or 415 (not a multipart request) /
        400 (no such field, or only text in it: the routes take text parts too, so that `curl -F file=x.jpg` without
        its ``@`` gets this answer, not 422; a body of no complete part, as an upload cut short leaves one:
        ``invalid_multipart``, not "no file", since wbc 0.33.0). A text part beside files is each route's to name
        (:func:`text_part_problem`), never to drop: since wbc 0.36.0."""
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise UploadProblem(415, "unsupported_media_type",
                                f"send the image(s) as multipart/form-data in the field {field!r} "
                                f"(got content type {ctype or 'none'!r})")
        parts = list(files or [])
        uploads = [f for f in parts if isinstance(f, StarletteUploadFile)]  # not plain text fields
        length = request.headers.get("content-length", "")
        if not uploads and length.isdigit() and int(length) > 0 and not await request.form():  # parsed already
            raise UploadProblem(400, "invalid_multipart", "the request body is not valid multipart/form-data: it "
                                "holds no complete part (cut short before its closing boundary?)")
        if not uploads:
            raise UploadProblem(400, "missing_file",
                                f"no file in the request: send multipart/form-data with the field {field!r}")
        return parts

    @app.get("/health", summary="Liveness, the loaded models and the software versions", response_model=None,
             responses={200: {"model": HealthBody, "description": "The server is up"}})
    async def health() -> dict[str, Any]:  # async: answers even when every worker thread is busy
        meta = app.state.metadata
        return {"status": "ok", "model_id": meta["model_id"], "classes": meta["classes"],
                "label_set": meta["label_set"], "segmenter": meta["segmenter"], "versions": versions(),
                "limits": {"max_upload_mb": app.state.max_bytes / 2**20, "max_files": app.state.max_files},
                "security": describe(app.state.authenticator)}

    @app.get("/model", summary="The classifier's metadata: classes, input size, review threshold, ...")
    async def model() -> dict[str, Any]:
        return app.state.metadata

    for path, endpoint in (("/health", health), ("/model", model)):  # uptime monitors often ask with HEAD
        app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)

    @app.post("/classify", summary="Classify single-cell images",
              responses={200: {"model": ClassifyBody, "description": "One prediction per readable file"},
                         **error_responses(503)})
    async def classify(
        request: Request,
        files: Annotated[list[UploadFile | str] | None, File(
            description="One or more single-cell images (field name `files`, repeated).")] = None,
        classes: Annotated[list[str] | None, Query(description=CLASSES_HELP)] = None,
        reframe: Annotated[bool, Query(description="Re-frame cells framed unlike the training crops.")] = True,
        tta: Annotated[int | None, Query(ge=1, le=8, description=TTA_HELP)] = None,
    ) -> JSONResponse:
        """One prediction per readable file; unreadable files are listed in ``errors``, in upload order.

        200 when at least one file was classified; 4xx (with every file's problem) when none was.
        """
        refuse_other_route_fields(request, "/classify")
        parts = await require_files(request, files, "files")
        n_files = sum(isinstance(p, StarletteUploadFile) for p in parts)
        if n_files > app.state.max_files:
            raise UploadProblem(413, "too_many_files",
                                f"{n_files} files in one request; the limit is {app.state.max_files}")
        clf = chosen_classes(app.state.classifier, merged_classes(classes), tta)
        from wbc.batch import classify_settings, copies_among, with_failed_copies
        from wbc.classify import MAX_CELL_PIXELS, cell_too_large, classify_byte_sources
        from wbc.errors import ImageTooLargeError
        from wbc.serve.cases import upload_digest

        # a part without a file name is named by its place in the request, in results and errors alike
        names = [part_name(p, f"file{i + 1}") if isinstance(p, StarletteUploadFile) else f"file{i + 1}"
                 for i, p in enumerate(parts)]
        checked: list[int] = []  # the places of the uploads past the cheap checks
        digests: dict[int, str] = {}  # their SHA-1s, by place
        errors: dict[int, dict[str, str]] = {}  # by place: answered in upload order (before wbc 0.36.0, those
        # refused by the cheap checks came first)

        def refused(name: str, exc: WbcError) -> dict[str, str]:
            return {"filename": name, "error": str(cell_too_large(exc) if isinstance(exc, ImageTooLargeError) else exc)}

        def check() -> tuple[int, dict[int, int]]:
            """The cheap checks (type, size, header) before waiting for a slot, the bytes waiting on disk; then the
            uploads of another's bytes (a cell downloaded twice, ``cell (1).jpg``), as copy -> the one kept."""
            wrong_type = 0  # uploads refused for their declared content type
            for i, part in enumerate(parts):
                if isinstance(part, str):
                    errors[i] = text_part_problem(part, "files", names[i])
                    continue
                try:
                    check_upload(part, app.state.max_bytes, MAX_CELL_PIXELS, names[i])
                    checked.append(i)
                except WbcError as exc:
                    wrong_type += isinstance(exc, WrongContentType)
                    errors[i] = refused(names[i], exc)
            # classified and counted once, the one kept chosen as `wbc classify` chooses it (wbc.batch.copies_among):
            # before wbc 0.36.0 each copy was counted
            digests.update((i, upload_digest(cast(UploadFile, parts[i]))) for i in checked)
            left_out = copies_among([digests[i] for i in checked], [names[i] for i in checked])
            return wrong_type, {checked[c]: checked[k] for c, k in left_out.items()}

        wrong_type, copy_of = await run_in_threadpool(check)
        todo = [i for i in checked if i not in copy_of]

        def work() -> tuple[list[Any], list[int]]:  # reading and decoding count against the concurrency limit
            def read(j: int) -> bytes:  # each upload read from its spool file as its batch is prepared
                i = todo[j]
                return read_upload_bytes(cast(UploadFile, parts[i]), app.state.max_bytes, MAX_CELL_PIXELS, names[i])

            # `wbc classify`'s own path (wbc.classify._classify_batches): the same answers, flags and reasons
            res = classify_byte_sources(read, [names[i] for i in todo], clf, BATCH_SIZE, workers=1, reframe=reframe)
            # each answer and failure back to its place (res.indices): before wbc 0.37.0 they were matched by name,
            # and of three parts named alike, the second failing, the third's answer was given the second's place
            answered = set(res.indices)
            for j, (name, message) in zip([j for j in range(len(todo)) if j not in answered], res.errors,
                                          strict=True):
                errors[todo[j]] = {"filename": name, "error": message}
            return res.predictions, [todo[j] for j in res.indices]

        preds, placed = await in_inference_slot(app.state, work) if todo else ([], [])
        copies: list[dict[str, Any]] = []
        for c, k in sorted(copy_of.items()):
            if k in errors:  # a copy of a file that could not be read fails alike, listed as `wbc classify` lists it
                listed, _ = with_failed_copies([(names[k], errors[k]["error"])], [(names[c], names[k])])
                errors[c] = dict(zip(("filename", "error"), listed[-1], strict=True))
            else:
                copies.append({"filename": names[c], "index": c, "same_as": names[k], "same_as_index": k})
        # each entry with its part's place, which names (repeated, `blob`, `image`) cannot tell (since wbc 0.37.0)
        in_order: list[dict[str, Any]] = [{"filename": errors[i]["filename"], "index": i, "error": errors[i]["error"]}
                                          for i in sorted(errors)]
        if not preds:
            status = 415 if in_order and wrong_type == len(in_order) else 422
            raise UploadProblem(status, "no_readable_image",
                                "none of the uploaded files could be read as an image", in_order)
        from wbc.classify import other_cells_note, outside_note, several_images_note
        from wbc.ood import adapted_without_labels, ood_warning

        # the label set's rows, as /analyze's and `wbc classify --report`'s: a class it cannot answer is no measured 0
        answered = list(getattr(clf, "label_set", ()) or clf.classes)
        counts = {c: 0 for c in answered}
        for p in preds:
            counts[p.label] += 1
        warning = ood_warning(preds, adapted_without_labels(clf))  # the sentence /analyze gives a field
        outside = outside_note(preds)  # the sentences `wbc classify` prints
        crowded = other_cells_note(preds)
        stacks = several_images_note(preds)
        return JSONResponse({
            "model_id": clf.model_id,
            "wbc_version": wbc.__version__,  # since wbc 0.37.0, with `settings`: which software and settings answered
            "settings": classify_settings(clf, reframe),
            "n": len(preds),
            "n_review": sum(bool(p.review) for p in preds),
            "results": [{**prediction_to_dict(p), "index": i, "sha1": digests[i]} for p, i in zip(preds, placed,
                                                                                                    strict=True)],
            "counts": counts,
            "differential": differential(counts, answered),
            "warnings": [w for w in (outside, crowded, stacks, warning) if w] + copies_notes(copies),
            "errors": in_order,
            "copies": copies,
        })

    @app.post("/analyze", summary="Find, outline, classify and count the WBCs of one smear field",
              responses={200: {"model": AnalyzeBody, "description": "The field's cells, counts and differential"},
                         **error_responses(503)})
    async def analyze(
        request: Request,
        file: Annotated[list[UploadFile | str] | None, File(description="One smear image (field name `file`).")
                        ] = None,
        annotated: Annotated[bool, Query(description="Include the annotated image as base64 PNG.")] = False,
        classes: Annotated[list[str] | None, Query(description=CLASSES_HELP)] = None,
        tta: Annotated[int | None, Query(ge=1, le=8, description=TTA_HELP)] = None,
    ) -> JSONResponse:
        """The same JSON as ``wbc analyze`` writes per image, plus ``differential`` with 95 % CIs."""
        from wbc.analyze import MAX_ANALYZE_PIXELS, analyze_image, result_to_dict
        from wbc.batch import run_settings, segmenter_id_of, stamped
        from wbc.errors import ImageTooLargeError
        from wbc.io import pages_warning, tiff_fields

        refuse_other_route_fields(request, "/analyze")
        parts = await require_files(request, file, "file")
        if len(parts) > 1:  # a repeated `file` part: FastAPI would keep the last and drop the others without a word;
            # a text part too (`-F file=b.jpg`, its @ forgotten), which before wbc 0.36.0 was left out
            texts = [text_part_problem(u, "file", f"part {i + 1}") for i, u in enumerate(parts) if isinstance(u, str)]
            names = a_few([part_name(u, "upload") if isinstance(u, StarletteUploadFile) else f"{u[:80]!r} (text)"
                           for u in parts])
            raise UploadProblem(400, "too_many_files", f"/analyze takes one field a request, got {len(parts)}: "
                                f"{names} (send each on its own, or several as one case: POST /cases)", texts)
        up = cast(UploadFile, parts[0])
        chosen = merged_classes(classes)
        clf, seg = chosen_classes(app.state.classifier, chosen, tta), app.state.segmenter
        answered = smear_answered(clf, chosen)  # the differential's and the legend's rows: no platelets
        name = part_name(up, "upload")

        def unreadable(exc: WbcError) -> UploadProblem:
            if isinstance(exc, ImageTooLargeError):
                status, error = 413, "too_many_pixels"
            else:
                status, error = (415 if isinstance(exc, WrongContentType) else 422), "unreadable_image"
            return UploadProblem(status, error, str(exc), [{"filename": name, "error": str(exc)}])

        try:  # refused from the header, before waiting for a slot and before decoding
            await run_in_threadpool(check_upload, up, app.state.max_bytes, MAX_ANALYZE_PIXELS, name)
        except WbcError as exc:
            raise unreadable(exc) from None

        def work() -> dict[str, Any]:
            try:  # read and decoded inside the concurrency slot: N uploads are never in memory or decoded at once
                data = read_upload_bytes(up, app.state.max_bytes, MAX_ANALYZE_PIXELS, name)
                rgb = decode_upload(data, name, MAX_ANALYZE_PIXELS)
            except WbcError as exc:
                raise unreadable(exc) from None
            res = analyze_image(rgb, clf, seg, name=name)
            if (pages := tiff_fields(data)) > 1:
                res.warnings.append(pages_warning(pages))
            # `wbc analyze`'s document whole: its settings, the bytes' SHA-1 and the wbc version (before wbc 0.37.0
            # left out, so an answer did not say which software and settings gave it)
            body = stamped(result_to_dict(res, answered, segmenter_id_of(seg), run_settings(clf, seg)), data)
            body["n_review"] = sum(bool(c.prediction and c.prediction.review) for c in res.cells)
            body["differential"] = differential(body["counts"], answered)
            if annotated:
                from wbc.render import render

                body["annotated_png"] = png_base64(render(rgb, res, answered, float(clf.info.review_threshold),
                                                          clf.classes))  # colours as /model's
            return body

        try:
            body = await in_inference_slot(app.state, work)
        except WbcError as exc:  # e.g. a field too small or too large to analyse
            msg = str(exc)
            raise UploadProblem(422, "unprocessable", msg, [{"filename": name, "error": msg}]) from None
        except UploadProblem:
            raise
        except Exception as exc:  # as in wbc analyze (batch.analyze_job): a malformed image or ONNX Runtime's own
            msg = f"{name}: analysis failed ({exc.__class__.__name__})"  # error (out of memory) is not a 500
            raise UploadProblem(422, "analysis_failed", msg, [{"filename": name, "error": msg}]) from None
        return JSONResponse(body)

    @app.post("/differential", summary="Percentages and exact 95 % CIs for given counts", response_model=None,
              responses={200: {"model": DifferentialBody, "description": "The differential"}})
    def differential_endpoint(
        body: CountsIn,
        classes: Annotated[list[str] | None, Query(description=DIFFERENTIAL_CLASSES_HELP)] = None,
    ) -> dict[str, Any]:
        """For pooling: add the ``counts`` of several fields, post them here, get the differential.

        Each name is read as the rest of wbc reads labels (:func:`wbc.labels.canonical_label`: ``NRBC``,
        ``Neutrophils``, ``band``), and names of one class are added up. A name that is no class of the model is
        refused, never counted as a class of its own: an NRBC inside the WBC total changes every percentage.
        The rows are the label set's (``classes``, else the server's), plus any class counted: before wbc 0.31.0 a
        ``--classes 5part`` server gave every class of the model, ig and platelets at 0 with intervals, while the
        ``/analyze`` answers it pools give five."""
        from wbc.labels import canonical_label, parse_class_set

        bad = [f"{k!r}: {v}" for k, v in body.counts.items() if not 0 <= v <= MAX_COUNT]
        if bad:
            raise UploadProblem(422, "invalid_counts", f"counts must be between 0 and {MAX_COUNT:,}: {a_few(bad)}")
        classes_of_model = list(app.state.metadata["classes"])
        counts: dict[str, int] = {}
        unknown: list[str] = []
        for name, n in body.counts.items():
            cls = name if name in classes_of_model else canonical_label(name)
            if cls is not None and cls in classes_of_model:
                counts[cls] = counts.get(cls, 0) + n
            else:
                unknown.append(repr(name))
        if unknown:
            raise UploadProblem(422, "invalid_counts", f"not a class of this model: {a_few(unknown)} "
                                f"(its classes: {', '.join(classes_of_model)})")
        if over := {k: v for k, v in counts.items() if v > MAX_COUNT}:
            raise UploadProblem(422, "invalid_counts", f"counts must be between 0 and {MAX_COUNT:,}: {over}")
        chosen = merged_classes(classes)
        try:  # as /classify's `classes`: none, the server's label set; `all`, every class of the model
            answered = (parse_class_set(chosen, classes_of_model) or classes_of_model if chosen
                        else app.state.metadata["label_set"])
        except WbcError as exc:
            raise UploadProblem(422, "bad_classes", str(exc)) from None
        # the total is the WBCs' (NRBCs and platelets per 100 WBCs); a class counted is never left out of it
        rows = differential(counts, [c for c in classes_of_model if c in answered or counts.get(c)])
        return {"total": rows[0]["total"] if rows else 0, "differential": rows}

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    from wbc.serve.cases import attach_cases

    attach_cases(app, store)  # /cases/... and the review page /review (wbc.serve.cases)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app

