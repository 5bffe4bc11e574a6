"""The case store: cases, fields, cells, the model's call and the reviewer's, with an append-only audit trail.

A *case* is one or more smear fields analysed together (one patient's differential). Each cell keeps the
model's call (label, confidence, review flag, probabilities) unchanged for ever; the reviewer's call is a
separate column, and every change is appended to ``corrections`` (who, when, from what to what), so the
original call and every step after it can always be read back. A case signed off by a named user is
read-only: further edits raise :class:`CaseSignedError`.

Storage is SQLAlchemy 2.x with portable types only (no SQLite-only SQL), so ``--store`` takes any
SQLAlchemy URL (``sqlite:///cases.sqlite`` by default, ``postgresql+psycopg://...`` unchanged). The schema
is created and upgraded by Alembic on open (:func:`migrate`), from the migrations shipped in this package.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import sqlite3
import time
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    DBAPIError,
    IntegrityError,
    InternalError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload, sessionmaker

from wbc.counts import half_up
from wbc.errors import WbcError
from wbc.labels import smear_classes
from wbc.protocols import ClassifierLike, SegmenterLike

#: The reviewer's calls beyond the model's classes. Neither counts in the differential.
NOT_WBC: str = "not_wbc"
UNIDENTIFIABLE: str = "unidentifiable"
SPECIAL_LABELS: tuple[str, ...] = (NOT_WBC, UNIDENTIFIABLE)
#: The store's file name when a folder (or nothing) is given: next to the results of ``wbc analyze``.
DEFAULT_STORE_NAME: str = "cases.sqlite"
DEFAULT_STORE: Path = Path("results") / DEFAULT_STORE_NAME
MAX_NAME: int = 200
MAX_USER: int = 120
#: How long a SQLite write waits for another program's write lock (a backup, a database browser) before the store
#: says it is busy (:class:`CaseStoreUnavailableError`).
SQLITE_BUSY_TIMEOUT_S: float = 30.0
#: The largest id a case, field or cell can have: the id columns are ``Integer``, int4 on PostgreSQL, where a larger id
#: in a query is a DataError (before wbc 0.34.0 a traceback from `wbc cases`, a 500 from the server). SQLite's are wider
#: but count from 1 as well; one limit for both, so the same digits mean the same on either (:func:`is_id`).
MAX_ID: int = 2**31 - 1

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class CaseError(WbcError):
    """A problem with a case: not found, a bad label or name, a name already taken."""


class CaseNotFoundError(CaseError):
    """No case (or cell) with that id or name."""


class CaseAmbiguousError(CaseError):
    """A reference that names one case and is the id of another: ``#ID`` chooses."""


class CaseSignedError(CaseError):
    """The case is signed off and therefore read-only."""


class CaseChangedError(CaseError):
    """The case changed after the signer was shown it: a sign-off would attest to what they never saw."""


class StoreUpgradeError(Exception):
    """An older wbc's store could not be upgraded (:func:`migrate`): ``cause``, the database's error. Opening it says
    that an upgrade, a write, is what failed (a read-only look at it failed "attempt to write a readonly database",
    and nothing said why a read wrote)."""

    def __init__(self, cause: DBAPIError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class CaseStoreUnavailableError(CaseError):
    """The store cannot be read or written now: another program holds its lock, it or its folder is read-only, the
    server is unreachable. ``detail``: the problem without the store's address, for an HTTP client (503)."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


# --------------------------------------------------------------------------- schema (ORM)

_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_NAMING)


class CaseRow(Base):
    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(MAX_USER), default="")
    model_id: Mapped[str] = mapped_column(String(300), default="")
    segmenter_id: Mapped[str] = mapped_column(String(300), default="")
    classes: Mapped[list[str]] = mapped_column(JSON)
    review_threshold: Mapped[float] = mapped_column(Float, default=0.0)
    signed_by: Mapped[str | None] = mapped_column(String(MAX_USER), nullable=True)
    signed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    signed_client: Mapped[str | None] = mapped_column(String(60), nullable=True)  # migration 0002
    wbc_version: Mapped[str | None] = mapped_column(String(40), nullable=True)  # that analysed it; migration 0006
    # the classes its differential counts (the label set it was analysed among, less platelets); ``classes`` is the
    # reviewer's menu. None: stored before migration 0007, the differential counts ``classes`` (counted_classes)
    counted: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    # the numbers signed off: {"wbc_version", "differential", "model_differential"} as computed at sign-off, what the
    # reports print for the case from then on; None: open, or signed off before migration 0008 (re-computed)
    signed_numbers: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # how its fields were analysed besides the models (analysis_settings: --classes, --tta, colour calibration,
    # --pixel-size); None: stored before migration 0009
    settings: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    fields: Mapped[list[FieldRow]] = relationship(back_populates="case", order_by="FieldRow.position")


class FieldRow(Base):
    __tablename__ = "fields"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    image: Mapped[str] = mapped_column(String(500))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    image_png: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)  # loaded only when asked for
    warnings: Mapped[list[str]] = mapped_column(JSON)
    # what the field's colours were calibrated from before its cells were classified (the analysis JSON's
    # ``colour_calibration``), None when they were classified as they came; migration 0003
    colour_calibration: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # SHA-1 of the file's bytes (None: stored before migration 0004, or added from pixels): a case holds each image once
    sha1: Mapped[str | None] = mapped_column(String(40), nullable=True)

    case: Mapped[CaseRow] = relationship(back_populates="fields")
    cells: Mapped[list[CellRow]] = relationship(back_populates="field", order_by="CellRow.cell_no")


class CellRow(Base):
    __tablename__ = "cells"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    field_id: Mapped[int] = mapped_column(ForeignKey("fields.id"), index=True)
    cell_no: Mapped[int] = mapped_column(Integer)  # the cell's id within its field (the analysis JSON's)
    x0: Mapped[int] = mapped_column(Integer)
    y0: Mapped[int] = mapped_column(Integer)
    x1: Mapped[int] = mapped_column(Integer)
    y1: Mapped[int] = mapped_column(Integer)
    outline: Mapped[list[Any]] = mapped_column(JSON)  # cell polygons [[x, y], ...] in field pixels
    nucleus: Mapped[list[Any]] = mapped_column(JSON)
    crop_png: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)  # as framed for the classifier, own colours
    # the model's call: written once, never updated
    model_label: Mapped[str] = mapped_column(String(40))
    model_confidence: Mapped[float] = mapped_column(Float)
    model_review: Mapped[bool] = mapped_column(Boolean)
    model_reasons: Mapped[list[str]] = mapped_column(JSON)
    model_probabilities: Mapped[dict[str, float]] = mapped_column(JSON)
    ood: Mapped[bool] = mapped_column(Boolean, default=False)
    # the reviewer's call (None: not reviewed yet; the model's call stands)
    label: Mapped[str | None] = mapped_column(String(40), nullable=True)
    reviewed_by: Mapped[str | None] = mapped_column(String(MAX_USER), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    field: Mapped[FieldRow] = relationship(back_populates="cells")


class CorrectionRow(Base):
    """Append-only: one row per reviewer action; never updated or deleted."""

    __tablename__ = "corrections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id"), index=True)
    old_label: Mapped[str] = mapped_column(String(40))
    new_label: Mapped[str] = mapped_column(String(40))
    user: Mapped[str] = mapped_column(String(MAX_USER))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    note: Mapped[str] = mapped_column(Text, default="")
    #: the authenticated client behind the change (API key digest, "anonymous", "local"); migration 0002
    client: Mapped[str | None] = mapped_column(String(60), nullable=True)


# --------------------------------------------------------------------------- helpers


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def as_utc(dt: datetime | None) -> datetime | None:
    """Datetimes come back naive from SQLite: they were written in UTC."""
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def iso(dt: datetime | None) -> str | None:
    d = as_utc(dt)
    return d.isoformat().replace("+00:00", "Z") if d else None


def is_id(n: int) -> bool:
    """Whether ``n`` can be a row's id (1 to :data:`MAX_ID`): a lookup by any other is no row, never sent to the
    database, and digits past it (a 10-digit accession number) are only a name.

    >>> is_id(2**31 - 1), is_id(3024123456), is_id(0)
    (True, False, False)
    """
    return 0 < n <= MAX_ID


_Row = TypeVar("_Row", bound=Base)


def _get(s: Session, table: type[_Row], row_id: int) -> _Row | None:
    """The row of ``table`` with id ``row_id``, or None; an id past :data:`MAX_ID` is none, asked of no database."""
    return s.get(table, int(row_id)) if is_id(int(row_id)) else None


def store_url(store: str | os.PathLike[str] | None) -> str:
    """A SQLAlchemy URL from ``--store``: a URL as it is, a folder (or a path ending in ``/``, a folder to make) ->
    ``<folder>/cases.sqlite``, a file path (its ``%`` and ``?`` quoted, so the URL names that file)."""
    if store is None:
        store = DEFAULT_STORE
    s = str(store)
    if "://" in s:
        return s
    p = Path(s)
    if p.is_dir() or s.endswith(("/", os.sep)):  # "new_folder/" was made a SQLite file named new_folder
        p = p / DEFAULT_STORE_NAME
    # quoted: a folder named "run%201" or "who?" was read as "run 1" or cut at "?" (a store written elsewhere)
    return URL.create("sqlite", database=str(p.resolve())).render_as_string(hide_password=False)


def no_control(text: str, what: str) -> str:
    """``text`` (white space already collapsed), refused with a :class:`CaseError` if it holds a control character (a
    JSON body's ``\\u0000``): PostgreSQL cannot store a NUL (a 500 there, stored as it was on SQLite), and no name
    needs the others."""
    if bad := next((ch for ch in text if unicodedata.category(ch) == "Cc"), None):
        raise CaseError(f"{what} holds a control character (U+{ord(bad):04X})")
    return text


def clean_user(user: str) -> str:
    u = " ".join(str(user or "").split())
    if not u:
        raise CaseError("a user name is needed (who reviews or signs off)")
    if len(u) > MAX_USER:
        raise CaseError(f"user name longer than {MAX_USER} characters")
    return no_control(u, "user name")


def clean_name(name: str) -> str:
    """A case name as stored and looked up: white space collapsed, Unicode NFC (a name typed on macOS, NFD, and on
    Windows, NFC, is one name; migration 0005 brought stored names to NFC)."""
    n = unicodedata.normalize("NFC", " ".join(str(name or "").split()))
    if not n:
        raise CaseError("a case needs a name (for example the sample or accession number)")
    if re.fullmatch(r"#[0-9]+", n):
        raise CaseError(f"a case cannot be named {n!r}: #ID means the case with that id")
    if len(n) > MAX_NAME:
        raise CaseError(f"case name longer than {MAX_NAME} characters")
    return no_control(n, "case name")


def encode_png(rgb: np.ndarray) -> bytes:
    import cv2

    ok, enc = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise CaseError("could not encode an image as PNG")
    return enc.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    from wbc.io import decode_image

    return decode_image(data, "stored image")


# --------------------------------------------------------------------------- migrations


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


#: PostgreSQL advisory lock held while a store is created or upgraded (:func:`migrate`).
MIGRATION_LOCK: int = 0x77626300
#: The store's own Alembic version table. Before wbc 0.31.0 it was Alembic's default ``alembic_version``, which a
#: database shared with another application's Alembic migrations (a LIMS's) holds too: wbc read the LIMS's revision
#: as "made by a newer wbc", or wrote its own into the LIMS's table (:func:`adopt_legacy_version`).
VERSION_TABLE: str = "wbc_alembic_version"
LEGACY_VERSION_TABLE: str = "alembic_version"


def adopt_legacy_version(conn: Any, cfg: Any) -> None:
    """Move the revision of a store written before wbc 0.31.0 from ``alembic_version`` to :data:`VERSION_TABLE`
    (dropping ``alembic_version`` when that empties it), inside the upgrade's transaction; only when that table holds
    exactly one of wbc's revisions and wbc's four tables are there: anything else in it is another application's,
    left alone."""
    from alembic import command
    from alembic.script import ScriptDirectory
    from sqlalchemy import inspect, text

    insp = inspect(conn)
    if insp.has_table(VERSION_TABLE) or not insp.has_table(LEGACY_VERSION_TABLE):
        return
    if not all(insp.has_table(t) for t in ("cases", "fields", "cells", "corrections")):
        return
    if not {"model_id", "review_threshold", "signed_by"} <= {c["name"] for c in insp.get_columns("cases")}:
        return
    revisions = list(conn.execute(text(f"SELECT version_num FROM {LEGACY_VERSION_TABLE}")).scalars())
    known = {r.revision for r in ScriptDirectory.from_config(cfg).walk_revisions()}
    if len(revisions) != 1 or revisions[0] not in known:
        return
    command.stamp(cfg, revisions[0])  # into VERSION_TABLE (migrations/env.py)
    conn.execute(text(f"DELETE FROM {LEGACY_VERSION_TABLE} WHERE version_num = :v"), {"v": revisions[0]})
    if not conn.execute(text(f"SELECT COUNT(*) FROM {LEGACY_VERSION_TABLE}")).scalar():
        conn.execute(text(f"DROP TABLE {LEGACY_VERSION_TABLE}"))


#: The revisions a wbc before 0.31.0 left a store at, each kept in :data:`LEGACY_VERSION_TABLE`.
LEGACY_REVISIONS: tuple[str, ...] = ("0001", "0002", "0003", "0004", "0005", "0006")


def legacy_version_sql(revision: str | None, dialect: str) -> list[Any]:
    """The statements that move a store's ``revision`` from ``alembic_version`` to :data:`VERSION_TABLE`, as
    :func:`adopt_legacy_version` does, for Alembic's offline SQL (``--sql``, migrations/env.py) from a revision a wbc
    before 0.31.0 wrote; none from any other (or no) revision. Without them a DBA's printed upgrade from such a store
    (``"0006:head"``) stopped at its first ``UPDATE wbc_alembic_version``: no such table. On PostgreSQL
    ``alembic_version`` is dropped when that empties it (another application's revision keeps it); on other databases
    the emptied table is left: wbc ignores it once :data:`VERSION_TABLE` is there (an older wbc refuses the store
    either way, "table cases already exists")."""
    from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, String, Table
    from sqlalchemy.schema import CreateTable

    if revision not in LEGACY_REVISIONS:
        return []
    table = Table(VERSION_TABLE, MetaData(), Column("version_num", String(32), nullable=False),
                  PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"))  # as Alembic makes it
    out: list[Any] = [CreateTable(table),
                      f"INSERT INTO {VERSION_TABLE} (version_num) VALUES ('{revision}')",
                      f"DELETE FROM {LEGACY_VERSION_TABLE} WHERE version_num = '{revision}'"]
    if dialect == "postgresql":
        out.append(f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM {LEGACY_VERSION_TABLE}) THEN DROP TABLE "
                   f"{LEGACY_VERSION_TABLE}; END IF; END $$")
    return out


def migrate(engine: Engine) -> None:
    """Create or upgrade the schema to the newest migration (``alembic upgrade head``), in one transaction.

    A store already at the newest revision is only read (a store its user may only read still opens). Otherwise the
    upgrade runs under the store's write lock (SQLite: ``BEGIN IMMEDIATE``, which waits for another writer; PostgreSQL:
    an advisory lock), and Alembic re-reads the revision inside it: two processes opening an older store at once (a
    server restarting after an upgrade while a cron job exports) both open it. Before wbc 0.31.0 the second failed,
    "database is locked" on SQLite (its read could not become a write), "column already exists" on PostgreSQL.
    The revision is kept in :data:`VERSION_TABLE` (:func:`adopt_legacy_version` moves an older store's there).
    An older store that cannot be upgraded (read-only to this user) is a :class:`StoreUpgradeError`."""
    from alembic import command
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import inspect, text

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as conn, conn.begin():
        current = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
    if current is not None and current == ScriptDirectory.from_config(cfg).get_current_head():
        return
    try:
        with engine.connect() as conn:
            conn.info[_WRITES] = True  # SQLite: BEGIN IMMEDIATE (_sqlite_begin)
            try:
                with conn.begin():
                    if conn.dialect.name == "postgresql":
                        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
                    cfg.attributes["connection"] = conn
                    adopt_legacy_version(conn, cfg)
                    command.upgrade(cfg, "head")
            finally:
                conn.info.pop(_WRITES, None)
    except (OperationalError, ProgrammingError, InternalError) as exc:
        if current is not None or inspect(engine).has_table("cases"):  # not a new store: one an older wbc wrote
            raise StoreUpgradeError(exc) from exc
        raise


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """Per connection, SQLite only: enforce foreign keys; a write-ahead log (a commit is one synced append,
    still durable across a power cut with FULL sync; readers never wait for a writer). The driver's own
    transaction handling is off (it sent no BEGIN before a read), so that :func:`_sqlite_begin` starts every
    transaction, a writing one with the write lock taken first."""
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    _to_wal(cur)
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


def _to_wal(cur: Any, wait_s: float | None = None) -> None:
    """``PRAGMA journal_mode=WAL``, tried again while the store is locked, up to ``wait_s`` (default
    :data:`SQLITE_BUSY_TIMEOUT_S`). Switching a store that is not in WAL mode yet (one made by another program, or by
    Alembic's own connection) needs the database to itself, and SQLite answers "database is locked" at once rather
    than waiting its busy timeout: a second process connecting while the first switched it failed to open the store
    (before wbc 0.32.0; seen in ``test_two_processes_upgrading_one_store_both_open_it``). A store already in WAL mode
    answers at once."""
    deadline = time.monotonic() + (SQLITE_BUSY_TIMEOUT_S if wait_s is None else wait_s)
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


#: ``Connection.info`` key of a connection whose transaction writes (:meth:`CaseStore.session`).
_WRITES = "wbc_writes"


def _sqlite_begin(conn: Any) -> None:
    """Start a SQLite transaction; a writing one takes the database's write lock at once (``BEGIN IMMEDIATE``), so
    that what it reads (is the case still open? the cell's label) cannot change before it writes: SQLite has no
    row locks, and ``SELECT ... FOR UPDATE`` does nothing there."""
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get(_WRITES) else "BEGIN")


def make_engine(url: str) -> Engine:
    try:
        u = make_url(url)
    except ArgumentError as exc:
        raise CaseError(f"--store {url!r}: not a SQLAlchemy URL or a file path ({exc})") from None
    kwargs: dict[str, Any] = {}
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            folder = Path(u.database).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a read-only working folder (wbc serve's default store), /proc/..., a file
                why = ("a file is in the way" if isinstance(exc, (FileExistsError, NotADirectoryError))
                       else exc.strerror or str(exc))
                raise CaseError(f"case store {u.database}: cannot create its folder {folder} ({why})") from None
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
    try:
        engine = create_engine(u, **kwargs)
    except (ArgumentError, ImportError) as exc:
        raise CaseError(f"--store {u.render_as_string()}: {exc}") from None
    if u.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def busy(reason: str) -> bool:
    """Whether a database's error says another program holds the store's lock (SQLite past its busy timeout)."""
    return "locked" in reason.lower() or "busy" in reason.lower()


def store_problem(url: URL, exc: DBAPIError) -> tuple[str, str]:
    """What a database error means for the store: for the person who chose it (naming files), and for an HTTP
    client (naming nothing of the server's). SQLite says "attempt to write a readonly database" also when only the
    folder is read-only (its write-ahead log lives beside the file), so which of the two is said."""
    lines = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
    reason = lines[0] if lines else type(exc).__name__
    low = reason.lower()
    if busy(reason):
        return (f"{reason}: another program is writing to it; try again when it is done",
                "the case store is busy: another program is writing to it; try again")
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" and (
            "readonly" in low or "read-only" in low or "unable to open" in low):
        path = Path(url.database)
        hints = []
        if not os.access(path.parent, os.W_OK):
            hints.append(f"its folder {path.parent} must be writable (SQLite keeps its write-ahead log beside the "
                         "file)")
        if path.exists() and not os.access(path, os.W_OK):
            hints.append("the file is read-only")
        elif path.exists():  # the file writable again: its -wal or -shm left read-only by a read-only open, or a user's
            hints += [f"its {side.name} is not writable by this user (left so by a program that could only read the "
                      "store, or by another user): make it writable" +
                      (", or remove it while no program uses the store" if side.name.endswith("-shm") else "")
                      for side in (Path(f"{path}-wal"), Path(f"{path}-shm"))
                      if side.exists() and not os.access(side, os.W_OK)]
        return reason + (f": {'; '.join(hints)}" if hints else ""), "the case store cannot be written by this server"
    if "permission denied" in low:  # a PostgreSQL role its DBA gave SELECT only (a traceback before wbc 0.33.0)
        return (f"{reason}: the database user {url.username!r} lacks a grant the store needs (SELECT, INSERT and "
                "UPDATE on its tables, USAGE on their sequences)",
                "this server may not use the case store (a database grant is missing); ask its administrator")
    return reason, "the case store cannot be used now; try again, or ask the server's administrator"


# --------------------------------------------------------------------------- plain results


@dataclass
class CaseSummary:
    """One line of ``wbc cases list``."""

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

    @property
    def status(self) -> str:
        return "signed off" if self.signed_by else "open"

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "status": self.status}


def seen_mismatch(name: str, trail: Sequence[Any], seen: int, changed: int) -> str:
    """Why a sign-off with ``seen`` corrections seen was refused, judged on the case's audit trail (``trail``: its
    rows ``(cell_id, old_label, new_label, user, at)`` in the order they were saved) and its ``changed`` cells now.

    The trail only grows, so the rows after the first ``seen`` are those saved after a showing of ``seen``: they are
    named, the case's changing since it was shown first. A ``seen`` that is also the number of changed cells may
    instead have counted only those (the number counts confirmations too); the trail cannot tell that from a
    colleague's correction since, so both are said, and neither reading gives a number to sign with: the case must be
    shown again (before wbc 0.37.0's release, the second reading alone was given, with "give N", and a signer who
    gave it signed off a label a colleague set after they looked). A ``seen`` above the trail's length was never
    shown. The words name no command: a review page's user and a CLI user read them alike.

    >>> from datetime import datetime
    >>> at = datetime(2026, 1, 2, 3, 4, 5)
    >>> print(seen_mismatch("S-1", [(4, "ig", "ig", "A", at), (5, "ig", "monocyte", "B", at)], 1, 1))
    case 'S-1' has 2 correction(s) now (1 change(s), 1 confirmation(s)), not the 1 given: if it was shown with 1, \
the last 1 came since (cell 5: ig -> monocyte by B at 2026-01-02T03:04:05Z), so it changed after it was shown; or 1 \
counted only its changed cells, but the number counts every correction, confirmations included. It was not signed \
off: show it again and check its differential before signing it off
    """
    n, same = len(trail), sum(old == new for _, old, new, _, _ in trail)
    counts = f"{n} correction(s) now ({n - same} change(s), {same} confirmation(s))"
    again = ". It was not signed off: show it again and check its differential before signing it off"
    if seen > n:
        return (f"case {name!r} has {n} correction(s) ({n - same} change(s), {same} confirmation(s)), fewer than the "
                f"{seen} given, and corrections are never removed, so it was never shown with {seen}{again}")
    later = trail[seen:]
    listed = "; ".join(f"cell {cell}: {old} -> {new} by {user} at {iso(at)}" for cell, old, new, user, at in later[:3])
    more = f"; and {len(later) - 3} more" if len(later) > 3 else ""
    text = (f"case {name!r} has {counts}, not the {seen} given: if it was shown with {seen}, the last {len(later)} "
            f"came since ({listed}{more}), so it changed after it was shown")
    if seen == changed:
        text += (f"; or {seen} counted only its changed cells, but the number counts every correction, "
                 "confirmations included")
    return text + again


def final_label(cell: CellRow) -> str:
    return cell.label if cell.label is not None else cell.model_label


def content_version(*parts: object) -> str:
    """16 hex digits that name a stored picture by what it shows (:meth:`CaseStore.field_version`,
    :meth:`CaseStore.cell_version`): the API's image URLs carry them, so that a browser that kept case 1's cell 1 of
    one store never shows it for case 1's cell 1 of another (every store numbers its rows from 1).

    >>> len(content_version("field", "0a1b")), content_version("field", "0a1b") == content_version("field", "0a1c")
    (16, False)
    """
    return hashlib.sha1("|".join(map(str, parts)).encode("utf-8")).hexdigest()[:16]


def image_urls(case_id: int, cell_id: int, version: str) -> dict[str, str]:
    """A cell's picture URLs (``/view``: as the slide shows it; ``/crop``: as the classifier saw it), versioned."""
    base = f"/cases/{case_id}/cells/{cell_id}"
    return {"view_url": f"{base}/view?v={version}", "crop_url": f"{base}/crop?v={version}"}


def cell_to_dict(cell: CellRow, position: int, version: str) -> dict[str, Any]:
    """A cell as JSON; ``version``: its pictures' content version (:meth:`CaseStore.cell_version`)."""
    return {
        "id": cell.id,
        "field_id": cell.field_id,
        "field": position,
        "cell_no": cell.cell_no,
        "box": [cell.x0, cell.y0, cell.x1, cell.y1],
        "outline": cell.outline,
        "nucleus": cell.nucleus,
        "model_label": cell.model_label,
        "model_confidence": half_up(float(cell.model_confidence), 6),  # as wbc.formats.cell_to_dict
        "model_review": bool(cell.model_review),
        "model_reasons": list(cell.model_reasons or []),
        "model_probabilities": cell.model_probabilities or {},
        "ood": bool(cell.ood),
        "label": final_label(cell),
        "reviewed": cell.label is not None,
        "changed": cell.label is not None and cell.label != cell.model_label,
        "reviewed_by": cell.reviewed_by,
        "reviewed_at": iso(cell.reviewed_at),
        **image_urls(cell.case_id, cell.id, version),
    }


def case_classes(stored: Sequence[str], labels: Sequence[str] = ()) -> list[str]:
    """A case's classes as the reviewer's menu shows them (its differential's rows: :func:`counted_classes`): those
    stored with it less platelets (no smear cell is answered as one: :func:`wbc.labels.smear_classes`), unless a cell
    of the case is labelled so (a case stored before wbc 0.30.0 kept every class of the model, and its reviewer could
    call a cell "platelet").

    >>> case_classes(["lymphocyte", "platelet"]), case_classes(["lymphocyte", "platelet"], ["platelet"])
    (['lymphocyte'], ['lymphocyte', 'platelet'])
    """
    kept = set(smear_classes(stored)) | set(labels)
    return [c for c in stored if c in kept]


def counted_classes(stored: Sequence[str], counted: Sequence[str] | None, labels: Sequence[str] = (),
                    model_labels: Sequence[str] = ()) -> list[str]:
    """The rows of a case's differential: the classes it was analysed among (``counted``, its label set: a case
    created by ``wbc serve --classes 5part`` counts five, not the model's seven), plus any class of the reviewer's
    menu (:func:`case_classes`) a cell is called, now (``labels``: the reviewer's call, else the model's) or by the
    model (``model_labels``), so no call goes uncounted. ``counted`` None (stored before migration 0007): the menu's
    classes, as before wbc 0.31.0, when a five-part case listed ig and erythroblast at 0, counts its lab never makes.

    >>> menu = ["erythroblast", "ig", "lymphocyte", "neutrophil"]
    >>> counted_classes(menu, ["lymphocyte", "neutrophil"]), counted_classes(menu, ["lymphocyte", "neutrophil"], ["ig"])
    (['lymphocyte', 'neutrophil'], ['ig', 'lymphocyte', 'neutrophil'])
    >>> counted_classes(menu, None)
    ['erythroblast', 'ig', 'lymphocyte', 'neutrophil']
    """
    menu = case_classes(stored, labels)
    if counted is None:
        return menu
    shown = {*counted, *labels, *model_labels}
    return [c for c in menu if c in shown]


def differentials(c: CaseRow, finals: Sequence[str], models: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A case's reviewed and model's differentials from its cells' calls (``finals``: the reviewer's, else the
    model's), by this wbc's counting rules."""
    rows = counted_classes(c.classes, c.counted, finals, models)
    return differential_of(finals, rows), differential_of(models, rows)


def same_numbers(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two differentials give the same numbers (total, each row's count, rate and interval, the calls left
    out), whatever else a wbc version added to them. Rates and bounds equal to their 4th decimal's rounding: wbc
    0.33.0 rounds half up where earlier versions rounded half to even (1 of 640 cells: 0.1562 then, 0.1563 now), and
    a case signed off before must not read as changed for it.

    >>> row = {"class": "lymphocyte", "count": 1, "percent": 0.1562, "ci95_low": 0.0, "ci95_high": 0.8}
    >>> same_numbers({"total": 640, "rows": [row]}, {"total": 640, "rows": [row | {"percent": 0.1563}]})
    True
    >>> same_numbers({"total": 640, "rows": [row]}, {"total": 640, "rows": [row | {"count": 2}]})
    False
    """
    def numbers(d: dict[str, Any]) -> tuple[Any, list[list[Any]], Any]:
        keys = ("class", "count", "percent", "ci95_low", "ci95_high")
        return d.get("total"), [[r.get(k) for k in keys] for r in d.get("rows", [])], d.get("excluded")

    def same(x: Any, y: Any) -> bool:
        if isinstance(x, float) and isinstance(y, float):
            return abs(x - y) <= 1.5e-4
        return bool(x == y)

    (ta, ra, ea), (tb, rb, eb) = numbers(a), numbers(b)
    return (ta == tb and ea == eb and len(ra) == len(rb)
            and all(len(x) == len(y) and all(same(u, v) for u, v in zip(x, y, strict=True))
                    for x, y in zip(ra, rb, strict=True)))


def differential_of(labels: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """Counts, percent and exact 95 % intervals over the model's classes, the total the WBCs' (NRBCs and platelets
    per 100 WBCs: :func:`wbc.counts.differential_rows`); the special calls counted apart."""
    from wbc.counts import differential_rows
    from wbc.formats import differential_unit

    counts = {c: 0 for c in classes}
    other = {s: 0 for s in SPECIAL_LABELS}
    for lab in labels:
        if lab in counts:
            counts[lab] += 1
        elif lab in other:
            other[lab] += 1
    keys = ("class", "count", "total", "percent", "ci95_low", "ci95_high")
    rows = [{**dict(zip(keys, r[1:], strict=True)), "unit": differential_unit(r[1])}
            for r in differential_rows(counts, classes, "", digits=4)]
    return {"total": rows[0]["total"] if rows else 0, "rows": rows, "excluded": other}  # the WBCs (wbc.counts)


# --------------------------------------------------------------------------- the store


class CaseStore:
    """The case store behind one SQLAlchemy URL; thread-safe (one session per call)."""

    def __init__(self, url: str, create: bool = True) -> None:
        """Open the store at ``url``, creating or upgrading its tables; ``create=False``: a database holding no store is
        a :class:`CaseError` and is left as it is (a command that only reads, given a mistyped or another
        application's database, wrote wbc's five tables into it before wbc 0.35.0)."""
        self.url = url
        self.engine = make_engine(url)
        from alembic.util import CommandError
        from sqlalchemy import inspect

        try:
            if not create and not any(inspect(self.engine).has_table(t) for t in (VERSION_TABLE, "cases")):
                self.engine.dispose()
                raise CaseError(f"{self.display_url}: no case store in this database (create cases with `wbc serve "
                                "--store URL` or `wbc cases create --store URL`, or pass another --store)")
            migrate(self.engine)
        except StoreUpgradeError as exc:  # an older wbc's store: a user who may only read it cannot upgrade it
            err = self._unavailable(exc.cause, "cannot open the case store")
            cause = exc.cause.orig if exc.cause.orig is not None else exc.cause
            if not busy(str(cause)):  # busy: another program holds the lock, perhaps upgrading it
                err = CaseStoreUnavailableError(f"{err}; it was written by an older wbc and is upgraded when opened: "
                                                "open it once as a user who may write it (on PostgreSQL: its tables' "
                                                "owner)", err.detail)
            raise err from None
        except OperationalError as exc:  # locked, read-only, unreachable
            raise self._unavailable(exc, "cannot open the case store") from None
        except DatabaseError as exc:  # "file is not a database"
            raise CaseError(f"cannot open the case store {self.display_url}: {exc.orig}") from None
        except CommandError as exc:  # a revision this wbc does not know: a newer wbc made the store
            raise CaseError(f"cannot open the case store {self.display_url}: it was made by a newer wbc ({exc})"
                            ) from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # a stored field and its cells' boxes never change: each field is decoded once for its cells' pictures
        self._field_views = functools.lru_cache(maxsize=16)(self._cut_views)
        # the SHA-1 of the PNG of each field stored without its file's (:meth:`_field_version`), hashed once
        self._png_digests: dict[int, str] = {}

    @classmethod
    def open(cls, store: str | os.PathLike[str] | None = None) -> CaseStore:
        """Open (creating or upgrading) the store: a SQLAlchemy URL, a ``.sqlite`` path, or a folder."""
        return cls(store_url(store))

    @property
    def display_url(self) -> str:
        """Where the store is, for messages: a SQLite store's file as the user named it (its URL quotes ``%``, ``?``
        and ``#``: a folder ``run%201`` read ``run%25201``, a path that does not exist), else the URL without its
        password."""
        u = self.engine.url
        if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
            return u.database
        return u.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def _unavailable(self, exc: DBAPIError, what: str = "case store") -> CaseStoreUnavailableError:
        said, detail = store_problem(self.engine.url, exc)
        return CaseStoreUnavailableError(f"{what} {self.display_url}: {said}", detail)

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """One transaction. ``write``: it changes the store after checking what it reads (a case still open, a
        cell's current label): on SQLite it holds the write lock from its start (:func:`_sqlite_begin`), elsewhere
        :meth:`_case` locks the case's row. A store locked by another program past :data:`SQLITE_BUSY_TIMEOUT_S`,
        read-only or unreachable, or a PostgreSQL role without the grant (``permission denied``; a read-only replica),
        is a :class:`CaseStoreUnavailableError` (one line; it was a traceback, a bare 500). A name already taken
        (``IntegrityError``) is the caller's to say."""
        try:
            if not write or self.engine.url.get_backend_name() != "sqlite":
                with self._sessions.begin() as s:
                    yield s
                return
            with self.engine.connect() as conn:
                conn.info[_WRITES] = True
                try:
                    with self._sessions(bind=conn) as s, s.begin():
                        yield s
                finally:
                    conn.info.pop(_WRITES, None)
        except (OperationalError, ProgrammingError, InternalError) as exc:
            raise self._unavailable(exc) from None

    # ------------------------------------------------------------- lookups

    def _case(self, s: Session, case: int | str, lock: bool = False) -> CaseRow:
        """The case with id ``case`` (an int, or a str ``#ID``), or named ``case`` (a str: its name, else, for plain
        ASCII digits, its id). Digits that name one case and are the id of another ("3" naming case 4 while case 3
        exists) are refused (:class:`CaseAmbiguousError`, saying how to write either), never guessed; digits with a
        leading zero (an accession number "0042") are a name only, as no id is written so: before wbc 0.33.0 they
        opened case 42 when no case was named so (a lab exported another patient's case). So are digits past
        :data:`MAX_ID` (a 10-digit accession number), and no id past it is looked up (:func:`is_id`)."""
        def first(where: Any) -> CaseRow | None:
            q = select(CaseRow).where(where)
            # populate_existing: a row the session already holds (a name's lookup, unlocked) is re-read once the lock
            # is had, else a sign-off committed while this waited went unseen and the change slipped in after it
            return s.scalars(q.with_for_update().execution_options(populate_existing=True) if lock else q).first()

        row, hint = None, ""
        if isinstance(case, str):
            name = str(case).strip()
            if m := re.fullmatch(r"#([0-9]{1,18})", name):  # an explicit id, never a name
                row = first(CaseRow.id == int(m[1])) if is_id(int(m[1])) else None
            elif name:
                row = self._by_name(s, name, first)
                digits = re.fullmatch(r"[0-9]{1,18}", name) is not None
                if digits and name == str(int(name)) and is_id(int(name)):  # an id as ids are written
                    by_id = first(CaseRow.id == int(name))
                    if row is not None and by_id is not None and by_id.id != row.id:
                        raise CaseAmbiguousError(
                            f"{name!r} is both the name of case {row.id} and the id of case {by_id.id} "
                            f"({by_id.name!r}): write #{by_id.id} for case {by_id.id}, #{row.id} for the case named "
                            f"{name!r}")
                    row = row or by_id
                elif digits and row is None and is_id(int(name)) and (by_id := s.scalars(select(CaseRow).where(
                        CaseRow.id == int(name))).first()) is not None:  # "0042": no case so named; 42 may be meant
                    hint = (f" (digits with a leading zero are a name, never an id: write #{by_id.id} for case "
                            f"{by_id.id}, {by_id.name!r})")
        elif isinstance(case, int) and is_id(case):
            row = first(CaseRow.id == case)
        if row is None:
            raise CaseNotFoundError(f"case {case!r} not found in {self.display_url}{hint}")
        return row

    def _by_name(self, s: Session, name: str, first: Any) -> CaseRow | None:
        """The case named ``name`` (NFC, as stored), or None. Migration 0005 left a name that collided with its NFC
        twin as it was ("Zoe" + combining diaeresis beside "Zoë"): both show as one name, so a name that matches two
        cases in two Unicode spellings is refused (:class:`CaseAmbiguousError`, with each one's ``#ID``), never
        resolved to whichever spelling the keyboard sent."""
        nfc = clean_name(name)
        spellings = dict.fromkeys([nfc, " ".join(name.split()), unicodedata.normalize("NFD", nfc)])
        rows = {r.id: r for r in s.scalars(select(CaseRow).where(CaseRow.name.in_(spellings))).all()}
        if len(rows) > 1:
            each = ", ".join(f"#{i} for case {i} (created {iso(r.created_at)}, spelt {r.name!a})"
                             for i, r in sorted(rows.items()))
            raise CaseAmbiguousError(f"{nfc!r} names {len(rows)} cases, stored before wbc 0.28.0 in different "
                                     f"Unicode spellings of one name: write {each}")
        return first(CaseRow.id == next(iter(rows))) if rows else None

    def name_taken(self, name: str) -> bool:
        """Whether a case is named ``name`` (as :meth:`create_case` stores it): `wbc cases create` says so before it
        analyses a field, not after analysing them all."""
        with self.session() as s:
            return s.scalar(select(CaseRow.id).where(CaseRow.name == clean_name(name))) is not None

    def case_id(self, case: int | str) -> int:
        with self.session() as s:
            return self._case(s, case).id

    # ------------------------------------------------------------- writing

    def create_case(
        self, name: str, classes: Sequence[str], model_id: str = "", segmenter_id: str = "",
        created_by: str = "", review_threshold: float = 0.0, counted: Sequence[str] | None = None,
    ) -> int:
        """A new, empty, open case; returns its id. Names are unique."""
        return self.create_case_with_fields(name, classes, [], model_id, segmenter_id, created_by, review_threshold,
                                            counted)

    def create_case_with_fields(
        self, name: str, classes: Sequence[str], fields: Sequence[PreparedField], model_id: str = "",
        segmenter_id: str = "", created_by: str = "", review_threshold: float = 0.0,
        counted: Sequence[str] | None = None, settings: Mapping[str, Any] | None = None,
    ) -> int:
        """A new open case with ``fields``, in one transaction: no one sees, labels or signs off a case that misses
        a field, and a field that fails leaves no case behind (nor its name taken). Returns its id.

        ``classes``: what a reviewer may call a cell; ``counted``: the differential's rows, the label set the fields
        were analysed among (None: ``classes``; :func:`counted_classes`); ``settings``: how they were analysed
        (:func:`analysis_settings`), for the report."""
        from wbc import __version__

        n = clean_name(name)
        row = CaseRow(name=n, created_at=utcnow(), wbc_version=__version__,
                      created_by=no_control(" ".join(str(created_by or "").split())[:MAX_USER], "user name"),
                      model_id=model_id, segmenter_id=segmenter_id, classes=list(classes),
                      counted=None if counted is None else [c for c in classes if c in set(counted)],
                      review_threshold=float(review_threshold), settings=None if settings is None else dict(settings))
        try:
            with self.session(write=True) as s:
                s.add(row)
                s.flush()
                for f in fields:
                    self._add_field(s, row, f.png, f.result, f.crops, f.image, f.sha1)
                return row.id
        except IntegrityError:
            raise CaseError(f"a case named {n!r} already exists") from None

    def add_field(self, case: int | str, rgb: np.ndarray | bytes, result: Any, crops: np.ndarray | None = None,
                  image: str = "", sha1: str | None = None) -> int:
        """Store one analysed field (a :class:`wbc.types.SmearResult` of ``rgb``, or of the image whose PNG
        ``rgb`` is: :class:`PreparedField`) and its cells' crops.

        ``crops`` (N, S, S, 3): the crops the classifier saw, in ``result.cells`` order (see
        :func:`wbc.cases.crops_for`). ``sha1``: the SHA-1 of the image file's bytes; a file already in the case
        is refused (:class:`CaseError` naming both), so no cell is counted twice. Returns the field's id.
        """
        with self.session(write=True) as s:
            c = self._case(s, case, lock=True)
            self._check_open(c)
            return self._add_field(s, c, rgb, result, crops, image, sha1)

    def _add_field(self, s: Session, c: CaseRow, rgb: np.ndarray | bytes, result: Any, crops: np.ndarray | None,
                   image: str, sha1: str | None = None) -> int:
        """:meth:`add_field` within the transaction ``s``, to the open case ``c``."""
        from wbc.analyze import mask_to_polygons

        cells = list(result.cells)
        if crops is None or len(crops) != len(cells):
            raise CaseError(f"{image or result.image}: one crop per cell is needed")
        if sha1 and (same := s.scalars(select(FieldRow).where(FieldRow.case_id == c.id, FieldRow.sha1 == sha1))
                     .first()):
            raise CaseError(f"{image or result.image}: the same image as field {same.position} ({same.image}) of "
                            f"case {c.name!r} (identical file content, SHA-1 {sha1[:12]}); a field is added once")
        position = 1 + int(s.scalar(select(func.count(FieldRow.id)).where(FieldRow.case_id == c.id)) or 0)
        f = FieldRow(case_id=c.id, position=position, image=str(image or result.image).replace("\x00", "")[:500],
                     width=int(result.width), height=int(result.height),
                     image_png=rgb if isinstance(rgb, bytes) else encode_png(rgb),
                     warnings=list(result.warnings),
                     colour_calibration=getattr(result, "calibration", None), sha1=sha1 or None)
        s.add(f)
        s.flush()
        for cell, crop in zip(cells, crops, strict=True):
            p = cell.prediction
            if p is None:
                raise CaseError(f"{f.image}: cell {cell.id} has no classification")
            x0, y0, x1, y1 = (int(v) for v in cell.box)
            s.add(CellRow(
                case_id=c.id, field_id=f.id, cell_no=int(cell.id), x0=x0, y0=y0, x1=x1, y1=y1,
                outline=mask_to_polygons(cell.cell_mask, (x0, y0)),
                nucleus=mask_to_polygons(cell.nucleus_mask, (x0, y0)),
                crop_png=encode_png(crop), model_label=p.label, model_confidence=float(p.confidence),
                model_review=bool(p.review), model_reasons=list(p.reasons),
                model_probabilities={k: half_up(float(v), 4) for k, v in p.probabilities.items()},
                ood=bool(p.ood)))
        return f.id

    @staticmethod
    def _check_open(c: CaseRow) -> None:
        if c.signed_by:
            raise CaseSignedError(f"case {c.name!r} was signed off by {c.signed_by} on {iso(c.signed_at)} "
                                  "and is read-only")

    def reclassify(self, case: int | str, cell_id: int, label: str, user: str, note: str = "",
                   client: str = "local", expected: str | None = None) -> dict[str, Any]:
        """Set the reviewer's call for one cell (a class, ``not_wbc`` or ``unidentifiable``; the model's own
        label confirms it) and append it to the audit trail. ``client``: the authenticated caller (the
        server passes the API key's digest). ``expected``: the cell's call as the caller last showed it (the review
        page always sends it); a cell that holds another one now (a colleague relabelled it since) is left as it is
        (:class:`CaseChangedError`), checked under the case's lock: a stale page's "confirm" silently undid the
        colleague's correction before wbc 0.31.0. None: no check. Returns the cell as a dict, with ``old_label``: the
        call this replaced, as read under the lock (a re-read of the case may already hold a colleague's next one)."""
        who = clean_user(user)
        with self.session(write=True) as s:
            c = self._case(s, case, lock=True)
            self._check_open(c)
            allowed = [*c.classes, *SPECIAL_LABELS]  # no platelet since wbc 0.30.0 (create_case_from_fields)
            if label not in allowed:
                raise CaseError(f"label {label!r} is not one of {', '.join(allowed)}")
            cell = _get(s, CellRow, cell_id)
            if cell is None or cell.case_id != c.id:
                raise CaseNotFoundError(f"cell {cell_id} is not in case {c.name!r}")
            if expected is not None and final_label(cell) != expected:
                by = f"by {cell.reviewed_by}" if cell.label is not None else "the model's call"
                raise CaseChangedError(f"cell {cell.id} of case {c.name!r} is {final_label(cell)!r} now ({by}), not "
                                       f"{expected!r} as it was shown; nothing was saved: reload the case")
            now, old = utcnow(), final_label(cell)
            note = str(note or "").replace("\x00", "")[:2000]  # PostgreSQL stores no NUL
            s.add(CorrectionRow(case_id=c.id, cell_id=cell.id, old_label=old, new_label=label,
                                user=who, at=now, note=note, client=str(client)[:60]))
            cell.label, cell.reviewed_by, cell.reviewed_at = label, who, now
            s.flush()
            version = self._cell_version(c, self._field_version(c, cell.field), cell)
            return {**cell_to_dict(cell, cell.field.position, version), "old_label": old}

    def sign_off(self, case: int | str, user: str, client: str = "local", corrections_seen: int | None = None
                 ) -> dict[str, Any]:
        """Sign the case off as ``user`` (through ``client``, as in :meth:`reclassify`): from now on it is
        read-only. ``corrections_seen``: how many corrections the signer was shown, every row of the audit trail
        (``case_document``'s ``corrections``, confirmations included: `wbc cases show` prints the number, the review
        page counts them); a case with another number is not signed off (:class:`CaseChangedError`, worded by
        :func:`seen_mismatch`), checked in the sign-off's own transaction. No number is ever taken that the signer was
        not shown: the refusal says to show the case again, never which number to give. The differentials as signed
        are kept with the case (:meth:`case_document`). Returns the case document."""
        from wbc import __version__

        who = clean_user(user)
        with self.session(write=True) as s:
            c = self._case(s, case, lock=True)
            self._check_open(c)
            if not s.scalar(select(func.count(CellRow.id)).where(CellRow.case_id == c.id)):
                raise CaseError(f"case {c.name!r} has no cells to sign off")
            if corrections_seen is not None:
                trail = s.execute(select(CorrectionRow.cell_id, CorrectionRow.old_label, CorrectionRow.new_label,
                                         CorrectionRow.user, CorrectionRow.at)
                                  .where(CorrectionRow.case_id == c.id).order_by(CorrectionRow.id)).all()
                if len(trail) != corrections_seen:
                    changed = s.scalar(select(func.count(CellRow.id)).where(
                        CellRow.case_id == c.id, CellRow.label.is_not(None), CellRow.label != CellRow.model_label)) or 0
                    raise CaseChangedError(seen_mismatch(c.name, trail, corrections_seen, changed))
            # the numbers the signer attests to, kept: a later wbc's counting rules never change what its reports print
            calls = s.execute(select(CellRow.label, CellRow.model_label).where(CellRow.case_id == c.id)).all()
            finals, models = [lab if lab is not None else m for lab, m in calls], [m for _, m in calls]
            diff, model_diff = differentials(c, finals, models)
            c.signed_numbers = {"wbc_version": __version__, "differential": diff, "model_differential": model_diff}
            c.signed_by, c.signed_at, c.signed_client = who, utcnow(), str(client)[:60]
            case_id = c.id
        return self.case_document(case_id)

    # ------------------------------------------------------------- reading

    def list_cases(self) -> list[CaseSummary]:
        with self.session() as s:
            n_fields = dict(s.execute(select(FieldRow.case_id, func.count(FieldRow.id)).group_by(FieldRow.case_id))
                            .all())
            n_cells = dict(s.execute(select(CellRow.case_id, func.count(CellRow.id)).group_by(CellRow.case_id))
                           .all())
            changed = dict(s.execute(
                select(CellRow.case_id, func.count(CellRow.id))
                .where(CellRow.label.is_not(None), CellRow.label != CellRow.model_label)
                .group_by(CellRow.case_id)).all())
            return [CaseSummary(c.id, c.name, iso(c.created_at), c.created_by, c.model_id,
                                int(n_fields.get(c.id, 0)), int(n_cells.get(c.id, 0)), int(changed.get(c.id, 0)),
                                c.signed_by, iso(c.signed_at))
                    for c in s.scalars(select(CaseRow).order_by(CaseRow.id))]

    def case_document(self, case: int | str) -> dict[str, Any]:
        """Everything about a case but the images, as JSON-ready dicts (the API's and the report's input); the
        images' URLs (each field's ``image_url``, each cell's ``view_url`` and ``crop_url``) carry their content
        version, so that no browser cache shows another store's image for the same ids.

        A signed-off case's differentials are those it was signed off with (``numbers_as_signed`` True; ``numbers_by``
        the wbc version that computed them), and ``numbers_now`` gives this wbc's when its counting rules make others
        of the same calls: a signed case's numbers were re-computed on every read before wbc 0.31.0, so a newer wbc
        re-printed it with numbers nobody signed. Cases signed off before then have no stored numbers
        (``numbers_as_signed`` False: re-computed)."""
        from wbc import __version__

        with self.session() as s:
            c = self._case(s, case)
            fields, cells = [], []
            loaded = s.scalars(select(FieldRow).where(FieldRow.case_id == c.id).order_by(FieldRow.position)
                               .options(selectinload(FieldRow.cells)))
            for f in loaded:
                version = self._field_version(c, f)
                fields.append({"id": f.id, "position": f.position, "image": f.image, "width": f.width,
                               "height": f.height, "warnings": list(f.warnings or []), "n_cells": len(f.cells),
                               "colour_calibration": f.colour_calibration, "sha1": f.sha1,
                               "image_url": f"/cases/{c.id}/fields/{f.id}/image?v={version}"})
                cells += [cell_to_dict(x, f.position, self._cell_version(c, version, x)) for x in f.cells]
            corrections = [
                {"id": r.id, "cell_id": r.cell_id, "old_label": r.old_label, "new_label": r.new_label,
                 "user": r.user, "at": iso(r.at), "note": r.note, "client": r.client}
                for r in s.scalars(select(CorrectionRow).where(CorrectionRow.case_id == c.id)
                                   .order_by(CorrectionRow.id))]
            finals, models = [x["label"] for x in cells], [x["model_label"] for x in cells]
            classes = case_classes(c.classes, finals)  # the reviewer's menu
            diff, model_diff = differentials(c, finals, models)
            signed = c.signed_numbers if c.signed_by else None
            now = None
            if signed:
                if not (same_numbers(signed["differential"], diff)
                        and same_numbers(signed["model_differential"], model_diff)):
                    now = {"wbc_version": __version__, "differential": diff, "model_differential": model_diff}
                diff, model_diff = signed["differential"], signed["model_differential"]
            return {
                "id": c.id, "name": c.name, "created_at": iso(c.created_at), "created_by": c.created_by,
                "model_id": c.model_id, "segmenter_id": c.segmenter_id, "wbc_version": c.wbc_version,
                "classes": classes,
                "labels": [*classes, *SPECIAL_LABELS], "counted": None if c.counted is None else list(c.counted),
                "review_threshold": c.review_threshold, "settings": c.settings,
                "signed_by": c.signed_by, "signed_at": iso(c.signed_at), "signed_client": c.signed_client,
                "status": "signed off" if c.signed_by else "open",
                "fields": fields, "cells": cells, "corrections": corrections,
                "differential": diff, "model_differential": model_diff,
                "numbers_by": signed["wbc_version"] if signed else __version__,
                "numbers_as_signed": None if not c.signed_by else bool(signed), "numbers_now": now,
                "n_cells": len(cells), "n_flagged": sum(x["model_review"] for x in cells),
                "n_reviewed": sum(x["reviewed"] for x in cells), "n_changed": sum(x["changed"] for x in cells),
            }

    def tallies(self, case: int | str) -> dict[str, Any]:
        """The differentials (reviewed and model's) and review counts, from the labels alone: what a page needs
        after each change, without reading the case's images."""
        with self.session() as s:
            c = self._case(s, case)
            rows = s.execute(select(CellRow.label, CellRow.model_label).where(CellRow.case_id == c.id)).all()
            finals = [lab if lab is not None else model for lab, model in rows]
            models = [m for _, m in rows]
            diff, model_diff = differentials(c, finals, models)
            if c.signed_by and c.signed_numbers:  # as signed, as case_document gives them
                diff, model_diff = c.signed_numbers["differential"], c.signed_numbers["model_differential"]
            return {"differential": diff, "model_differential": model_diff,
                    "n_reviewed": sum(lab is not None for lab, _ in rows),
                    "n_changed": sum(lab is not None and lab != m for lab, m in rows)}

    def _field_version(self, c: CaseRow, f: FieldRow) -> str:
        """The content version of a field's image (:func:`content_version`): its file's SHA-1, or, for a field
        stored without one (before migration 0004, or from pixels), its PNG's, and the wbc that decoded it."""
        digest = f.sha1 or self._png_digests.get(f.id)
        if digest is None:  # the PNG is read in the caller's session
            digest = self._png_digests.setdefault(f.id, "png:" + hashlib.sha1(f.image_png).hexdigest())
        return content_version("field", digest, c.wbc_version)

    @staticmethod
    def _cell_version(c: CaseRow, field_version: str, cell: CellRow) -> str:
        """A cell's pictures' content version: its field's image, its box and the model that framed its crop."""
        return content_version("cell", field_version, cell.x0, cell.y0, cell.x1, cell.y1, c.model_id)

    def field_version(self, case: int | str, field_id: int) -> str:
        """The content version of a field's image (the ``v`` of its ``image_url``)."""
        with self.session() as s:
            c = self._case(s, case)
            f = _get(s, FieldRow, field_id)
            if f is None or f.case_id != c.id:
                raise CaseNotFoundError(f"field {field_id} is not in case {c.name!r}")
            return self._field_version(c, f)

    def cell_version(self, case: int | str, cell_id: int) -> str:
        """The content version of a cell's view and crop (the ``v`` of its ``view_url`` and ``crop_url``)."""
        with self.session() as s:
            c = self._case(s, case)
            cell = _get(s, CellRow, cell_id)
            if cell is None or cell.case_id != c.id:
                raise CaseNotFoundError(f"cell {cell_id} is not in case {c.name!r}")
            return self._cell_version(c, self._field_version(c, cell.field), cell)

    def field_png(self, case: int | str, field_id: int) -> bytes:
        with self.session() as s:
            c = self._case(s, case)
            f = _get(s, FieldRow, field_id)
            if f is None or f.case_id != c.id:
                raise CaseNotFoundError(f"field {field_id} is not in case {c.name!r}")
            return f.image_png

    def crop_png(self, case: int | str, cell_id: int) -> bytes:
        with self.session() as s:
            c = self._case(s, case)
            cell = _get(s, CellRow, cell_id)
            if cell is None or cell.case_id != c.id:
                raise CaseNotFoundError(f"cell {cell_id} is not in case {c.name!r}")
            return cell.crop_png

    def crops(self, case: int | str) -> dict[int, bytes]:
        """Every cell's crop PNG by cell id: what the classifier saw (the export's training data)."""
        with self.session() as s:
            c = self._case(s, case)
            return dict(s.execute(select(CellRow.id, CellRow.crop_png).where(CellRow.case_id == c.id)).all())

    def view_png(self, case: int | str, cell_id: int) -> bytes:
        """One cell's picture as the slide shows it (:func:`cell_view`), for the review page."""
        with self.session() as s:
            c = self._case(s, case)
            cell = _get(s, CellRow, cell_id)
            if cell is None or cell.case_id != c.id:
                raise CaseNotFoundError(f"cell {cell_id} is not in case {c.name!r}")
            field_id = cell.field_id
        return self._field_views(field_id)[int(cell_id)]

    def views(self, case: int | str) -> dict[int, bytes]:
        """Every cell's picture as the slide shows it (:func:`cell_view`) by cell id, for the reports' galleries."""
        with self.session() as s:
            c = self._case(s, case)
            field_ids = list(s.scalars(select(FieldRow.id).where(FieldRow.case_id == c.id)))
        return {k: v for f in field_ids for k, v in self._field_views(f).items()}

    def _cut_views(self, field_id: int) -> dict[int, bytes]:
        """The pictures of one field's cells, by cell id, its image decoded once."""
        with self.session() as s:
            f = _get(s, FieldRow, field_id)
            if f is None:
                raise CaseNotFoundError(f"field {field_id} is not in the store")
            rgb = decode_png(f.image_png)
            return {x.id: encode_png(cell_view(rgb, (x.x0, x.y0, x.x1, x.y1))) for x in f.cells}


# --------------------------------------------------------------------------- from an analysis


#: The longest side of a cell's picture for the review page and the reports (:func:`cell_view`).
VIEW_SIDE: int = 256


def cell_view(rgb: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """A cell as a reviewer must judge it: its field cut around its box as `wbc analyze`'s report cuts it
    (:func:`wbc.crops.box_window`, :data:`wbc.evaluate.classified.CUT_MARGIN`), kept inside the field, at most
    :data:`VIEW_SIDE` px. The stored crop is what the classifier saw: beyond the field's edge it mirrors the field, so a
    cell cut off by the edge showed as two lobes, four nuclei or twice (8 of 17 cells in BCCD's ten fields) on the
    review page and in the report before wbc 0.30.0.

    >>> cell_view(np.zeros((480, 640, 3), np.uint8), (547, 103, 640, 210)).shape  # at the right edge, not mirrored
    (149, 149, 3)
    """
    import cv2

    from wbc.crops import box_window
    from wbc.evaluate.classified import CUT_MARGIN

    cut = box_window(rgb, box, CUT_MARGIN)
    if max(cut.shape[:2]) > VIEW_SIDE:
        cut = cv2.resize(cut, (VIEW_SIDE, VIEW_SIDE), interpolation=cv2.INTER_AREA)
    return cut


def crops_for(rgb: np.ndarray, result: Any, classifier: ClassifierLike) -> np.ndarray:
    """The crops of ``result.cells`` at the analysis' size and cell fraction, in the field's own colours.

    When the analysis calibrated the field's colours (``result.calibration``) the classifier saw these crops
    through that calibration; the store keeps them as the slide shows them, which is what a reviewer must judge
    and what ``wbc adapt`` trains on (an adapted model reads a lab's cells as they come), and records the
    calibration beside the field.
    """
    from wbc.crops import cell_fraction_of, crop_cells

    size = int(classifier.info.input_size)
    if not result.cells:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.asarray(crop_cells(rgb, result.cells, size, cell_fraction_of(classifier)))


@dataclass
class PreparedField:
    """An analysed field as the store keeps it, its decoded image no longer held: a request of many large fields
    keeps each one's PNG and crops until the case is created, not its pixels (:func:`prepare_field`)."""

    image: str
    png: bytes
    result: Any
    crops: np.ndarray
    sha1: str | None = None  # of the image file's bytes: the store refuses a file already in the case


def prepare_field(image: str, rgb: np.ndarray, result: Any, classifier: ClassifierLike,
                  sha1: str | None = None) -> PreparedField:
    """``rgb`` analysed as ``result`` (a :class:`wbc.types.SmearResult`), ready for :func:`create_case_from_fields`;
    ``sha1``: of the file ``rgb`` was read from (:func:`file_digest`)."""
    return PreparedField(image, encode_png(rgb), result, crops_for(rgb, result, classifier), sha1)


def file_digest(data: bytes) -> str:
    """The SHA-1 a field's file content is known by in the store."""
    return hashlib.sha1(data).hexdigest()


def analysis_settings(classifier: ClassifierLike, segmenter: SegmenterLike | None = None) -> dict[str, Any]:
    """How fields are analysed besides the models, as `wbc analyze` records it in each field's JSON
    (:func:`wbc.batch.run_settings`): the label set (``classes``, [] for every class), the views averaged per cell
    (``tta``), whether fields are colour-calibrated, and, with the ``segmenter``, the pixel size given (``pixel_size``,
    None: measured from the red cells)."""
    from wbc.batch import run_settings

    keys = ("classes", "tta", "colour_calibration", *(("pixel_size",) if segmenter is not None else ()))
    settings = run_settings(classifier, segmenter)
    return {k: settings[k] for k in keys}


def create_case_from_fields(
    store: CaseStore, name: str, fields: Sequence[tuple[str, np.ndarray, Any] | PreparedField],
    classifier: ClassifierLike, segmenter_id: str = "", created_by: str = "", segmenter: SegmenterLike | None = None,
) -> int:
    """A new case from analysed fields (``(image name, rgb, SmearResult)`` or :class:`PreparedField`); returns the
    case id. Its reviewer may call a cell any class of the model a smear cell can be; its differential counts the
    classifier's label set (``wbc serve --classes 5part``: five rows, :func:`counted_classes`). The case records how
    its fields were analysed (:func:`analysis_settings`; the pixel size only with the ``segmenter`` that found them).

    A field given without its file's SHA-1 (a tuple: pixels, no file) is stored without one; two such fields of
    identical pixels are refused (:class:`CaseError`): the store's same-file check needs the SHA-1, and before wbc
    0.33.0 the same image given twice was counted twice."""
    from wbc.analyze import smear_label_set

    if not fields:
        raise CaseError("a case needs at least one field")
    info = classifier.info
    ready = [f if isinstance(f, PreparedField) else prepare_field(f[0], f[1], f[2], classifier) for f in fields]
    seen: dict[str, int] = {}
    for i, f in enumerate(ready, 1):
        # the PNG is a function of the pixels alone: identical pixels, identical bytes
        if not f.sha1 and (first := seen.setdefault(hashlib.sha1(f.png).hexdigest(), i)) != i:
            raise CaseError(f"{f.image}: the same pixels as field {first} ({ready[first - 1].image}); a field is added "
                            "once (pass each file's SHA-1, prepare_field(..., sha1=file_digest(data)), to have it "
                            "recorded)")
    classes = smear_classes(classifier.classes)  # what a reviewer may call a smear cell: no platelets (case_classes)
    return store.create_case_with_fields(name, classes, ready, model_id=str(classifier.model_id),
                                         segmenter_id=segmenter_id, created_by=created_by,
                                         review_threshold=float(getattr(info, "review_threshold", 0.0) or 0.0),
                                         counted=smear_label_set(classifier),
                                         settings=analysis_settings(classifier, segmenter))


def safe_stem(text: str) -> str:
    """File-name-safe ASCII for a label or name (user text never reaches a path as it is)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "x"


def crop_image(data: bytes) -> np.ndarray:
    """A stored crop as RGB (tests, exports that re-encode)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
