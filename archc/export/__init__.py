"""Formats other programs read: ONNX out (:func:`to_onnx`) and in (:func:`from_onnx`).

The spec writer (``archc.spec.writer``) and PyTorch state_dicts (``runtime.params``) are the
other two formats ``archc export`` writes. The ``onnx`` package is imported only when one
of these functions runs (``pip install 'archc[onnx]'``).
"""

from __future__ import annotations

from archc.export.onnx import OPSET, from_onnx, to_onnx

__all__ = ["OPSET", "from_onnx", "to_onnx"]
