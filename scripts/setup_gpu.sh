#!/usr/bin/env bash
# Install sslsearch with GPU faiss into .venv: the `gpu` extra, then faiss-gpu reinstalled last.
# faiss-cpu (a core dependency) and faiss-gpu ship the same `faiss` module; whichever pip writes last
# wins, so faiss-gpu is force-reinstalled without its dependencies. Linux x86_64 with an NVIDIA driver
# for CUDA 12 only (faiss-gpu's wheels); elsewhere sslsearch uses faiss-cpu and torch on the GPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup_env.sh gpu
version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('faiss-gpu'))")
.venv/bin/python -m pip install -q --force-reinstall --no-deps "faiss-gpu==$version"
.venv/bin/python -c "import faiss; n = faiss.get_num_gpus(); print(f'faiss {faiss.__version__}: {n} GPU(s) visible')"
