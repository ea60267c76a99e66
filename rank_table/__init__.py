"""HCCL rank-table tools: generate, merge and validate rank tables (format version 1.0).

Run ``python -m rank_table --help``; no MindSpore import is needed.
"""


class RankTableError(Exception):
    """A user-facing problem (bad input, missing file or tool); the CLI prints it and exits with 2."""
