"""Opening an Optuna study storage without the engine (which imports the trainer, and so
Keras): for `blocksweep ui --dashboard`, whose optuna-dashboard opens a storage without
creating its tables and so fails on a store no sweep has used yet."""

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
