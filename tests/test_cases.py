"""The case store on a real SQLite file: round trip, audit trail, sign-off, export for `wbc adapt`, reports.

Fields are synthetic smears analysed by the real pipeline (classical segmenter, the shipped classifier or
the tiny real ONNX one from test_serve), so the stored calls are real model output.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

from wbc.analyze import analyze_image
from wbc.cases import NOT_WBC, UNIDENTIFIABLE, CaseError, CaseNotFoundError, CaseSignedError, CaseStore
from wbc.cases.export import MARKER, export_cases
from wbc.cases.store import Base, create_case_from_fields, store_url
from wbc.errors import WbcError
from wbc.labels import PER_100_WBC
from wbc.segment.classical import ClassicalSegmenter
from wbc.synthetic import synthetic_smear

sys.path.insert(0, str(Path(__file__).parent))
from test_serve import classifier, model_path  # noqa: F401  (session fixtures)


@pytest.fixture(scope="module")
def fields(classifier):  # noqa: F811
    seg = ClassicalSegmenter()
    out = []
    for seed in (1, 2, 3):
        rgb, *_ = synthetic_smear(n_wbc=3, seed=seed)
        out.append((f"field {seed}.png", rgb, analyze_image(rgb, classifier, seg, name=f"field {seed}.png")))
    assert sum(len(r.cells) for _, _, r in out) >= 6
    return out


@pytest.fixture()
def store(tmp_path: Path) -> CaseStore:
    s = CaseStore.open(tmp_path / "cases.sqlite")
    yield s
    s.close()


def other_label(doc: dict, cell: dict) -> str:
    return next(c for c in doc["classes"] if c != cell["model_label"] and c != "platelet")


def test_store_url_forms(tmp_path: Path) -> None:
    assert store_url("postgresql+psycopg://u:p@db/wbc") == "postgresql+psycopg://u:p@db/wbc"
    assert store_url(tmp_path) == f"sqlite:///{tmp_path.resolve()}/cases.sqlite"
    assert store_url(tmp_path / "x.db") == f"sqlite:///{(tmp_path / 'x.db').resolve()}"
    from wbc.cases.store import DEFAULT_STORE
    from wbc.cli import cases as cli_cases

    assert cli_cases.DEFAULT_STORE == DEFAULT_STORE  # one default, kept in two places for a fast `wbc --help`


def test_a_store_folder_named_with_percent_or_question_mark_is_that_folder(tmp_path: Path) -> None:
    """A store path went into the URL unquoted: SQLAlchemy decoded "run%201" to "run 1" (a new folder) and cut "who?"
    at the "?" (a store file "who" beside the folder), so the case was stored elsewhere and the next command on the
    same --store found no store."""
    from typer.testing import CliRunner

    from wbc.cli import app

    for name in ("run%201", "who?", "Lab #2", "Müller"):
        folder = tmp_path / name
        folder.mkdir()
        s = CaseStore.open(folder)
        assert s.engine.url.database == str((folder / "cases.sqlite").resolve())
        s.create_case("S-1", ["lymphocyte"])
        s.close()
        assert (folder / "cases.sqlite").is_file()
        res = CliRunner().invoke(app, ["cases", "list", "--store", str(folder)])
        assert res.exit_code == 0 and "S-1" in res.output, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["run%201", "who?", "Lab #2", "Müller"])


def test_messages_name_a_store_s_file_as_it_is_named(tmp_path: Path) -> None:
    """The quoted URL that opens a store in a folder named with ``%``, ``?`` or ``#`` was also what every message named
    ("case 'x' not found in sqlite:////.../run%25201/cases.sqlite"): a path that does not exist. Messages name the
    file; a server's URL keeps its password out."""
    import re

    from sqlalchemy import create_engine
    from typer.testing import CliRunner

    from wbc.cli import app

    for name in ("run%201", "who?", "Lab #2"):
        folder = tmp_path / name
        folder.mkdir()
        s = CaseStore.open(folder)
        file = str((folder / "cases.sqlite").resolve())
        assert s.display_url == file
        with pytest.raises(CaseError, match=re.escape(f"case 'nope' not found in {file}")):
            s.case_document("nope")
        s.close()
        res = CliRunner().invoke(app, ["cases", "list", "--store", str(folder)])
        assert res.exit_code == 0 and f"no cases in {file}" in " ".join(res.output.split()), res.output
    assert CaseStore("sqlite://").display_url == "sqlite://"
    pg = CaseStore.__new__(CaseStore)
    pg.engine = create_engine("postgresql+psycopg://u:secret@db/wbc")  # never connected
    assert pg.display_url == "postgresql+psycopg://u:***@db/wbc"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_store_url(request, tmp_path: Path):
    """The URL of an empty store: a new SQLite file, or a new schema of ``WBC_TEST_POSTGRES_URL``'s database (dropped
    afterwards; the database's other contents are never touched)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.sqlite'}"
        return
    base = os.environ.get("WBC_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("set WBC_TEST_POSTGRES_URL=postgresql+psycopg://... to run the store on PostgreSQL")
    from sqlalchemy import create_engine, text

    schema = f"wbc_test_{os.getpid()}_{tmp_path.name}".lower().replace("-", "_")[:60]
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_a_reading_command_on_a_database_without_a_store_creates_nothing(empty_store_url: str, tmp_path: Path) -> None:
    """`wbc cases show|list|cells|report|export` given a PostgreSQL database holding no store (a mistyped one, the LIMS
    database) created wbc's five tables in it and answered "case not found". Refused in one line, nothing created;
    a SQLite database of another program alike."""
    from sqlalchemy import create_engine, inspect, text
    from typer.testing import CliRunner

    from wbc.cli import app

    if empty_store_url.startswith("sqlite"):  # another program's SQLite database
        with create_engine(empty_store_url).begin() as conn:
            conn.execute(text("CREATE TABLE notes (x INTEGER)"))
    for args in (["list"], ["show", "S-1"], ["cells", "S-1"], ["report", "S-1", "-o", str(tmp_path / "r.pdf")],
                 ["export", str(tmp_path / "out")]):
        res = CliRunner().invoke(app, ["cases", *args, "--store", empty_store_url])
        assert res.exit_code == 1 and "no case store in this database" in str(res.exception), (args, res.output)
    engine = create_engine(empty_store_url)
    assert [t for t in inspect(engine).get_table_names() if t != "notes"] == []
    engine.dispose()
    assert not (tmp_path / "out").exists() and not (tmp_path / "r.pdf").exists()


def test_migrations_match_the_models(empty_store_url: str) -> None:
    """`alembic upgrade head` builds exactly the ORM's schema (no drift between models and migrations), on SQLite and
    PostgreSQL."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from wbc.cases.store import VERSION_TABLE

    s = CaseStore.open(empty_store_url)
    with s.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert ctx.get_current_revision() == "0009"
        assert compare_metadata(ctx, Base.metadata) == []
    s.close()
    CaseStore.open(empty_store_url).close()  # re-opening an up-to-date store is a no-op


def test_postgresql_ddl_is_portable() -> None:
    """The same migration renders PostgreSQL DDL (offline `alembic upgrade head --sql`): no SQLite-only SQL."""
    import io

    from alembic import command

    from wbc.cases.store import alembic_config

    cfg = alembic_config("postgresql+psycopg://user@db/wbc")
    cfg.output_buffer = io.StringIO()
    command.upgrade(cfg, "head", sql=True)
    ddl = cfg.output_buffer.getvalue()
    for table in ("cases", "fields", "cells", "corrections"):
        assert f"CREATE TABLE {table} (" in ddl
    assert "BYTEA" in ddl and '"user" VARCHAR(120)' in ddl and "TIMESTAMP WITH TIME ZONE" in ddl


@pytest.mark.skipif(not os.environ.get("WBC_TEST_POSTGRES_URL"),
                    reason="set WBC_TEST_POSTGRES_URL=postgresql+psycopg://... to run the store on PostgreSQL")
def test_store_on_postgresql(fields, classifier, tmp_path: Path) -> None:  # noqa: F811
    """The store unchanged on a real PostgreSQL server (an empty database)."""
    store = CaseStore.open(os.environ["WBC_TEST_POSTGRES_URL"])
    name = f"pg case {os.getpid()} {tmp_path.name}"
    cid = create_case_from_fields(store, name, fields, classifier)
    doc = store.case_document(name)
    cell = doc["cells"][0]
    store.reclassify(cid, cell["id"], other_label(doc, cell), "pg user")
    store.reclassify(cid, cell["id"], NOT_WBC, "pg user")
    store.sign_off(cid, "pg user")
    with pytest.raises(CaseSignedError):
        store.reclassify(cid, cell["id"], UNIDENTIFIABLE, "pg user")
    doc = store.case_document(cid)
    assert [c["new_label"] for c in doc["corrections"]] == [other_label(doc, cell), NOT_WBC]
    assert doc["cells"][0]["model_label"] == cell["model_label"] and doc["signed_at"].endswith("Z")
    assert any(c.name == name and c.n_changed == 1 for c in store.list_cases())
    assert export_cases(store, tmp_path / "pg_export", cases=[cid], include_accepted=True).n_cells == doc["n_cells"] - 1
    store.close()


def test_upgrade_keeps_the_data(empty_store_url: str) -> None:
    """A store made by the first migration is upgraded on open, on SQLite and PostgreSQL (every migration's DDL and
    data steps run there: before wbc 0.29.0 only the schema at head was tried on PostgreSQL); its cases and audit
    trail stay intact."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from wbc.cases.store import alembic_config

    url = empty_store_url
    engine = create_engine(url)
    cfg = alembic_config(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(text("INSERT INTO cases (id, name, created_at, created_by, model_id, segmenter_id, classes, "
                          "review_threshold) VALUES (1, 'old', '2026-01-02 03:04:05', 'x', 'm', 's', "
                          "'[\"a\", \"b\"]', 0.9)"))
        conn.execute(text("INSERT INTO fields VALUES (1, 1, 1, 'f.png', 10, 10, :png, '[]')"), {"png": b"png"})
        conn.execute(text("INSERT INTO cells VALUES (1, 1, 1, 1, 0, 0, 5, 5, '[]', '[]', :png, 'a', 0.7, TRUE, '[]', "
                          "'{}', FALSE, NULL, NULL, NULL)"), {"png": b"png"})
        conn.execute(text("INSERT INTO corrections VALUES (1, 1, 1, 'a', 'b', 'old user', '2026-01-02 03:05:00', '')"))
        conn.execute(text("UPDATE cells SET label = 'b', reviewed_by = 'old user' WHERE id = 1"))
        if engine.dialect.name == "postgresql":  # rows given their ids: PostgreSQL's id sequences move on only by use
            for table in ("cases", "fields", "cells", "corrections"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 1)"))
    engine.dispose()

    store = CaseStore.open(url)
    doc = store.case_document("old")
    assert doc["created_at"] == "2026-01-02T03:04:05Z" and doc["cells"][0]["label"] == "b"
    assert doc["corrections"] == [{"id": 1, "cell_id": 1, "old_label": "a", "new_label": "b", "user": "old user",
                                   "at": "2026-01-02T03:05:00Z", "note": "", "client": None}]
    store.reclassify("old", 1, "a", "new user", client="key:0123abcd")
    store.sign_off("old", "new user", client="key:0123abcd")
    doc = store.case_document("old")
    assert doc["corrections"][-1]["client"] == "key:0123abcd" and doc["signed_client"] == "key:0123abcd"
    assert doc["fields"][0]["colour_calibration"] is None  # stored before 0003: nothing is claimed for it
    store.close()


#: A process that says it is ready, then opens the store at ``argv[1]`` once the file ``argv[2]`` exists.
_OPENER = """
import os, sys, time
from wbc.cases.store import CaseStore, CaseError
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
try:
    CaseStore(sys.argv[1]).close()
    print("ok")
except CaseError as exc:
    print(exc)
"""


def test_two_processes_upgrading_one_store_both_open_it(empty_store_url: str, tmp_path: Path) -> None:
    """A store at an older revision opened by two processes at once (the server restarting after an upgrade while a
    cron job exports): the second failed, "database is locked" on SQLite (its read could not become the upgrade's
    write), "column ... already exists" on PostgreSQL (no lock). The upgrade now holds the store's write lock and
    re-reads the revision inside it."""
    import subprocess

    from alembic import command
    from sqlalchemy import create_engine, text

    from wbc.cases.store import alembic_config

    for trial in range(2):
        url = empty_store_url.replace("old.sqlite", f"old{trial}.sqlite")
        engine = create_engine(url)
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":  # the schema of the trial before
                for table in ("corrections", "cells", "fields", "cases", "alembic_version", "wbc_alembic_version"):
                    conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001")
        engine.dispose()
        go = tmp_path / f"go{trial}"
        procs = [subprocess.Popen([sys.executable, "-c", _OPENER, url, str(go)], stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
        assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
        go.touch()
        said = [p.communicate(timeout=120)[0].strip() for p in procs]
        assert said == ["ok", "ok"], said
        s = CaseStore.open(url)
        s.create_case("after", ["lymphocyte"])
        s.close()


def _versions(url: str, table: str) -> list[str] | None:
    """The revisions in ``table`` of the database at ``url`` (None: no such table)."""
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url)
    with engine.connect() as conn:
        rows = (list(conn.execute(text(f"SELECT version_num FROM {table}")).scalars())
                if inspect(conn).has_table(table) else None)
    engine.dispose()
    return rows


def test_a_database_with_another_application_s_alembic_table_is_left_alone(empty_store_url: str) -> None:
    """--store may point into a database another application migrates with Alembic (a LIMS). wbc kept its revision in
    Alembic's default ``alembic_version``: the LIMS's revision there was taken for "made by a newer wbc", and a LIMS
    at base found wbc's revision in its table (its next upgrade cannot locate it). wbc keeps its own table now."""
    from sqlalchemy import create_engine, text

    engine = create_engine(empty_store_url)
    with engine.begin() as conn:  # the LIMS's Alembic, at one of its revisions
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('3f2a9c1e7b10')"))
    s = CaseStore.open(empty_store_url)
    s.create_case("S-1", ["lymphocyte"])
    s.close()
    assert _versions(empty_store_url, "alembic_version") == ["3f2a9c1e7b10"]
    assert _versions(empty_store_url, "wbc_alembic_version") == ["0009"]
    with engine.begin() as conn:  # the LIMS downgraded to base: its table empty, and wbc never writes there
        conn.execute(text("DELETE FROM alembic_version"))
    engine.dispose()
    CaseStore.open(empty_store_url).close()
    assert _versions(empty_store_url, "alembic_version") == []


def test_a_store_of_an_older_wbc_moves_its_revision_to_its_own_table(empty_store_url: str, monkeypatch) -> None:
    """A store written before wbc 0.31.0 holds its revision in ``alembic_version``: moved to ``wbc_alembic_version``
    when it is opened (and upgraded), its cases kept."""
    from alembic import command
    from sqlalchemy import create_engine, text

    import wbc.cases.store as store_module
    from wbc.cases.store import alembic_config

    monkeypatch.setattr(store_module, "VERSION_TABLE", "alembic_version")  # as wbc 0.30.0 wrote it
    engine = create_engine(empty_store_url)
    with engine.begin() as conn:
        cfg = alembic_config(empty_store_url)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0007")
        conn.execute(text("INSERT INTO cases (name, created_at, created_by, model_id, segmenter_id, classes, "
                          "review_threshold) VALUES ('old', '2026-01-02 03:04:05', 'x', 'm', 's', '[\"a\"]', 0.9)"))
    engine.dispose()
    monkeypatch.undo()
    assert _versions(empty_store_url, "alembic_version") == ["0007"]
    s = CaseStore.open(empty_store_url)
    assert s.case_document("old")["created_by"] == "x"
    s.close()
    assert _versions(empty_store_url, "alembic_version") is None  # wbc's alone: dropped
    assert _versions(empty_store_url, "wbc_alembic_version") == ["0009"]


def test_a_dba_s_printed_upgrade_moves_an_older_store_s_revision_first(empty_store_url: str, monkeypatch) -> None:
    """docs/review.md lets a DBA print the DDL (Alembic's offline mode) and run it by hand. From a store a wbc before
    0.31.0 wrote (``"0006:head"``, its revision in ``alembic_version``) the script updated ``wbc_alembic_version``,
    which such a store does not have: PostgreSQL stopped after the first ALTER TABLE. The script now moves the
    revision first, as opening the store does; run as it is printed, it leaves the store at the newest revision."""
    import io
    import sqlite3

    from alembic import command
    from sqlalchemy import create_engine, text

    import wbc.cases.store as store_module
    from wbc.cases.store import alembic_config

    monkeypatch.setattr(store_module, "VERSION_TABLE", "alembic_version")  # as wbc 0.30.0 wrote it
    engine = create_engine(empty_store_url)
    with engine.begin() as conn:
        cfg = alembic_config(empty_store_url)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0006")
        conn.execute(text("INSERT INTO cases (name, created_at, created_by, model_id, segmenter_id, classes, "
                          "review_threshold) VALUES ('old', '2026-01-02 03:04:05', 'x', 'm', 's', '[\"a\"]', 0.9)"))
    monkeypatch.undo()

    def printed(revisions: str) -> str:
        cfg = alembic_config(engine.url.render_as_string(hide_password=False))
        cfg.output_buffer = io.StringIO()
        command.upgrade(cfg, revisions, sql=True)
        return cfg.output_buffer.getvalue()

    assert "alembic_version " not in printed("head").replace("wbc_alembic_version", "")  # a new store: nothing to move
    assert "CREATE TABLE wbc_alembic_version" not in printed("0007:head")  # a 0.31.0 store's revision: in its table
    sql = printed("0006:head")
    assert sql.index("INSERT INTO wbc_alembic_version") < sql.index("UPDATE wbc_alembic_version")
    if engine.dialect.name == "sqlite":
        with sqlite3.connect(engine.url.database) as db:
            db.executescript(sql)
        db.close()
    else:
        raw = engine.raw_connection()
        try:
            raw.driver_connection.autocommit = True  # the script's own BEGIN; ... COMMIT;
            raw.driver_connection.execute(sql)
        finally:
            raw.close()
    engine.dispose()
    assert _versions(empty_store_url, "wbc_alembic_version") == ["0009"]
    # PostgreSQL: dropped once empty, as opening the store does; elsewhere the empty table is left (docs/review.md)
    assert _versions(empty_store_url, "alembic_version") == (None if engine.dialect.name == "postgresql" else [])
    monkeypatch.setattr("alembic.command.upgrade", lambda *a, **k: pytest.fail("opened store was migrated again"))
    s = CaseStore.open(empty_store_url)
    assert s.case_document("old")["created_by"] == "x"
    s.close()


def test_a_0006_store_gains_the_counted_classes_and_its_cases_count_as_before(empty_store_url: str, fields,
                                                                             classifier) -> None:  # noqa: F811
    """Migration 0007 adds ``cases.counted`` (the label set a case's differential counts; before wbc 0.31.0 a case of a
    ``--classes 5part`` server counted the menu's ig and erythroblast at 0). A case stored before keeps NULL there and
    its differential's rows, the menu's; one created afterwards on the same store counts its label set."""
    from alembic import command
    from sqlalchemy import create_engine, inspect, text

    from wbc.cases.store import alembic_config

    menu = [c for c in classifier.classes if c != "platelet"]
    url = empty_store_url
    engine = create_engine(url)
    cfg = alembic_config(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0006")
        conn.execute(text("INSERT INTO cases (id, name, created_at, created_by, model_id, segmenter_id, classes, "
                          "review_threshold, wbc_version) VALUES (1, 'by 0.30.0', '2026-12-06 03:04:05', 'x', 'm', "
                          "'s', :classes, 0.9, '0.30.0')"), {"classes": json.dumps(menu)})
        conn.execute(text("INSERT INTO fields (id, case_id, position, image, width, height, image_png, warnings) "
                          "VALUES (1, 1, 1, 'f.png', 10, 10, :png, '[]')"), {"png": b"png"})
        conn.execute(text("INSERT INTO cells VALUES (1, 1, 1, 1, 0, 0, 5, 5, '[]', '[]', :png, 'neutrophil', 0.7, "
                          "TRUE, '[]', '{}', FALSE, NULL, NULL, NULL)"), {"png": b"png"})
        if engine.dialect.name == "postgresql":  # rows given their ids: PostgreSQL's id sequences move on only by use
            for table in ("cases", "fields", "cells"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 1)"))
    engine.dispose()

    store = CaseStore.open(url)
    assert "counted" in {c["name"] for c in inspect(store.engine).get_columns("cases")}
    old = store.case_document("by 0.30.0")
    assert old["counted"] is None and old["classes"] == menu
    assert [r["class"] for r in old["differential"]["rows"]] == menu  # as before: nothing is claimed for it
    assert [r["class"] for r in store.tallies(1)["differential"]["rows"]] == menu
    clf5 = classifier.with_classes("5part")
    rgb = fields[0][1]
    five = create_case_from_fields(store, "five-part", [("f.png", rgb, analyze_image(rgb, clf5, ClassicalSegmenter()))],
                                   clf5)
    doc = store.case_document(five)
    assert doc["counted"] == ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"] == [
        r["class"] for r in doc["differential"]["rows"]]
    assert doc["classes"] == menu  # the reviewer's menu is the model's
    store.close()


def test_control_characters_in_names_are_refused(empty_store_url: str, fields, classifier) -> None:  # noqa: F811
    """A NUL in a user name, case name or note (a JSON body's "\\u0000") was a 500 on PostgreSQL (psycopg refuses it),
    after every field of a new case was analysed, and stored as it was on SQLite. Names with a control character are
    refused on both (422 over HTTP); a note keeps its text without the NUL."""
    s = CaseStore.open(empty_store_url)
    cid = create_case_from_fields(s, "S-1", fields[:1], classifier)
    cell = s.case_document(cid)["cells"][0]
    for bad in ("A\x00Tech", "A\x1b[31m"):
        with pytest.raises(CaseError, match="user name holds a control character"):
            s.reclassify(cid, cell["id"], NOT_WBC, bad)
        with pytest.raises(CaseError, match="user name holds a control character"):
            s.sign_off(cid, bad)
        with pytest.raises(CaseError, match="case name holds a control character"):
            create_case_from_fields(s, f"S-2{bad}", fields[:1], classifier)
        with pytest.raises(CaseError, match="user name holds a control character"):
            create_case_from_fields(s, "S-3", fields[:1], classifier, created_by=bad)
    s.reclassify(cid, cell["id"], NOT_WBC, "A Tech", note="see\x00 slide 2\nagain")
    doc = s.case_document(cid)
    assert doc["corrections"][-1]["note"] == "see slide 2\nagain" and [c.name for c in s.list_cases()] == ["S-1"]
    s.close()


def test_round_trip_audit_trail_and_sign_off(tmp_path: Path, fields, classifier) -> None:  # noqa: F811
    path = tmp_path / "cases.sqlite"
    store = CaseStore.open(path)
    cid = create_case_from_fields(store, "  Sample  42 ", fields, classifier, segmenter_id="classical",
                                  created_by="analyser")
    store.close()

    store = CaseStore.open(path)  # a fresh engine: everything comes back from the file
    doc = store.case_document("Sample 42")
    assert doc["id"] == cid and doc["name"] == "Sample 42" and doc["model_id"] == classifier.model_id
    assert [f["image"] for f in doc["fields"]] == ["field 1.png", "field 2.png", "field 3.png"]
    n = sum(len(r.cells) for _, _, r in fields)
    n_wbc = sum(c.prediction.label not in PER_100_WBC for _, _, r in fields for c in r.cells)  # NRBCs: per 100 WBCs
    assert doc["n_cells"] == n and doc["differential"]["total"] == n_wbc and not doc["corrections"]
    first = fields[0][2].cells[0]
    c0 = doc["cells"][0]
    assert c0["model_label"] == first.prediction.label and c0["label"] == c0["model_label"]
    assert c0["model_confidence"] == pytest.approx(first.prediction.confidence, abs=1e-4)
    assert c0["box"] == [int(v) for v in first.box] and c0["outline"] and not c0["reviewed"]
    crop = store.crop_png(cid, c0["id"])
    assert crop.startswith(b"\x89PNG")

    a, b = doc["cells"][0], doc["cells"][1]
    new_a = other_label(doc, a)
    store.reclassify(cid, a["id"], new_a, "A. Tech")
    store.reclassify(cid, a["id"], NOT_WBC, "B. Second", note="debris")
    store.reclassify(cid, b["id"], b["model_label"], "A. Tech")  # a confirmation
    with pytest.raises(CaseError, match="not one of"):
        store.reclassify(cid, a["id"], "giraffe", "A. Tech")
    with pytest.raises(CaseError, match="user name"):
        store.reclassify(cid, a["id"], UNIDENTIFIABLE, "  ")
    with pytest.raises(CaseNotFoundError):
        store.reclassify(cid, 10_000, UNIDENTIFIABLE, "A. Tech")

    doc = store.case_document(cid)
    ca = next(c for c in doc["cells"] if c["id"] == a["id"])
    assert ca["label"] == NOT_WBC and ca["model_label"] == a["model_label"]  # the model's call is kept
    assert ca["reviewed_by"] == "B. Second" and ca["changed"]
    trail = [(r["cell_id"], r["old_label"], r["new_label"], r["user"]) for r in doc["corrections"]]
    assert trail == [(a["id"], a["model_label"], new_a, "A. Tech"), (a["id"], new_a, NOT_WBC, "B. Second"),
                     (b["id"], b["model_label"], b["model_label"], "A. Tech")]
    assert doc["differential"]["total"] == n_wbc - (a["model_label"] not in PER_100_WBC)
    assert doc["differential"]["excluded"][NOT_WBC] == 1 and doc["model_differential"]["total"] == n_wbc
    assert doc["n_reviewed"] == 2 and doc["n_changed"] == 1

    signed = store.sign_off(cid, "B. Second")
    assert signed["status"] == "signed off" and signed["signed_by"] == "B. Second" and signed["signed_at"]
    for action in (lambda: store.reclassify(cid, b["id"], UNIDENTIFIABLE, "A. Tech"),
                   lambda: store.sign_off(cid, "A. Tech"),
                   lambda: store.add_field(cid, fields[0][1], fields[0][2], np.zeros((0, 8, 8, 3), np.uint8))):
        with pytest.raises(CaseSignedError, match="read-only"):
            action()
    assert len(store.case_document(cid)["corrections"]) == 3  # nothing was appended by the refused edits
    [summary] = store.list_cases()
    assert (summary.name, summary.status, summary.n_fields, summary.n_cells, summary.n_changed) == (
        "Sample 42", "signed off", 3, n, 1)
    store.close()


def test_names_are_unique_and_required(store: CaseStore, fields, classifier) -> None:  # noqa: F811
    create_case_from_fields(store, "A", fields[:1], classifier)
    with pytest.raises(CaseError, match="already exists"):
        create_case_from_fields(store, "A", fields[:1], classifier)
    with pytest.raises(CaseError, match="needs a name"):
        store.create_case("   ", classifier.classes)
    with pytest.raises(CaseNotFoundError):
        store.case_document("B")


def test_export_feeds_the_adapt_loader(store: CaseStore, fields, classifier, tmp_path: Path) -> None:  # noqa: F811
    from wbc.adapt import load_labelled_cells
    from wbc.data import load_dataset

    cid = create_case_from_fields(store, "signed", fields, classifier)
    open_id = create_case_from_fields(store, "still open", fields[:1], classifier)
    doc = store.case_document(cid)
    a, b, _c = doc["cells"][:3]
    store.reclassify(cid, a["id"], other_label(doc, a), "tech")
    store.reclassify(cid, b["id"], UNIDENTIFIABLE, "tech")
    store.sign_off(cid, "tech")

    out = tmp_path / "export"
    summary = export_cases(store, out, include_accepted=True)
    assert summary.cases == ["signed"] and summary.skipped_open == ["still open"]
    assert summary.n_cells == doc["n_cells"] - 1 and summary.n_excluded == 1
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert len(rows) == summary.n_cells
    by_cell = {int(r["cell_id"]): r for r in rows}
    assert by_cell[a["id"]]["label"] == other_label(doc, a) and by_cell[a["id"]]["changed"] == "1"
    assert by_cell[a["id"]]["model_label"] == a["model_label"] and b["id"] not in by_cell
    for r in rows:  # <class>/<image>, the label is the folder
        assert r["path"].split("/")[0] == r["label"] and (out / r["path"]).is_file()

    size = int(classifier.info.input_size)
    for source in (out, out / "manifest.csv"):  # the folder and the manifest, as `wbc adapt --data` reads them
        cells, labels, _names, skipped = load_labelled_cells(source, size)
        assert cells.shape == (summary.n_cells, size, size, 3) and not skipped
        assert sorted(labels) == sorted(r["label"] for r in rows)
    assert len(load_dataset(out).samples) == summary.n_cells

    listed = rows[0]["path"]  # a re-export replaces its own earlier folder ...
    (out / "stray.txt").write_text("x")  # ... but not a file it did not write (since wbc 0.35.0)
    with pytest.raises(CaseError, match=re.escape("holds stray.txt, which `wbc cases export` did not write")):
        export_cases(store, out, cases=[cid, open_id], include_open=True, changed_only=True)
    assert (out / "stray.txt").is_file() and (out / listed).is_file()
    (out / "stray.txt").unlink()
    again = export_cases(store, out, cases=[cid, open_id], include_open=True, changed_only=True)
    assert again.n_cells == 1 + 0 and len(list(csv.DictReader((out / "manifest.csv").open()))) == 1
    other = tmp_path / "not_ours"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(CaseError, match="not empty"):
        export_cases(store, other)


def test_export_through_a_link_replaces_the_folder_it_points_to(store: CaseStore, tmp_path: Path) -> None:
    """``wbc cases export latest_export`` with ``latest_export -> share/export_2026`` renamed the link aside, put a
    folder in its place and left a ``.latest_export.old`` link: the shared folder kept the earlier export. Through a
    link the folder it points to is replaced (as a file through a link, :func:`wbc.io.output_target`)."""
    (tmp_path / "share").mkdir()
    export_cases(store, tmp_path / "share" / "export_2026")  # an earlier export, in the shared folder
    (tmp_path / "share" / "export_2026" / "earlier.txt").write_text("the earlier export's\n")
    with (tmp_path / "share" / "export_2026" / "manifest.csv").open("a") as f:  # listed: the export's to replace
        f.write("earlier.txt,neutrophil,,-1,\n")
    link = tmp_path / "latest_export"
    link.symlink_to("share/export_2026")
    summary = export_cases(store, link)
    assert summary.output == str(link)
    assert link.is_symlink() and (tmp_path / "share" / "export_2026" / MARKER).is_file()
    assert not (tmp_path / "share" / "export_2026" / "earlier.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("cases.sqlite")) == [
        "latest_export", "share"]
    assert [p.name for p in (tmp_path / "share").iterdir()] == ["export_2026"]


def test_a_re_export_never_removes_the_case_store_or_a_user_s_files(tmp_path: Path, fields, classifier) -> None:  # noqa: F811
    """An earlier export's folder was replaced whole: the case store kept in it (``wbc cases export corrections
    --store corrections/cases.sqlite``) was deleted with every case, sign-off and correction, and the command said it
    had exported. Refused in one line, and so is a marked folder holding anything the export did not write."""
    from typer.testing import CliRunner

    from wbc.cli import app

    export_cases(CaseStore.open(tmp_path / "first.sqlite"), tmp_path / "corrections")  # an earlier export
    db = tmp_path / "corrections" / "cases.sqlite"
    store = CaseStore.open(db)  # a store later kept in it
    cid = create_case_from_fields(store, "S-1", fields[:1], classifier)
    store.sign_off(cid, "tech")
    before = sorted(p.name for p in db.parent.iterdir())
    with pytest.raises(CaseError, match=re.escape(f"holds the case store {db}")):
        export_cases(store, tmp_path / "corrections")
    res = CliRunner().invoke(app, ["cases", "export", str(db.parent), "--store", str(db)])
    assert res.exit_code == 1 and "holds the case store" in str(res.exception)
    assert sorted(p.name for p in db.parent.iterdir()) == before and db.is_file()
    assert [c.name for c in store.list_cases()] == ["S-1"]

    out = tmp_path / "export"  # a user's file beside an earlier export's crops, at any depth
    summary = export_cases(store, out, include_accepted=True)
    crop = Path(next(csv.DictReader((out / "manifest.csv").open()))["path"])
    (out / crop.parent / "notes").mkdir()
    (out / crop.parent / "notes" / "mine.txt").write_text("x")
    with pytest.raises(CaseError, match=re.escape(f"{out}: holds {crop.parent}/notes, which")):
        export_cases(store, out, include_accepted=True)
    assert (out / crop.parent / "notes" / "mine.txt").is_file() and (out / crop).is_file()
    (out / crop.parent / "notes" / "mine.txt").unlink()
    (out / crop.parent / "notes").rmdir()
    assert export_cases(store, out, include_accepted=True).n_cells == summary.n_cells


def test_a_re_export_removes_a_file_browser_s_files(tmp_path: Path, fields, classifier) -> None:  # noqa: F811
    """A lab scientist looked at an export's crops in Finder or Explorer, which left ``.DS_Store`` / ``Thumbs.db`` in
    it: the re-export was refused over a file they never made. A file browser's files go with the earlier export (and
    do not make a new folder "not empty"); a user's file is still refused."""
    from typer.testing import CliRunner

    from wbc.cli import app

    store = CaseStore.open(tmp_path / "cases.sqlite")
    cid = create_case_from_fields(store, "S-1", fields[:1], classifier)
    store.sign_off(cid, "tech")
    out = tmp_path / "export"
    out.mkdir()
    (out / ".DS_Store").write_bytes(b"\0")  # the folder made in Finder
    n = export_cases(store, out, include_accepted=True).n_cells
    crop = Path(next(csv.DictReader((out / "manifest.csv").open()))["path"])
    litter = [out / ".DS_Store", out / crop.parent / "Thumbs.db", out / crop.parent / "desktop.ini",
              out / crop.parent / f"._{crop.name}", out / ".directory"]
    for p in litter:
        p.write_bytes(b"\0")
    (out / "manifest.csv").write_text((out / "manifest.csv").read_text() + "\n")  # to tell it was rewritten
    res = CliRunner().invoke(app, ["cases", "export", str(out), "--store", str(tmp_path / "cases.sqlite"),
                                   "--include-accepted"])
    assert res.exit_code == 0, res.output
    assert not any(p.exists() for p in litter)
    assert not (out / "manifest.csv").read_text().endswith("\n\n")
    assert len(list(csv.DictReader((out / "manifest.csv").open()))) == n and (out / crop).is_file()
    (out / "notes.txt").write_text("x")
    with pytest.raises(CaseError, match=re.escape("holds notes.txt, which `wbc cases export` did not write")):
        export_cases(store, out, include_accepted=True)
    store.close()


def test_export_into_the_current_folder_is_one_line(store: CaseStore, tmp_path: Path, monkeypatch) -> None:
    """`wbc cases export .` was a ValueError traceback ("PosixPath('.') has an empty name"): the export is written
    beside its folder and swapped in, which the current folder cannot be without leaving the shell in a removed
    folder. Refused in one line; a folder named relative to the current one still works."""
    from typer.testing import CliRunner

    from wbc.cli import app

    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for out in (".", str(here), ".."):
        with pytest.raises(CaseError, match="write the export to a folder other than the current one"):
            export_cases(store, out)
    res = CliRunner().invoke(app, ["cases", "export", ".", "--store", str(tmp_path / "cases.sqlite")])
    assert res.exit_code == 1 and "other than the current one" in str(res.exception)
    assert export_cases(store, "sub").output and (here / "sub" / "manifest.csv").is_file()
    assert sorted(p.name for p in here.iterdir()) == ["sub"]


def test_field_colour_calibration_is_kept_and_crops_keep_the_slides_colours(store: CaseStore, classifier) -> None:  # noqa: F811
    """A field calibrated on its red cells before classifying says so in the store, the API document and the
    report; its stored crops are the slide's own colours (what the reviewer judges, what `wbc adapt` trains on),
    not the calibrated ones the network read."""
    import cv2

    from wbc.analyze import calibrate_field
    from wbc.cases.report import render_html
    from wbc.crops import cell_fraction_of, crop_cells

    if classifier.red_cell_target() is None:
        pytest.skip("the shipped model (with its red-cell colour reference) is needed")
    rgb, *_ = synthetic_smear(n_wbc=3, seed=4)
    # another lab's lamp and stain: a field the analysis calibrates
    tinted = np.clip(rgb.astype(np.float32) * np.array([0.85, 1.0, 1.1], np.float32), 0, 255).astype(np.uint8)
    res = analyze_image(tinted, classifier, ClassicalSegmenter(), name="tinted.png")
    other = tinted.copy()
    other[0, 0] ^= 1  # another field: identical pixels are one image, refused twice in a case (since wbc 0.33.0)
    plain = analyze_image(other, classifier.with_colour_calibration(False), ClassicalSegmenter(), name="plain.png")
    assert res.calibration is not None and plain.calibration is None and res.cells
    cid = create_case_from_fields(store, "calibrated", [("tinted.png", tinted, res), ("plain.png", other, plain)],
                                  classifier)
    doc = store.case_document(cid)
    assert doc["fields"][0]["colour_calibration"] == res.calibration
    assert doc["fields"][1]["colour_calibration"] is None

    size, fraction = classifier.info.input_size, cell_fraction_of(classifier)
    own = crop_cells(tinted, res.cells, size, fraction)
    seen = crop_cells(calibrate_field(tinted, res.cells, classifier)[0], res.cells, size, fraction)
    c0 = next(c for c in doc["cells"] if c["field"] == 1)
    stored = cv2.cvtColor(cv2.imdecode(np.frombuffer(store.crop_png(cid, c0["id"]), np.uint8), cv2.IMREAD_COLOR),
                          cv2.COLOR_BGR2RGB)
    assert np.array_equal(stored, own[0]) and not np.array_equal(stored, seen[0])
    page = render_html(store, cid)
    assert "1 of 2 field(s) calibrated on their own red cells before classifying" in page


def test_reports_html_and_pdf(store: CaseStore, fields, classifier) -> None:  # noqa: F811
    from wbc.cases.report import plain_summary, render_html, render_pdf

    cid = create_case_from_fields(store, "<script>alert(1)</script>", fields, classifier)
    doc = store.case_document(cid)
    cell = doc["cells"][0]
    store.reclassify(cid, cell["id"], other_label(doc, cell), "<b>Eve</b>")
    draft = render_html(store, cid)
    assert "DRAFT" in draft and "<script>alert(1)" not in draft and "&lt;script&gt;" in draft
    store.sign_off(cid, "<b>Eve</b>")
    page = render_html(store, cid)
    assert "DRAFT" not in page and "&lt;b&gt;Eve&lt;/b&gt;" in page and "<b>Eve" not in page
    assert doc["model_id"] in page and page.count("data:image/png;base64,") >= 1
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page  # self-contained
    words = " ".join(plain_summary(store.case_document(cid)))
    assert "corrected 1 of" in words and "not a diagnosis" in words
    pdf = render_pdf(store, cid)
    assert pdf.startswith(b"%PDF") and len(pdf) > 2000


def test_cli_create_list_show_report_export(tmp_path: Path, model_path: Path) -> None:  # noqa: F811
    import json

    import cv2
    from typer.testing import CliRunner

    from wbc.cli import app

    for seed in (4, 5):
        cv2.imwrite(str(tmp_path / f"f{seed}.png"), synthetic_smear(n_wbc=2, seed=seed)[0][:, :, ::-1])
    store = str(tmp_path / "store.sqlite")
    run = CliRunner().invoke
    res = run(app, ["cases", "list", "--store", store])
    assert res.exit_code == 1 and "no case store" in str(res.exception)  # reading never creates a store
    res = run(app, ["cases", "create", "[red]x[/red]", str(tmp_path / "f4.png"), str(tmp_path / "f5.png"),
                    "--store", store, "--model", str(model_path), "--segmenter", "classical", "--user", "me"])
    assert res.exit_code == 0, res.output
    res = run(app, ["cases", "list", "--store", store])
    assert res.exit_code == 0 and "[red]x[/red]" in res.output  # user text is printed, not read as markup
    doc = json.loads(run(app, ["cases", "show", "1", "--store", store, "--json"]).stdout)
    assert doc["name"] == "[red]x[/red]" and len(doc["fields"]) == 2 and doc["created_by"] == "me"

    s = CaseStore.open(store)
    cell = doc["cells"][0]
    s.reclassify(1, cell["id"], other_label(doc, cell), "me")
    s.close()
    res = run(app, ["cases", "report", "1", "--store", store, "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 0 and "DRAFT" in (tmp_path / "r.html").read_text()
    res = run(app, ["cases", "export", str(tmp_path / "none"), "--store", store])
    assert res.exit_code == 0 and "not signed off" in res.output
    res = run(app, ["cases", "export", str(tmp_path / "out"), "--store", store, "--include-open"])
    assert res.exit_code == 0 and "review at least 3 more" in res.output  # 1 cell: wbc adapt would refuse it
    assert f"{doc['n_cells'] - 1} cell(s) nobody reviewed left out" in " ".join(res.output.split())
    rows = list(csv.DictReader((tmp_path / "out" / "manifest.csv").open()))
    assert [(int(r["cell_id"]), r["label_source"], r["reviewer"]) for r in rows] == [(cell["id"], "reviewed", "me")]
    # the model whose call model_label is (wbc 0.34.0): `wbc adapt` scores "before" as those calls
    assert [(r["model_label"], r["model_id"]) for r in rows] == [(cell["model_label"], doc["model_id"])]
    assert doc["model_id"]


def test_cases_create_names_the_files_it_leaves_out(tmp_path: Path, model_path: Path) -> None:  # noqa: F811
    """`wbc analyze` names a link to a missing image and a phone's HEIC; `wbc cases create` dropped both in silence,
    and the case was created and signed without those fields."""
    import cv2
    from typer.testing import CliRunner

    from wbc.cli import app

    d = tmp_path / "fields"
    d.mkdir()
    cv2.imwrite(str(d / "a.png"), synthetic_smear(n_wbc=2, seed=4)[0][:, :, ::-1])
    (d / "link.png").symlink_to(tmp_path / "gone.png")
    (d / "phone.heic").write_bytes(b"x")
    res = CliRunner().invoke(app, ["cases", "create", "S-1", str(d), "--store", str(tmp_path / "c.sqlite"),
                                   "--model", str(model_path), "--segmenter", "classical"])
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and "link.png: link to a missing file" in out and "(.heic 1)" in out, out


def test_cases_create_leaves_out_wbc_s_annotated_pngs_as_analyze_does(tmp_path: Path, model_path: Path) -> None:  # noqa: F811
    """`wbc analyze slide -o slide/results`, then `wbc cases create S slide`: the annotated copies under slide/results
    are wbc's drawings of the fields. `wbc analyze` leaves them out (wbc.batch.drop_annotated_fields); `wbc cases
    create` analysed them as fields, counting every cell twice and "cells" in the drawn labels (before wbc 0.36.0).
    A drawing named as a file is taken, as `wbc analyze` takes it; one alone in its folders is refused in one line."""
    import cv2
    from typer.testing import CliRunner

    from wbc.batch import tag_annotated
    from wbc.cli import app

    slide = tmp_path / "slide"
    (slide / "results").mkdir(parents=True)
    bgr = synthetic_smear(n_wbc=2, seed=5)[0][:, :, ::-1]
    cv2.imwrite(str(slide / "field.png"), bgr)
    drawn = cv2.imencode(".png", cv2.rectangle(bgr.copy(), (5, 5), (60, 60), (0, 0, 255), 2))[1].tobytes()
    (slide / "results" / "field.png").write_bytes(tag_annotated(drawn))  # as wbc analyze writes it
    store = tmp_path / "store"
    run = CliRunner().invoke
    opts = ["--store", f"{store}/", "--model", str(model_path), "--segmenter", "classical"]
    res = run(app, ["cases", "create", "S-1", str(slide), *opts])
    assert res.exit_code == 0, res.output
    assert [f["image"] for f in CaseStore.open(store).case_document("S-1")["fields"]] == ["field.png"]
    out = " ".join(res.output.split())
    assert f"left out 1 image(s) in output folders of wbc ({slide / 'results'}/): annotated results" in out, out
    res = run(app, ["cases", "create", "S-2", str(slide / "results"), *opts])
    assert res.exit_code == 1 and str(res.exception) == (
        f"every image found (1) is in an output folder of wbc ({slide / 'results'}): annotated results, not smear "
        "fields"), res.exception
    res = run(app, ["cases", "create", "S-3", str(slide / "results" / "field.png"), *opts])  # asked for by name
    assert res.exit_code == 0, res.output


def test_cases_create_takes_the_analysis_options_of_wbc_analyze(tmp_path: Path, model_path: Path) -> None:  # noqa: F811
    """`wbc cases create` had none of `wbc analyze`'s analysis options: a lab that analysed with --pixel-size or
    --classes 5part got other cells and counts in the case it signed, and nothing said so (before wbc 0.36.0). The
    case gives what `wbc analyze` gives with the same options, records them, and its report and `show` name them."""
    from html import unescape

    import cv2
    from typer.testing import CliRunner

    from wbc.cases.report import render_html
    from wbc.cli import app

    d = tmp_path / "fields"
    d.mkdir()
    for seed in (4, 5):
        cv2.imwrite(str(d / f"f{seed}.png"), synthetic_smear(n_wbc=3, seed=seed)[0][:, :, ::-1])
    opts = ["--model", str(model_path), "--segmenter", "classical", "--pixel-size", "0.2", "--classes", "5part",
            "--tta", "2", "--no-colour-calibration"]
    run = CliRunner().invoke
    res = run(app, ["analyze", str(d), "-o", str(tmp_path / "out"), "--no-draw", "--no-report", *opts])
    assert res.exit_code == 0, res.output
    analysed = {f"f{seed}.png": [c["label"] for c in json.loads((tmp_path / "out" / f"f{seed}.json").read_text())
                                 ["cells"]] for seed in (4, 5)}
    store = str(tmp_path / "c.sqlite")
    res = run(app, ["cases", "create", "S-1", str(d), "--store", store, *opts])
    assert res.exit_code == 0, res.output
    doc = CaseStore.open(store).case_document("S-1")
    made = {f["image"]: [c["model_label"] for c in doc["cells"] if c["field_id"] == f["id"]] for f in doc["fields"]}
    assert made == analysed and sum(map(len, made.values())) >= 2
    five = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]  # in the model's order
    assert doc["settings"] == {"classes": five, "tta": 2, "colour_calibration": False, "pixel_size": 0.2}
    assert doc["counted"] == five
    said = ("answered among 5 classes only (basophil, eosinophil, lymphocyte, monocyte, neutrophil); each cell's "
            "answer averaged over 2 flips/rotations; pixel size 0.2 µm (given)")
    assert said in unescape(render_html(CaseStore.open(store), "S-1")) and said in " ".join(res.output.split())
    res = run(app, ["cases", "show", "S-1", "--store", store])
    assert said in " ".join(res.output.split()), res.output
    res = run(app, ["cases", "create", "S-2", str(d), "--store", store, "--model", str(model_path),
                    "--segmenter", "classical"])
    assert res.exit_code == 0, res.output
    doc = CaseStore.open(store).case_document("S-2")
    assert doc["settings"]["classes"] == [] and doc["settings"]["pixel_size"] is None
    assert "answered among every class of the model" in " ".join(res.output.split())
    assert "pixel size measured from the red cells" in " ".join(res.output.split())


def test_cases_create_says_what_wbc_analyze_says_of_the_cells(tmp_path: Path) -> None:
    """`wbc analyze` on the example fields says that a cell is most likely a platelet, counted in the class shown, and
    that every cell looks unlike the training data, with the advice to adapt the model; `wbc cases create` on the same
    fields printed neither: they were in the case alone (before wbc 0.36.0)."""
    from typer.testing import CliRunner

    from wbc.cli import app
    from wbc.examples import EXAMPLES_DIR

    run = CliRunner().invoke
    res = run(app, ["analyze", str(EXAMPLES_DIR), "-o", str(tmp_path / "out"), "--no-draw", "--no-report"])
    assert res.exit_code == 0, res.output
    analysed = " ".join(res.output.split())
    said = [re.search(r"\d+ of \d+ cells are most likely a class [^:]*: each is counted in the class shown", analysed),
            re.search(r"\d+ of \d+ cells \(\d+%\) look unlike the model's training data[^;]*; [^`]*`wbc adapt`",
                      analysed)]
    assert all(said), analysed
    res = run(app, ["cases", "create", "S-1", str(EXAMPLES_DIR), "--store", str(tmp_path / "c.sqlite")])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    for m in said:
        assert m.group(0) in out, (m.group(0), out)


def test_cases_create_names_every_unreadable_field_by_its_path_and_checks_the_name_first(
        tmp_path: Path, model_path: Path) -> None:  # noqa: F811
    """`wbc cases create` stopped at the first field it could not analyse, named it by its base name only (which
    day's field1.jpg?), and refused a name the store refuses, or one taken, only after analysing every field."""
    import cv2
    from typer.testing import CliRunner

    from wbc.cli import app

    d = tmp_path / "fields"
    (d / "day2").mkdir(parents=True)
    cv2.imwrite(str(d / "a.png"), synthetic_smear(n_wbc=2, seed=4)[0][:, :, ::-1])
    (d / "b.jpg").write_bytes((d / "a.png").read_bytes()[:300])
    cv2.imwrite(str(d / "day2" / "a.png"), np.full((200, 200, 3), 128, np.uint8))  # one flat colour
    store = str(tmp_path / "c.sqlite")
    run = CliRunner().invoke
    res = run(app, ["cases", "create", "S-1", str(d), "--store", store, "--model", str(model_path),
                    "--segmenter", "classical"])
    said = " ".join(res.output.split()) + " " + str(res.exception)
    assert res.exit_code == 1 and f"unreadable: {d / 'b.jpg'}: " in said, said
    assert str(res.exception).startswith(f"{d / 'day2' / 'a.png'}: ") and str(res.exception).endswith(
        "2 of 3 field(s) could not be analysed: no case was created"), res.exception
    assert CaseStore.open(store).list_cases() == []
    res = run(app, ["cases", "create", "S-1", str(d / "a.png"), "--store", store, "--model", str(model_path),
                    "--segmenter", "classical"])
    assert res.exit_code == 0, res.output
    for name, said in (("#5", "a case cannot be named '#5'"), ("S-1", f"a case named 'S-1' already exists in {store}")):
        res = run(app, ["cases", "create", name, str(d / "a.png"), "--store", store,
                        "--model", str(tmp_path / "no_model.onnx")])  # refused before the model is even loaded
        assert isinstance(res.exception, WbcError) and str(res.exception).startswith(said), res.exception


def test_a_store_named_as_a_new_folder_is_a_folder(tmp_path: Path) -> None:
    """``--store new_folder/`` (a folder not made yet) stored the cases in a SQLite file named new_folder."""
    assert store_url(f"{tmp_path / 'new'}/") == f"sqlite:///{tmp_path.resolve()}/new/cases.sqlite"
    s = CaseStore.open(f"{tmp_path / 'new'}/")
    s.create_case("S-1", ["lymphocyte"])
    s.close()
    assert (tmp_path / "new" / "cases.sqlite").is_file()


def test_a_sign_off_waits_for_a_label_being_written(tmp_path: Path, fields, classifier, monkeypatch) -> None:  # noqa: F811
    """On SQLite the checks ran outside any transaction: a second reviewer could sign the case off between the first
    one's "still open?" check and their write, leaving a correction after the sign-off (wbc 0.26.0)."""
    import threading
    import time

    a, b = CaseStore.open(tmp_path / "c.sqlite"), CaseStore.open(tmp_path / "c.sqlite")
    cid = create_case_from_fields(a, "S-1", fields[:1], classifier)
    cell = a.case_document(cid)["cells"][0]
    check, racing = CaseStore._check_open, []

    def check_then_race(c) -> None:
        check(c)
        if not racing:  # A has checked; B signs off now, before A writes
            racing.append(threading.Thread(target=b.sign_off, args=(cid, "B")))
            racing[0].start()
            time.sleep(0.5)
            waited.append(racing[0].is_alive())  # B must wait for A's transaction

    waited: list[bool] = []
    monkeypatch.setattr(CaseStore, "_check_open", staticmethod(check_then_race))
    a.reclassify(cid, cell["id"], NOT_WBC, "A")
    racing[0].join()
    doc = a.case_document(cid)
    assert waited == [True] and doc["signed_by"] == "B" and len(doc["corrections"]) == 1
    a.close()
    b.close()


def test_a_change_by_name_waiting_on_a_sign_off_is_refused(empty_store_url: str, fields, classifier) -> None:  # noqa: F811
    """A case named (not numbered) was first looked up without a lock, then locked (``FOR UPDATE``); on PostgreSQL
    the ORM kept what it had read before the wait, so a relabel or a second sign-off waiting on a sign-off went
    through after it (the signed numbers no longer matched the labels; the first signer's name was overwritten)."""
    import threading

    from sqlalchemy import create_engine, text

    store = CaseStore.open(empty_store_url)
    other = create_engine(empty_store_url)
    try:
        for action in ("reclassify", "sign_off"):
            name = f"S-{action}"
            cid = create_case_from_fields(store, name, fields[:1], classifier)
            cell = store.case_document(cid)["cells"][0]
            conn = other.connect()  # another reviewer's sign-off, holding the case's lock (SQLite: the store's)
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT id FROM cases WHERE id = :i FOR UPDATE"), {"i": cid})
            conn.execute(text("UPDATE cases SET signed_by = 'Dr. First', signed_at = '2026-12-07 08:00:00' "
                              "WHERE id = :i"), {"i": cid})
            threading.Timer(1.0, conn.commit).start()  # committed while the call below waits for the lock
            with pytest.raises(CaseSignedError, match=r"signed off by Dr\. First"):
                if action == "reclassify":
                    store.reclassify(name, cell["id"], NOT_WBC, "Late Editor")
                else:
                    store.sign_off(name, "Second Signer")
            conn.close()
            doc = store.case_document(cid)
            assert doc["corrections"] == [] and doc["signed_by"] == "Dr. First", doc["signed_by"]
    finally:
        other.dispose()
        store.close()


@pytest.mark.parametrize("empty_store_url", ["postgresql"], indirect=True)
def test_a_role_without_the_grant_is_one_line(empty_store_url: str, fields, classifier) -> None:  # noqa: F811
    """A PostgreSQL role its DBA gave no INSERT or UPDATE (a reviewers' role with SELECT only): "permission denied" is
    a ProgrammingError, which the store let through: `wbc cases create` ended in a 100-line traceback, a label over
    HTTP in a 500. It is a :class:`CaseStoreUnavailableError` (503 over HTTP) naming the grant the store needs."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from typer.testing import CliRunner

    from wbc.cases.store import CaseStoreUnavailableError
    from wbc.cli import app

    store = CaseStore.open(empty_store_url)
    cid = create_case_from_fields(store, "S-1", fields[:1], classifier)
    cell = store.case_document(cid)["cells"][0]
    user = make_url(empty_store_url).username
    admin = create_engine(empty_store_url)
    try:
        with admin.begin() as conn:  # the schema's own tables: search_path is the test's schema
            conn.execute(text(f'REVOKE INSERT ON cases FROM "{user}"; REVOKE UPDATE ON cells FROM "{user}"'))
        for call in (lambda: store.create_case("S-2", ["lymphocyte"]),
                     lambda: store.reclassify(cid, cell["id"], NOT_WBC, "A. Tech")):
            with pytest.raises(CaseStoreUnavailableError, match="permission denied for table") as err:
                call()
            assert "lacks a grant the store needs" in str(err.value) and "\n" not in str(err.value)
            assert "grant is missing" in err.value.detail and "wbc_test" not in err.value.detail
        with admin.begin() as conn:
            conn.execute(text(f'REVOKE SELECT ON fields FROM "{user}"'))
        res = CliRunner().invoke(app, ["cases", "list", "--store", empty_store_url])
        assert isinstance(res.exception, CaseError) and "permission denied" in str(res.exception), res.exception
    finally:
        admin.dispose()
        store.close()


def test_a_case_is_stored_whole_or_not_at_all_and_found_by_its_name_first(store: CaseStore, fields, classifier,  # noqa: F811
                                                                            tmp_path: Path) -> None:
    from wbc.cases.store import prepare_field

    good = prepare_field(*fields[0], classifier)
    bad = prepare_field(*fields[1], classifier)
    bad.crops = bad.crops[:0]  # a field that fails while the case is being created
    with pytest.raises(CaseError, match="one crop per cell"):
        create_case_from_fields(store, "0001", [good, bad], classifier)
    assert store.list_cases() == []  # no half case left behind, its name not taken
    first = create_case_from_fields(store, "S-77", [good], classifier)
    second = create_case_from_fields(store, "0001", [good], classifier)
    store.sign_off(first, "me")
    assert (store.case_id("0001"), store.case_id(str(first)), store.case_id(first)) == (second, first, first)
    with pytest.raises(CaseNotFoundError):
        store.case_id("²")  # a digit that is no ASCII digit: not found, not a ValueError
    out = export_cases(store, tmp_path / "ex", cases=[first, "S-77"], include_accepted=True)
    rows = list(csv.DictReader((tmp_path / "ex" / "manifest.csv").read_text().splitlines()))
    assert len(rows) == out.n_cells == len(good.result.cells)  # one case named twice: each cell once


def test_a_file_that_is_no_case_store_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.sqlite").write_text("not a database " * 100)
    with pytest.raises(CaseError, match="cannot open the case store"):
        CaseStore.open(tmp_path / "notes.sqlite")


def test_a_store_folder_that_cannot_be_made_is_one_line(tmp_path: Path, monkeypatch) -> None:
    """A --store under a file, or under /proc, was a FileExistsError / FileNotFoundError traceback; `wbc serve` run
    from a folder it cannot write (wanting only /classify) crashed making its default store, and now starts without
    cases, saying so in one line."""
    from wbc.cli.serve import open_cases

    (tmp_path / "f").write_text("a file")
    with pytest.raises(CaseError, match=r"cannot create its folder .*f \(a file is in the way\)"):
        CaseStore.open(tmp_path / "f" / "x.sqlite")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").write_text("a file where the default store's folder would go")
    assert open_cases(None) is None  # the default store: warned about, served without
    with pytest.raises(CaseError, match="cannot create its folder"):
        open_cases(str(tmp_path / "results" / "cases.sqlite"))  # a --store named: an error


@pytest.mark.skipif(os.name != "posix", reason="file modes")
def test_a_store_in_a_read_only_folder_names_the_folder(tmp_path: Path) -> None:
    """SQLite keeps its write-ahead log beside the store: in a read-only folder even reading failed, blaming the
    database ("attempt to write a readonly database"), and writing to a read-only store file was a traceback. The
    message now names what must be writable. Run as another user would (root's override of file modes dropped)."""
    import shutil
    import subprocess

    prefix: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("root overrides file modes, and setpriv (to drop that) is missing")
        prefix = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                  "--bounding-set=-dac_override,-dac_read_search", "--"]
    folder, ro_file = tmp_path / "archive", tmp_path / "ro.sqlite"
    for path in (folder / "cases.sqlite", ro_file):
        s = CaseStore.open(path)
        s.create_case("S-1", ["lymphocyte"])
        s.close()
    ro_file.chmod(0o444)
    folder.chmod(0o555)
    try:
        run = subprocess.run([*prefix, sys.executable, "-m", "wbc", "cases", "list", "--store", str(folder)],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1
        assert f"its folder {folder} must be writable (SQLite keeps its write-ahead log" in run.stderr
        run = subprocess.run([*prefix, sys.executable, "-c", CREATE_S2, str(ro_file)], capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0 and run.stderr == "", run.stderr
        assert run.stdout.strip().endswith("attempt to write a readonly database: the file is read-only"), run.stdout
    finally:
        folder.chmod(0o755)


#: A program that opens the store named by its argument and creates case S-2, printing a refusal's message.
CREATE_S2 = ("import sys; from wbc.cases import CaseStore, CaseError\n"
             "s = CaseStore.open(sys.argv[1])\n"
             "try: s.create_case('S-2', ['lymphocyte'])\nexcept CaseError as e: print(e)")


def as_another_user() -> list[str]:
    """The command prefix that runs a program as another user would: root's override of file modes dropped."""
    import shutil

    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("root overrides file modes, and setpriv (to drop that) is missing")
    return ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search",
            "--"]


@pytest.mark.skipif(os.name != "posix", reason="file modes")
def test_a_store_left_unwritable_by_a_read_only_look_names_its_shm(tmp_path: Path) -> None:
    """A look at a read-only store (an auditor's `wbc cases list`) leaves its -shm read-only: once the file was
    writable again every write failed "attempt to write a readonly database" with no cause named, the folder and the
    file being writable."""
    import subprocess

    prefix = as_another_user()
    store = tmp_path / "c.sqlite"
    s = CaseStore.open(store)
    s.create_case("S-1", ["lymphocyte"])
    s.close()
    for side in ("-wal", "-shm"):
        Path(f"{store}{side}").unlink(missing_ok=True)
    store.chmod(0o444)
    listed = subprocess.run([*prefix, sys.executable, "-m", "wbc", "cases", "list", "--store", str(store)],
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr  # the auditor's look
    store.chmod(0o644)  # writable again; its -shm is not
    done = subprocess.run([*prefix, sys.executable, "-c", CREATE_S2, str(store)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert ("attempt to write a readonly database: its c.sqlite-shm is not writable by this user (left so by a "
            "program that could only read the store, or by another user): make it writable, or remove it while no "
            "program uses the store") in done.stdout, done.stdout
    Path(f"{store}-shm").unlink()  # as the message says
    done = subprocess.run([*prefix, sys.executable, "-c", CREATE_S2, str(store)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout == "" and CaseStore.open(store).case_id("S-2") == 2


@pytest.mark.skipif(os.name != "posix", reason="file modes")
def test_a_read_only_store_of_an_older_wbc_says_it_must_be_upgraded(tmp_path: Path) -> None:
    """A read-only store an older wbc wrote could not even be listed ("attempt to write a readonly database: the file
    is read-only"), and nothing said that opening it upgrades it, a write."""
    import sqlite3
    import subprocess

    from alembic import command

    from wbc.cases.store import alembic_config

    prefix = as_another_user()
    old = tmp_path / "old.sqlite"
    command.upgrade(alembic_config(f"sqlite:///{old}"), "0006")  # as a wbc before 0.31.0 left it, in WAL mode
    with sqlite3.connect(old) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    old.chmod(0o444)
    listed = subprocess.run([*prefix, sys.executable, "-m", "wbc", "cases", "list", "--store", str(old)],
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 1 and len(listed.stderr.strip().splitlines()) == 1, listed.stderr
    assert ("the file is read-only; it was written by an older wbc and is upgraded when opened: open it once as a user "
            "who may write it") in listed.stderr, listed.stderr

def test_a_signed_case_reports_the_differential_that_was_signed(store: CaseStore, fields, classifier,  # noqa: F811
                                                                 monkeypatch) -> None:
    """A signed-off case's labels were frozen but its numbers were re-computed on every read by the current rules: a
    case signed with wbc 0.27.0 at 20 WBCs, 50 % neutrophils was re-printed by 0.30.0, still "signed off", as 15 WBCs,
    66.7 %. The differentials are kept at sign-off; a later wbc whose rules differ says so, naming both versions; a
    case signed off before the store kept them says its numbers are re-computed."""
    from sqlalchemy import update

    import wbc
    import wbc.counts
    from wbc.cases.report import render_html, render_pdf
    from wbc.cases.store import CaseRow

    cid = create_case_from_fields(store, "signed numbers", fields, classifier)
    old = create_case_from_fields(store, "signed before 0.31.0", fields[:1], classifier)
    signed = store.sign_off(cid, "A. Signer")
    store.sign_off(old, "A. Signer")
    with store.session(write=True) as s:  # as a case signed off before migration 0008 is stored
        s.execute(update(CaseRow).where(CaseRow.id == old).values(signed_numbers=None))
    assert signed["numbers_as_signed"] is True and signed["numbers_now"] is None

    rows = wbc.counts.differential_rows  # a later wbc counting the same calls by another rule
    monkeypatch.setattr(wbc.counts, "differential_rows",
                        lambda counts, *a, **k: rows({c: 2 * n for c, n in counts.items()}, *a, **k))
    monkeypatch.setattr(wbc, "__version__", "9.9.9")
    doc = store.case_document(cid)
    assert doc["differential"] == signed["differential"] and doc["model_differential"] == signed["model_differential"]
    assert doc["numbers_by"] == signed["numbers_by"] and doc["numbers_as_signed"] is True
    total = signed["differential"]["total"]
    assert doc["numbers_now"]["wbc_version"] == "9.9.9" and doc["numbers_now"]["differential"]["total"] == 2 * total
    html = render_html(store, cid)
    assert f">{total} white cells counted: 0 reviewed, " in html
    assert (f"as signed off, computed by wbc {signed['numbers_by']}; wbc 9.9.9 computes other numbers from the same "
            f"calls ({2 * total} white cells counted, not {total})") in html
    assert render_pdf(store, cid)[:4] == b"%PDF"
    doc = store.case_document(old)
    assert doc["numbers_as_signed"] is False and doc["numbers_now"] is None
    assert "re-computed by wbc 9.9.9 from the calls signed off" in render_html(store, old)
    assert "Numbers" not in render_html(store, create_case_from_fields(store, "open", fields[:1], classifier))


def test_the_pdf_draws_every_letter_and_the_summary_names_tied_classes(store: CaseStore, fields,
                                                                        classifier) -> None:  # noqa: F811
    """Helvetica drew Ł, Ż and Greek as black squares (ZapfDingbats) in the signed PDF; a class tied for second
    commonest was left out of the plain-words summary (wbc 0.26.0)."""
    from wbc.cases.report import plain_summary, render_pdf

    cid = create_case_from_fields(store, "Ζ-" + "x" * 90, fields, classifier)
    store.sign_off(cid, "Łukasz Żółkiewski")
    pdf = render_pdf(store, cid)
    assert b"ZapfDingbats" not in pdf and b"DejaVuSans" in pdf
    doc = store.case_document(cid)
    doc["differential"]["rows"] = [{"class": c, "count": 1, "percent": 33.3, "ci95_low": 1.0, "ci95_high": 90.0}
                                   for c in ("lymphocyte", "monocyte", "neutrophil")]
    doc["differential"]["total"] = 3
    words = " ".join(plain_summary(doc))
    assert all(f"{c}s (33 %" in words for c in ("lymphocyte", "monocyte", "neutrophil")), words


def pdf_text(pdf: bytes) -> bytes:
    """The PDF's streams as written by reportlab (ASCII85 over Flate), decoded: its pages' text operators."""
    import base64
    import re
    import zlib

    out = []
    for m in re.finditer(rb"<<(.*?)>>\s*stream\r?\n(.*?)endstream", pdf, re.S):
        head, body = m.group(1), m.group(2).strip()
        if b"ASCII85Decode" in head:
            body = base64.a85decode(body.removesuffix(b"~>"))
        out.append(zlib.decompress(body) if b"FlateDecode" in head else body)
    return b"\n".join(out)


def test_cjk_and_hangul_names_are_drawn_in_the_pdf(store: CaseStore, fields, classifier,  # noqa: F811
                                                   tmp_path: Path) -> None:
    """DejaVu Sans has no CJK ideographs, kana or Hangul: a case "患者-0142", a reviewer "김민준" and a
    signer "山田 太郎" were drawn as boxes in the signed PDF, unsaid. Their runs are set in reportlab's
    built-in CID fonts; a character no font draws is said in one warning line."""
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from typer.testing import CliRunner

    from wbc.cases.report import render_pdf
    from wbc.cli import app

    cid = create_case_from_fields(store, "患者-0142", fields[:1], classifier)
    doc = store.case_document(cid)
    store.reclassify(cid, doc["cells"][0]["id"], other_label(doc, doc["cells"][0]), "김민준")
    store.sign_off(cid, "山田 太郎")
    said: list[str] = []
    pdf = render_pdf(store, cid, said)
    text = pdf_text(pdf)
    for word, font in (("患者", "STSong-Light"), ("김민준", "HYGothic-Medium"), ("山田", "STSong-Light"),
                       ("太郎", "STSong-Light")):
        assert f"/BaseFont /{font}".encode() in pdf, font
        assert UnicodeCIDFont(font).formatForPdf(word).encode("latin-1") in text, word
    assert said == [] and b"-0142" in text and b"HeiseiKakuGo" not in pdf
    kana = create_case_from_fields(store, "やまだ-1", fields[:1], classifier)  # kana: the Japanese font
    assert b"/BaseFont /HeiseiKakuGo-W5" in render_pdf(store, kana)

    create_case_from_fields(store, "S-\U00013000", fields[:1], classifier)  # drawn by no font here
    res = CliRunner().invoke(app, ["cases", "report", "S-\U00013000", "-o", str(tmp_path / "r.pdf"),
                                   "--store", str(tmp_path / "cases.sqlite")])
    assert res.exit_code == 0 and (tmp_path / "r.pdf").is_file()
    assert "the PDF's fonts cannot draw \U00013000 (U+13000): printed as boxes" in " ".join(res.output.split())


def pdf_paragraphs(monkeypatch, store: CaseStore, case) -> str:
    """Every paragraph's text in the case's PDF (its text is compressed and set in a subset font)."""
    import reportlab.platypus

    from wbc.cases.report import render_pdf

    seen: list[str] = []
    real = reportlab.platypus.Paragraph

    def record(text, *args, **kwargs):
        seen.append(str(text))
        return real(text, *args, **kwargs)

    monkeypatch.setattr(reportlab.platypus, "Paragraph", record)
    assert render_pdf(store, case).startswith(b"%PDF")
    monkeypatch.setattr(reportlab.platypus, "Paragraph", real)
    return "\n".join(seen)


def test_the_report_says_which_cells_a_person_reviewed(store: CaseStore, fields, classifier,  # noqa: F811
                                                       monkeypatch) -> None:
    """The signed report captioned never-opened cells "confirmed" and said the signer "checked every white blood
    cell"; the reviewers who made the changes were not named (wbc 0.27.0)."""
    from wbc.cases.report import plain_summary, render_html

    cid = create_case_from_fields(store, "S-3", fields, classifier)
    doc = store.case_document(cid)
    a, b = doc["cells"][:2]
    store.reclassify(cid, a["id"], other_label(doc, a), "A. Tech")
    store.reclassify(cid, b["id"], b["model_label"], "A. Tech")  # a confirmation
    store.sign_off(cid, "Dr. B. Reviewer")
    doc = store.case_document(cid)
    n, n_flagged = doc["n_cells"], doc["n_flagged"]
    k = sum(c["model_review"] for c in (a, b))
    words = " ".join(plain_summary(doc))
    assert "checked every" not in words
    assert f"A. Tech reviewed 2 of {n} cells ({k} of {n_flagged} flagged) one by one" in words
    u = sum(c["model_review"] and not c["reviewed"] for c in doc["cells"])
    flagged = f" ({u} of them flagged by the software for review)" if u else ""
    assert (f"The other {n - 2} were not opened{flagged}: the software's calls for them were accepted at "
            "sign-off") in words
    page = render_html(store, cid)
    for text in (page, pdf_paragraphs(monkeypatch, store, cid)):
        assert "confirmed or corrected" not in text and "checked every" not in text
        assert f"2 of {n} cells ({k} of {n_flagged} flagged), by A. Tech" in text
        if b["model_review"]:
            assert "confirmed by A. Tech" in text
        assert f"final: {other_label(doc, a)} (by A. Tech)" in text
        unopened = sum(c["model_review"] and not c["reviewed"] for c in doc["cells"])
        assert unopened
        assert text.count("not opened: accepted at sign-off") == unopened
    draft = store.case_document(create_case_from_fields(store, "S-3b", fields[:1], classifier))
    assert "so far nobody has reviewed any of its" in " ".join(plain_summary(draft))


def test_the_summary_of_one_white_cell_is_singular(store: CaseStore, fields, classifier) -> None:  # noqa: F811
    """A case of one WBC read "1 white blood cell were counted" and "With 1 cells" in the signed report."""
    from wbc.cases.report import plain_summary

    cid = create_case_from_fields(store, "S-1", fields[:1], classifier)
    doc = store.case_document(cid)
    for cell in doc["cells"][1:]:
        store.reclassify(cid, cell["id"], NOT_WBC, "A. Tech")
    store.reclassify(cid, doc["cells"][0]["id"], "lymphocyte", "A. Tech")
    words = " ".join(plain_summary(store.case_document(cid)))
    assert "1 white blood cell was counted." in words and "With 1 cell, each percentage" in words, words


def test_the_same_image_is_added_to_a_case_once(tmp_path: Path, model_path: Path, store: CaseStore, fields,  # noqa: F811
                                                classifier) -> None:  # noqa: F811
    """`wbc cases create DUP same.jpg same.jpg` (or a folder and a file in it, or a copy under another name)
    analysed and counted the same cells twice (wbc 0.27.0)."""
    import json
    import shutil

    import cv2
    from typer.testing import CliRunner

    from wbc.cases.store import file_digest, prepare_field
    from wbc.cli import app

    folder = tmp_path / "smears"
    folder.mkdir()
    cv2.imwrite(str(folder / "same.png"), synthetic_smear(n_wbc=2, seed=6)[0][:, :, ::-1])
    cv2.imwrite(str(folder / "other.png"), synthetic_smear(n_wbc=2, seed=7)[0][:, :, ::-1])
    shutil.copy(folder / "same.png", tmp_path / "copy.png")
    db = str(tmp_path / "dup.sqlite")
    run = CliRunner().invoke
    res = run(app, ["cases", "create", "DUP", str(folder / "same.png"), str(folder), str(tmp_path / "copy.png"),
                    "--store", db, "--model", str(model_path), "--segmenter", "classical"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert f"{tmp_path / 'copy.png'}: the same image as {folder / 'same.png'}" in out
    assert out.count("skipped") == 2 and "DUP: 2 field(s)" in out
    doc = json.loads(run(app, ["cases", "show", "DUP", "--store", db, "--json"]).stdout)
    assert sorted(f["image"] for f in doc["fields"]) == ["other.png", "same.png"]
    assert doc["fields"][0]["sha1"] == file_digest((folder / doc["fields"][0]["image"]).read_bytes())

    # the store itself refuses a file already in the case, in one line naming both
    a = prepare_field(*fields[0], classifier, sha1="ab" * 20)
    b = prepare_field(*fields[1], classifier, sha1="ab" * 20)
    with pytest.raises(CaseError, match=r"field 2.png: the same image as field 1 \(field 1.png\) of case 'D'"):
        create_case_from_fields(store, "D", [a, b], classifier)
    cid = create_case_from_fields(store, "D", [a], classifier)
    with pytest.raises(CaseError, match="the same image as field 1"):
        store.add_field(cid, b.png, b.result, b.crops, "again.png", sha1="ab" * 20)


def test_the_python_example_records_each_file_s_sha1_and_pixels_given_twice_are_refused(
        tmp_path: Path, store: CaseStore, fields, classifier, monkeypatch) -> None:  # noqa: F811
    """docs/review.md's Python example gave fields as (name, rgb, result): no SHA-1 was stored, so its report could not
    trace a field to its file ("SHA-1 not recorded") and the same image given twice was stored and counted twice. The
    example now passes each file's SHA-1; fields given as pixels alone that are identical are refused."""
    import re

    import cv2

    from wbc.cases.store import file_digest
    from wbc.segment.classical import ClassicalSegmenter

    paths = []
    for seed in (4, 5):
        paths.append(str(tmp_path / f"f{seed}.png"))
        cv2.imwrite(paths[-1], synthetic_smear(n_wbc=2, seed=seed)[0][:, :, ::-1])
    review = (Path(__file__).parent.parent / "docs" / "review.md").read_text()
    example = re.search(r"```python\n(.*?)```", review[review.index("\nPython:\n"):], re.S)[1]
    example = example[:example.index("\n", example.index("cid = create_case_from_fields"))]  # up to the case made
    monkeypatch.chdir(tmp_path)
    scope = {"paths": paths, "clf": classifier, "seg": ClassicalSegmenter()}
    exec(example, scope)  # the documentation's own code
    doc = scope["store"].case_document(scope["cid"])
    scope["store"].close()
    assert [f["sha1"] for f in doc["fields"]] == [file_digest(Path(p).read_bytes()) for p in paths]

    _, rgb, res = fields[0]
    with pytest.raises(CaseError, match=r"copy.png: the same pixels as field 1 \(field 1.png\)"):
        create_case_from_fields(store, "S-1", [fields[0], fields[1], ("copy.png", rgb.copy(), res)], classifier)
    assert store.list_cases() == []
    assert create_case_from_fields(store, "S-1", fields[:2], classifier)  # distinct pixels: stored as before


def test_digits_that_name_one_case_and_are_another_cases_id_are_refused(tmp_path: Path, store: CaseStore, fields,
                                                                          classifier) -> None:  # noqa: F811
    """`wbc cases show 3` showed the case *named* "3" (id 4), not case 3 read from `wbc cases list`: another
    patient's report without a word (wbc 0.27.0)."""
    from typer.testing import CliRunner

    from wbc.cases import CaseAmbiguousError
    from wbc.cli import app

    one = create_case_from_fields(store, "S 2026 0143", fields[:1], classifier)
    named = create_case_from_fields(store, str(one), fields[1:2], classifier)  # named "1", id 2
    with pytest.raises(CaseAmbiguousError, match=rf"'1' is both the name of case {named} and the id of case "
                                                 rf"{one} \('S 2026 0143'\): write #{one} .*#{named} for the case"):
        store.case_id(str(one))
    assert (store.case_id(f"#{one}"), store.case_id(f" #{named} "), store.case_id(one)) == (one, named, one)
    assert (store.case_id(str(named)), store.case_id("S 2026 0143")) == (named, one)  # unambiguous: as before
    with pytest.raises(CaseNotFoundError):
        store.case_id("#99")
    with pytest.raises(CaseError, match="#ID means the case with that id"):
        create_case_from_fields(store, "#5", fields[:1], classifier)
    with pytest.raises(CaseAmbiguousError):
        export_cases(store, tmp_path / "ex", cases=[str(one)], include_open=True)

    run = CliRunner().invoke
    res = run(app, ["cases", "show", str(one), "--store", store.url])
    assert res.exit_code == 1 and "write #1" in str(res.exception)
    res = run(app, ["cases", "show", f"#{one}", "--store", store.url])
    assert res.exit_code == 0 and "S 2026 0143" in res.output


def test_digits_with_a_leading_zero_are_a_name_never_an_id(tmp_path: Path, store: CaseStore, fields,
                                                            classifier) -> None:  # noqa: F811
    """`wbc cases show 0002` or `export --case 0042` (an accession number, of a case not in this store) opened or
    exported case id 2 or 42: the docs read them as "a name first, as no id is written so", and fell back to the id,
    so a lab could export another patient's case without a word."""
    from typer.testing import CliRunner

    from wbc.cli import app

    first = create_case_from_fields(store, "S-2026-0001", fields[:1], classifier)
    second = create_case_from_fields(store, "0001", fields[1:2], classifier)  # an accession number, id 2
    assert (store.case_id("0001"), store.case_id("1"), store.case_id("2")) == (second, first, second)
    for ref in ("0002", "002"):
        with pytest.raises(CaseNotFoundError, match=rf"case '{ref}' not found in .*: write #2 for case 2, '0001'\)$"):
            store.case_id(ref)
    with pytest.raises(CaseNotFoundError, match=r"case '0042' not found in [^(]*$"):  # no case 42: nothing to hint
        store.case_id("0042")
    store.sign_off(first, "me")
    store.sign_off(second, "me")
    with pytest.raises(CaseNotFoundError):
        export_cases(store, tmp_path / "ex", cases=["002"])
    res = CliRunner().invoke(app, ["cases", "show", "002", "--store", store.url])
    assert res.exit_code == 1 and isinstance(res.exception, CaseNotFoundError), res.output


def test_case_names_are_unicode_nfc(tmp_path: Path, store: CaseStore, fields, classifier) -> None:  # noqa: F811
    """"Müller-01" typed on macOS (NFD) and on Windows (NFC) made two cases that look the same (wbc 0.27.0)."""
    import unicodedata

    from alembic import command
    from sqlalchemy import create_engine, text

    from wbc.cases.store import alembic_config

    nfc, nfd = (unicodedata.normalize(form, "Müller-01") for form in ("NFC", "NFD"))
    assert nfc != nfd
    cid = create_case_from_fields(store, nfd, fields[:1], classifier)
    assert store.case_document(cid)["name"] == nfc
    with pytest.raises(CaseError, match="already exists"):
        create_case_from_fields(store, nfc, fields[:1], classifier)
    assert store.case_id(nfd) == store.case_id(nfc) == cid

    # a store written before: its names are brought to NFC when it is opened, unless one would take another's
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = create_engine(url)
    cfg = alembic_config(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
        for i, name in enumerate((nfd, "Zoë", unicodedata.normalize("NFD", "Zoë")), start=1):
            conn.execute(text("INSERT INTO cases (id, name, created_at, created_by, model_id, segmenter_id, classes, "
                              "review_threshold) VALUES (:i, :n, '2026-01-02 03:04:05', '', '', '', '[]', 0)"),
                         {"i": i, "n": name})
    engine.dispose()
    old = CaseStore.open(tmp_path / "old.sqlite")
    assert [c.name for c in old.list_cases()] == [nfc, "Zoë", unicodedata.normalize("NFD", "Zoë")]
    assert (old.case_id(nfd), old.case_id("#2")) == (1, 2)  # "Zoë" names cases 2 and 3: refused (test below)
    old.close()


def test_export_says_where_each_label_came_from(store: CaseStore, fields, classifier, tmp_path: Path) -> None:  # noqa: F811
    """`wbc cases export` exported the model's calls for cells nobody opened as labels, with the signer as their
    "reviewer" (wbc 0.27.0): training data for `wbc adapt` presented as reviewed."""
    cid = create_case_from_fields(store, "S-10", fields, classifier)
    doc = store.case_document(cid)
    a, b = doc["cells"][:2]
    store.reclassify(cid, a["id"], other_label(doc, a), "A. Tech")
    store.reclassify(cid, b["id"], b["model_label"], "A. Tech")
    store.sign_off(cid, "Dr. B. Reviewer")
    n = doc["n_cells"]

    summary = export_cases(store, tmp_path / "reviewed")  # by default: what a person looked at
    rows = list(csv.DictReader((tmp_path / "reviewed" / "manifest.csv").open()))
    assert (summary.n_cells, summary.n_unreviewed, summary.n_accepted) == (2, n - 2, 0)
    assert {(int(r["cell_id"]), r["label_source"], r["reviewer"], r["signed_by"]) for r in rows} == {
        (a["id"], "reviewed", "A. Tech", "Dr. B. Reviewer"), (b["id"], "reviewed", "A. Tech", "Dr. B. Reviewer")}

    summary = export_cases(store, tmp_path / "all", include_accepted=True)
    rows = list(csv.DictReader((tmp_path / "all" / "manifest.csv").open()))
    assert (summary.n_cells, summary.n_unreviewed, summary.n_accepted) == (n, 0, n - 2)
    accepted = [r for r in rows if int(r["cell_id"]) not in (a["id"], b["id"])]
    assert len(accepted) == n - 2
    assert all(r["label_source"] == "accepted_at_sign_off" and r["reviewer"] == "" for r in accepted)
    assert all(r["label"] == r["model_label"] for r in accepted)


def test_an_export_records_its_store_without_credentials_or_the_user_s_folders(
        store: CaseStore, fields, classifier, tmp_path: Path) -> None:  # noqa: F811
    """The `store` column, which `wbc adapt` copies into the model it shares, kept a URL's user name and query: a
    password given as ``?password=`` went out in clear in every row (and ``user:pass@`` left ``user:***``); a SQLite
    store was recorded by its absolute path, the user's home folder with it (0.37.0 before release)."""
    from types import SimpleNamespace

    from wbc.cases.export import store_place
    from wbc.cases.store import make_engine

    for url in ("postgresql+psycopg://wbc:s3cret@db.lab:5433/wbc",
                "postgresql+psycopg://db.lab:5433/wbc?user=wbc&password=s3cret&sslkey=/home/jdoe/.pg/key.pem"):
        engine = make_engine(url)  # a real engine on the URL (nothing connects before a query)
        assert store_place(SimpleNamespace(engine=engine)) == "postgresql+psycopg://db.lab:5433/wbc", url
        engine.dispose()
    cid = create_case_from_fields(store, "S-11", fields, classifier)
    store.sign_off(cid, "Dr. B. Reviewer")
    export_cases(store, tmp_path / "out", include_accepted=True)
    rows = list(csv.DictReader((tmp_path / "out" / "manifest.csv").open()))
    name = Path(store.engine.url.database).name
    assert rows and {r["store"] for r in rows} == {name} and os.sep not in name, rows[0]["store"]


def test_the_report_traces_the_case_to_its_images_and_software(store: CaseStore, classifier,  # noqa: F811
                                                               monkeypatch) -> None:
    """The case report named no field's file, no wbc version and no segmenter; the PDF also dropped the colour
    calibration line, the field of each gallery cell and who analysed the case (wbc 0.27.0)."""
    from wbc import __version__
    from wbc.cases.report import render_html
    from wbc.cases.store import file_digest, prepare_field

    seg = ClassicalSegmenter()
    rgb, *_ = synthetic_smear(n_wbc=3, seed=4)
    tinted = np.clip(rgb.astype(np.float32) * np.array([0.85, 1.0, 1.1], np.float32), 0, 255).astype(np.uint8)
    plain = synthetic_smear(n_wbc=3, seed=5)[0]
    got = [prepare_field("BloodImage_00010.jpg", tinted, analyze_image(tinted, classifier, seg), classifier,
                         file_digest(b"one")),
           prepare_field("IMG_0002 <b>.png", plain, analyze_image(plain, classifier.with_colour_calibration(False),
                                                                   seg), classifier, file_digest(b"two"))]
    cid = create_case_from_fields(store, "S-11", got, classifier, segmenter_id="classical-v1", created_by="A. Tech")
    doc = store.case_document(cid)
    assert doc["wbc_version"] == __version__
    n_calibrated = sum(bool(f["colour_calibration"]) for f in doc["fields"])
    page = render_html(store, cid)
    pdf = pdf_paragraphs(monkeypatch, store, cid)
    for text in (page, pdf):
        assert "BloodImage_00010.jpg" in text and "IMG_0002 &lt;b&gt;.png" in text
        assert f"wbc {__version__}" in text and "classical-v1" in text and classifier.model_id in text
        assert "by A. Tech" in text and file_digest(b"one")[:12] in text
        if n_calibrated:
            assert f"{n_calibrated} of 2 field(s) calibrated on their own red cells before classifying" in text
        else:
            assert "classified as they came" in text
        flagged = [c for c in doc["cells"] if c["model_review"]]
        assert all(f"#{c['id']} · field {c['field']}" in text for c in flagged)


def _relabel(store: CaseStore, cid: int, labels: list[str]) -> dict:
    """The case's cells called ``labels`` in order, the rest not a WBC; its document."""
    doc = store.case_document(cid)
    assert len(doc["cells"]) >= len(labels)
    for cell, label in zip(doc["cells"], labels + [NOT_WBC] * (len(doc["cells"]) - len(labels)), strict=True):
        store.reclassify(cid, cell["id"], label, "me")
    return store.case_document(cid)


def test_cases_show_marks_rates_per_100_wbcs_and_counts_the_wbcs(store: CaseStore, fields, classifier) -> None:  # noqa: F811
    """`wbc cases show` printed NRBCs per 100 WBCs under its "%" heading, with no unit and no WBC total: 50.0
    erythroblasts beside 100.0 lymphocytes (wbc 0.28.0)."""
    from typer.testing import CliRunner

    from wbc.cli import app

    cid = create_case_from_fields(store, "S-1", fields, classifier)
    _relabel(store, cid, ["lymphocyte"] * 4 + ["erythroblast"] * 2)
    res = CliRunner().invoke(app, ["cases", "show", "S-1", "--store", store.url])
    assert res.exit_code == 0, res.output
    lines = {ln.split()[0]: ln for ln in res.output.splitlines() if ln.startswith("  ")}
    assert "50.0 /100 WBC" in lines["erythroblast"] and "4.5-348.9" in lines["erythroblast"]
    assert "100.0 %" in lines["lymphocyte"] and "/100 WBC" not in lines["lymphocyte"]
    assert "4 WBCs counted" in res.output


def test_a_case_without_wbcs_gives_no_rate_per_100_wbcs(store: CaseStore, fields, classifier) -> None:  # noqa: F811
    """A case whose cells are all NRBCs read "Erythroblast 6 0.0 /100 WBC 0.0-100.0" in its report and in
    `wbc cases show` (wbc 0.28.0): with no WBC counted a rate per 100 WBCs has no value."""
    from typer.testing import CliRunner

    from wbc.cases.report import render_html
    from wbc.cli import app

    cid = create_case_from_fields(store, "S-2", fields, classifier)
    doc = _relabel(store, cid, ["erythroblast"] * 6)
    row = next(r for r in doc["differential"]["rows"] if r["class"] == "erythroblast")
    assert (row["count"], row["total"], row["percent"], row["ci95_low"], row["ci95_high"]) == (6, 0, None, None, None)
    page = " ".join(render_html(store, cid).split())
    html_row = page.split("<td>Erythroblast</td>")[1].split("</tr>")[0]
    assert "n/a (no WBC counted)" in html_row and "0.0" not in html_row and "100.0" not in html_row
    res = CliRunner().invoke(app, ["cases", "show", "S-2", "--store", store.url])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.split()[:1] == ["erythroblast"])
    assert "n/a (no WBC counted)" in line and "0.0" not in line


def test_a_tiff_of_several_fields_is_said_when_a_case_is_created(tmp_path: Path, model_path: Path) -> None:  # noqa: F811
    """`wbc cases create` analysed the first image of a TIFF of 3 fields without a word (wbc 0.28.0): a reviewer
    signed off a case missing fields 2 and 3."""
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from wbc.cli import app

    pages = [Image.fromarray(synthetic_smear(n_wbc=2, seed=s)[0]) for s in (4, 5, 6)]
    pages[0].save(tmp_path / "slide.tif", save_all=True, append_images=pages[1:])
    db = str(tmp_path / "t.sqlite")
    run = CliRunner().invoke
    res = run(app, ["cases", "create", "T", str(tmp_path / "slide.tif"), "--store", db, "--model", str(model_path),
                    "--segmenter", "classical"])
    assert res.exit_code == 0, res.output
    doc = json.loads(run(app, ["cases", "show", "T", "--store", db, "--json"]).stdout)
    assert any("holds 3 images; only the first was analysed" in w for w in doc["fields"][0]["warnings"])
    res = run(app, ["cases", "report", "T", "--store", db, "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "r.html").read_text()
    assert "field 1 (slide.tif): the file holds 3 images; only the first was analysed" in page


def test_a_name_stored_in_two_unicode_spellings_is_refused_not_resolved(empty_store_url: str) -> None:
    """Migration 0005 left "Zoe" + combining diaeresis (case 1) beside its NFC twin "Zoë" (case 2): case 1's own
    name opened, labelled or signed off case 2 (wbc 0.28.0), and both show as one name."""
    import unicodedata

    from alembic import command
    from sqlalchemy import create_engine, text

    from wbc.cases import CaseAmbiguousError
    from wbc.cases.store import alembic_config

    nfd, nfc = (unicodedata.normalize(form, "Zo\u00eb") for form in ("NFD", "NFC"))
    url = empty_store_url
    engine = create_engine(url)
    cfg = alembic_config(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
        for i, name in enumerate((nfd, nfc, "Ann"), start=1):
            conn.execute(text("INSERT INTO cases (id, name, created_at, created_by, model_id, segmenter_id, classes, "
                              "review_threshold) VALUES (:i, :n, '2026-01-02 03:04:05', '', '', '', '[]', 0)"),
                         {"i": i, "n": name})
    engine.dispose()
    s = CaseStore.open(url)
    for typed in (nfd, nfc, f" {nfd} "):
        with pytest.raises(CaseAmbiguousError, match=r"write #1 for case 1 .*#2 for case 2"):
            s.case_id(typed)
    assert (s.case_id("#1"), s.case_id("#2"), s.case_id("Ann"), s.case_id("3")) == (1, 2, 3, 3)
    s.close()


def test_export_neutralises_formulas_in_people_s_text(store: CaseStore, fields, classifier, tmp_path: Path) -> None:  # noqa: F811
    """manifest.csv wrote the case name, reviewer and signer as typed (wbc 0.28.0): a spreadsheet ran "=1+1" as a
    formula (CWE-1236)."""
    from wbc.formats import read_back

    cid = create_case_from_fields(store, "=1+1", fields[:1], classifier)
    cell = store.case_document(cid)["cells"][0]
    store.reclassify(cid, cell["id"], cell["model_label"], "@SUM(1+1)")
    store.sign_off(cid, "-2+3")
    export_cases(store, tmp_path / "ex")
    rows = list(csv.DictReader((tmp_path / "ex" / "manifest.csv").open()))
    assert [(r["case"], r["reviewer"], r["signed_by"]) for r in rows] == [("'=1+1", "'@SUM(1+1)", "'-2+3")]
    assert read_back(rows[0]["case"]) == "=1+1"
    assert rows[0]["path"].startswith(f"{cell['model_label']}/") and rows[0]["fold"] == "-1"  # read_manifest's own


def test_the_report_shows_each_field_s_warnings(store: CaseStore, fields, classifier,  # noqa: F811
                                                monkeypatch) -> None:
    """The signed report, HTML and PDF, said none of the fields' warnings (wbc 0.28.0): a TIFF of which only the
    first field was analysed, a field with no WBC, cells unlike the training data were signed off unseen."""
    import dataclasses

    from wbc.cases.report import plain_summary, render_html
    from wbc.io import pages_warning

    said = {1: [pages_warning(3), "<b>3 of 3 cells</b> look unlike the model's training data"], 2: [],
            3: ["no white blood cell found"]}
    warned = [(name, rgb, dataclasses.replace(res, warnings=said[i])) for i, (name, rgb, res) in enumerate(fields, 1)]
    cid = create_case_from_fields(store, "warned", warned, classifier)
    store.sign_off(cid, "Ann")
    lines = [f"field 1 (field 1.png): {said[1][0]}", f"field 1 (field 1.png): {said[1][1]}",
             "field 3 (field 3.png): no white blood cell found"]
    page = render_html(store, cid)
    listed = page.split('<ul class="warnings" id="field-warnings">')[1].split("</ul>")[0]
    assert [ln.strip().removeprefix("<li>").removesuffix("</li>") for ln in listed.strip().splitlines()] == [
        ln.replace("<b>", "&lt;b&gt;").replace("</b>", "&lt;/b&gt;").replace("'", "&#39;") for ln in lines]
    words = " ".join(plain_summary(store.case_document(cid)))
    assert "The software warned about 2 of the 3 microscope images" in words
    pdf = pdf_paragraphs(monkeypatch, store, cid)
    assert "Warnings about the fields" in pdf and all(ln.replace("<", "&lt;").replace(">", "&gt;") in pdf
                                                      for ln in lines), pdf

    quiet = create_case_from_fields(store, "quiet", [(n, rgb, dataclasses.replace(r, warnings=[]))
                                                     for n, rgb, r in fields], classifier)
    assert "field-warnings" not in render_html(store, quiet)
    assert "warned" not in " ".join(plain_summary(store.case_document(quiet)))


def _field_with_cells(cells: list[tuple[tuple[int, int, int, int], str, float, bool]]):
    """A 480x640 field whose colours change along both axes (a mirrored copy of any part of it shows), and a
    :class:`SmearResult` of it with the given ``(box, label, confidence, review)`` cells."""
    from wbc.types import Cell, Prediction, SmearResult

    yy, xx = np.mgrid[0:480, 0:640]
    rgb = np.stack([xx * 255 // 639, yy * 255 // 479, (xx + 2 * yy) % 256], axis=-1).astype(np.uint8)
    out = []
    for i, (box, label, conf, review) in enumerate(cells, 1):
        h, w = box[3] - box[1], box[2] - box[0]
        mask = np.zeros((h, w), bool)
        mask[h // 8:-(h // 8), w // 8:] = True
        out.append(Cell(i, box, mask.copy(), mask, touches_border=box[2] >= 640,
                        prediction=Prediction(label, conf, review, {label: conf})))
    return rgb, SmearResult("edge.png", 640, 480, out)


def test_the_report_and_the_review_page_show_a_cell_at_the_field_s_edge_as_the_slide_shows_it(
        store: CaseStore, classifier) -> None:  # noqa: F811
    """A cell cut off by the field's edge showed in the case report and on the review page as the classifier's crop,
    which mirrors the field beyond its edge: a lymphocyte as two lobes, an eosinophil as four nuclei (8 of 17 cells of
    BCCD's ten fields, wbc 0.29.0). The pictures a reviewer judges are the field cut around the box, nothing mirrored;
    the stored crop, `wbc cases export`'s training data, stays what the classifier saw."""
    from wbc.cases.report import render_pdf, report_context
    from wbc.cases.store import decode_png
    from wbc.crops import box_window
    from wbc.evaluate.classified import CUT_MARGIN

    rgb, res = _field_with_cells([((547, 103, 640, 210), "lymphocyte", 0.6, True)])
    cid = create_case_from_fields(store, "edge", [("edge.png", rgb, res)], classifier)
    cell = store.case_document(cid)["cells"][0]
    want = box_window(rgb, cell["box"], CUT_MARGIN)  # kept inside the field: the cell sits off-centre
    shown = report_context(store, cid)["gallery"][0]
    assert np.array_equal(decode_png(shown["png"]), want)
    assert store.view_png(cid, cell["id"]) == shown["png"]  # GET /cases/{id}/cells/{cell}/view, the review page's
    crop = decode_png(store.crop_png(cid, cell["id"]))
    assert crop.shape[:2] == (classifier.info.input_size,) * 2 and crop.shape != want.shape  # as the classifier saw it
    assert render_pdf(store, cid).startswith(b"%PDF")


def test_a_case_has_no_platelet_row_and_its_report_says_platelets_are_not_counted(store: CaseStore, fields,
                                                                                   classifier) -> None:  # noqa: F811
    """No smear cell is called "platelet" (wbc.labels.NOT_IN_SMEAR_DETECTIONS), yet every case report printed
    "Platelet 0 0.0 /100 WBC 0.0-25.9", a measured-looking rate (BCCD's ten fields hold 11 platelets to 18 WBCs). A
    case stored before keeps its platelet class, shown only where a reviewer called a cell so."""
    from wbc.cases.report import render_html, render_pdf
    from wbc.cases.store import PreparedField, crops_for, encode_png

    cid = create_case_from_fields(store, "no platelets", fields, classifier)
    doc = store.case_document(cid)
    assert "platelet" not in doc["classes"] and "platelet" not in doc["labels"]
    assert [r["class"] for r in doc["differential"]["rows"]] == [c for c in classifier.classes if c != "platelet"]
    page = " ".join(render_html(store, cid).split())
    assert "<td>Platelet</td>" not in page and "Platelets are not counted in smear analysis" in page
    with pytest.raises(CaseError, match="platelet"):
        store.reclassify(cid, doc["cells"][0]["id"], "platelet", "me")
    assert render_pdf(store, cid).startswith(b"%PDF")

    name, rgb, res = fields[0]
    old = store.create_case_with_fields("stored by wbc 0.29.0", list(classifier.classes),
                                        [PreparedField(name, encode_png(rgb), res, crops_for(rgb, res, classifier))])
    assert "platelet" not in store.case_document(old)["classes"]
    cell = store.case_document(old)["cells"][0]
    store.reclassify(old, cell["id"], "platelet", "me")  # its reviewer could, and the count shows
    row = next(r for r in store.tallies(old)["differential"]["rows"] if r["class"] == "platelet")
    assert row["count"] == 1 and "platelet" in store.case_document(old)["classes"]


def test_a_case_without_wbcs_gives_no_share_in_its_report(store: CaseStore, fields, classifier) -> None:  # noqa: F811
    """A case whose cells a reviewer called one NRBC and not WBCs: the report (HTML and PDF) printed every WBC class's
    share as "0.0" with "0.0–100.0" (wbc 0.32.0), the reading differential.csv dropped in wbc 0.30.0; `wbc cases show`
    too. They give none now, and the NRBCs "n/a (no WBC counted)", before and after sign-off."""
    from typer.testing import CliRunner

    from wbc.cases.report import ci_text, rate_text, render_html, report_context
    from wbc.cases.store import differential_of
    from wbc.cli import app

    neut = next(r for r in differential_of(["erythroblast"], ["erythroblast", "neutrophil"])["rows"]
                if r["class"] == "neutrophil")
    assert (rate_text(neut), ci_text(neut)) == ("", "")
    cid = create_case_from_fields(store, "only NRBCs", fields, classifier)
    cells = store.case_document(cid)["cells"]
    for cell, label in zip(cells, ["erythroblast"] + [NOT_WBC] * (len(cells) - 1), strict=True):
        store.reclassify(cid, cell["id"], label, "Bo")
    for signed in (False, True):
        if signed:
            store.sign_off(cid, "Bo")
        rows = {r["class"]: r for r in report_context(store, cid)["rows"]}
        assert (rows["erythroblast"]["rate"], rows["erythroblast"]["ci"]) == ("n/a (no WBC counted)", "")
        assert all((r["rate"], r["ci"]) == ("", "") for c, r in rows.items() if c != "erythroblast")
        assert "0.0–100.0" not in render_html(store, cid)
    res = CliRunner().invoke(app, ["cases", "show", str(cid), "--store", store.url])
    assert res.exit_code == 0 and "n/a (no WBC counted)" in res.output and "0.0-100.0" not in res.output, res.output


def test_the_case_report_gives_the_threshold_and_each_confidence_with_the_digits_that_tell_them_apart(
        store: CaseStore, classifier) -> None:  # noqa: F811
    """The report read "Review threshold 0.99" beside flagged cells of 0.985 and a cell flagged only as unlike the
    training data "(1.00)" (wbc 0.29.0): the threshold 0.986, the cells 0.985 and 0.998."""
    from wbc.cases.report import render_html, report_context, report_meta
    from wbc.cases.store import prepare_field

    rgb, res = _field_with_cells([((100, 100, 200, 200), "eosinophil", 0.9854, True),
                                  ((300, 100, 400, 200), "neutrophil", 0.998, True),
                                  ((100, 300, 200, 400), "lymphocyte", 0.62, True)])
    field = prepare_field("t.png", rgb, res, classifier)
    cid = store.create_case_with_fields("thresholds", classifier.classes, [field], review_threshold=0.9863332509994507)
    lines = {m["label"]: m["value"] for m in report_meta(store.case_document(cid))}
    assert lines["Review threshold"].startswith("0.986 ")
    assert [g["confidence"] for g in report_context(store, cid)["gallery"]] == ["0.985", "0.998", "0.62"]
    page = render_html(store, cid)
    assert "(0.985)" in page and "(0.998)" in page and "(0.99)" not in page and "(1.00)" not in page


def test_every_output_of_a_case_rounds_a_half_as_the_pages_do(store: CaseStore, classifier,  # noqa: F811
                                                                monkeypatch) -> None:
    """5 of 16 WBCs (31.25 %) and 1 NRBC per 16 (6.25) read 31.2 and 6.2 in the report, the PDF and `wbc cases show`
    (Python's half to even) and 31.3 and 6.3 on the review page that was signed (JavaScript's toFixed) in wbc 0.29.0:
    one rule, half up, everywhere (wbc.counts.fixed; common.js's fixed is checked against it in test_web_page.py)."""
    from typer.testing import CliRunner

    from wbc.cases.report import rate_text, render_html
    from wbc.cases.store import prepare_field
    from wbc.cli import app

    assert rate_text({"percent": 31.25, "unit": "percent", "count": 5}) == "31.3"
    labels = ["eosinophil"] * 5 + ["lymphocyte"] * 3 + ["ig"] * 2 + ["neutrophil"] * 6 + ["erythroblast"]
    boxes = [(20 + 110 * (i % 5), 20 + 110 * (i // 5), 100 + 110 * (i % 5), 100 + 110 * (i // 5))
             for i in range(len(labels))]
    rgb, res = _field_with_cells([(b, lab, 0.9, True) for b, lab in zip(boxes, labels, strict=True)])
    store.create_case_with_fields("halves", classifier.classes, [prepare_field("h.png", rgb, res, classifier)])
    page = " ".join(render_html(store, "halves").split())
    for name, rate, ci in (("Eosinophil", "31.3", "11.0–58.7"), ("Lymphocyte", "18.8", "4.0–45.6"),
                           ("Erythroblast", "6.3 /100 WBC", "0.1–40.2")):
        row = page.split(f"<td>{name}</td>")[1].split("</tr>")[0]
        assert f">{rate}<" in row and f">{ci}<" in row, (name, row)
    pdf = pdf_paragraphs(monkeypatch, store, "halves")
    assert "31.3" in pdf and "31.2" not in pdf and "6.3 /100 WBC" in pdf
    res = CliRunner().invoke(app, ["cases", "show", "halves", "--store", store.url])
    assert res.exit_code == 0, res.output
    lines = {ln.split()[0]: ln for ln in res.output.splitlines() if ln.startswith("  ") and ln.split()}
    assert " 31.3 %" in lines["eosinophil"] and " 18.8 %" in lines["lymphocyte"]
    assert " 6.3 /100 WBC" in lines["erythroblast"]


def test_the_summary_gives_unopened_bone_marrow_cells_as_the_software_s_calls(store: CaseStore,
                                                                              classifier) -> None:  # noqa: F811
    """The signed report's plain words said "Cells that normally stay in the bone marrow were seen (2 immature
    granulocytes, 1 erythroblast)" when nobody had opened any of them (all three wrong per BCCD's labels, wbc
    0.29.0): an IG or NRBC is a finding only once a reviewer confirmed it."""
    from wbc.cases.report import plain_summary

    cells = [((40, 40, 140, 140), "ig", 0.71, True), ((200, 200, 300, 300), "erythroblast", 0.71, True),
             ((400, 100, 500, 200), "neutrophil", 0.99, False), ((300, 300, 400, 400), "neutrophil", 0.99, False)]
    rgb, res = _field_with_cells(cells)
    cid = create_case_from_fields(store, "IG-1", [("f.png", rgb, res)], classifier)
    draft = " ".join(plain_summary(store.case_document(cid)))
    assert "were seen" not in draft
    assert ("The software called 1 immature granulocyte and 1 erythroblast (cells that normally stay in the bone "
            "marrow); they are the software's calls, awaiting a reviewer's confirmation") in draft
    ig = next(c for c in store.case_document(cid)["cells"] if c["model_label"] == "ig")
    store.reclassify(cid, ig["id"], "ig", "A. Tech")
    store.sign_off(cid, "Dr. B. Reviewer")
    words = " ".join(plain_summary(store.case_document(cid)))
    assert "were seen" not in words
    assert "The reviewer confirmed cells that normally stay in the bone marrow (1 immature granulocyte)." in words
    assert ("The software called 1 erythroblast (cells that normally stay in the bone marrow); nobody opened it "
            "before sign-off, so it is the software's call, not confirmed by a reviewer") in words


def test_cases_show_names_no_platelet_rate_and_export_names_a_next_step_that_runs(
        store: CaseStore, fields, classifier, tmp_path: Path) -> None:  # noqa: F811
    """`wbc cases show` headed every case "erythroblasts and platelets per 100 WBCs" though a case has no platelet
    row since wbc 0.30.0; `wbc cases export` of 2 reviewed cells said "next: wbc adapt --data ..." which then
    refused "need at least 4 labelled cells, got 2" with no way forward (wbc 0.29.0)."""
    from typer.testing import CliRunner

    from wbc.cli import app

    cid = create_case_from_fields(store, "S-5", fields, classifier)
    doc = store.case_document(cid)
    for cell in doc["cells"][:2]:
        store.reclassify(cid, cell["id"], cell["model_label"], "A. Tech")
    store.sign_off(cid, "Dr. B. Reviewer")
    res = CliRunner().invoke(app, ["cases", "show", "S-5", "--store", store.url])
    assert res.exit_code == 0, res.output
    assert "platelet" not in res.output
    assert "% of the WBCs, erythroblasts per 100 WBCs (/100 WBC), outside the total" in res.output
    res = CliRunner().invoke(app, ["cases", "export", str(tmp_path / "corr"), "--store", store.url])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "next: wbc adapt" not in out
    assert "wbc adapt needs at least 4 labelled cells: review at least 2 more (or add --include-accepted" in out
    res = CliRunner().invoke(app, ["adapt", "--data", str(tmp_path / "corr"), "--output", str(tmp_path / "m.onnx"),
                                   "--method", "head"])
    assert res.exit_code != 0 and "review more cells, or export with --include-accepted" in str(res.exception)
    res = CliRunner().invoke(app, ["cases", "export", str(tmp_path / "all"), "--store", store.url,
                                   "--include-accepted"])
    assert "next: wbc adapt --data" in " ".join(res.output.split())


def test_switching_a_store_to_wal_waits_for_another_programs_lock(tmp_path: Path) -> None:
    """A store not yet in WAL mode, locked by another program: switching it answered "database is locked" at once
    instead of waiting (before wbc 0.32.0), so a second process opening an older store while the first upgraded it
    failed now and then. It now waits for the lock, as every other statement does."""
    import sqlite3
    import threading

    from wbc.cases.store import _to_wal

    db = tmp_path / "s.sqlite"
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    other = sqlite3.connect(db, timeout=0.01, isolation_level=None)
    try:
        _to_wal(other.cursor(), wait_s=10)
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        release.join()
        other.close()
        holder.close()


def test_plain_summary_names_erythroblasts_and_objects_left_out_when_no_wbc_is_counted(
        store: CaseStore, classifier) -> None:  # noqa: F811
    """A signed case whose only call is an erythroblast (the other object marked not a WBC) said in plain words "No
    white blood cell could be counted" and stopped: nothing of the erythroblast its table shows, nor of the object left
    out (before wbc 0.36.0)."""
    from wbc.cases.report import plain_summary

    rgb, res = _field_with_cells([((40, 40, 140, 140), "erythroblast", 0.71, True),
                                  ((300, 300, 400, 400), "neutrophil", 0.6, True)])
    cid = create_case_from_fields(store, "NRBC-1", [("f.png", rgb, res)], classifier)
    other = next(c for c in store.case_document(cid)["cells"] if c["model_label"] == "neutrophil")
    store.reclassify(cid, other["id"], NOT_WBC, "A. Tech")
    store.sign_off(cid, "Dr. B")
    doc = store.case_document(cid)
    assert doc["differential"]["total"] == 0
    words = " ".join(plain_summary(doc))
    assert "No white blood cell could be counted, so no differential is given." in words
    assert ("The software called 1 erythroblast (cells that normally stay in the bone marrow); nobody opened it before "
            "sign-off") in words, words
    assert "1 object(s) were not white blood cells and 0 could not be identified; they are not counted." in words


def test_the_differential_note_does_not_call_unreviewed_calls_reviewed(store: CaseStore, classifier,  # noqa: F811
                                                                      monkeypatch) -> None:
    """Both reports said "N white cells counted (reviewed calls)" (the PDF's heading "Differential (reviewed)") of a
    draft nobody had reviewed, and of a signed case whose counted cells were nearly all the model's flagged calls,
    never opened (before wbc 0.36.0). The note says how many counted cells a person reviewed and how many are the
    model's calls, flagged or not; the plain words say the unopened ones were flagged."""
    from wbc.cases.report import counted_note, plain_summary, render_html

    rgb, res = _field_with_cells([((40, 40, 140, 140), "neutrophil", 0.99, False),
                                  ((200, 200, 300, 300), "lymphocyte", 0.6, True),
                                  ((400, 100, 500, 200), "monocyte", 0.6, True),
                                  ((300, 300, 400, 400), "erythroblast", 0.7, True)])  # outside the total
    cid = create_case_from_fields(store, "D-1", [("f.png", rgb, res)], classifier)
    html = render_html(store, cid)
    from html import unescape

    note = unescape(re.search(r'id="differential-note">([^<]*)<', html).group(1)).split("; ")[0]
    assert note == ("3 white cells counted: 0 reviewed, 3 the model's calls not reviewed yet (2 of them flagged for "
                    "review)")
    assert "reviewed calls" not in html
    lymph = next(c for c in store.case_document(cid)["cells"] if c["model_label"] == "lymphocyte")
    store.reclassify(cid, lymph["id"], "lymphocyte", "A. Tech")
    store.sign_off(cid, "Dr. B")
    doc = store.case_document(cid)
    note = ("3 white cells counted: 1 reviewed, 2 the model's calls accepted at sign-off without being opened (1 of "
            "them flagged for review)")
    assert counted_note(doc) == note
    pdf = pdf_paragraphs(monkeypatch, store, cid)
    assert note in pdf and "Differential (reviewed)" not in pdf and "reviewed calls" not in pdf
    assert ("The other 3 were not opened (2 of them flagged by the software for review): the software's calls for them "
            "were accepted at sign-off.") in " ".join(plain_summary(doc))
    js = (Path(__file__).parents[1] / "src/wbc/serve/static/review.js").read_text()
    assert "white cells counted (reviewed calls)" not in js and "function countedNote(d)" in js


def test_the_report_says_when_a_warned_cell_was_reviewed(store: CaseStore, classifier, monkeypatch) -> None:  # noqa: F811
    """A field's warning "1 of 2 cells are most likely a class a smear's differential does not count (platelet 1): each
    is counted in the class shown and flagged for review" was printed as analysed under a signed differential in which
    the reviewer had marked that cell not a WBC (before wbc 0.36.0). The warning stays; what became of the cells it
    speaks of follows it. A warning about no cell (a TIFF's pages) is left as it is."""
    from wbc.cases.report import field_warnings, render_html
    from wbc.classify import outside_reason, outside_sentence

    rgb, res = _field_with_cells([((40, 40, 140, 140), "neutrophil", 0.9, True),
                                  ((300, 300, 400, 400), "lymphocyte", 0.99, False)])
    res.cells[0].prediction.reasons.append(outside_reason("platelet", 0.96, chosen=False))
    warning = outside_sentence({"platelet": 1}, 2, {"platelet"})
    res.warnings += [warning, "the file holds 3 images; only the first was analysed"]
    cid = create_case_from_fields(store, "W-1", [("f.png", rgb, res)], classifier)
    assert field_warnings(store.case_document(cid)) == [f"field 1 (f.png): {warning}",
                                                        "field 1 (f.png): the file holds 3 images; only the first was "
                                                        "analysed"]
    warned = next(c for c in store.case_document(cid)["cells"] if c["model_label"] == "neutrophil")
    store.reclassify(cid, warned["id"], NOT_WBC, "A. Tech")
    store.sign_off(cid, "Dr. B")
    said = f"field 1 (f.png): {warning}; since reviewed: cell #{warned['id']} marked not a white blood cell by A. Tech"
    assert field_warnings(store.case_document(cid))[0] == said
    assert field_warnings(store.case_document(cid))[1].endswith("only the first was analysed")
    from html import unescape

    assert said in unescape(render_html(store, cid).split("<h2>Warnings about the fields</h2>")[1])
    assert said in pdf_paragraphs(monkeypatch, store, cid)


def test_export_writes_a_cell_of_two_cases_once_and_leaves_out_one_labelled_two_ways(
        store: CaseStore, fields, classifier, tmp_path: Path) -> None:  # noqa: F811
    """The same fields made into two cases (`wbc cases create` and the review page's New case) were exported once per
    case, each cell twice, and under two labels where the reviewers differed, without a word; `wbc adapt` then said
    "adapted on 4 cells" of 2 (before wbc 0.36.0). Each cell is written once, a reviewer's call before one accepted at
    sign-off; one labelled two ways is left out; both are said, naming the cases."""
    import hashlib

    from typer.testing import CliRunner

    from wbc.cases.store import prepare_field
    from wbc.cli import app

    def made(name: str) -> int:  # each field with its file's SHA-1, as both ways of making a case store it
        return create_case_from_fields(store, name, [prepare_field(n, rgb, res, classifier,
                                                                   hashlib.sha1(n.encode()).hexdigest())
                                                     for n, rgb, res in fields], classifier)

    a, b = made("S-001"), made("S-WEB")
    doc_a, doc_b = store.case_document(a), store.case_document(b)
    x, y = doc_a["cells"][:2]
    bx, by = doc_b["cells"][:2]
    assert (bx["box"], by["box"]) == (x["box"], y["box"])
    one, two = [c for c in doc_a["classes"] if c != x["model_label"]][:2]
    store.reclassify(a, x["id"], one, "A. Tech")
    store.reclassify(b, bx["id"], two, "B. Tech")  # the reviewers differ
    store.reclassify(a, y["id"], y["model_label"], "A. Tech")
    store.reclassify(b, by["id"], by["model_label"], "B. Tech")  # and agree
    store.sign_off(a, "Dr. A")
    store.sign_off(b, "Dr. B")
    res = export_cases(store, tmp_path / "corr")
    assert res.n_cells == 1 and res.counts == {y["model_label"]: 1}, res
    rows = list(csv.DictReader((tmp_path / "corr" / "manifest.csv").open()))
    assert [(r["case"], int(r["cell_id"])) for r in rows] == [("S-001", y["id"])]
    assert sorted(p.name for p in (tmp_path / "corr").rglob("*.png")) == [Path(rows[0]["path"]).name]
    image = fields[0][0]
    assert res.conflicts == [f"{image}, the cell at {' '.join(map(str, x['box']))}: {one} in case 'S-001' (by "
                             f"A. Tech), {two} in case 'S-WEB' (by B. Tech): labelled two ways, left out"]
    assert (f"{image} is field 1 of case 'S-001' and field 1 of case 'S-WEB': its 1 cell(s) exported from each case "
            "are written once; 1 labelled two ways are left out") in res.repeated
    res = export_cases(store, tmp_path / "all", include_accepted=True)
    n = len(doc_a["cells"])
    crops = {hashlib.sha1(p.read_bytes()).hexdigest() for p in (tmp_path / "all").rglob("*.png")}
    assert res.n_cells == len(crops) == n - 1 - sum(c["label"] in (NOT_WBC, UNIDENTIFIABLE) for c in doc_a["cells"])
    assert res.n_accepted == res.n_cells - 1
    out = CliRunner().invoke(app, ["cases", "export", str(tmp_path / "cli"), "--store", store.url]).output
    out = " ".join(out.split())
    assert f"note: {image} is field 1 of case 'S-001' and field 1 of case 'S-WEB'" in out, out
    assert "labelled two ways, left out" in out and "1 cell(s) from 2 case(s)" in out, out


def _one_file_case(store: CaseStore, name: str, cells: list[tuple[tuple[int, int, int, int], str]], clf) -> int:
    """A case of one field with ``cells`` (box, the model's call), made from the same file as every other such case."""
    import hashlib

    from wbc.cases.store import prepare_field

    rgb, res = _field_with_cells([(box, label, 0.6, True) for box, label in cells])
    sha = hashlib.sha1(b"the same field file").hexdigest()
    return create_case_from_fields(store, name, [prepare_field("f.jpg", rgb, res, clf, sha)], clf)


def test_export_matches_a_cell_of_two_cases_by_overlap_not_by_its_exact_box(
        store: CaseStore, classifier, tmp_path: Path) -> None:  # noqa: F811
    """The same file made into a case with `wbc cases create --pixel-size 0.1` and one on the review page (the server's
    scale) boxes its cell a few pixels apart (144 7 376 239 and 147 7 373 239 on BCCD's BloodImage_00015): the export
    matched cells by their exact box, and wrote the cell twice under the two reviewers' labels, without a word (wbc
    0.36.0 before release). Cells are matched by overlap; two cells of the field apart stay two."""
    far = ((400, 300, 500, 400), "lymphocyte")
    a = _one_file_case(store, "A", [((144, 7, 376, 239), "neutrophil"), far], classifier)
    b = _one_file_case(store, "B", [((147, 7, 373, 239), "neutrophil"), far], classifier)
    (ca, fa), (cb, fb) = store.case_document(a)["cells"], store.case_document(b)["cells"]
    store.reclassify(a, ca["id"], "monocyte", "A. Tech")
    store.reclassify(b, cb["id"], "lymphocyte", "B. Tech")
    store.reclassify(a, fa["id"], "lymphocyte", "A. Tech")
    store.reclassify(b, fb["id"], "lymphocyte", "B. Tech")
    store.sign_off(a, "A. Tech")
    store.sign_off(b, "B. Tech")
    res = export_cases(store, tmp_path / "x")
    assert (res.n_cells, res.counts) == (1, {"lymphocyte": 1}), res
    assert res.conflicts == ["f.jpg, the cell at 144 7 376 239: monocyte in case 'A' (by A. Tech), lymphocyte in case "
                             "'B' (by B. Tech): labelled two ways, left out"]
    assert res.repeated == ["f.jpg is field 1 of case 'A' and field 1 of case 'B': its 1 cell(s) exported from each "
                            "case are written once; 1 labelled two ways are left out"]


def test_export_compares_a_not_a_wbc_call_and_one_changed_only_leaves_out_with_the_other_case_s(
        store: CaseStore, classifier, tmp_path: Path) -> None:  # noqa: F811
    """One reviewer marked the cell not a WBC, the other confirmed it a neutrophil; or, with --changed-only, one changed
    it and the other confirmed the model's call: the filters dropped the one call before the cells were compared, and
    the other was exported without a word (wbc 0.36.0 before release). Every reviewed call is compared first."""
    box = (144, 7, 376, 239)
    a, b = (_one_file_case(store, n, [(box, "neutrophil")], classifier) for n in ("A", "B"))
    store.reclassify(a, store.case_document(a)["cells"][0]["id"], NOT_WBC, "A. Tech")
    store.reclassify(b, store.case_document(b)["cells"][0]["id"], "neutrophil", "B. Tech")
    c, d = (_one_file_case(store, n, [(box, "neutrophil")], classifier) for n in ("C", "D"))
    store.reclassify(c, store.case_document(c)["cells"][0]["id"], "lymphocyte", "C. Tech")
    store.reclassify(d, store.case_document(d)["cells"][0]["id"], "neutrophil", "D. Tech")
    for case in (a, b, c, d):
        store.sign_off(case, "Dr. E")
    res = export_cases(store, tmp_path / "x", cases=[a, b])
    assert (res.n_cells, res.n_excluded) == (0, 0) and res.conflicts == [
        f"f.jpg, the cell at {' '.join(map(str, box))}: not_wbc in case 'A' (by A. Tech), neutrophil in case 'B' (by "
        "B. Tech): labelled two ways, left out"], res
    res = export_cases(store, tmp_path / "y", cases=[c, d], changed_only=True)
    assert res.n_cells == 0 and len(res.conflicts) == 1, res
    # calls agreed on: written once, by the reviewer who changed it under --changed-only; not a WBC counted once
    e = _one_file_case(store, "E", [(box, "lymphocyte")], classifier)
    f = _one_file_case(store, "F", [(box, "neutrophil")], classifier)
    store.reclassify(e, store.case_document(e)["cells"][0]["id"], "lymphocyte", "E. Tech")
    store.reclassify(f, store.case_document(f)["cells"][0]["id"], NOT_WBC, "F. Tech")
    store.sign_off(e, "Dr. E")
    store.sign_off(f, "Dr. E")
    res = export_cases(store, tmp_path / "z", cases=[e, c], changed_only=True)
    rows = list(csv.DictReader((tmp_path / "z" / "manifest.csv").open()))
    assert (res.n_cells, [(r["case"], r["label"], r["changed"]) for r in rows]) == (1, [("C", "lymphocyte", "1")])
    res = export_cases(store, tmp_path / "w", cases=[a, f])
    assert (res.n_cells, res.n_excluded, res.conflicts) == (0, 1, []), res


def test_wbc_evaluate_takes_an_export_s_manifest_as_it_is(store: CaseStore, fields, classifier, model_path: Path,  # noqa: F811
                                                          tmp_path: Path, monkeypatch) -> None:
    """`wbc evaluate EXPORT/manifest.csv`, the file `wbc adapt --data` takes, was refused for its empty split ("no rows
    in split 'test'"), then, with --split all, for its paths, which were looked up under the data root only, with a
    hint about "its run's" root (wbc 0.37.0 before release). Its crops are read beside it and every row is scored, as
    the folder form scores them; another --split is refused in one line saying the manifest has no splits."""
    from typer.testing import CliRunner

    from wbc.cli import app

    cid = create_case_from_fields(store, "S", fields, classifier)
    for cell in store.case_document(cid)["cells"]:
        store.reclassify(cid, cell["id"], cell["model_label"], "tech")
    store.sign_off(cid, "Dr. E")
    n = export_cases(store, tmp_path / "export").n_cells
    assert n >= 6
    monkeypatch.setenv("WBC_DATA_DIR", str(tmp_path / "elsewhere"))  # the data root holds none of the crops
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for data in ("export", "export/manifest.csv"):
        out = tmp_path / f"ev_{data.replace('/', '_')}"
        res = runner.invoke(app, ["evaluate", data, "--model", str(model_path), "--output", str(out)])
        assert res.exit_code == 0, res.output
        assert json.loads((out / "metrics.json").read_text())["n"] == n and f"{n} cells scored" in res.output
    res = runner.invoke(app, ["evaluate", "export/manifest.csv", "--split", "val", "--model", str(model_path),
                              "--output", str(tmp_path / "ev_val")])
    assert isinstance(res.exception, WbcError) and "has no splits" in str(res.exception), res.output
    # a manifest whose crops are nowhere: the hint names the manifest's folder, not a run that does not exist
    moved = tmp_path / "moved"
    moved.mkdir()
    (tmp_path / "export" / "manifest.csv").rename(moved / "manifest.csv")
    res = runner.invoke(app, ["evaluate", "moved/manifest.csv", "--model", str(model_path), "--output",
                              str(tmp_path / "ev_moved")])
    said = str(res.exception)
    assert isinstance(res.exception, WbcError) and "its run's" not in said and "beside the manifest" in said, said


def test_wbc_evaluate_on_an_export_shows_the_recorded_calls_score(store: CaseStore, fields, classifier,  # noqa: F811
                                                                  model_path: Path,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    """`wbc evaluate` on a `wbc cases export` scored any model on the crops in their fields' raw colours, while `wbc
    analyze` answered the cells in their fields, colours calibrated: the shipped model scored 46.7 % where its calls
    had been 86.7 % right, and an adapted model looked 27 points better (wbc 0.37.0 before release). The recorded
    calls' score is now shown beside it, on the terminal, in metrics.json, the caution and the report, and in a
    comparison, as `wbc adapt` shows it for its "before"."""
    from typer.testing import CliRunner

    from wbc.cli import app

    cid = create_case_from_fields(store, "S", fields, classifier)
    doc = store.case_document(cid)
    first, *rest = doc["cells"]
    store.reclassify(cid, first["id"], other_label(doc, first), "tech")  # the model was wrong on one cell
    for cell in rest:
        store.reclassify(cid, cell["id"], cell["model_label"], "tech")
    store.sign_off(cid, "Dr. E")
    export_cases(store, tmp_path / "export")
    rows = list(csv.DictReader((tmp_path / "export" / "manifest.csv").open()))
    right = sum(r["label"] == r["model_label"] for r in rows)
    assert right == len(rows) - 1
    runner = CliRunner()
    for data in ("export", "export/manifest.csv"):
        out = tmp_path / f"ev_{data.replace('/', '_')}"
        res = runner.invoke(app, ["evaluate", str(tmp_path / data), "--model", str(model_path), "--output", str(out)])
        assert res.exit_code == 0, res.output
        m = json.loads((out / "metrics.json").read_text())
        rec = m["recorded_calls"]
        assert (rec["n"], rec["right"], rec["by_model"]) == (len(rows), right, {doc["model_id"]: len(rows)}), rec
        said = f"were right {right} of the {len(rows)} a person reviewed"
        assert said in " ".join(res.output.split()) and said in m["caution"] and "raw colours" in m["caution"]
        assert said in (out / "report.html").read_text()
    res = runner.invoke(app, ["evaluate", str(tmp_path / "export"), "--compare", str(model_path), str(model_path),
                              "--output", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["recorded_calls"]["right"] == right
    assert said in (tmp_path / "cmp" / "comparison.html").read_text()
    # a class-per-folder set without recorded calls says nothing of them
    (tmp_path / "export" / "manifest.csv").unlink()
    res = runner.invoke(app, ["evaluate", str(tmp_path / "export"), "--model", str(model_path), "--output",
                              str(tmp_path / "plain")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "plain" / "metrics.json").read_text())["recorded_calls"] is None


def test_wbc_evaluate_scores_the_recorded_calls_on_reviewed_cells_only(store: CaseStore, fields, classifier,  # noqa: F811
                                                                       model_path: Path,  # noqa: F811
                                                                       tmp_path: Path) -> None:
    """`wbc evaluate` on an export `--include-accepted` counted the model's own calls accepted at sign-off (the label
    by construction) as right recorded calls, and on a `--changed-only` export said "right 0 of N (0.0 %): that is
    how the lab's cells were answered" (0.37.0 before release). The score now counts the reviewed cells only, the
    accepted ones apart, and a changed-only export is said to be wrong by its choice of cells."""
    from typer.testing import CliRunner

    from wbc.cli import app

    cid = create_case_from_fields(store, "S", fields, classifier)
    doc = store.case_document(cid)
    first, *rest = doc["cells"]
    assert len(rest) >= 3
    store.reclassify(cid, first["id"], other_label(doc, first), "tech")  # the model was wrong on one cell
    for cell in rest[:-2]:
        store.reclassify(cid, cell["id"], cell["model_label"], "tech")  # the last two nobody opens
    store.sign_off(cid, "Dr. E")
    runner = CliRunner()
    said = {}
    for kind, kw in (("accepted", {"include_accepted": True}), ("changed", {"changed_only": True})):
        export_cases(store, tmp_path / kind, **kw)
        out = tmp_path / f"ev_{kind}"
        res = runner.invoke(app, ["evaluate", str(tmp_path / kind), "--model", str(model_path), "--output", str(out)])
        assert res.exit_code == 0, res.output
        said[kind] = (json.loads((out / "metrics.json").read_text())["recorded_calls"], " ".join(res.output.split()))
    rec, text = said["accepted"]
    reviewed = len(doc["cells"]) - 2
    assert (rec["n"], rec["right"]) == (reviewed, reviewed - 1), rec  # the two accepted calls are not counted right
    assert (rec["accepted"], rec["n_cells"]) == (2, len(doc["cells"])), rec
    assert f"were right {reviewed - 1} of the {reviewed} a person reviewed" in text, text
    assert "the other 2 cell(s) are the model's own calls accepted at sign-off" in text, text
    rec, text = said["changed"]
    assert (rec["n"], rec["right"], rec["accepted"], rec["all_changed"]) == (1, 0, 0, True), rec
    assert "wrong on each by that choice of cells" in text and "that is how" not in text.lower(), text
    assert "compare an adapted model with the recorded calls" not in text, text


def test_an_adapted_model_records_the_cases_it_learnt_from(store: CaseStore, fields, classifier, tmp_path: Path,  # noqa: F811
                                                          monkeypatch, capsys) -> None:
    """`wbc adapt` on a `wbc cases export` recorded only the export folder's path, which the next export replaces:
    no case, store or manifest hash, and nothing said of the labels that were the model's own calls accepted at
    sign-off (wbc 0.37.0 before release). The model's metadata and --report now record them, and the terminal says
    which cases and how many accepted calls."""
    from wbc.cases.export import ACCEPTED
    from wbc.cli import main
    from wbc.io import file_sha1
    from wbc.model import load_model
    from wbc.paths import DEFAULT_MODEL

    if Path(classifier.path).resolve() != DEFAULT_MODEL.resolve():
        pytest.skip("the shipped model is needed (the test fields' cases are adapted with --method head)")
    cid = create_case_from_fields(store, "S-A", fields, classifier)
    doc = store.case_document(cid)
    reviewed = doc["cells"][: len(doc["cells"]) - 2]  # the last two nobody opens: accepted at sign-off
    for cell in reviewed:
        store.reclassify(cid, cell["id"], cell["model_label"], "A. Tech")
    store.sign_off(cid, "Dr. E")
    out = tmp_path / "export"
    summary = export_cases(store, out, include_accepted=True)
    assert summary.n_accepted == 2
    monkeypatch.setattr(sys, "argv", ["wbc", "adapt", "--data", str(out), "--output", str(tmp_path / "lab.onnx"),
                                      "--model", str(classifier.path), "--method", "head", "--report",
                                      str(tmp_path / "report.json")])
    with pytest.raises(SystemExit) as done:
        main()
    err = " ".join(capsys.readouterr().err.split())
    assert done.value.code == 0, err
    export = load_model(tmp_path / "lab.onnx").info.extra["adapt"]["settings"]["export"]
    assert export == json.loads((tmp_path / "report.json").read_text())["settings"]["export"]
    assert export["manifest_sha1"] == file_sha1(out / "manifest.csv")
    assert export["cases"] == [{"name": "S-A", "id": str(cid), "cells": summary.n_cells}]
    assert export["stores"] == [Path(store.engine.url.database).name]  # no folder of the user's (0.37.0)
    assert export["label_sources"] == {"reviewed": summary.n_cells - 2, ACCEPTED: 2}
    assert export["models"] == {doc["model_id"]: summary.n_cells}
    assert f"labels from case S-A (id {cid}, {summary.n_cells} cells)" in err
    assert f"2 of the {summary.n_cells} labels are the model's own calls accepted at sign-off" in err
    from wbc.cli.adapt import ACCEPTED as CLI_ACCEPTED  # the CLI's copy of the label source (no SQLAlchemy import)

    assert CLI_ACCEPTED == ACCEPTED


def test_wbc_evaluate_says_a_model_scored_on_the_export_it_was_adapted_on_is_in_sample(
        store: CaseStore, fields, classifier, tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: F811
    """`wbc evaluate EXPORT --model ADAPTED`, ADAPTED adapted on that very export, got the caution of any other
    manifest ("nothing shows that this split was made by the run that trained this model ... held out, if at all, only
    for the model that run trained") and the note advised comparing it with the recorded calls, though every cell
    scored trained it (0.37.0 before release). The model records the manifest's SHA-1 it learnt from: the terminal,
    metrics.json, the report and a comparison now say the score is in-sample. The shipped model on the same export is
    cautioned as on a manifest without splits, not as on a run's split."""
    from wbc.cli import main
    from wbc.io import file_sha1
    from wbc.paths import DEFAULT_MODEL

    if Path(classifier.path).resolve() != DEFAULT_MODEL.resolve():
        pytest.skip("the shipped model is needed (the test fields' cases are adapted with --method head)")
    cid = create_case_from_fields(store, "S-A", fields, classifier)
    for cell in store.case_document(cid)["cells"]:
        store.reclassify(cid, cell["id"], cell["model_label"], "A. Tech")
    store.sign_off(cid, "Dr. E")
    out = tmp_path / "export"
    export_cases(store, out)

    def wbc_cli(*args: str) -> str:
        monkeypatch.setattr(sys, "argv", ["wbc", *args])
        with pytest.raises(SystemExit) as done:
            main()
        said = " ".join(capsys.readouterr().err.split())
        assert done.value.code == 0, said
        return said

    wbc_cli("adapt", "--data", str(out), "--output", str(tmp_path / "lab.onnx"), "--method", "head")
    said = wbc_cli("evaluate", str(out / "manifest.csv"), "--model", str(tmp_path / "lab.onnx"), "--output",
                   str(tmp_path / "ev_lab"), "--bootstrap", "100")
    assert "was adapted (`wbc adapt`) on this very manifest" in said and "in-sample" in said, said
    m = json.loads((tmp_path / "ev_lab" / "metrics.json").read_text())
    assert m["adapted_on"] == file_sha1(out / "manifest.csv"), m.get("adapted_on")
    assert "compare an adapted model with the recorded calls" not in said, said
    for text in (m["caution"], " ".join((tmp_path / "ev_lab" / "report.html").read_text().split())):
        assert "this model was adapted (`wbc adapt`) on these very cells" in text and "this split" not in text, text
    said = wbc_cli("evaluate", str(out), "--compare", str(classifier.path), str(tmp_path / "lab.onnx"), "--output",
                   str(tmp_path / "cmp"))
    cmp = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert not cmp["adapted_on"]["a"] and cmp["adapted_on"]["b"] == m["adapted_on"], cmp["adapted_on"]
    assert "adapted (`wbc adapt`) on these very cells" in cmp["caution"]["b"], cmp["caution"]
    assert "adapted (`wbc adapt`)" not in cmp["caution"]["a"], cmp["caution"]  # the folder's caution
    assert "compare an adapted model with the recorded calls" not in said, said
    wbc_cli("evaluate", str(out / "manifest.csv"), "--output", str(tmp_path / "ev_shipped"), "--bootstrap", "100")
    caution = json.loads((tmp_path / "ev_shipped" / "metrics.json").read_text())["caution"]
    assert "names no splits" in caution and "this split" not in caution and "adapted on" not in caution, caution
