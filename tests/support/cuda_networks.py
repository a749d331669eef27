"""Small networks the CUDA tests share (tests/runtime/test_cuda.py, test_cuda_blas.py)."""

# a ConvNeXt block as torchvision writes it: a depthwise conv, then layer norm and two
# linear layers over the channels of a channels-last (N, H, W, C) view, a residual add
CHANNELS_LAST = """
input: {channels: 4, height: 3, width: 5}
layers:
  - conv2d: {out_channels: 4, kernel_size: 3, padding: 1, groups: 4}
  - permute: [0, 2, 3, 1]
  - layernorm: {eps: 1.0e-6}
  - linear: {out_features: 8, activation: gelu}
  - linear: 4
  - permute: [0, 3, 1, 2]
  - add: [-1, input]
"""
