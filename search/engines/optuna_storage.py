"""Optuna study storages: the default URL, and opening one without the engine (which
imports the trainer, and so Keras): for `blocksweep ui --dashboard`, whose
optuna-dashboard opens a storage without creating its tables and so fails on a store no
sweep has used yet; for `export --storage` and `compare --storage`, which check that the
study is there; and for `compare`'s importances and figures, which read a study (`load`)."""

from __future__ import annotations

from typing import Optional

from search.errors import UsageError, first_line
from search.tracking import store, urls


def storage_url(url: Optional[str]) -> str:
    """The study storage a sweep uses: the URL given, else sqlite:///<abs>/mlruns/optuna.db."""
    return url or store.optuna_url()


def cannot_open(url: str, err: Exception) -> UsageError:
    """The one line for a storage that cannot be opened (bad URL, no server, no driver)."""
    return UsageError(f"--storage {urls.redact(url)}: cannot open the study storage ({first_line(err)})")


def prepare(url: str) -> None:
    """Create the study tables at `url` if they are absent."""
    import optuna

    try:
        with urls.exclusive(url, "optuna schema"):  # the lock optuna_engine.make_storage takes
            optuna.storages.RDBStorage(url).engine.dispose()
    except Exception as err:  # bad URL, unreachable server, missing driver
        raise cannot_open(url, err) from None


def check_open(url: str) -> list[str]:
    """The study names at `url`; a storage that cannot be opened is one UsageError line.
    An SQLite file that does not exist is refused too (opening it would create it)."""
    import optuna

    urls.check_driver(url, "--storage")
    path = urls.sqlite_path(url)
    if path is not None and not path.exists():
        raise UsageError(f"--storage {urls.redact(url)}: no such study database")
    try:
        return optuna.get_all_study_names(storage=url)
    except Exception as err:
        raise cannot_open(url, err) from None


def check_study(url: str, study: str) -> None:
    """Refuse (one line) a storage that cannot be opened or does not hold `study`."""
    names = check_open(url)
    if study not in names:
        raise UsageError(f"--storage {urls.redact(url)}: no study {study!r} there "
                         f"(studies: {', '.join(sorted(names)) or 'none'})")


def load(study: str, storage: Optional[str] = None):
    """An existing study, for reading (compare). Raises LookupError when the storage or the
    study is not there (an SQLite file that does not exist is not created), and UsageError
    when a storage the user named cannot be opened."""
    import optuna

    url = storage_url(storage)
    path = urls.sqlite_path(url)
    if path is not None and not path.exists():
        raise LookupError(f"no Optuna storage at {url}")  # opening it would create one
    try:
        return optuna.load_study(study_name=study, storage=url)
    except KeyError:
        raise LookupError(f"no Optuna study {study!r} in {urls.redact(url)}") from None
    except Exception as err:  # a storage that cannot be opened (bad URL, no server)
        if storage is not None:  # the user named it: that is bad input, not a fallback
            raise cannot_open(url, err) from None
        raise LookupError(f"cannot open {urls.redact(url)} ({err.__class__.__name__})") from None
