"""Backends: tables from op kind to kernel. ``reference`` is plain NumPy, slow and obvious:
the definition every fast kernel is tested against."""
