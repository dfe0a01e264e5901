"""Comparisons of a wide value with the small constants ``0 .. 2**F`` without a carry chain each.

The input stage and the coincidence unit compare a dead-time or window count with every fine
position ``i < 2**F`` of a cycle. Written as ``value > i`` each becomes a carry chain as long as
the value (Yosys keeps constant comparisons as adders), ``2**F`` of them per count: on the
iCE40 that was ~200 logic cells per channel at F = 2. Split at bit F instead: the high bits
decide unless they are all zero, and only the F low bits meet the constant.
"""

from amaranth.hdl import Cat, Mux

__all__ = ["above_each", "at_most_each", "at_most_step", "saturating_sub"]


def above_each(value, f):
    """``Cat(value > i for i in range(2**f))``."""
    high = value[f:].any()
    return Cat(high | (value[:f] > i) for i in range(2 ** f))


def at_most_each(value, f):
    """``Cat(value <= i for i in range(2**f))``."""
    low = value[f:] == 0
    return Cat(low & (value[:f] <= i) for i in range(2 ** f))


def at_most_step(value, f):
    """``value <= 2**f``."""
    return (value[f + 1:] == 0) & (~value[f] | (value[:f] == 0))


def saturating_sub(value, k):
    """``max(0, value - k)`` for a non-negative constant ``k``, as wide as ``value``: one
    subtraction, its borrow picks 0."""
    if not k:
        return value
    width = len(value)
    diff = (value - k).as_unsigned()   # width + 1 bits: the top one is the borrow
    return Mux(diff[width], 0, diff[:width])
