"""The serving database: conversations, the responses served, the feedback on them, and audit records.

Example::

    store = FeedbackStore.open("runs/sft/feedback.db")           # SQLite (WAL), created when missing
    store = FeedbackStore.open("postgresql://user:pw@db/medtune")  # PostgreSQL through psycopg 3
    store.add_response("chatcmpl-1", [{"role": "user", "content": "头痛怎么办？"}], "多休息。", model="sft")
    store.add_feedback("chatcmpl-1", rating="down", corrected_text="先测血压；持续头痛请就医。")
    store.write({"request_id": "chatcmpl-1", "surface": "api", "actions": []})   # an audit record

``--db`` takes a file path (or ``sqlite:///path``), or a ``postgresql://`` URL; ``none`` turns storage
off. Without ``--db``, ``medtune serve api|web`` store into ``feedback.db`` inside the served model's
directory, next to the ``log_history.json`` its training wrote, or, for a hub id ``org/name``, into
``medtune-serve/org--name/feedback.db`` under the current directory (:func:`default_db`). :meth:`open`
connects and creates the tables at once, so a URL that cannot connect fails at start (one line).

Every text (prompt contents, reply, corrected text, the strings of an audit record) is
de-identified with :mod:`medtune.data.clean.pii` before it is written: the database never holds
the phone numbers, IDs or names a clinician typed. SQLite runs in WAL mode with a busy timeout and
takes the write lock when a transaction begins (``BEGIN IMMEDIATE``), so concurrent requests queue
instead of failing with "database is locked".
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    inspect,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from medtune.data.clean.pii import deidentify
from medtune.errors import MedtuneError

DB_FILE = "feedback.db"  # default name, inside the served model's directory
RATINGS = ("up", "down")
CLEARED = "none"  # a rating taken back (the web page's thumb clicked again): the answer is unrated again
SOURCES = ("api", "web", "regenerate")  # where a feedback row came from (regenerate: the answer was replaced)
BUSY_TIMEOUT_MS = 30_000  # how long a SQLite writer waits for another one before failing

metadata = MetaData()
conversations = Table(
    "conversations", metadata,
    Column("id", String(64), primary_key=True),
    Column("surface", String(16), nullable=False),  # api / web
    Column("created", Float, nullable=False))  # seconds since the epoch (UTC)
responses = Table(
    "responses", metadata,
    Column("id", String(80), primary_key=True),  # the API's chatcmpl-... id (":N" for choice N > 0)
    Column("conversation_id", String(64), ForeignKey("conversations.id"), nullable=False, index=True),
    Column("prompt", Text, nullable=False),  # JSON list of the messages the reply answers
    Column("reply", Text, nullable=False),
    Column("model", String(200), nullable=False),
    Column("surface", String(16), nullable=False),
    Column("created", Float, nullable=False),
    Column("parent_id", String(80), ForeignKey("responses.id"), nullable=True))  # regenerated from
feedback = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("response_id", String(80), ForeignKey("responses.id"), nullable=False, index=True),
    Column("rating", String(8), nullable=True),  # up / down
    Column("corrected_text", Text, nullable=True),
    Column("source", String(16), nullable=False),
    Column("created", Float, nullable=False))
audit = Table(
    "audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(80), nullable=True, index=True),
    Column("surface", String(16), nullable=True),
    Column("created", Float, nullable=False),
    Column("record", Text, nullable=False))  # the whole record as JSON


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name


def default_db(model: str) -> str:
    """Return the default ``--db`` for serving ``model``: ``feedback.db`` in the model's directory;
    for a Hugging Face hub id (``org/name``, no such local directory),
    ``medtune-serve/org--name/feedback.db`` under the current directory."""
    folder = Path(model)
    if folder.is_dir():
        return str(folder / DB_FILE)
    if HUB_ID.match(model):
        return str(Path("medtune-serve") / model.replace("/", "--") / DB_FILE)
    raise MedtuneError(f"--model {model}: no such local directory (a typo?), and not a hub id (org/name); "
                       "give --db PATH|URL or --db none")


def open_store(db: str | None, model: str) -> FeedbackStore | None:
    """Return the store ``--db`` names (None for ``none``; the default beside ``model`` when None)."""
    if db is not None and db.strip().lower() == "none":
        return None
    if db is None:
        db = default_db(model)
        Path(db).parent.mkdir(parents=True, exist_ok=True)  # medtune-serve/org--name/ for a hub id
    return FeedbackStore.open(db)


def redact(text: str) -> str:
    return deidentify(text)[0]


# Audit record keys whose values are identifiers or names set by the server, never text a person typed.
_ID_KEYS = frozenset({"request_id", "time", "surface", "model", "adapter", "template", "doc_id", "category",
                      "rule", "action", "source", "role"})


def _redact_value(value):
    """A JSON value with every string de-identified (audit records nest messages and lists), but
    the values of ``_ID_KEYS``."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: v if k in _ID_KEYS else _redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(v) for v in value]
    return value


def redact_messages(messages: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": redact(m.get("content") or "")} for m in messages]


class FeedbackStore:
    """Conversations, responses, feedback and audit records in one SQLAlchemy database."""

    def __init__(self, engine, shown: str):
        self.engine, self.shown = engine, shown

    @classmethod
    def open(cls, db: str, create: bool = True) -> FeedbackStore:
        """Connect to ``db`` (a path, ``sqlite:///path`` or ``postgresql://...``) and create the
        tables (``create=False``: require them, write nothing); raise a one-line
        :class:`MedtuneError` when it cannot."""
        url, shown = _url(db)
        if not create and url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
            raise MedtuneError(f"--db {shown}: no such database file")
        kwargs = {"pool_pre_ping": True} if url.get_backend_name() == "postgresql" else {}
        try:
            engine = create_engine(url, **kwargs)
        except ImportError:
            raise MedtuneError(f"--db {shown}: PostgreSQL needs psycopg 3; run: pip install 'medtune[db]'") from None
        except ArgumentError as exc:
            raise MedtuneError(f"--db {shown}: {_first_line(exc)}") from None
        if url.get_backend_name() == "sqlite":
            _sqlite_setup(engine)
        try:
            if create:
                metadata.create_all(engine)
            missing = sorted(set(metadata.tables) - set(inspect(engine).get_table_names()))
            if missing:
                engine.dispose()
                raise MedtuneError(f"--db {shown}: not a medtune feedback database (no table {missing[0]})")
            with engine.connect() as conn:  # a real round trip: the server answers, the tables are there
                conn.execute(select(conversations.c.id).limit(1))
        except SQLAlchemyError as exc:
            engine.dispose()
            raise MedtuneError(f"--db {shown}: cannot open the database ({_first_line(exc.orig or exc)})") from None
        return cls(engine, shown)

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ writes

    def add_response(self, response_id: str, prompt: list[dict], reply: str, model: str, surface: str = "api",
                     conversation_id: str | None = None, parent_id: str | None = None) -> str:
        """Store one reply to ``prompt`` (messages ending with the user turn it answers); return its
        conversation id (``conversation_id``, the parent's, or a new one)."""
        now = time.time()
        with self.engine.begin() as conn:
            if conversation_id is None and parent_id is not None:
                conversation_id = conn.execute(select(responses.c.conversation_id)
                                               .where(responses.c.id == parent_id)).scalar()
            if conversation_id is None or conn.execute(select(conversations.c.id).where(
                    conversations.c.id == conversation_id)).first() is None:
                conversation_id = conversation_id or uuid.uuid4().hex
                conn.execute(insert(conversations).values(id=conversation_id, surface=surface, created=now))
            conn.execute(insert(responses).values(
                id=response_id, conversation_id=conversation_id,
                prompt=json.dumps(redact_messages(prompt), ensure_ascii=False), reply=redact(reply),
                model=model, surface=surface, created=now, parent_id=parent_id))
        return conversation_id

    def add_replies(self, response_id: str, prompt: list[dict], replies: list[str], model: str,
                    surface: str = "api") -> str:
        """Store the replies (choices) of one request in one conversation: choice 0 as
        ``response_id``, choice N as ``response_id:N``; return the conversation id."""
        conversation = None
        for i, reply in enumerate(replies):
            conversation = self.add_response(response_id if i == 0 else f"{response_id}:{i}", prompt, reply,
                                             model, surface, conversation_id=conversation)
        return conversation

    def add_feedback(self, response_id: str, rating: str | None = None, corrected_text: str | None = None,
                     source: str = "api") -> dict | None:
        """Store a rating and/or a corrected answer for ``response_id``; return the stored record, or
        None when no such response was stored."""
        if rating not in (None, *RATINGS, CLEARED):
            raise ValueError(f"rating must be one of {RATINGS}, got {rating!r}")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        if rating is None and corrected_text is None:
            raise ValueError("feedback needs a rating or a corrected text")
        row = {"response_id": response_id, "rating": rating, "source": source, "created": time.time(),
               "corrected_text": None if corrected_text is None else redact(corrected_text)}
        with self.engine.begin() as conn:
            if conn.execute(select(responses.c.id).where(responses.c.id == response_id)).first() is None:
                return None
            row["id"] = conn.execute(insert(feedback).values(**row)).inserted_primary_key[0]
        return row

    def write(self, record: dict) -> None:
        """Store one audit record (the ReplyService audit sink), its strings de-identified."""
        clean = _redact_value(dict(record))
        with self.engine.begin() as conn:
            conn.execute(insert(audit).values(
                request_id=clean.get("request_id"), surface=clean.get("surface"), created=time.time(),
                record=json.dumps(clean, ensure_ascii=False, default=str)))

    # ------------------------------------------------------------------ reads

    def regenerated_from(self, prompt: list[dict]) -> str | None:
        """Return the latest response to ``prompt`` that was regenerated away and has no
        regenerated answer yet (the parent of the answer being stored), or None."""
        regenerated = select(feedback.c.response_id).where(feedback.c.source == "regenerate")
        children = select(responses.c.parent_id).where(responses.c.parent_id.is_not(None))
        query = (select(responses.c.id)
                 .where(responses.c.prompt == json.dumps(redact_messages(prompt), ensure_ascii=False),
                        responses.c.id.in_(regenerated), responses.c.id.not_in(children))
                 .order_by(responses.c.created.desc()).limit(1))
        with self.engine.begin() as conn:
            return conn.execute(query).scalar()

    def response(self, response_id: str) -> dict | None:
        with self.engine.begin() as conn:
            row = conn.execute(select(responses).where(responses.c.id == response_id)).mappings().first()
        return None if row is None else _response(row)

    def responses(self) -> list[dict]:
        """Every stored response, oldest first, each with its ``feedback`` rows (oldest first)."""
        with self.engine.begin() as conn:
            rows = [_response(r) for r in conn.execute(
                select(responses).order_by(responses.c.created, responses.c.id)).mappings()]
            notes = conn.execute(select(feedback).order_by(feedback.c.id)).mappings().all()
        by_id = {r["id"]: r for r in rows}
        for note in notes:
            by_id[note["response_id"]]["feedback"].append(dict(note))
        return rows

    def audit_records(self) -> list[dict]:
        with self.engine.begin() as conn:
            return [json.loads(r) for r in conn.execute(select(audit.c.record).order_by(audit.c.id)).scalars()]

    def counts(self) -> dict:
        from sqlalchemy import func

        with self.engine.begin() as conn:
            return {t.name: conn.execute(select(func.count()).select_from(t)).scalar()
                    for t in (conversations, responses, feedback, audit)}


def _response(row) -> dict:
    out = dict(row)
    out["prompt"] = json.loads(out["prompt"])
    out["feedback"] = []
    return out


def database_file(db: str) -> str | None:
    """The file a SQLite ``--db`` names (None for a server URL), to guard outputs against."""
    if "://" not in db:
        return db
    try:
        url = make_url(db)
    except ArgumentError:  # reported by FeedbackStore.open
        return None
    return url.database if url.get_backend_name() == "sqlite" else None


def _url(db: str):
    """Return ``(SQLAlchemy URL, the text to show in messages, password hidden)`` for ``--db``."""
    if "://" not in db:
        path = Path(db).expanduser()
        if path.is_dir():
            raise MedtuneError(f"--db {db}: is a directory; give a database file path")
        if not path.parent.is_dir():
            raise MedtuneError(f"--db {db}: folder '{path.parent}' does not exist")
        return make_url(f"sqlite:///{path.resolve()}"), db
    try:
        url = make_url(db)
    except ArgumentError:
        raise MedtuneError(f"--db {db.split('@')[-1]}: not a database URL (sqlite:///PATH or "
                           "postgresql://USER:PASSWORD@HOST/DB)") from None
    shown = url.render_as_string(hide_password=True)
    if url.drivername in ("postgresql", "postgres"):  # psycopg 3, not SQLAlchemy's psycopg2 default
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise MedtuneError(f"--db {shown}: only SQLite files and postgresql:// URLs are supported")
    return url, shown


def _sqlite_setup(engine) -> None:
    """WAL, a busy timeout, foreign keys, and BEGIN IMMEDIATE (writers queue on the lock at the
    start of a transaction, not fail when a read upgrades to a write)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # pysqlite emits no BEGIN of its own; _on_begin does
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
