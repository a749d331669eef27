#!/usr/bin/env bash
# The whole real-GPU check of the CUDA backend in one go (issue 25), for a machine with an
# NVIDIA GPU: every CUDA test on the real device, the conv / ResNet-18 benchmark against
# PyTorch on the same GPU, and a training benchmark; each step's output in one folder.
#
#   bash scripts/gpu_check.sh [OUT_DIR]      (default: $OUT, else ./gpu_check)
#
# Python packages: the environment's own, or wheels in .whl/ (installed into /tmp/site
# first, for a machine that reaches no package index: `bash scripts/gpu_wheels.sh` fetches
# the ones a GPU image may lack, nvmath-python for cuBLAS). Each step has a time limit so
# that the whole check ends well inside 10 minutes; a failing step does not stop the
# others, and the exit status says whether any failed. bench_cuda runs four times: with
# the GEMMs archc picks (cuBLAS where it runs), with its own kernel (ARCHC_CUDA_GEMM=numba),
# and last on the tensor cores, in TF32 and in bf16; between them archc bench profiles ResNet-18's training
# step and inference pass layer by layer and kernel by kernel. The limits add up to 600 s.
set -u
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 ARCHC_CUDA=real
python=${PYTHON:-python3}
install() {  # install WHEELS... into /tmp/site, ahead of the image's own packages
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$@" && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
}
probe() {  # do archc, numba-cuda and nvmath-python's cuBLAS load; does the GPU answer?
    "$python" -c "import archc, numba_cuda, nvmath.bindings.cublas as b; from numba import cuda
print('probe:', cuda.get_current_device().name, 'cuBLAS', b.get_version(b.create()))"
}
if compgen -G ".whl/*.whl" > /dev/null; then
    install .whl/*.whl
    # the newer cuda-core and cuda-pathfinder that numba-cuda and nvmath-python need, only
    # where the image's own do not load them (replacing them could break what does)
    if ! probe > "$out/probe.txt" 2>&1 && compgen -G ".whl/needs/*.whl" > /dev/null; then
        echo "== installing .whl/needs/ too" >> "$out/probe.txt"
        install .whl/needs/*.whl
        probe >> "$out/probe.txt" 2>&1
    fi
fi
status=0
step() {  # step NAME SECONDS COMMAND...: run it, its output in $out/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" | tee "$out/$name.txt"
    local start=$SECONDS
    timeout "$limit" "$@" >> "$out/$name.txt" 2>&1
    local rc=$?
    echo "== $name: exit $rc in $((SECONDS - start)) s" | tee -a "$out/$name.txt"
    [ "$rc" -eq 0 ] || status=1
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; "$python" -c \
    "import numba, numba_cuda, numpy; print('numba', numba.__version__, 'numba-cuda',
numba_cuda.__version__, 'numpy', numpy.__version__)"
  "$python" -c "from runtime.backends.cuda import kernels as k
print('GEMMs:', k.gemm_library()[1]); print('allocator:', k.ALLOCATOR)"; } \
    > "$out/device.txt" 2>&1
# four workers: a fresh machine compiles every kernel first (numba's cache is cold), and
# they compile side by side on its 16 cores; the tests share the one GPU. -v: each test's
# verdict as it ends, so a run cut off at its limit still says which passed and failed
step tests 270 "$python" -m pytest -m cuda -v -n 4 -p no:cacheprovider --durations=10 \
    --tb=short
step bench_cuda 105 "$python" bench/bench_cuda.py --repeat 5
# the layers' times and each kernel's (--kernels): which kernels to tune; each conv in the
# strategy benchmark mode measured faster (bench_cuda prints both ways' times)
archc=(env ARCHC_CUDA_BENCHMARK=1 "$python" -c "import sys; from archc.cli import main
sys.argv[0] = 'archc'; sys.exit(main())")
step train_resnet18 85 "${archc[@]}" bench specs/resnet18.yaml --backend cuda --batch 64 --train \
    --repeat 3 --kernels --top 25
step infer_resnet18 45 "${archc[@]}" bench specs/resnet18.yaml --backend cuda --batch 64 --repeat 3 \
    --kernels --top 25
step bench_cuda_numba 30 env ARCHC_CUDA_GEMM=numba "$python" bench/bench_cuda.py --repeat 1
# last, as they are optional: both sides on the tensor cores, in TF32, then archc's
# products in bfloat16 beside PyTorch's bf16 autocast (reported apart from the float32
# targets)
step bench_cuda_tf32 30 "$python" bench/bench_cuda.py --repeat 2 --precision tf32
step bench_cuda_bf16 35 "$python" bench/bench_cuda.py --repeat 2 --precision bf16
exit $status
