"""Reference model of the tagger core: the executable spec every test compares against.

Plain Python and numpy (no Amaranth). The names below come from :mod:`heraldry.model.core`;
the test-signal model is imported explicitly as :mod:`heraldry.model.testsignal`.
"""

from .core import *  # noqa: F403
from .core import __all__  # noqa: F401
