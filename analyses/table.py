"""A resumable tidy table: rows keyed by their condition, written atomically after each batch.

A sweep asks ``table.missing(keys)`` which conditions are still to run, computes them, and adds
them with ``table.add(rows)``; a killed sweep restarts where it stopped.

Several processes may write one file (two commands into one ``--out``): every ``add`` takes a
lock file beside the table, re-reads what is on disk, merges its rows in and writes the whole
table atomically, so no finished row is lost. What is read is validated: a row cut short (a
truncated file) is dropped and recomputed; a file that is not such a table is refused.

A table knows which experiment wrote it: its key columns are kept beside it in ``.<name>.key``
(JSON), and a table whose key is another's (a delete_block folder passed to degradation) is
refused in one line. A table written before that file existed is taken as it is, and gets one
at its next write. A write that fails (a full disk) is one line; the table on disk stays whole.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import pandas as pd

from ablate._infra.errors import UsageError
from ablate._infra.io import file_lock, write_json, write_text

__all__ = ["Table", "as_bool", "header", "stored_key", "write_meta", "locked"]

# Key columns added since tables were first written: an older table without them is read with
# "" there, so its rows match no new condition and are recomputed (never silently reused).
OPTIONAL_KEY = ("data_sha256",)
# Key columns added later whose value every older row had: read as that value, so those rows are
# reused (delete_block's rows were all whole blocks before branches could be deleted).
DEFAULT_KEY = {"granularity": "block"}


class Table:
    """Rows in the CSV file ``path`` (None: in memory only); ``key`` names identifying columns."""

    def __init__(self, path: str | Path | None, key: Sequence[str],
                 text: Sequence[str] = ()) -> None:
        self.path = Path(path) if path is not None else None
        self.key = list(key)
        self.text = tuple(text)  # columns kept as written ("3" stays "3", "" stays "")
        self.df = self._read()
        self.added = 0  # rows this process measured and added (the rest were there before)

    def _read(self) -> pd.DataFrame:
        if self.path is None or not self.path.exists():
            return pd.DataFrame()
        if self.path.is_dir():
            raise UsageError(f"{self.path} is a folder, not a results table: pass another --out")
        df, dropped = read_rows(self.path, self.text)
        if df.empty and not len(df.columns):
            return df
        for c in OPTIONAL_KEY:
            if c in self.key and c not in df.columns:
                df[c] = ""
        for c, v in DEFAULT_KEY.items():
            if c in self.key and c not in df.columns:
                df[c] = v
        self._check_key()
        lacking = [c for c in self.key if c not in df.columns]
        if lacking:
            raise UsageError(
                f"{self.path} is not a results table of this command (it has no "
                f"{', '.join(lacking)} column): pass another --out, or move the file away"
            )
        broken = df[self.key].isna().any(axis=1)
        dropped += int(broken.sum())
        if dropped:
            print(f"table: dropped {dropped} broken row(s) of {self.path} (cut short or "
                  "incomplete); they are recomputed", file=sys.stderr)
        return df[~broken].reset_index(drop=True)

    def _key_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.key")

    def _check_key(self) -> None:
        """Refuse a table whose recorded key is another experiment's (key columns added since
        a table was written do not count: such a table is this experiment's, older)."""
        stored = stored_key(self.path)
        if stored is None:
            return  # none (an older table) or unreadable: rewritten at the next write
        later = set(OPTIONAL_KEY) | set(DEFAULT_KEY)
        if set(stored) - later != set(self.key) - later:
            raise UsageError(
                f"{self.path} is a results table of another experiment (its key is "
                f"{', '.join(stored)}; this command's is {', '.join(self.key)}): pass "
                "another --out, or move the file away"
            )

    def _write(self) -> None:
        """The table and its key file, atomically; a failure (a full disk) is one line."""
        buf = io.StringIO()
        self.df.to_csv(buf, index=False)
        _guard(self.path, lambda: write_text(self.path, buf.getvalue()))
        key = json.dumps({"key": self.key}) + "\n"
        kp = self._key_path()
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if kp.read_text() == key:
                return
        _guard(self.path, lambda: write_text(kp, key))

    def _keys(self) -> set[tuple]:
        if self.df.empty:
            return set()
        return {tuple(_norm(v) for v in r) for r in self.df[self.key].itertuples(index=False)}

    def has(self, **key) -> bool:
        return tuple(_norm(key[k]) for k in self.key) in self._keys()

    def missing(self, keys: Iterable[dict]) -> list[dict]:
        """The keys (once each, in order) that have no row yet."""
        done, out = self._keys(), []
        for k in keys:
            t = tuple(_norm(k[c]) for c in self.key)
            if t not in done:
                done.add(t)
                out.append(k)
        return out

    def add(self, rows: Iterable[dict]) -> None:
        new = pd.DataFrame(list(rows))
        if new.empty:
            return
        self.added += len(new)
        if self.path is None:
            self.df = _merge(self.df, new, self.key)
            return
        with _guarded_lock(self.path):  # another process may have added rows since we read
            self.df = _merge(self._read_quiet(), new, self.key)
            self._write()

    def replace(self, rows: pd.DataFrame, by: Sequence[str] = ("model",)) -> None:
        """Write ``rows`` in place of the rows with the same ``by`` values (a derived table
        recomputed on each run), keeping every other row, e.g. other models'; atomic and locked
        like :meth:`add`."""
        def kept(old: pd.DataFrame) -> pd.DataFrame:
            if old.empty:
                return old
            new = {tuple(_norm(v) for v in r) for r in rows[list(by)].itertuples(index=False)}
            same = [tuple(_norm(v) for v in r) in new
                    for r in old[list(by)].itertuples(index=False)]
            return old[[not x for x in same]]

        if self.path is None:
            self.df = pd.concat([kept(self.df), rows], ignore_index=True)
            return
        with _guarded_lock(self.path):
            self.df = pd.concat([kept(self._read()), rows], ignore_index=True)
            self._write()

    def pop(self, where: Callable[[pd.DataFrame], pd.Series]) -> pd.DataFrame:
        """Remove the rows for which ``where(df)`` is true and return them (rows of a replaced
        checkpoint, moved elsewhere by ``ablate.reproduce``); atomic and locked like :meth:`add`.
        """
        def split(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
            if df.empty:
                return df, df
            hit = where(df).to_numpy(dtype=bool)
            return df[~hit].reset_index(drop=True), df[hit].reset_index(drop=True)

        if self.path is None:
            self.df, gone = split(self.df)
            return gone
        with _guarded_lock(self.path):
            self.df, gone = split(self._read())
            if len(gone):
                self._write()
        return gone

    def _read_quiet(self) -> pd.DataFrame:
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                return _merge(self._read(), self.df, self.key)
        except UsageError:
            return self.df

    def select(self, **key) -> pd.DataFrame:
        d = self.df
        for k, v in key.items():
            if d.empty:
                return d
            d = d[d[k].map(_norm) == _norm(v)]
        return d

    def rows(self, keys: Sequence[dict]) -> pd.DataFrame:
        """The rows of ``keys`` (every row of each key), in the order of ``keys``."""
        if self.df.empty or not keys:
            return self.df.iloc[0:0]
        order = {tuple(_norm(k[c]) for c in self.key): i for i, k in enumerate(keys)}
        pos = [order.get(tuple(_norm(v) for v in r))
               for r in self.df[self.key].itertuples(index=False)]
        d = self.df.assign(_order=pos)
        d = d[d["_order"].notna()]
        return d.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


def as_bool(s: pd.Series) -> pd.Series:
    """A CSV column of booleans as bool, however it was written ("True", "1", "1.0", "yes")."""
    if s.dtype == bool:
        return s
    return s.astype(str).str.strip().str.lower().isin({"true", "1", "1.0", "yes", "y"})


def header(path: str | Path) -> list[str]:
    """The column names of the CSV table at ``path`` ([] when there is none or it is
    unreadable), without reading its rows."""
    try:
        with open(path, newline="") as f:
            return next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def stored_key(path: str | Path) -> list[str] | None:
    """The key columns recorded beside the table at ``path`` (None: none recorded)."""
    path = Path(path)
    try:
        key = json.loads(path.with_name(f".{path.name}.key").read_text()).get("key")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return [str(k) for k in key] if isinstance(key, list) else None


def read_rows(path: Path, text_columns: Sequence[str] = ()) -> tuple[pd.DataFrame, int]:
    """A CSV written by :class:`Table` and the number of rows dropped as cut short: a last line
    without its newline, or a row with fewer or more fields than the header."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} is not a readable results table ({type(e).__name__}): pass "
                         "another --out, or move the file away") from None
    if not text.strip():
        return pd.DataFrame(), 0
    dropped = 0
    if not text.endswith("\n"):  # cut mid-line: the last row is incomplete
        text, dropped = text[: text.rfind("\n") + 1], 1
    try:
        records = list(csv.reader(io.StringIO(text)))
    except csv.Error as e:
        raise UsageError(f"{path} is not a readable results table ({e}): pass another --out, or "
                         "move the file away") from None
    if not records:
        return pd.DataFrame(), dropped
    header, body = records[0], records[1:]
    good = [r for r in body if len(r) == len(header)]
    dropped += len(body) - len(good)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *good])
    try:
        conv = {c: str for c in text_columns if c in header}
        return pd.read_csv(io.StringIO(buf.getvalue()), converters=conv), dropped
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise UsageError(f"{path} is not a readable results table ({str(e).splitlines()[0]}): "
                         "pass another --out, or move the file away") from None


def _merge(old: pd.DataFrame, new: pd.DataFrame, key: Sequence[str]) -> pd.DataFrame:
    """``old`` then ``new``; a key in both keeps ``old``'s rows (finished rows are never
    replaced; a key may own several rows, e.g. one per tap)."""
    if old.empty:
        return new.reset_index(drop=True)
    if new.empty:
        return old
    have = {tuple(_norm(v) for v in r) for r in old[list(key)].itertuples(index=False)}
    fresh = [tuple(_norm(v) for v in r) not in have
             for r in new[list(key)].itertuples(index=False)]
    return pd.concat([old, new[fresh]], ignore_index=True)


def locked(path: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on ``.<name>.lock`` beside ``path`` while the block runs."""
    return file_lock(path.with_name(f".{path.name}.lock"))


def _full(path: Path, e: OSError) -> UsageError:
    why = e.strerror or " ".join(str(e).split()) or type(e).__name__
    return UsageError(
        f"cannot write {path} ({why}): free space on that disk (or pass another --out) and "
        "rerun; the table on disk is as it was before this batch, and a rerun resumes from it"
    )


def _guard(path: Path, write) -> None:
    """Run ``write``; an OSError (no space left, no permission) becomes one line."""
    try:
        write()
    except OSError as e:
        raise _full(path, e) from None


@contextlib.contextmanager
def _guarded_lock(path: Path) -> Iterator[None]:
    """``locked``, with a lock file that cannot be made (a full disk) as one line."""
    cm = locked(path)
    try:
        cm.__enter__()
    except OSError as e:
        raise _full(path, e) from None
    try:
        yield
    finally:
        cm.__exit__(None, None, None)


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
    _guard(Path(path), lambda: write_json(path, meta))
