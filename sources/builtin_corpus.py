"""Built-in text corpora that ship inside a pinned registry package.

The default corpus needs no network and no file paths: it is read from the files of
an installed PyPI package, found with :mod:`importlib` (never a machine path).

``default`` (alias ``google-api-descriptions``)
    The human-written API reference prose that Google publishes in its API
    *discovery documents*, as vendored in ``google-api-python-client`` (the
    ``googleapiclient/discovery_cache/documents/*.json`` files, one per API and
    version).  Every ``"description"`` string of those documents is a sentence or
    paragraph of English written by Google's engineers and technical writers for
    people, and thousands of them point the reader to a web page in running text
    ("For more information, see https://cloud.google.com/...").  The package is
    licensed Apache-2.0.

Cleaning is light and deterministic:

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
from typing import Callable, Iterator

from sources.errors import ConfigError

MIN_WORDS = 4
_FIELD = "data.name"


def _package_dir(import_name: str, dist: str, version: str) -> Path:
    """Directory of an installed top-level package, without importing it."""
    hint = f"built-in corpus needs package {dist}: pip install {dist}=={version}"
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(_FIELD, hint)
    try:
        installed = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(_FIELD, hint) from None
    if installed != version:
        raise ConfigError(
            _FIELD,
            f"built-in corpus is pinned to {dist}=={version} but {installed} is "
            f"installed: pip install {dist}=={version}",
        )
    return Path(next(iter(spec.submodule_search_locations)))


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


def _read_google_api_descriptions(corpus: "BuiltinCorpus") -> Iterator[tuple[str, str]]:
    root = _package_dir(corpus.import_name, corpus.package, corpus.version)
    documents_dir = root / "discovery_cache" / "documents"
    if not documents_dir.is_dir():
        raise ConfigError(
            _FIELD,
            f"{corpus.package}=={corpus.version} has no discovery_cache/documents; "
            f"reinstall it: pip install --force-reinstall {corpus.package}=={corpus.version}",
        )
    yield from _google_api_docs(str(documents_dir))


@dataclass(frozen=True)
class BuiltinCorpus:
    """A corpus read from the files of one pinned, installed registry package."""

    name: str
    package: str
    version: str
    license: str
    source_description: str
    import_name: str = ""
    _reader: Callable[["BuiltinCorpus"], Iterator[tuple[str, str]]] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def pip_install(self) -> str:
        return f"pip install {self.package}=={self.version}"

    def documents(self) -> Iterator[tuple[str, str]]:
        """``(doc_id, text)`` pairs in a fixed order; ids are stable across runs.

        Raises :class:`ConfigError` when the package is missing or at another version.
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

BUILTIN_CORPORA: dict[str, BuiltinCorpus] = {
    "default": GOOGLE_API_DESCRIPTIONS,
    GOOGLE_API_DESCRIPTIONS.name: GOOGLE_API_DESCRIPTIONS,
}


def get_builtin_corpus(alias: str) -> BuiltinCorpus:
    """The built-in corpus called ``alias``, or a ConfigError listing the choices."""
    try:
        return BUILTIN_CORPORA[alias]
    except KeyError:
        choices = ", ".join(sorted(BUILTIN_CORPORA))
        raise ConfigError(_FIELD, f"unknown built-in corpus {alias!r}; choose one of: {choices}") from None
