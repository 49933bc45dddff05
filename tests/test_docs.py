"""Generated documentation stays in step with the code."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_config_md_is_the_rendering_of_the_current_config_models():
    rendered = subprocess.run([sys.executable, "-m", "experiments.schema"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert (ROOT / "docs" / "config.md").read_text() == rendered, "regenerate: python -m experiments.schema > docs/config.md"


def test_the_readme_starts_with_exactly_the_two_commands_and_ci_runs_the_second():
    lines = (ROOT / "README.md").read_text().splitlines()
    commands = [line for line in lines[:12] if line.startswith("bash ")]
    assert commands == ["bash scripts/setup.sh && .venv/bin/python -m experiments.steer",
                        "bash scripts/setup.sh --dev && .venv/bin/python -m pytest -q"]
    assert "README.md" in (ROOT / ".ci" / "run").read_text()
