"""The whole pipeline on a tiny model, then the report: exploration data checked against independent
computations, a self-contained report.html, and ``python -m experiments.report`` rebuilding it."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from experiments.cli import build_config
from experiments.config import ExperimentConfig
from experiments.report import main as report_main
from experiments.steer import main as steer_main
from tiny_pipeline import write_pipeline


def tiny_run_config(root: Path) -> Path:
    """The tiny pipeline of tests/tiny_pipeline.py with steering, probe figures and the report switched on."""
    config = write_pipeline(root)
    data = yaml.safe_load(config.read_text())
    data["stream"]["cache"] = False
    data["probes"]["figures"] = True
    data["interventions"].update(top_n=2, steering={"alphas": [-2.0, 2.0], "n_random": 1})
    data["report"] = {"max_groups": 6, "max_points": 50, "top_contexts": 3}
    config.write_text(yaml.safe_dump(data))
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    config = tiny_run_config(root)
    out = root / "run"
    assert steer_main([str(config), "--out", str(out), "--quiet"]) == 0
    return config, out


def test_steer_writes_a_self_contained_report_with_every_section(run):
    _, out = run
    page = (out / "report.html").read_text()
    assert json.loads((out / "manifest.json").read_text())["stages"]["explore"]["complete"]
    # self-contained: no external scripts, styles or images (plotly.js is inlined)
    assert not re.search(r"<script[^>]+src=", page)
    assert not re.search(r"<link[^>]+href=\"?https?:", page)
    assert not re.search(r"<img[^>]+src=\"?https?:", page)
    assert "Plotly.newPlot" in page and len(page) > 1_000_000
    for anchor in ('id="verdict-table"', 'id="cooc"', 'id="sae"', 'id="probes"', 'class="card group-card"'):
        assert anchor in page, anchor
    verdicts = pd.read_csv(out / "verdicts.csv", dtype={"group_id": str})
    explored = json.loads((out / "explore" / "summary.json").read_text())["groups"]
    assert len(verdicts) and set(verdicts["group_id"]) <= set(explored)  # evaluated groups get cards first
    for gid in explored:
        assert f'id="group-{gid}"' in page
    assert page.count('class="card group-card"') == len(explored)
    wins = int(verdicts["beats_best_single"].isin(["beats"]).sum())
    assert f"Interventions: {wins} of {len(verdicts)} groups beat their best single latent" in page
    ev = pd.read_csv(out / "interventions" / "effect_verdicts.csv", dtype={"group_id": str})
    assert "every effect" in page and len(ev)  # each evaluated group's card lists its effect verdicts
    assert sorted(p.name for p in (out / "figures").glob("*.png"))  # static figures saved beside the page
    assert (out / "figures" / "cooc_group_sizes.png").exists()
    # the co-occurrence section says which null ran, beside the token-iid one, and how the edges replicated
    cooc = json.loads((out / "cooc" / "manifest.json").read_text())
    rep = cooc["replication"]
    assert cooc["test"] == "document" and "document-stratified" in page and "the token-iid binomial null instead" in page
    assert f"{rep['edges_replicated']} of {rep['edges_tested']}" in page and "edges replicated on the held-out documents" in page


def test_top_contexts_are_the_largest_activations_of_each_latent(run):
    """contexts.csv against an independent pass: encode every activation and take the top-k per latent."""
    config, out = run
    from sources.stream import iter_latents

    cfg = build_config(ExperimentConfig, config)
    s = cfg.session(progress=False)
    batches = list(iter_latents(s.model, s.sae, cfg.data, cfg.hook, cfg.stream, progress=False))
    dense = np.concatenate([b.latents.toarray() for b in batches])
    contexts = pd.read_csv(out / "explore" / "contexts.csv", dtype={"group_id": str})
    assert len(contexts)
    for latent, sub in contexts.groupby("latent"):
        col = dense[:, latent]
        expect = np.sort(col[col > 0])[::-1][:cfg.report.top_contexts]
        np.testing.assert_allclose(sub.sort_values("rank")["activation"].to_numpy(), expect, rtol=1e-5)
    assert contexts["token"].astype(str).str.len().gt(0).all()


def test_the_pca_view_matches_sklearn_on_the_group_reconstruction(run):
    config, out = run
    from sklearn.decomposition import PCA

    from sources.sae_view import SAEView
    from sources.stream import iter_latents

    cfg = build_config(ExperimentConfig, config)
    s = cfg.session(progress=False)
    dense = np.concatenate([b.latents.toarray() for b in iter_latents(s.model, s.sae, cfg.data, cfg.hook, cfg.stream, progress=False)])
    summary = json.loads((out / "explore" / "summary.json").read_text())
    scatter = pd.read_csv(out / "explore" / "scatter.csv", dtype={"group_id": str})
    W = SAEView(s.sae).decoder_np().astype(np.float64)
    checked = 0
    for gid, info in summary["groups"].items():
        if "explained_variance_ratio" not in info:
            continue
        m = np.array(info["members"])
        rows = (dense[:, m] > 0).any(1)
        ref = PCA(n_components=2).fit(dense[rows][:, m] @ W[m])
        np.testing.assert_allclose(info["explained_variance_ratio"], ref.explained_variance_ratio_, rtol=1e-4, atol=1e-6)
        pts = scatter[scatter["group_id"] == gid]
        assert 0 < len(pts) <= cfg.report.max_points
        # every plotted point is where the group fires, and its strength is the sum of member activations there
        assert (pts["strength"] > 0).all() and (pts["n_active"] >= 1).all()
        checked += 1
    assert checked


def test_the_report_command_rebuilds_the_page_without_recomputing(run, capsys):
    _, out = run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix in (".csv", ".json", ".npy")}
    (out / "report.html").unlink()
    assert report_main([str(out), "--quiet"]) == 0
    assert (out / "report.html").exists()
    after = {p: p.stat().st_mtime_ns for p in before}
    assert before == after


def test_report_bad_input_is_a_clear_error(tmp_path, capsys):
    assert report_main([str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert report_main([str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_an_unknown_report_group_is_a_clear_error(run, capsys):
    config, out = run
    assert steer_main([str(config), "--out", str(out), "--quiet", "--set", "report.groups=[g_nope]"]) == 2
    err = capsys.readouterr().err
    assert "report.groups" in err and "g_nope" in err and "Traceback" not in err
    assert steer_main([str(config), "--out", str(out), "--quiet", "--set", "report.groups=[]"]) == 2
    assert "list of group ids is empty" in capsys.readouterr().err


# ------------------------------------------------------------------ a real headless browser

def _chromium():
    """Debian's Chromium and Python's playwright (installed by .ci/run); in CI their absence is a failure."""
    import os
    import shutil

    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("the browser test needs Debian's chromium and the playwright package (.ci/run installs both)")
        pytest.skip("no chromium/playwright here: apt-get install chromium; pip install playwright")
    return path


CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]


def test_the_report_renders_in_headless_chromium_without_javascript_errors(run, tmp_path):
    import os
    import shutil

    from playwright.sync_api import sync_playwright

    exe = _chromium()
    _, out = run
    page_errors, console_errors, requests = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: requests.append(r.url))
        page.goto((out / "report.html").resolve().as_uri(), wait_until="load")
        page.wait_for_selector(".group-card .js-plotly-plot .main-svg", timeout=30_000)  # plotly drew into the cards
        assert page.locator("#verdict-table tr").count() >= 2  # header + at least one group
        assert page.locator(".group-card").count() >= 1
        assert page.locator(".group-card mark").count() >= 1  # highlighted token in a top context
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=False)
        browser.close()
    assert not page_errors, page_errors
    assert not console_errors, console_errors
    assert all(u.startswith(("file:", "data:", "about:")) for u in requests), [u for u in requests if "://" in u][:3]
    assert shot.stat().st_size > 10_000
    if os.environ.get("REPORT_SCREENSHOTS"):  # e.g. to look at the CI run's rendering
        shutil.copy(shot, os.environ["REPORT_SCREENSHOTS"])


def test_probe_pca_points_are_saved_for_the_interactive_view(run):
    _, out = run
    summary = json.loads((out / "probes" / "summary.json").read_text())
    figs = [(t, f) for t, info in summary["tasks"].items() for f in (info.get("figures") or {}).values()]
    if not figs:
        pytest.skip("the tiny probe stage drew no PCA figure")
    for task, f in figs:
        pts = pd.read_csv(out / "probes" / "figures" / f["path"].replace(".png", ".csv"))
        assert len(pts) == f["tokens"] and {"pc1", "pc2", "token", "doc_id"} <= set(pts.columns)
        # the scatter's spread along PC1 and PC2 is ordered like the explained variance
        assert pts["pc1"].var() >= pts["pc2"].var() - 1e-9


def test_a_folder_with_only_the_cooc_stage_still_gets_a_page(run, tmp_path):
    import shutil

    _, out = run
    part = tmp_path / "partial"
    shutil.copytree(out / "cooc", part / "cooc")
    manifest = json.loads((out / "manifest.json").read_text())
    (part / "manifest.json").write_text(json.dumps(manifest))
    # a record that still lists the stages whose files are gone is refused, naming a missing file ...
    assert report_main([str(part), "--quiet"]) == 2 and not (part / "report.html").exists()
    # ... while what a run stopped after cooc leaves (a record of cooc alone) gets a page
    manifest["stages"] = {"cooc": manifest["stages"]["cooc"]}
    manifest["complete"] = False
    (part / "manifest.json").write_text(json.dumps(manifest))
    assert report_main([str(part), "--quiet"]) == 0
    page = (part / "report.html").read_text()
    assert "The probe stage has not finished in this folder." in page
    assert "Interventions did not run in this folder" in page
    assert 'id="cooc"' in page and "latents in groups" in page


def test_explore_on_a_stream_without_tokens_is_a_clear_error(tmp_path, monkeypatch):
    from reports import explore
    from sources.errors import ConfigError

    monkeypatch.setattr(explore, "iter_activation_batches", lambda *a, **k: iter(()))
    with pytest.raises(ConfigError, match="gave no tokens to explore") as err:
        explore.collect(None, SimpleNamespace(threshold_F=np.zeros(4)), None, None, None, {"g": (0, 1)})
    assert err.value.field == "data"
