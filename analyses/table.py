"""A resumable tidy table: rows keyed by their condition, written atomically after each batch.

A sweep asks ``table.missing(keys)`` which conditions are still to run, computes them, and adds
them with ``table.add(rows)``; a killed sweep restarts where it stopped.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from ablate._infra.io import write_json, write_text

__all__ = ["Table", "write_meta"]


class Table:
    """Rows in the CSV file ``path`` (None: in memory only); ``key`` names identifying columns."""

    def __init__(self, path: str | Path | None, key: Sequence[str]) -> None:
        self.path = Path(path) if path is not None else None
        self.key = list(key)
        exists = self.path is not None and self.path.exists()
        self.df = pd.read_csv(self.path) if exists else pd.DataFrame()

    def _keys(self) -> set[tuple]:
        if self.df.empty:
            return set()
        return {tuple(_norm(v) for v in r) for r in self.df[self.key].itertuples(index=False)}

    def has(self, **key) -> bool:
        return tuple(_norm(key[k]) for k in self.key) in self._keys()

    def missing(self, keys: Iterable[dict]) -> list[dict]:
        done = self._keys()
        return [k for k in keys if tuple(_norm(k[c]) for c in self.key) not in done]

    def add(self, rows: Iterable[dict]) -> None:
        new = pd.DataFrame(list(rows))
        if new.empty:
            return
        self.df = new if self.df.empty else pd.concat([self.df, new], ignore_index=True)
        if self.path is None:
            return
        buf = io.StringIO()
        self.df.to_csv(buf, index=False)
        write_text(self.path, buf.getvalue())

    def select(self, **key) -> pd.DataFrame:
        d = self.df
        for k, v in key.items():
            if d.empty:
                return d
            d = d[d[k].map(_norm) == _norm(v)]
        return d


def _norm(v: object) -> object:
    """Compare CSV round-tripped values with fresh ones (ints, floats, bools, strings)."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if hasattr(v, "item"):
        return _norm(v.item())
    return v


def write_meta(path: str | Path, meta: dict) -> None:
    write_json(path, meta)
