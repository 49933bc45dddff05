"""A whole tiny pipeline on disk (model folder, SAE folder, JSONL corpus, config) that
``python -m experiments.steer CONFIG --out DIR`` runs end to end in about 9 s, 6 of them imports and loading.

Every stage does real work: 8 cached stream batches, counting and 15 groups, probes on URL position
and word sense, interventions on one group (without steering, task effects and the HTML report, to
keep it fast).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from tiny import tiny_hf_model, tiny_tokenizer

def doc_word(i: int) -> str:
    """Letters for a document number (0 -> a, 12 -> bc): URLs of different documents have different templates."""
    return "".join(chr(97 + int(c)) for c in str(i))


SENTENCES = [
    "see https://example.com/{d}/{a}/path{j}/page?x={i} for details",  # {d}: a URL template per document
    "the bank of the river was steep and the water of the stream rose near the bank",
    "the bank lent money and the loan with credit from the bank was large",
    "a bat flew out of the cave at night",
]

CONFIG = """
seed: 0
model: {{name: {root}/model, device: cpu}}
hook: {{layer: 1}}
sae: {{path: {root}/sae}}
data: {{source: jsonl, path: {root}/corpus.jsonl, context_len: 32, max_tokens: 1024}}
stream: {{batch_size: 4, cache: true}}
cooc: {{min_occurrences: 3, min_count: 2, min_npmi: 0.1, max_group_size: 6, chunk_tokens: 64}}
probes:
  n_groups: 1
  min_count: 1
  max_tokens: 200
  prefix_tokens: 8
  n_bootstrap: 50
  n_controls: 1
  n_freq_bins: 2
  folds: 2
  inner_folds: 2
  regularisation: [1.0]
  figures: false
  word_sense:
    min_per_class: 3
    lexicon:
      bank: {{senses: {{river: [river, stream, water], finance: [money, loan, credit]}}}}
interventions:
  top_n: 1
  modes: [zero]
  n_controls: 1
  pool_tokens: 400
  max_tokens: 64
  min_docs: 2
  n_boot: 100
  batch_size: 8
  steering: {{enabled: false}}
  read_layer: null              # no read-out layer: no task effects (fast)
report: {{enabled: false}}
"""


def save_sae(folder: Path, seed: int = 0) -> None:
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=32, d_sae=64, k=6))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.W_dec.copy_(sae.W_enc.T / sae.W_enc.T.norm(dim=1, keepdim=True))
    sae.save_model(folder)


def write_corpus(path: Path, n_docs: int = 40, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n_docs):
            parts = [rng.choice(SENTENCES).format(a="abc"[j % 3], j=j, i=i, d=doc_word(i)) for j in range(rng.randint(3, 6))]
            f.write(json.dumps({"id": f"d{i}", "text": " ".join(parts)}) + "\n")


def run_in_process(config: Path, out: Path, cache: Path) -> None:
    """``python -m experiments.steer CONFIG --out OUT`` in this process, single-threaded, with its own cache."""
    import os

    from experiments.cli import build_config
    from experiments.config import ExperimentConfig
    from experiments.steer import run_pipeline

    threads, old = torch.get_num_threads(), os.environ.get("COOC_CACHE")
    os.environ["COOC_CACHE"] = str(cache)
    torch.set_num_threads(1)
    try:
        run_pipeline(build_config(ExperimentConfig, config), out, progress=False)
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("COOC_CACHE")
        else:
            os.environ["COOC_CACHE"] = old


def write_pipeline(root: Path) -> Path:
    """Model, SAE, corpus and config under ``root``; returns the config's path."""
    root.mkdir(parents=True, exist_ok=True)
    tiny_hf_model("llama").save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    save_sae(root / "sae")
    write_corpus(root / "corpus.jsonl")
    config = root / "config.yaml"
    config.write_text(CONFIG.format(root=root))
    return config


TIMING_KEYS = ("finished", "started")
# the code's version is recorded (and tested) but not compared: another commit may land between two runs
VOLATILE_KEYS = ("git_commit", "git_dirty")


def normalised(obj):
    """A JSON object without wall times (keys ending in ``_s``, ``finished``) and without the recorded
    digests of JSON files (which hold wall times): what must be identical between two runs."""
    if isinstance(obj, dict):
        return {k: normalised(v) for k, v in obj.items()
                if not (k.endswith("_s") or k in TIMING_KEYS or k in VOLATILE_KEYS or k.endswith(".json"))}
    if isinstance(obj, list):
        return [normalised(v) for v in obj]
    return obj


def run_files(out: Path) -> dict[str, bytes]:
    """Every file of a run folder (relative path -> bytes), temporary files excluded."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


# the HTML report shows the run folder's name, wall times and dates by design
NOT_COMPARED = ("report.html",)


def differences(a: Path, b: Path) -> list[str]:
    """Files that differ between run folders ``a`` and ``b`` (JSON compared without wall times)."""
    fa, fb = run_files(a), run_files(b)
    for name in NOT_COMPARED:
        fa.pop(name, None), fb.pop(name, None)
    diff = sorted(set(fa) ^ set(fb))
    for name in sorted(set(fa) & set(fb)):
        if name.endswith(".json"):
            if normalised(json.loads(fa[name])) != normalised(json.loads(fb[name])):
                diff.append(name)
        elif fa[name] != fb[name]:
            diff.append(name)
    return diff
