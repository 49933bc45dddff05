"""Killed runs resume and give what an uninterrupted run gives; two runs of one config are identical.

Real subprocesses of ``python -m experiments.steer`` on the tiny on-disk pipeline (tests/tiny_pipeline.py).
A run is killed with SIGKILL (no cleanup, as by a power cut or the OOM killer) at a chosen step through the
test hook ``COOC_KILL_AT=NAME:N`` (sources/progress.py), then started again with the same command; the
final folder must equal an uninterrupted run's, file by file (JSON files compared without wall times).
A second chain kills the interventions stage inside its second group (``group 2 forward:1``): the restart
loads the first group from its checkpoint (.staging/interventions/.partial/<key>/) and computes only the others.

To keep the wall time down, the chain of killed subprocesses runs in a thread while this process runs
the pipeline twice from scratch (own caches), for the reproducibility test and as the reference; the
last restart, which is not killed, runs in this process too.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from tiny_pipeline import differences, run_files, run_in_process, write_pipeline

ROOT = Path(__file__).resolve().parents[1]

# where each run of the chain is killed: during caching and counting (stream batch 3 of 8, inside the
# cooc stage), during probing (first batch of probe windows), during interventions (first forward pass)
KILLS = ["stream:3", "probe:1", "interventions:1"]


def steer(config: Path, out: Path, cache: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    # one thread: float32 sums in BLAS are then done in one order (with several threads, competing for cores,
    # the last digits of effects can differ between runs; see README "What the framework guarantees")
    env = {**os.environ, "COOC_CACHE": str(cache), "COOC_PROGRESS": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("COOC_KILL_AT", None)
    if kill:
        env["COOC_KILL_AT"] = kill
    return subprocess.run([sys.executable, "-m", "experiments.steer", str(config), "--out", str(out), "--quiet"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    config = write_pipeline(root / "inputs")
    chain: list[subprocess.CompletedProcess] = []

    def kill_chain():
        for kill in KILLS:  # each run resumes what the one before left, and is killed one stage later
            chain.append(steer(config, root / "resumed", root / "cache_resumed", kill))
            manifest = root / "resumed" / "manifest.json"  # what the killed run left behind
            stages = json.loads(manifest.read_text())["stages"] if manifest.exists() else {}
            chain[-1].stages_left = {k: v.get("complete") for k, v in stages.items()}
            staging = root / "resumed" / ".staging"  # where the killed stage was writing
            chain[-1].staging = sorted(p.name for p in staging.iterdir()) if staging.exists() else []
            chain[-1].cached = len(list((root / "cache_resumed").glob("activations/*/batch_*.pt")))

    lane = threading.Thread(target=kill_chain)
    lane.start()
    # meanwhile, two uninterrupted runs from scratch (own caches) in this process, single-threaded like
    # the subprocesses; the first is the reference the resumed run must equal
    run_in_process(config, root / "ref", root / "cache_ref")
    run_in_process(config, root / "again", root / "cache_again")
    lane.join()
    # the last restart runs to the end (in this process: it is not killed, and that saves a start-up)
    lines = run_logged(config, root / "resumed", root / "cache_resumed")
    chain.append(SimpleNamespace(returncode=0, stderr="\n".join(lines)))
    return root, chain


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def run_logged(config, out, cache) -> list[str]:
    """run_in_process, returning the log messages it emitted (INFO and above)."""
    seen, logger = _Messages(), logging.getLogger()
    level = logger.level
    logger.addHandler(seen)
    logger.setLevel(logging.INFO)
    try:
        run_in_process(config, out, cache)
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)
    return seen.lines


def test_two_runs_of_the_same_config_and_seed_give_byte_identical_tables(runs):
    root, _ = runs
    files = run_files(root / "ref")
    assert {"cooc/groups.csv", "cooc/pairs.parquet", "cooc/counts.npz", "probes/results.csv",
            "interventions/effects.csv", "verdicts.csv", "report.md"} <= set(files), sorted(files)
    assert differences(root / "ref", root / "again") == []


def test_the_manifest_records_config_hash_seed_versions_and_commit(runs):
    root, _ = runs
    m = json.loads((root / "ref" / "manifest.json").read_text())
    from sources.files import stable_hash

    assert m["config"]["seed"] == m["seed"] == 0 and m["config_hash"] == stable_hash(m["config"])
    assert m["config"]["sae"]["path"].endswith("sae") and m["complete"] is True
    assert {"torch", "transformers", "sae-lens", "nnsight", "numpy", "pandas", "pyarrow"} <= set(m["versions"])
    assert all(v for v in m["versions"].values())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert len(m["git_commit"]) == 40 and m["git_dirty"] in (True, False)
    assert m["git_commit"] == head or subprocess.run(["git", "cat-file", "-e", m["git_commit"]], cwd=ROOT).returncode == 0
    for stage in ("cooc", "probes", "interventions"):
        rec = m["stages"][stage]
        assert rec["complete"] and rec["key"] and rec["files"], stage


def test_each_killed_run_died_by_sigkill_where_asked_and_left_no_finished_stage_behind(runs):
    _, chain = runs
    killed = chain[:-1]
    assert [r.returncode for r in killed] == [-signal.SIGKILL] * len(KILLS), [r.stderr[-1500:] for r in killed]
    # the record holds only finished stages; the killed stage's files are in OUT/.staging/<stage>, never in OUT/<stage>
    # stream:3 -> three batches cached, cooc unfinished (nothing recorded)
    assert killed[0].cached == 3 and killed[0].stages_left == {} and killed[0].staging == ["cooc"]
    # probe:1 -> cooc finished, probes unfinished
    assert killed[1].stages_left == {"cooc": True} and killed[1].staging == ["probes"]
    # interventions:1 -> cooc and probes finished, interventions unfinished
    assert killed[2].stages_left == {"cooc": True, "probes": True} and killed[2].staging == ["interventions"]


def test_rerunning_resumes_from_the_last_checkpoint(runs):
    _, chain = runs
    # the run after the kill in the stream reads the 3 cached batches of the discovery part and computes the other 2
    assert "stream: 3 of 5 batches read from the activation cache" in chain[1].stderr
    # later runs reuse every finished stage
    assert "cooc: up to date" in chain[2].stderr
    assert "cooc: up to date" in chain[3].stderr and "probes: up to date" in chain[3].stderr


def test_a_resumed_run_gives_exactly_what_an_uninterrupted_run_gives(runs):
    root, chain = runs
    assert chain[-1].returncode == 0, chain[-1].stderr[-2000:]
    assert not list((root / "resumed").rglob(".*.tmp*")), "a killed write left a temporary file behind"
    assert differences(root / "ref", root / "resumed") == []


# ----------------------------------------------------------------------------------- per-group checkpoints

# the killed run dies at the first forward pass of the second group, after the first group's checkpoint
GROUP_KILL = "group 2 forward:1"


@pytest.fixture(scope="module")
def group_runs(tmp_path_factory):
    """A 3-group interventions stage killed in its second group, restarted, and an uninterrupted reference."""
    root = tmp_path_factory.mktemp("interrupt_groups")
    config = write_pipeline(root / "inputs")
    config.write_text(config.read_text().replace("top_n: 1", "top_n: 3"))
    killed = {}

    def kill_run():
        killed["proc"] = steer(config, root / "resumed", root / "cache_resumed", GROUP_KILL)
        partial = root / "resumed" / ".staging" / "interventions" / ".partial"  # the unfinished stage's folder
        killed["left"] = sorted(str(p.relative_to(partial)) for p in partial.rglob("*.pkl")) if partial.exists() else []

    lane = threading.Thread(target=kill_run)
    lane.start()
    run_in_process(config, root / "ref", root / "cache_ref")  # the reference, meanwhile
    lane.join()
    lines = run_logged(config, root / "resumed", root / "cache_resumed")
    order = [g["group_id"] for g in json.loads((root / "ref" / "interventions" / "summary.json").read_text())["groups"]]
    return root, killed, lines, order


def test_a_run_killed_inside_a_group_resumes_from_the_finished_groups_checkpoints(group_runs):
    root, killed, lines, order = group_runs
    assert killed["proc"].returncode == -signal.SIGKILL, killed["proc"].stderr[-1500:]
    assert len(order) >= 2, order
    key = json.loads((root / "ref" / "manifest.json").read_text())["stages"]["interventions"]["key"]
    # the killed run left the pool scan and the first group, not the second (it died in its first forward pass)
    assert killed["left"] == sorted([f"{key}/pool.pkl", f"{key}/group_{order[0]}.pkl"]), killed["left"]
    assert f"interventions: group {order[0]} loaded from checkpoint" in lines
    assert "interventions: pool scan loaded from checkpoint" in lines
    for g in order[1:]:  # computed, not loaded
        assert f"interventions: group {g} loaded from checkpoint" not in lines
        assert any(line.startswith(f"group {g}: ") and " arms on " in line for line in lines), lines
    assert "cooc: up to date" in "\n".join(lines) and "probes: up to date" in "\n".join(lines)


def test_a_run_resumed_from_group_checkpoints_gives_byte_identical_files_and_removes_them(group_runs):
    root, _, _, _ = group_runs
    for run in ("resumed", "ref"):
        assert not (root / run / "interventions" / ".partial").exists() and not (root / run / ".staging").exists()
    assert differences(root / "ref", root / "resumed") == []
    m = json.loads((root / "resumed" / "manifest.json").read_text())
    assert m["stages"]["interventions"]["complete"] and not any(".partial" in f for f in m["stages"]["interventions"]["files"])
