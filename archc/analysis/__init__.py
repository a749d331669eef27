"""Analysis of a shape-inferred graph: parameters, MACs/FLOPs, memory, receptive fields
and a roofline latency estimate. Plain data out; the CLI formats it."""

from archc.analysis.receptive_field import ReceptiveField, receptive_fields
from archc.analysis.report import Report, analyse
from archc.analysis.roofline import BUILT_IN, Device, get_device
from archc.analysis.table import format_summary

__all__ = ["BUILT_IN", "Device", "ReceptiveField", "Report", "analyse", "format_summary",
           "get_device", "receptive_fields"]
