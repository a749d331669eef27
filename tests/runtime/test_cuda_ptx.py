"""The CUDA kernels compile for a real GPU, without one: NVIDIA's compiler (NVVM and NVRTC
from the nvidia-cuda-nvcc-cu12 / nvidia-cuda-nvrtc-cu12 wheels of the test extras) turns
them into PTX for Hopper (sm_90). The simulator runs kernels as Python and accepts code a
GPU refuses (a shared array sized by an expression, issue 10); this catches that class
of error, and checks that the activation chain (device functions made by a factory, one
per formula) compiles as real device code."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("nvidia.cuda_nvcc", reason="NVIDIA's compiler wheel is not installed "
                    "(pip install 'archc[test]')")

KERNELS = '''
from numba import cuda, float32, int64, float64, types
from runtime.backends.cuda import conv as C, kernels as K, layers as L, resample as R
from runtime.backends.cuda import tensor as T, training as G
A1, A2, A3, A4 = float32[::1], float32[:, ::1], float32[:, :, ::1], float32[:, :, :, ::1]
D1, D2 = float64[::1], float64[:, ::1]
I = (int64,)
cases = {
    "activation_forward_kernel": (K.activation_forward_kernel, (A1, A1, int64, float64)),
    "activation_backward_kernel": (K.activation_backward_kernel, (A1,) * 4 + (int64, float64)),
    "gemm_kernel": (K.gemm_kernel, (A2, A2, A2, types.boolean, types.boolean, A1, int64, int64,
                                    float64)),
    "conv_gemm_kernel": (C.conv_gemm_kernel, (A4, A2, A4, A1, A4, int64, float64) + I * 8),
    "im2col_kernel": (C.im2col_kernel, (A4, A2) + I * 10),
    "im2col_images_kernel": (C.im2col_images_kernel, (A4, A3) + I * 9),
    "col2im_kernel": (C.col2im_kernel, (A2, A4) + I * 10),
    "depthwise_kernel": (L.depthwise_kernel, (A4, A4, A1, A4, A4) + I * 6 + (int64, float64)),
    "softmax_kernel": (T.softmax_kernel, (A3, A3)),
    "softmax_backward_kernel": (T.softmax_backward_kernel, (A3, A3, A3)),
    "unpool_backward_kernel": (R.unpool_backward_kernel, (A4, A4, int64, int64, types.boolean)),
    "fill_kernel": (K.fill_kernel, (A1, float64)),
    "gemm_epilogue_kernel": (K.gemm_epilogue_kernel, (A2, A1, int64, int64, float64)),
    "epilogue_kernel": (C.epilogue_kernel, (A2, A3, A1, A3, int64, float64)),
    "sum_kernel": (G.sum_kernel, (A1, float64[::1], types.boolean)),
    "channel_partials_kernel": (K.channel_partials_kernel, (A3, D1, D2)),
    "sum_rows_kernel": (K.sum_rows_kernel, (D2, A1, float64)),
    "finish_stats_kernel": (G.finish_stats_kernel, (D2, D1, A1, A1, A1, A1, int64[::1],
                                                    float64, types.boolean, int64)),
    "batchnorm_grad_partials_kernel": (L.batchnorm_grad_partials_kernel,
                                       (A3, A3, A1, A1, A1, float64, D2, D2, A3)),
    "batchnorm_grad_finish_kernel": (L.batchnorm_grad_finish_kernel, (D2, D2, A1, A1, D1, D1)),
    "batchnorm_train_gx_kernel": (G.batchnorm_train_gx_kernel,
                                  (A3, A3, A3, D1, D1, A1, A1, A1, float64)),
    "batchnorm_kernel": (L.batchnorm_kernel, (A3, A3, A1, A1, A1, A1, A3, int64, float64,
                                              float64)),
}
for name, (kernel, sig) in cases.items():
    ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
    assert ".entry" in ptx and ".target sm_90" in ptx, name
    print(name, len(ptx))
'''


def test_the_kernels_compile_to_ptx_for_hopper():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, "-c", KERNELS], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    compiled = [line.split()[0] for line in done.stdout.splitlines()]
    assert compiled == re.findall(r'^    "(\w+)": \(', KERNELS, re.M)  # every case, once
    assert len(compiled) == 22
