"""What workers share and how they wait for it: the study lock on PostgreSQL is given up
after a deadline with a line that says which lock (it waited forever), and a running
trial's heartbeats that cannot be recorded are said once and counted (they were dropped
silently, so a database outage became a silent takeover)."""

from __future__ import annotations

import time

import pytest

from search.errors import StoreBusy
from search.tracking import urls
from tests.services import fresh_database, postgres_or_skip


@pytest.mark.postgres
def test_a_postgresql_lock_held_elsewhere_is_given_up_after_the_deadline_with_one_line():
    import psycopg

    postgres_or_skip()
    with fresh_database("bs_lock") as url:
        with psycopg.connect(url, autocommit=True) as other:  # another worker, stalled holding the lock
            other.execute("SELECT pg_advisory_lock(%s)", (urls.lock_key("study-x"),))
            start = time.monotonic()
            with pytest.raises(StoreBusy) as refused:
                with urls.exclusive(url, "study-x", wait=0.5):
                    pass
            assert time.monotonic() - start < 30  # bounded (a blocking pg_advisory_lock never returned)
            assert "the lock 'study-x' was not free after 0.5 s" in str(refused.value)
            assert url.rsplit("/", 1)[-1] in str(refused.value) and "\n" not in str(refused.value)
            other.execute("SELECT pg_advisory_unlock(%s)", (urls.lock_key("study-x"),))
        with urls.exclusive(url, "study-x", wait=0.5):  # free again: granted
            pass


def test_heartbeats_that_cannot_be_recorded_are_said_once_and_counted(tmp_path, capsys):
    import optuna

    from search.engines.optuna_engine import Heartbeat, trial_id

    import sqlite3

    db = tmp_path / "study.db"
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    with sqlite3.connect(db) as conn:  # the database loses its heartbeats table: every beat fails
        conn.execute("DROP TABLE trial_heartbeats")
    with Heartbeat(storage, trial_id=trial_id(storage, study, trial), interval=0.05, number=7) as beat:
        time.sleep(0.5)
    assert beat.failures >= 3
    err = capsys.readouterr().err
    assert err.count("heartbeat could not be recorded") == 1 and "trial 7" in err
