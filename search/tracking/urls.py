"""Store URLs shared by MLflow and Optuna: their kind, how to show them, and the
cross-process locks that let many workers share one store.

`redact(url)` hides a password in a URL before it is printed (prefer PGPASSWORD or
~/.pgpass: libpq reads them, so no URL needs one). `check_driver(url, flag)` refuses, in
one line naming the extra to install, a database URL whose driver is not installed (the
PostgreSQL drivers are in the `[postgres]` extra, not in the core install). `exclusive(url, name)` holds a named
lock that every process using the same database sees: a PostgreSQL advisory lock, a MySQL
named lock, or an exclusive `flock` on a file beside an SQLite database. It guards two
moments:

* creating a store's tables. Optuna and MLflow both create their schema on first use with
  check-then-create; four workers starting together on an empty database collide
  (measured here: 3 of 4 fail on PostgreSQL with `duplicate key value violates unique
  constraint "pg_type_typname_nsp_index"`, and on SQLite with `table experiments already
  exists` / `duplicate column name`, leaving a half-migrated MLflow database);
* deciding whether a study gets another trial, and failing and enqueueing again an
  interrupted one (search/engines/optuna_engine.py, `study_lock`).

A server lock is asked for without blocking, again every LOCK_POLL_S, until LOCK_WAIT_S
have passed: then `StoreBusy` says which lock and where, rather than every worker hanging
behind one that stalled while holding it (a blocking `pg_advisory_lock` waits forever).

Other URLs (an MLflow server over HTTP, in-memory SQLite) need no lock: the lock is a no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlsplit, urlunsplit

from search.errors import StoreBusy, UsageError
from search.tracking import store

# The pip extra that brings each database's drivers (setup.cfg, [options.extras_require]).
DRIVER_EXTRAS = {"postgresql": "postgres"}
# A lock is held for milliseconds (a trial's ask) up to about a second (creating a store's
# tables: Optuna's on an empty PostgreSQL database took 1.3 s here under load 5, opening them
# once there 0.1 s; workers do it one after another): two minutes means a holder that
# stalled, not one that is slow.
LOCK_WAIT_S = 120.0
LOCK_POLL_S = 0.05  # seconds between two tries for a PostgreSQL lock


def kind(url: str) -> str:
    """'postgresql', 'mysql', 'sqlite', 'http', ... (the scheme without its driver)."""
    return url.split(":", 1)[0].split("+", 1)[0].lower()


def redact(url: str) -> str:
    """`url` with its password (if any) replaced by ***, for messages and logs."""
    parsed = urlsplit(url)
    if not parsed.password:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return urlunsplit(parsed._replace(netloc=netloc))


def check_driver(url: Optional[str], flag: str) -> None:
    """A SQLAlchemy database URL whose driver cannot be imported is bad input: one line
    naming the driver and the extra that installs it, before anything is opened. Other
    URLs (servers, files) and URLs SQLAlchemy cannot parse pass (their opener says why)."""
    if not url or kind(url) in ("sqlite", "http", "https", "file", "databricks") or "://" not in url:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        dialect = make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        return
    try:
        dialect.import_dbapi()
    except ImportError:
        extra = DRIVER_EXTRAS.get(kind(url))
        install = f"pip install 'blocksweep[{extra}]'" if extra else "install it"
        raise UsageError(f"{flag} {redact(url)}: the {kind(url)} driver {dialect.driver!r} is not installed; "
                         f"{install}") from None


# How long a store may take to answer its first contact. A server or database that is up
# answers in milliseconds; without this probe MLflow's HTTP client retries for minutes
# (measured: an MLflow URL with nothing listening was reported after 255 s) and SQLAlchemy
# waits for the operating system's TCP timeout.
PROBE_SECONDS = 5.0


def check_reachable(url: Optional[str], flag: str, what: str = "database",
                    seconds: float = PROBE_SECONDS) -> None:
    """A store that does not answer is bad input, refused in one line within `seconds` and
    before anything is created: an MLflow server (http, https) must answer its health
    check (`GET /health`); a PostgreSQL or MySQL database must accept a connection. Local
    SQLite files are checked by `check_local`; other URLs pass (their opener says why)."""
    if not url:
        return
    scheme = kind(url)
    if scheme in ("http", "https"):
        _probe_server(url, flag, seconds)
    elif scheme in ("postgresql", "mysql"):
        _probe_database(url, flag, what, seconds)


def _probe_server(url: str, flag: str, seconds: float) -> None:
    import socket
    import urllib.error
    import urllib.request

    health = url.rstrip("/") + "/health"  # MLflow's server: 200 "OK" once it serves
    try:
        with urllib.request.urlopen(health, timeout=seconds):
            return
    except urllib.error.HTTPError as err:
        # 401/403: a server behind a login answered, reachable. 404: something answers
        # there, but no MLflow server (every one serves /health); 5xx: a proxy whose
        # server is down, or a server that cannot reach its own database.
        if err.code == 404 or err.code >= 500:
            raise UsageError(f"{flag} {redact(url)}: GET {redact(health)} answered HTTP {err.code}: no working "
                             "MLflow server there; start one (`blocksweep ui` or `mlflow server`) or correct "
                             "the address") from None
        return
    except (urllib.error.URLError, socket.timeout, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise UsageError(f"{flag} {redact(url)}: no MLflow server answers there ({reason}; waited at most "
                         f"{seconds:g} s); start one (`blocksweep ui` or `mlflow server`) or correct the "
                         "address") from None


def _probe_database(url: str, flag: str, what: str, seconds: float) -> None:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    from search.errors import first_line

    try:
        # Every PostgreSQL and MySQL driver SQLAlchemy uses takes `connect_timeout` in seconds.
        engine = sqlalchemy.create_engine(url, poolclass=NullPool,
                                          connect_args={"connect_timeout": max(1, round(seconds))})
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except Exception as err:  # refused, unknown host, no such database, bad password
        detail = first_line(getattr(err, "orig", None) or err).replace(url, redact(url))
        raise UsageError(f"{flag} {redact(url)}: cannot open the {what} ({detail})") from None


def check_local(url: Optional[str], flag: str) -> None:
    """A local SQLite store's folder must be creatable (nothing is created here)."""
    path = sqlite_path(url) if url else None
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{flag} {url}: {path} is a folder, not a database file")
    why = store.cannot_create(path.parent)
    if why:
        raise UsageError(f"{flag} {url}: cannot create the database there ({why})")


def lock_key(name: str) -> int:
    """A stable 60-bit integer for a lock name (fits PostgreSQL's bigint advisory keys)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)


def sqlite_path(url: str) -> Optional[Path]:
    """The database file of an sqlite:/// URL; None for in-memory databases."""
    path = url.split("sqlite:///", 1)[-1] if url.startswith("sqlite:///") else ""
    if not path or path == ":memory:" or "mode=memory" in url:
        return None
    return Path(path.split("?", 1)[0])


@contextlib.contextmanager
def exclusive(url: str, name: str, engine=None, wait: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the lock `name` on the database at `url` for the duration of the block;
    StoreBusy when a database server does not grant it within `wait` seconds.

    `engine` (a SQLAlchemy engine on `url`) is reused when given; otherwise a connection
    is opened for the lock alone and closed afterwards."""
    key = lock_key(name)
    scheme = kind(url)
    if scheme in ("postgresql", "mysql"):
        busy = (f"{redact(url)}: the lock {name!r} was not free after {wait:g} s: another worker holds it "
                "(stalled, or its database connection hangs); stop that worker or retry")
        with _connection(url, engine) as conn, _server_lock(conn, scheme, key, wait, busy):
            yield
    elif scheme == "sqlite" and sqlite_path(url) is not None:
        db = sqlite_path(url)
        db.parent.mkdir(parents=True, exist_ok=True)
        with store.locked(db.with_name(f"{db.name}.{key:x}")):  # flock on <db>.<key>.lock
            yield
    else:
        yield


@contextlib.contextmanager
def _connection(url: str, engine=None):
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    own = engine is None
    if own:
        engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        if own:
            engine.dispose()


@contextlib.contextmanager
def _server_lock(conn, scheme: str, key: int, wait: float, busy: str):
    from sqlalchemy import text

    if scheme == "postgresql":
        # Session-level: held until unlocked or the connection drops (a killed worker
        # releases it with its connection). Tried, not waited for: see the module's notes.
        deadline = time.monotonic() + wait
        while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
            conn.commit()  # no transaction left open while waiting
            if time.monotonic() >= deadline:
                raise StoreBusy(busy)
            time.sleep(LOCK_POLL_S)
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()
    else:
        # MySQL's GET_LOCK waits itself: 1 granted, 0 timed out, NULL an error (killed).
        name = f"blocksweep-{key}"
        got = conn.execute(text("SELECT GET_LOCK(:k, :s)"), {"k": name, "s": max(1, int(wait))}).scalar()
        if got != 1:
            raise StoreBusy(busy)
        try:
            yield
        finally:
            conn.execute(text("SELECT RELEASE_LOCK(:k)"), {"k": name})
