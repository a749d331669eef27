"""ONNX: archc graphs written as ONNX models (``write``: :func:`to_onnx`, with one emitter
per layer type in ``emitters``) and ONNX models read back as archc graphs (``read``:
:func:`from_onnx`, one rule per ONNX operator in ``rules``)."""

from __future__ import annotations

from archc.export.onnx.emitter import OPSET
from archc.export.onnx.read import from_onnx
from archc.export.onnx.write import to_onnx

__all__ = ["OPSET", "from_onnx", "to_onnx"]
