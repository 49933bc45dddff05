"""The built-in default corpus: present, deterministic, big enough, URL-rich."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import re

import pytest

from sources import builtin_corpus
from sources.builtin_corpus import BUILTIN_CORPORA, get_builtin_corpus
from sources.errors import ConfigError

DEFAULT = BUILTIN_CORPORA["default"]


def _installed_at_pin() -> bool:
    if importlib.util.find_spec(DEFAULT.import_name) is None:
        return False
    try:
        return importlib.metadata.version(DEFAULT.package) == DEFAULT.version
    except importlib.metadata.PackageNotFoundError:
        return False


needs_package = pytest.mark.skipif(
    not _installed_at_pin(), reason=f"needs {DEFAULT.package}=={DEFAULT.version}"
)

URL = re.compile(r"https?://[^\s)\]>\"'`]+|\bwww\.[^\s)\]>\"'`]+")
WORD = re.compile(r"\b[A-Za-z]{2,}\b")


def urls_in_running_text(text: str) -> int:
    """URLs with words of prose before and after them on the same line."""
    count = 0
    for m in URL.finditer(text):
        before = text[max(0, m.start() - 80) : m.start()].rsplit("\n", 1)[-1]
        after = text[m.end() : m.end() + 80].split("\n", 1)[0]
        if len(WORD.findall(before)) >= 3 and WORD.search(after):
            count += 1
    return count


@pytest.fixture(scope="module")
def docs():
    return list(DEFAULT.documents())


def test_registry_describes_default():
    assert DEFAULT.package == "google-api-python-client"
    assert re.fullmatch(r"\d+\.\d+\.\d+", DEFAULT.version)
    assert "Apache-2.0" in DEFAULT.license
    assert DEFAULT.source_description
    assert get_builtin_corpus("default") is DEFAULT
    assert get_builtin_corpus(DEFAULT.name) is DEFAULT


def test_unknown_alias_is_config_error():
    with pytest.raises(ConfigError) as err:
        get_builtin_corpus("no-such-corpus")
    assert err.value.field == "data.name"
    assert "default" in err.value.message


def test_missing_package_is_config_error(monkeypatch):
    monkeypatch.setattr(builtin_corpus.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError) as err:
        list(DEFAULT.documents())
    assert err.value.field == "data.name"
    assert f"pip install {DEFAULT.package}=={DEFAULT.version}" in err.value.message


@needs_package
def test_wrong_version_is_config_error(monkeypatch):
    monkeypatch.setattr(builtin_corpus.importlib.metadata, "version", lambda dist: "0.0.1")
    with pytest.raises(ConfigError) as err:
        list(DEFAULT.documents())
    assert f"pip install {DEFAULT.package}=={DEFAULT.version}" in err.value.message


@needs_package
def test_documents_non_empty_with_unique_ids(docs):
    assert len(docs) >= 300
    ids = [doc_id for doc_id, _ in docs]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(doc_id.startswith("googleapis/") for doc_id in ids)
    assert all(text.strip() for _, text in docs)


@needs_package
def test_deterministic_across_reads(docs):
    def digest(pairs):
        h = hashlib.sha256()
        for doc_id, text in pairs:
            h.update(doc_id.encode())
            h.update(b"\0")
            h.update(text.encode())
            h.update(b"\1")
        return h.hexdigest()

    first = digest(docs)
    builtin_corpus._google_api_docs.cache_clear()  # force a fresh parse
    assert digest(DEFAULT.documents()) == first


@needs_package
def test_large_enough_for_millions_of_tokens(docs):
    total = sum(len(text.encode("utf-8")) for _, text in docs)
    assert total >= 10_000_000  # ~4.3M SmolLM2 tokens at ~4.1 chars/token


@needs_package
def test_many_urls_in_running_prose(docs):
    texts = [text for _, text in docs]
    assert sum(len(URL.findall(t)) for t in texts) >= 5_000
    assert sum(urls_in_running_text(t) for t in texts) >= 3_000
    # URLs are spread over the corpus, not confined to a few documents.
    assert sum(1 for t in texts if URL.search(t)) >= 150


@needs_package
def test_no_text_repeated_across_documents(docs):
    seen: dict[str, str] = {}
    for doc_id, text in docs:
        for para in text.split("\n\n"):
            assert seen.setdefault(para, doc_id) == doc_id
