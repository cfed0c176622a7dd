#!/usr/bin/env bash
# Fetches, on a machine with the package index, the wheels that benchmarks/gpu_check.sh needs on a
# bare GPU machine: one whose python3 (3.12, x86-64) has a CUDA torch, numpy, scipy, scikit-image,
# matplotlib, click, tqdm and pillow, but none of ugafl's other dependencies, and no network.
# gpu_check.sh installs whatever lies in WHEELS (default .whl, ignored by git) with pip --no-index
# before it starts; carry that folder to the GPU machine with the repo.
#
#   benchmarks/gpu_wheels.sh            # into .whl; PY_VERSION (3.12) for another python there
#
# Not fetched: Flower and Ray (the demo round runs on the in-process engine, which needs neither;
# Ray alone is over 60 MB), torch (the GPU machine's own CUDA build is the point). Versions are the
# ones this repo's .venv was checked with.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEELS=${WHEELS:-$ROOT/.whl}
PY_VERSION=${PY_VERSION:-3.12}
PY=${PYTHON:-$ROOT/.venv/bin/python}
PACKAGES=(monai==1.6.1 openslide-python==1.4.7 openslide-bin==4.0.1.2 tifffile==2026.3.3 imagecodecs==2026.3.6
          pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
          typing-extensions==4.16.0 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12)
PLATFORMS=()
for n in 39 35 34 31 28 27 17; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mkdir -p "$WHEELS"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  "${PLATFORMS[@]}" -d "$WHEELS" "${PACKAGES[@]}"
du -ch "$WHEELS"/*.whl | tail -n 1
