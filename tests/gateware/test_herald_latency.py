# amaranth: UnusedElaboratable=no
"""Pin-to-pin herald latency through each board's input block and the whole core
(heraldry.sim.latency), against the pipeline counts of docs/architecture.md and the figures of
the input-block harness in test_gearbox.py; the per-board table against the simulation."""

from fractions import Fraction as Fr

import pytest

from heraldry.sim import latency
from heraldry.sim.latency import MEASURED, herald_latency_seconds, latency_ns, measure


def test_generic_phy_latency_is_the_pipeline_count():
    """Sampled at edge k, high after edge k + 4 (architecture.md): an edge in (k - 1, k] is
    4 to 5 periods ahead of the herald; a one-cycle window closes one cycle later."""
    result = measure("GenericPHY")
    assert result["early"] == (4, 5) and result["exact"] == (5, 6)
    assert result["early"] == MEASURED["GenericPHY"]["early"]
    assert result["exact"] == MEASURED["GenericPHY"]["exact"]


def test_icebreaker_latency_by_sample_position():
    """Aligned clocks, one phase: the herald is high after the 4th core edge following the
    one that starts the sample's group (4, 3.75, 3.5, 3.25 periods from the sample instants,
    test_gearbox.py); the pin edge may come up to one sample (a quarter period) earlier. An
    exact rule's one-cycle window ends at a cycle boundary only when it opens at the cycle's
    first bin: one cycle later there, two elsewhere (the end rounded up to a cycle)."""
    result = measure("ICE40DDRInputs")
    (only,) = result["per_phase"].values()
    assert only["early_per_position"] == [4, Fr(15, 4), Fr(7, 2), Fr(13, 4)]
    assert only["exact_per_position"] == [5, Fr(23, 4), Fr(11, 2), Fr(21, 4)]
    assert result["early"] == (Fr(13, 4), Fr(17, 4)) == MEASURED["ICE40DDRInputs"]["early"]
    assert result["exact"] == (5, 6) == MEASURED["ICE40DDRInputs"]["exact"]


# test_gearbox.py's figures (from the sample instant, the IDDRX2F model's timing as it is) at
# three phases: this measurement presents the samples one sclk (a quarter period) later.
GEARBOX_FIGURES = {Fr(0): (Fr(89, 16), Fr(13, 2)), Fr(3, 2): (Fr(95, 16), Fr(55, 8)),
                   Fr(3): (Fr(101, 16), Fr(29, 4))}


def _check_ulx3s_phase(phase, figures):
    low, high = GEARBOX_FIGURES[phase]
    early = figures["early_per_position"]
    assert (min(early), max(early)) == (low + Fr(1, 4), high + Fr(1, 4))
    # Positions 0..15 in one core cycle's worth of samples: one cycle's samples share one
    # herald edge (1/16 period less each), the next cycle's start is one period later (+15/16,
    # counting the step from position 15 round to 0).
    steps = [b - a for a, b in zip(early, early[1:] + early[:1])]
    assert sorted(steps) == [Fr(-1, 16)] * 15 + [Fr(15, 16)]
    # The exact rule: one cycle after early for the one position at a cycle's first bin.
    extra = [x - e for x, e in zip(figures["exact_per_position"], early)]
    assert sorted(extra) == [1] + [2] * 15
    table = MEASURED["ECP5GearboxInputs"]
    for mode in ("early", "exact"):
        assert table[mode][0] <= figures[mode][0] and figures[mode][1] <= table[mode][1]


def test_ulx3s_latency_at_one_phase():
    result = measure("ECP5GearboxInputs", phases=[0])
    _check_ulx3s_phase(Fr(0), result["per_phase"][Fr(0)])


@pytest.mark.slow
def test_ulx3s_latency_over_every_phase():
    """Sixteen phases of the core clock against sclk: the table's figures are their extremes."""
    result = measure("ECP5GearboxInputs")
    assert len(result["per_phase"]) == 16
    for phase in GEARBOX_FIGURES:
        _check_ulx3s_phase(phase, result["per_phase"][phase])
    assert result["early"] == MEASURED["ECP5GearboxInputs"]["early"]
    assert result["exact"] == MEASURED["ECP5GearboxInputs"]["exact"]


def test_figures_in_ns_and_seconds():
    assert latency_ns(MEASURED["ICE40DDRInputs"], 24_000_000) == {
        "early": {"min": 135.417, "max": 177.083}, "exact": {"min": 208.333, "max": 250.0},
        "window_ns": 41.667}
    assert herald_latency_seconds(100_000_000, 0) == pytest.approx(50e-9)
    assert herald_latency_seconds(50_000_000, 4) == pytest.approx(7.5625 * 20e-9)
    assert herald_latency_seconds(50_000_000, 4, "exact") == pytest.approx(9.5 * 20e-9)
    assert herald_latency_seconds(24_000_000, 3) is None


def test_board_latency_simulates_the_board():
    from heraldry.boards import BOARDS
    board = BOARDS["icebreaker"]
    assert latency.board_latency(board) == latency_ns(MEASURED["ICE40DDRInputs"], 24_000_000)
    ulx3s = latency.board_latency(BOARDS["ulx3s-85f"], phases=[0])
    assert ulx3s["window_ns"] == 20.0
    assert ulx3s["early"]["min"] >= MEASURED["ECP5GearboxInputs"]["early"][0] * 20
