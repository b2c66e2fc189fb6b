"""Issue 26, published weights: a download is checked against its sha256 (prefix) and the git blob
id of the source tree, the full sha256 of what was checked is kept; a download cut short is one
line; the conversion into the cache is atomic and safe for concurrent first users. Nothing is
downloaded: the fetch is replaced."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import io
import json
import threading
import time
import urllib.error

import pytest
import torch

import ablate
from ablate._infra.errors import UsageError
from ablate.models import checkpoint, weights


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "bundled").mkdir()
    monkeypatch.setenv("ABLATE_CHECKPOINTS", str(tmp_path / "bundled"))


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Served:
    """A fake ``urlopen``: serves ``data`` (or raises ``error`` after ``cut`` bytes)."""

    def __init__(self, data: bytes, error: BaseException | None = None, cut: int = 0,
                 delay: float = 0.0) -> None:
        self.data, self.error, self.cut, self.delay, self.calls = data, error, cut, delay, 0

    def __call__(self, url):
        self.calls += 1
        time.sleep(self.delay)
        body = io.BytesIO(self.data[: self.cut] if self.error else self.data)
        served = self

        class Response:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def read(self, n=-1):
                chunk = body.read(n)
                if not chunk and served.error is not None:
                    raise served.error
                return chunk

        return Response()


@pytest.fixture
def upstream(tmp_path):
    """An akamaster-format resnet20 and its registry entry, known only by a sha256 prefix and
    its git blob id (like resnet110-akamaster)."""
    torch.manual_seed(1)
    net = ablate.create("resnet20")
    buf = io.BytesIO()
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()},
                "best_prec1": 91.0}, buf)
    data = buf.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    w = dataclasses.replace(weights.WEIGHTS["resnet110-akamaster"], name="resnet20-upstream",
                            arch="resnet20", file=f"resnet20-{sha[:8]}.th", sha256=sha[:8],
                            git_blob=git_blob(data), url="https://example.invalid/r20.th")
    return w, data, net


def test_registry_records_the_git_blob_ids_of_the_unbundled_files():
    assert weights.WEIGHTS["resnet110-akamaster"].git_blob == \
        "45daff3ec1b813c24feb5e17d2208a79066e42d2"
    assert weights.WEIGHTS["resnet1202-akamaster"].git_blob == \
        "bdb9ff6fbe6b0b4f63f0af9713589e89c453c1cf"
    for w in weights.WEIGHTS.values():  # every entry is checked by more than 8 hex digits
        assert len(w.sha256) == 64 or w.git_blob is not None, w.name


def test_download_is_checked_against_both_and_the_full_hash_kept(upstream, monkeypatch):
    w, data, net = upstream
    monkeypatch.setitem(weights.WEIGHTS, w.name, w)
    served = Served(data)
    monkeypatch.setattr(weights.urllib.request, "urlopen", served)
    loaded = checkpoint.load(w.name)
    assert served.calls == 1
    assert loaded.card["weights"]["verified_sha256"] == hashlib.sha256(data).hexdigest()
    assert loaded.card["weights"]["git_blob"] == git_blob(data)
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)
    assert checkpoint.load(w.name).sha256 == loaded.sha256 and served.calls == 1


@pytest.mark.parametrize("wrong", ["git_blob", "sha256"])
def test_a_file_matching_only_one_of_the_two_is_refused(upstream, tmp_path, wrong):
    w, data, _ = upstream
    bad = dataclasses.replace(w, **{wrong: "0" * (40 if wrong == "git_blob" else 8)})
    with pytest.raises(UsageError) as e:
        weights.download(bad, tmp_path / "c", opener=Served(data))
    assert "not the published file" in str(e.value) and "\n" not in str(e.value)
    assert list((tmp_path / "c" / "weights").iterdir()) == []


def test_a_kept_original_that_no_longer_verifies_is_fetched_again(upstream, tmp_path):
    w, data, _ = upstream
    cache = tmp_path / "c"
    dest = weights.download(w, cache, opener=Served(data))
    dest.write_bytes(data[:-1] + b"x")  # altered in place: no longer verifies, fetched again
    served = Served(data)
    assert weights.download(w, cache, opener=served).read_bytes() == data and served.calls == 1


@pytest.mark.parametrize("error", [
    http.client.IncompleteRead(b"partial", 1000), http.client.BadStatusLine("x"),
    http.client.RemoteDisconnected("closed"), urllib.error.URLError("no route"),
    ConnectionResetError("reset"), TimeoutError("timed out"),
    urllib.error.HTTPError("https://example.invalid", 503, "busy", {}, None),
])
def test_a_download_cut_short_is_one_line_and_leaves_nothing(upstream, tmp_path, error):
    w, data, _ = upstream
    with pytest.raises(UsageError) as e:
        weights.download(w, tmp_path / "c", opener=Served(data, error, cut=len(data) // 2))
    msg = str(e.value)
    assert "\n" not in msg and "cannot download" in msg and "--checkpoint PATH" in msg
    assert list((tmp_path / "c" / "weights").iterdir()) == []


def test_an_endless_download_stops_at_the_limit(upstream, tmp_path, monkeypatch):
    w, data, _ = upstream
    monkeypatch.setattr(weights, "MAX_DOWNLOAD_BYTES", len(data) // 2)
    with pytest.raises(UsageError, match="larger than"):
        weights.download(w, tmp_path / "c", opener=Served(data))
    assert list((tmp_path / "c" / "weights").iterdir()) == []


def test_a_crash_between_weights_and_card_is_redone(upstream, monkeypatch, tmp_path):
    w, data, _ = upstream
    monkeypatch.setitem(weights.WEIGHTS, w.name, w)
    monkeypatch.setattr(weights.urllib.request, "urlopen", Served(data))
    # the state the old code left for good: converted weights without their card
    old = tmp_path / "cache" / "weights" / f"{w.name}.safetensors"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"half")

    def crash(*a, **k):
        raise KeyboardInterrupt  # killed while writing the card

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "write_json", crash)
        with pytest.raises(KeyboardInterrupt):
            checkpoint.load(w.name)
    folder = tmp_path / "cache" / "weights" / w.name
    assert not folder.exists()  # nothing half-finished is in place
    half = folder / f"{w.name}.safetensors"  # nor is a half-finished folder taken as done
    half.parent.mkdir()
    half.write_bytes(b"half")
    loaded = checkpoint.load(w.name)
    assert loaded.arch == "resnet20" and (folder / f"{w.name}.json").is_file()
    card = json.loads((folder / f"{w.name}.json").read_text())
    assert card["weights_sha256"] == hashlib.sha256(half.read_bytes()).hexdigest()


def test_concurrent_first_users_convert_once(upstream, monkeypatch):
    w, data, _ = upstream
    monkeypatch.setitem(weights.WEIGHTS, w.name, w)
    served = Served(data, delay=0.2)
    monkeypatch.setattr(weights.urllib.request, "urlopen", served)
    results, errors = [], []

    def first_use():
        try:
            results.append(checkpoint.load(w.name).sha256)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=first_use) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3 and len(set(results)) == 1
    assert served.calls == 1


def test_a_tampered_converted_cache_is_refused(upstream, monkeypatch, tmp_path):
    w, data, _ = upstream
    monkeypatch.setitem(weights.WEIGHTS, w.name, w)
    monkeypatch.setattr(weights.urllib.request, "urlopen", Served(data))
    converted = checkpoint.load(w.name).path
    from safetensors.torch import load_file, save_file

    state = load_file(converted)
    state["linear.bias"] = state["linear.bias"] + 1  # other weights under the same card
    save_file(state, converted)
    with pytest.raises(UsageError) as e:
        checkpoint.load(w.name)
    assert "not the file its card" in str(e.value) and "\n" not in str(e.value)
