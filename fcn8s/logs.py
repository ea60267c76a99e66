"""Rank-tagged logging: one line per event, ``[rank R/S]`` on every line."""
from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s [rank %(rank)s] %(levelname)s %(name)s: %(message)s"


_BASE_FACTORY = logging.getLogRecordFactory()


def _record_factory_for(tag: str):
    def factory(*args, **kwargs) -> logging.LogRecord:
        record = _BASE_FACTORY(*args, **kwargs)
        record.rank = tag
        return record
    return factory


def setup_logging(rank: int = 0, size: int = 1, level: int = logging.INFO) -> None:
    """Send INFO+ to stderr, tagged with this process's rank; safe to call again after rank is known."""
    logging.setLogRecordFactory(_record_factory_for(f"{rank}/{size}"))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
