"""Input files checked before any stage starts: each is opened and its format sniffed, so a damaged or
mislabelled file is one clear line (ConfigError naming the field, the file and the fix), never a traceback
from deep inside transformers, safetensors or a stage that has already begun writing.

Checks are cheap (headers only), except :func:`check_utf8`, which decodes the file in 1 MiB chunks.
"""

from __future__ import annotations

import codecs
import json
import struct
from pathlib import Path

from sources.errors import ConfigError

GGUF_MAGIC = b"GGUF"
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the format's own limit


def regular_file(path: Path, field: str, what: str = "file") -> Path:
    """``path`` if it is an existing regular file (not a folder, device or fifo)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(field, f"{what} {path} does not exist")
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise ConfigError(field, f"{path} is {kind}; give a regular {what}")
    return path


def check_gguf(path: Path, field: str) -> None:
    regular_file(path, field, "GGUF file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ConfigError(field, f"{path} is not a GGUF file (it does not start with the GGUF magic bytes); give a "
                                 ".gguf model file, a model folder or a built-in alias")


def check_json_mapping(path: Path, field: str, need: tuple[str, ...] = ()) -> dict:
    """The JSON object in ``path``; ConfigError when it is missing, not JSON, not an object or lacks ``need`` keys."""
    regular_file(path, field)
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ConfigError(field, f"{path} is not valid JSON (truncated or not a JSON file)") from None
    if not isinstance(obj, dict):
        raise ConfigError(field, f"{path} must hold a JSON object (a mapping), got {type(obj).__name__}")
    missing = [k for k in need if k not in obj]
    if missing:
        raise ConfigError(field, f"{path} lacks the key(s) {', '.join(missing)}")
    return obj


def check_safetensors(path: Path, field: str) -> None:
    """A complete safetensors file: a readable JSON header whose tensors all lie inside the file."""
    regular_file(path, field, "safetensors file")
    size = path.stat().st_size
    problem = None
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            problem = "shorter than a safetensors header"
        else:
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, _MAX_SAFETENSORS_HEADER):
                problem = "its header is longer than the file (truncated)"
            else:
                try:
                    header = json.loads(f.read(n).decode("utf-8"))
                    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
                except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError, AttributeError,
                        OverflowError, RecursionError):
                    problem = "its header is not valid safetensors JSON"
                else:
                    if 8 + n + max(ends, default=0) > size:
                        problem = "its tensors end beyond the end of the file (truncated)"
    if problem:
        raise ConfigError(field, f"{path} is not a complete safetensors file: {problem}; replace the file")


def check_utf8(path: Path, field: str) -> None:
    """``path`` decodes as UTF-8 (names the byte offset of the first invalid byte)."""
    regular_file(path, field)
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                raise ConfigError(field, f"{path} is not UTF-8 text (invalid byte at offset {offset + exc.start}); "
                                         "convert it to UTF-8") from None
            if not chunk:
                return
            offset += len(chunk)


def check_model_folder(folder: Path, field: str) -> None:
    """A transformers model folder: config.json is an object naming its model_type; every safetensors file is whole."""
    check_json_mapping(folder / "config.json", field, need=("model_type",))
    for weights in sorted(folder.glob("*.safetensors")):
        check_safetensors(weights, field)


def check_sae_folder(folder: Path, field: str) -> None:
    """An SAE in sae_lens disk format: cfg.json is an object; sae_weights.safetensors is whole."""
    check_json_mapping(folder / "cfg.json", field)
    check_safetensors(folder / "sae_weights.safetensors", field)
