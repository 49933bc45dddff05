"""The probe stage end to end on a tiny model, through the command line: files, reuse, determinism, errors."""

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

from experiments.cli import build_config
from experiments.config import ExperimentConfig
from experiments.cooc import stage_key as cooc_stage_key
from experiments.probe import main, probe_stage
from experiments.run import Run
from probes.comparison import COLUMNS
from sources.errors import ConfigError
from tiny import save_cooc_standin, tiny_hf_model, tiny_tokenizer

def doc_word(i: int) -> str:
    """Letters for a document number (0 -> a, 12 -> bc): URLs of different documents have different templates."""
    return "".join(chr(97 + int(c)) for c in str(i))


SENTENCES = [
    "see https://example.com/{d}/{a}/path{j}/page?x={i} for details",  # {d}: a URL template per document
    "the bank of the river was steep and the water of the stream rose near the bank",
    "the bank lent money and the loan with credit from the bank was large",
    "a bat flew out of the cave at night",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from sae_lens import TopKSAE, TopKSAEConfig

    root = tmp_path_factory.mktemp("probe_stage")
    model_dir = root / "model"
    tiny_hf_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=32, d_sae=64, k=6))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.W_dec.copy_(sae.W_enc.T / sae.W_enc.T.norm(dim=1, keepdim=True))
    sae.save_model(root / "sae")
    rng = random.Random(0)
    with open(root / "corpus.jsonl", "w") as f:
        for i in range(40):
            parts = [rng.choice(SENTENCES).format(a="abc"[j % 3], j=j, i=i, d=doc_word(i)) for j in range(rng.randint(3, 6))]
            f.write(json.dumps({"id": f"d{i}", "text": " ".join(parts)}) + "\n")
    config = root / "config.yaml"
    config.write_text(f"""
model: {{name: {model_dir}, device: cpu}}
hook: {{layer: 1}}
sae: {{path: {root / 'sae'}}}
data: {{source: jsonl, path: {root / 'corpus.jsonl'}, context_len: 32, max_tokens: 2000}}
stream: {{batch_size: 8}}
probes:
  n_groups: 2
  min_count: 1
  max_tokens: 300
  prefix_tokens: 8
  n_bootstrap: 200
  n_controls: 2
  n_freq_bins: 4
  word_sense:
    min_per_class: 5
    lexicon:
      bank: {{senses: {{river: [river, stream, water], finance: [money, loan, credit]}}}}
      bat: {{senses: {{animal: [cave, wings], sport: [ball, cricket]}}}}
""")
    cfg = build_config(ExperimentConfig, config)
    out = root / "run"
    run = Run(out, cfg.model_dump(mode="json"))
    with run.stage("cooc", cooc_stage_key(cfg, run)) as folder:  # stands in for the cooc stage: the two files probes read
        save_cooc_standin(folder, {"g0a": [0, 1, 2], "g1b": [3, 4, 5, 6], "g2c": [7, 8, 9, 10, 11]})
    assert main([str(config), "--out", str(out), "--quiet"]) == 0
    return root, config, out


def test_the_probe_command_writes_tidy_results_figures_and_a_summary(setup):
    _, _, out = setup
    df = pd.read_csv(out / "probes" / "results.csv")
    assert df.columns.tolist() == COLUMNS
    assert set(df["row_type"]) == {"arm", "comparison", "skipped"}
    tasks = set(df["task"])
    assert {"url_position/since_start", "url_position/since_slash", "word_sense/bank/sense", "word_sense/resolved"} <= tasks
    arms = set(df.loc[df["row_type"] == "arm", "arm"])
    assert {"residual", "chance", "group_subspace", "group_latents", "best_single_latent", "best_single_direction", "ksparse",
            "kbest_latents", "enriched_latents", "enriched_subspace", "best_plus_enriched", "matched_latents",
            "matched_subspace", "random_subspace", "baseline:position", "baseline:url_index", "baseline:token",
            "baseline:union", "neighbour_residual"} <= arms
    assert set(df.loc[df["row_type"] == "comparison", "family"]) == {"gate", "primary", "exploratory", "task"}
    verdicts = pd.read_csv(out / "probes" / "verdicts.csv")
    assert set(verdicts["unit"]) == {"group_subspace", "group_latents"}
    assert verdicts.loc[verdicts["task"].str.startswith("url_position"), "beats_baselines"].notna().all()
    assert any(a.startswith("latent:") for a in arms)
    tested = df[(df["row_type"] == "comparison") & df["p_value"].notna()]
    assert len(tested) and tested["p_adj"].notna().all() and (tested["p_adj"] >= tested["p_value"] - 1e-12).all()
    assert set(tested["metric"]) == {"r2", "log_loss"}
    figs = list((out / "probes" / "figures").glob("*.png"))
    assert "url_position" in {f.name.split("_group")[0] for f in figs}  # word-sense targets: no group fires on them here
    summary = json.loads((out / "probes" / "summary.json").read_text())
    assert summary["tasks"]["url_position"]["task_tokens"] > 0
    ex = pd.read_csv(out / "probes" / "examples.csv")
    assert {"doc_id", "token", "since_start", "since_slash", "word", "sense", "resolved"} <= set(ex.columns)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["probes"]["complete"]


def test_a_word_without_enough_occurrences_is_skipped_with_a_reason(setup):
    _, _, out = setup
    df = pd.read_csv(out / "probes" / "results.csv")
    row = df[df["task"] == "word_sense/bat/sense"]
    assert row["row_type"].tolist() == ["skipped"]
    assert "too few examples: 0 sport" in row["note"].item()


def test_rerunning_reuses_the_stage_and_fresh_recomputes_identical_results(setup, caplog):
    _, config, out = setup
    before = (out / "probes" / "results.csv").read_bytes()
    stamp = json.loads((out / "manifest.json").read_text())["stages"]["probes"]["finished"]
    assert main([str(config), "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "manifest.json").read_text())["stages"]["probes"]["finished"] == stamp
    assert main([str(config), "--out", str(out), "--quiet", "--fresh"]) == 0
    assert (out / "probes" / "results.csv").read_bytes() == before


def test_without_a_cooc_stage_the_command_exits_2_and_says_what_to_run(setup, tmp_path, capsys):
    _, config, _ = setup
    assert main([str(config), "--out", str(tmp_path / "empty"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "python -m experiments.cooc" in err
    cfg = build_config(ExperimentConfig, config)
    run = Run(tmp_path / "fresh_run", cfg.model_dump(mode="json"))
    with pytest.raises(ConfigError, match="no finished co-occurrence stage"):
        probe_stage(cfg, run, progress=False)


def test_a_config_that_differs_from_the_cooc_stage_is_refused(setup, capsys):
    _, config, out = setup
    assert main([str(config), "--out", str(out), "--quiet", "--set", "hook.layer=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cooc: the co-occurrence stage") and "python -m experiments.cooc" in err


def test_unknown_explicit_groups_are_a_config_error(setup, capsys):
    _, config, out = setup
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main([str(config), "--out", str(out), "--quiet", "--set", "probes.groups=[g0a, g99]"]) == 2
    assert "probes.groups: group id 'g99' does not exist in" in capsys.readouterr().err  # before the stage starts
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # the run record is untouched


def test_explicit_groups_are_probed_even_if_not_enriched(setup, tmp_path):
    import shutil

    _, config, out = setup
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    assert main([str(config), "--out", str(copy), "--quiet", "--set", "probes.groups=[g1b]", "--set", "probes.tasks=[url_position]",
                 "--set", "probes.figures=false"]) == 0
    df = pd.read_csv(copy / "probes" / "results.csv")
    assert set(df["group_id"].dropna()) == {"g1b"}


QUOTED = [
    'he said "the river bank was steep" and left',
    'the sign read "closed for the day" at noon',
    "the bank of the river was steep and the water rose",
    'a bat flew out of the cave and "we ran home fast" she wrote',
]


def test_the_quotation_task_runs_end_to_end_from_one_module_and_one_registry_entry(setup, tmp_path):
    from probes.tasks import TASKS

    root, config, _ = setup
    assert "quotation" in TASKS
    rng = random.Random(1)
    corpus = tmp_path / "quoted.jsonl"
    with open(corpus, "w") as f:
        for i in range(40):
            f.write(json.dumps({"id": f"q{i}", "text": " ".join(rng.choice(QUOTED) for _ in range(rng.randint(3, 6)))}) + "\n")
    text = config.read_text().replace(str(root / "corpus.jsonl"), str(corpus))
    text = text.replace("probes:\n", "probes:\n  tasks: [quotation]\n  quotation: {min_per_class: 10}\n", 1)
    qconfig = tmp_path / "quoted.yaml"
    qconfig.write_text(text)
    cfg = build_config(ExperimentConfig, qconfig)
    out = tmp_path / "run"
    run = Run(out, cfg.model_dump(mode="json"))
    with run.stage("cooc", cooc_stage_key(cfg, run)) as folder:
        save_cooc_standin(folder, {"g0a": [0, 1, 2], "g1b": [3, 4, 5, 6]})
    assert main([str(qconfig), "--out", str(out), "--quiet"]) == 0
    df = pd.read_csv(out / "probes" / "results.csv")
    assert {"quotation/inside", "quotation/since_open"} <= set(df["task"])
    assert (df.loc[df["task"] == "quotation/inside", "row_type"] != "skipped").all()
    ex = pd.read_csv(out / "probes" / "examples.csv", dtype={"doc_id": str})
    assert set(ex["task"]) == {"quotation"} and ex["inside"].any() and (~ex["inside"]).any()
    docs = {json.loads(line)["id"]: json.loads(line)["text"] for line in corpus.read_text().splitlines()}
    for r in ex.itertuples():  # inside tokens lie between a pair of quotes, outside tokens in no quoted span
        body = docs[r.doc_id]
        opened = body[:r.char_start].count('"') % 2 == 1
        assert opened == r.inside, (r.doc_id, r.token, r.char_start)
        if r.inside:
            assert r.since_open == r.char_end - 1 - body.rindex('"', 0, r.char_start)
    assert list((out / "probes" / "figures").glob("quotation_group*.png"))


def test_the_saved_windows_and_targets_are_what_the_corpus_rebuild_and_recomputation_give(setup):
    from interventions.tasks import load_task_data
    from probes.result import ProbesResult

    _, config, out = setup
    cfg = build_config(ExperimentConfig, config)
    probes = ProbesResult.load(out / "probes")
    ex = probes.examples
    saved = probes.window_lookup()
    assert {k[0] for k in saved} == {"url_position", "word_sense"}
    assert set(probes.targets["target"]) == {t for t in probes.summary["tasks"]["url_position"]["targets"]} | \
        {t for t in probes.summary["tasks"]["word_sense"]["targets"]}
    tok = tiny_tokenizer()
    a = load_task_data(ex, cfg.data, tok, cfg.probes, cfg.seed, windows=saved, targets=probes.targets)
    b = load_task_data(ex, cfg.data, tok, cfg.probes, cfg.seed)  # re-read from the corpus, re-tokenised, recomputed
    assert [t.family for t in a] == [t.family for t in b] and sum(len(t.windows) for t in a) > 3
    for ta, tb in zip(a, b):
        for wa, wb in zip(ta.windows, tb.windows, strict=True):
            assert (wa.doc_index, wa.doc_id) == (wb.doc_index, wb.doc_id)
            for x, y in ((wa.tokens_L, wb.tokens_L), (wa.mask_L, wb.mask_L), (wa.pos, wb.pos), (wa.rows, wb.rows)):
                np.testing.assert_array_equal(x, y)
        assert [t.name for t in ta.targets] == [t.name for t in tb.targets] and ta.targets
        for xa, xb in zip(ta.targets, tb.targets):
            assert xa.kind == xb.kind
            np.testing.assert_array_equal(xa.rows, xb.rows)
            np.testing.assert_array_equal(xa.y, xb.y)
    assert not any(t.name == "word_sense/resolved" for td in a for t in td.targets)  # not read out


def test_a_damaged_or_foreign_windows_file_is_a_clear_error(setup, tmp_path):
    from interventions.tasks import saved_windows
    from probes.dataset import load_windows

    _, _, out = setup
    bad = tmp_path / "windows.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=r"is not a probe-windows file .*rerun the probes stage"):
        load_windows(bad)
    ex = pd.read_csv(out / "probes" / "examples.csv", dtype={"doc_id": str}, low_memory=False)
    url = ex[ex["task"] == "url_position"].reset_index(drop=True)
    with pytest.raises(ConfigError, match=r"names a url_position window \(document \d+, start \d+\) that the probes "
                                          r"stage's windows.npz lacks"):
        saved_windows(url, "url_position", {}, "examples.csv")


def test_open_session_refuses_a_spec_of_the_wrong_type():
    from sources.session import open_session

    with pytest.raises(ConfigError, match="give a ModelSpec or a dict of its fields, got str"):
        open_session(model="smollm2-135m")
