"""heraldry: open time-tagger gateware and host driver.

The instrument API (``heraldry.open``, ``Tagger``, ``Settings``, the measurement objects) is
loaded on first use, so ``import heraldry`` stays cheap; see ``docs/api.md``.
"""
__version__ = "0.1.0"

#: Names of the instrument API and the module each comes from (loaded by ``__getattr__``).
_API = {
    "open": "heraldry.host.tagger", "Tagger": "heraldry.host.tagger",
    "Settings": "heraldry.host.tagger", "Run": "heraldry.host.tagger",
    "SettingsNote": "heraldry.host.tagger", "ConfigError": "heraldry.host.config",
    "Correlation": "heraldry.host.measure", "Coincidences": "heraldry.host.measure",
    "Counter": "heraldry.host.measure", "HeraldRate": "heraldry.host.measure",
    "HeraldedG2": "heraldry.host.measure", "StartStop": "heraldry.host.measure",
    "CoincidenceToAccidental": "heraldry.host.measure",
    "KlyshkoEfficiency": "heraldry.host.measure",
}

__all__ = ["__version__"] + sorted(_API)


def __getattr__(name):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'heraldry' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
