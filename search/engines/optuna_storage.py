"""Opening an Optuna study storage without the engine (which imports the trainer, and so
Keras): for `blocksweep ui --dashboard`, whose optuna-dashboard opens a storage without
creating its tables and so fails on a store no sweep has used yet; and for `export
--storage`, which checks the study is there."""

from __future__ import annotations

from search import store_urls
from search.errors import UsageError


def prepare(url: str) -> None:
    """Create the study tables at `url` if they are absent."""
    import optuna

    try:
        with store_urls.exclusive(url, "optuna schema"):  # the lock optuna_engine.make_storage takes
            optuna.storages.RDBStorage(url).engine.dispose()
    except Exception as err:  # bad URL, unreachable server, missing driver
        first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise UsageError(f"--storage {store_urls.redact(url)}: cannot open the study storage ({first[:300]})") from None


def check_open(url: str) -> list[str]:
    """The study names at `url`; a storage that cannot be opened is one UsageError line.
    An SQLite file that does not exist is refused too (opening it would create it)."""
    import optuna

    path = store_urls.sqlite_path(url)
    if path is not None and not path.exists():
        raise UsageError(f"--storage {store_urls.redact(url)}: no such study database")
    try:
        return optuna.get_all_study_names(storage=url)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise UsageError(f"--storage {store_urls.redact(url)}: cannot open the study storage ({first[:300]})") from None


def check_study(url: str, study: str) -> None:
    """Refuse (one line) a storage that cannot be opened or does not hold `study`."""
    names = check_open(url)
    if study not in names:
        raise UsageError(f"--storage {store_urls.redact(url)}: no study {study!r} there "
                         f"(studies: {', '.join(sorted(names)) or 'none'})")
