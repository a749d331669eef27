#!/usr/bin/env bash
# The wheels scripts/gpu_check.sh installs on a GPU machine that reaches no package index:
# the packages archc's CUDA backend uses that such a machine's image may lack or hold in
# another version: graphviz, nvmath-python (archc's binding to cuBLAS) and numba-cuda at
# the version the tests pin (the image brings numba, cuda-bindings and cuBLAS), built for its
# Python (3.12 unless PYVER says otherwise), into .whl/; and into .whl/needs/ the
# cuda-core and cuda-pathfinder both need at least, which gpu_check.sh installs only where
# the image's own versions fail to load them.
#
#   bash scripts/gpu_wheels.sh        (then carry .whl to the machine with the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
download() {  # download FOLDER REQUIREMENTS...
    local folder=$1
    shift
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$folder" "$@"
}
# graphviz (the Python package, a core dependency: `import archc` needs it) is not on the
# GPU image; without it no test is even collected
download .whl "nvmath-python==1.0.0" "numba-cuda==0.30.4" "graphviz==0.21"
download .whl/needs "cuda-core==1.2.2" "cuda-pathfinder==1.9.1"
ls -lR .whl
