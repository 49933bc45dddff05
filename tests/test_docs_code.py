"""Every code block of README.md and docs/*.md is run (or, for a shell command, checked) by a test.

- docs/api.md, the notebook walkthrough, runs block after block on the real offline default model.
- Every other Python block runs on a tiny in-process model: the page's blocks in order, in one namespace that
  holds ``s``, a :class:`sources.session.Session` on a tiny llama, a TopK SAE and a tiny corpus (the pages say
  "with ``s`` a session").
- Every shell command that runs ``python -m experiments.<stage>`` is parsed by that stage's argument parser and
  its config and ``--set`` overrides are validated (without running the stage); a ``benchmarks/*.py`` command
  must name an existing script whose ``--help`` lists each flag the command uses.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def test_every_code_block_is_of_a_kind_the_tests_run_or_check():
    with_python = {p.name for p in PAGES if blocks(p, "python")}
    assert {"api.md", "cooc.md", "probes.md", "interventions.md", "sae.md"} <= with_python
    for page in PAGES:
        fences = re.findall(r"^```(\S*)\s*$", page.read_text(), flags=re.M)
        opening = fences[::2]  # fences alternate: opening (with its language), closing
        assert len(fences) % 2 == 0, f"{page.name}: an unclosed code block"
        assert set(opening) <= {"python", "bash", "yaml", ""}, f"{page.name}: code blocks of kind {set(opening)}"
        for code in blocks(page, ""):  # untagged blocks hold text (a tree, a table), never a command
            assert not re.search(r"^\s*(\.venv/bin/)?python|^\s*pip |^\s*bash ", code, flags=re.M), f"{page.name}: {code[:60]}"


# ----------------------------------------------------------------------------------- Python blocks, tiny model

@pytest.fixture(scope="module")
def tiny_session(tmp_path_factory):
    from test_interventions import TinyTopKSAE
    from tiny import tiny_corpus_file, tiny_model

    from sources.config import DataSpec, HookSpec, StreamSpec
    from sources.session import Session

    corpus = tiny_corpus_file(tmp_path_factory.mktemp("docs_corpus"), n_docs=16)
    sae = TinyTopKSAE(d_in=32, d_sae=128, k=6).eval().requires_grad_(False)
    return Session(tiny_model("llama"), sae, HookSpec(layer=1, site="resid_post"),
                   DataSpec(source="jsonl", path=str(corpus), context_len=32, max_tokens=3000),
                   StreamSpec(batch_size=8, progress=False))


@pytest.mark.parametrize("page", [p for p in PAGES if p.name != "api.md" and blocks(p, "python")], ids=lambda p: p.name)
def test_python_blocks_run_on_a_tiny_model(page, tiny_session):
    namespace = {"s": tiny_session}
    for i, code in enumerate(blocks(page, "python")):
        exec(compile(code, f"{page.name}, python block {i + 1}", "exec"), namespace)


@pytest.mark.smoke
def test_the_api_walkthrough_runs_on_the_default_model():
    namespace: dict = {}
    for i, code in enumerate(blocks(ROOT / "docs" / "api.md", "python")):
        exec(compile(code, f"api.md, python block {i + 1}", "exec"), namespace)
    assert namespace["res"].verdicts.shape[0] == 1 and len(namespace["table"]) > 0


# ----------------------------------------------------------------------------------- shell commands

def commands(page: Path) -> list[str]:
    out = []
    for code in blocks(page, "bash"):
        for line in code.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


ALL = [(p.name, c) for p in PAGES for c in commands(p)]
STAGES = {"steer", "cooc", "probe", "interventions", "report", "train_sae", "sweep"}
PLACEHOLDERS = {"CONFIG.yaml", "my.yaml", "SWEEP.yaml"}


def _stage_args(cmd: str) -> tuple[str, list[str]] | None:
    words = shlex.split(cmd.split("&&")[-1])
    if "-m" not in words:
        return None
    module = words[words.index("-m") + 1]
    if not module.startswith("experiments."):
        return None
    return module.split(".", 1)[1], words[words.index("-m") + 2:]


def test_the_pages_show_stage_commands():
    assert sum(_stage_args(c) is not None for _, c in ALL) >= 8


@pytest.mark.parametrize("page,cmd", [pc for pc in ALL if _stage_args(pc[1])], ids=lambda v: v[:60])
def test_stage_commands_parse_and_their_overrides_are_valid(page, cmd):
    import importlib

    from experiments.cli import DEFAULT_CONFIG, build_config
    from experiments.config import ExperimentConfig

    stage, args = _stage_args(cmd)
    assert stage in STAGES, f"{page}: unknown stage module experiments.{stage}"
    if any(a.startswith("[") for a in args):  # a usage synopsis: [--set ...] [--out DIR]
        args = [a for a in re.sub(r"\[[^\]]*\]", " ", " ".join(args)).split()]
    module = importlib.import_module(f"experiments.{stage}")
    ns = module.parse_args(args)
    if not hasattr(ns, "config"):  # experiments.report: a run folder only
        return
    config = ns.config
    if stage == "sweep":  # a sweep file: every point's config validated with the command's overrides
        from experiments.sweep import expand, load_sweep

        path = ROOT / ("experiments/configs/sweep_widths.yaml" if config in PLACEHOLDERS else config)
        assert path.exists(), f"{page}: {config} does not exist"
        assert expand(load_sweep(path), path.parent, ns.overrides)
        return
    if config in PLACEHOLDERS:  # a placeholder for the reader's own config: check the flags on the default config
        config = str(DEFAULT_CONFIG)
    assert (ROOT / config).exists(), f"{page}: {config} does not exist"
    build_config(ExperimentConfig, ROOT / config if config else None, ns.overrides)


@pytest.mark.parametrize("page,cmd", [pc for pc in ALL if "benchmarks/" in pc[1]], ids=lambda v: v[:60])
def test_benchmark_commands_name_real_scripts_and_flags(page, cmd):
    words = shlex.split(cmd)
    script = next(w for w in words if w.startswith("benchmarks/"))
    assert (ROOT / script).exists(), f"{page}: {script} does not exist"
    help_text = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120).stdout
    for flag in [w for w in words if w.startswith("--")]:
        assert flag in help_text, f"{page}: {script} has no flag {flag}"
