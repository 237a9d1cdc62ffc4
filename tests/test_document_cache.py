"""The Wikipedia source's document cache: the same documents as a fresh parse, read back without parsing,
rebuilt when malformed, keyed by its inputs, and never in the way when it cannot be written."""

from __future__ import annotations

import json
import logging

import pytest

from peerlab.data import corpora, document_cache


@pytest.fixture(scope="module")
def parsed() -> list[corpora.Document]:
    return corpora.wikipedia_documents()


def _no_parse(*_):
    raise AssertionError("parsed the dump although a cache entry was there")


def test_cached_documents_equal_a_fresh_parse_and_are_read_back_without_parsing(tmp_path, parsed, monkeypatch):
    assert corpora.wikipedia_documents(tmp_path) == parsed  # builds the entry
    entries = list((tmp_path / "documents").glob("wikipedia-*.json"))
    assert len(entries) == 1 and not list((tmp_path / "documents").glob(".*.tmp"))
    monkeypatch.setattr(corpora, "_parse_wikipedia", _no_parse)
    assert corpora.wikipedia_documents(tmp_path) == parsed
    assert corpora.load_documents(["wikipedia", "lee"], cache_dir=tmp_path)[: len(parsed)] == parsed


@pytest.mark.parametrize("content", ["{not json", json.dumps({"a": 1}), json.dumps([["title only"]]),
                                     json.dumps([["t", 3]])], ids=["garbage", "dict", "short-pair", "non-string"])
def test_a_malformed_entry_is_rebuilt(tmp_path, parsed, content, caplog):
    corpora.wikipedia_documents(tmp_path)
    (entry,) = (tmp_path / "documents").glob("wikipedia-*.json")
    entry.write_text(content)
    with caplog.at_level(logging.WARNING, logger="peerlab.data.document_cache"):
        assert corpora.wikipedia_documents(tmp_path) == parsed
    assert "rebuilding it" in caplog.text
    assert json.loads(entry.read_text())[0] == [parsed[0].title, parsed[0].text]


def test_the_entry_is_keyed_by_every_input(tmp_path):
    base = document_cache.entry_path(tmp_path, "wikipedia", [b"dump", b"code", b"4.4.0"])
    assert base == document_cache.entry_path(tmp_path, "wikipedia", [b"dump", b"code", b"4.4.0"])
    for changed in ([b"dump!", b"code", b"4.4.0"], [b"dump", b"code!", b"4.4.0"], [b"dump", b"code", b"4.4.1"],
                    [b"dumpcode", b"", b"4.4.0"]):  # parts are hashed apart, so moving bytes between them counts
        assert document_cache.entry_path(tmp_path, "wikipedia", changed) != base


def test_an_unwritable_cache_only_costs_the_speed_up(tmp_path, parsed, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would go")
    with caplog.at_level(logging.WARNING, logger="peerlab.data.document_cache"):
        assert corpora.wikipedia_documents(blocked) == parsed
    assert "not written" in caplog.text
