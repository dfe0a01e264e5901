# amaranth: UnusedElaboratable=no
"""Pin-to-pin herald latency through each board's input block and the whole core
(heraldry.sim.latency), against the pipeline counts of docs/architecture.md and the figures of
the input-block harness in test_gearbox.py; the per-board table against the simulation."""

from fractions import Fraction as Fr

import pytest

from heraldry.sim import latency
from heraldry.sim.latency import (FAST_CONDITIONS, MEASURED, MEASURED_FAST,
                                  herald_latency_seconds, latency_ns, measure)


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
    assert "early_core" not in ulx3s          # the default build has no fast herald path
    # Built with it: early through the fast path where eligible, the core's beside it.
    from test_ulx3s import fast_ulx3s
    fast = latency.board_latency(fast_ulx3s(BOARDS["ulx3s-85f"]), phases=[0])
    assert fast["early"] == {"min": 41.25, "max": 46.25}
    assert fast["early_conditions"] == FAST_CONDITIONS
    assert fast["early_core"] == ulx3s["early"] and fast["exact"] == ulx3s["exact"]


def test_gate_stage_adds_one_core_period():
    """``TaggerCore(gate_stage=True)``: one register more between the delay lines and the
    coincidence unit, so each pin is high one core edge later: the generic PHY's 4-5 / 5-6
    periods (architecture.md's count plus one) become 5-6 / 6-7; the ULX3S's per sample
    position, one period more at a phase; the 8-channel ULX3S build's report says so (20 ns
    more than the 4-channel one's), the 4-channel one's is unchanged."""
    from heraldry.boards import BOARDS
    staged = measure("GenericPHY", gate_stage=True)
    assert staged["early"] == (5, 6) and staged["exact"] == (6, 7)
    plain = measure("ECP5GearboxInputs", phases=[0])["per_phase"][Fr(0)]
    with_stage = measure("ECP5GearboxInputs", phases=[0], gate_stage=True)["per_phase"][Fr(0)]
    for mode in ("early", "exact"):
        assert with_stage[mode + "_per_position"] == [x + 1 for x in plain[mode + "_per_position"]]
    board = BOARDS["ulx3s-85f"]
    four = latency.board_latency(board, phases=[0], channels=4)
    eight = latency.board_latency(board, phases=[0], channels=8)
    assert four == latency.board_latency(board, phases=[0])
    for mode in ("early", "exact"):
        assert eight[mode] == {k: v + 20.0 for k, v in four[mode].items()}
    # What the host quotes for a device with the gate stage (ident.capabilities bit 7).
    assert latency.core_periods("GenericPHY", "early", gate_stage=True) == staged["early"]
    assert latency.core_periods("GenericPHY", "exact", gate_stage=True) == staged["exact"]


# The fast herald path (gateware/fastherald.py), counted by hand: a sample at position p
# (0..3) of sclk period k is presented by IDDRX2F at sclk edge k + 1 (SAMPLER_DELAY), then eight
# sclk registers (the word register, the selected edge, the input stage, the events and their
# positions' occupancy, the window's view, the per-event patterns, the firing, the pin): high
# after edge k + 9, 9 - p/4 sclk periods = 9/4 - p/16 core periods after the sample instant,
# whatever the core clock's phase (the path does not cross into it).
FAST_PER_POSITION = [Fr(9, 4) - Fr(p, 16) for p in range(4)] * 4


def test_ulx3s_fast_path_latency_at_one_phase():
    result = measure("ECP5GearboxInputs", phases=[0], fast=True)
    figures = result["per_phase"][Fr(0)]
    assert figures["early_per_position"] == FAST_PER_POSITION
    # From the pin edge: up to one sample (1/16 period) before the instant that sees it.
    assert (result["early"] == (Fr(33, 16), Fr(37, 16))
            == MEASURED_FAST["ECP5GearboxInputs"]["early"])
    # The exact rule's pin is the core's (not eligible): the same figures as without the path.
    core = measure("ECP5GearboxInputs", phases=[0])["per_phase"][Fr(0)]
    assert figures["exact_per_position"] == core["exact_per_position"]
    assert figures["early_per_position"] != core["early_per_position"]
    # Within the 50 ns goal of issue 13 at 50 MHz (20 ns a core period).
    assert float(result["early"][1]) * 20 < 50


@pytest.mark.slow
def test_ulx3s_fast_path_latency_over_every_phase():
    result = measure("ECP5GearboxInputs", fast=True)
    assert len(result["per_phase"]) == 16
    for figures in result["per_phase"].values():
        assert figures["early_per_position"] == FAST_PER_POSITION
    assert result["early"] == MEASURED_FAST["ECP5GearboxInputs"]["early"]
    assert result["exact"] == MEASURED["ECP5GearboxInputs"]["exact"]


def test_latency_seconds_claims_the_fast_figure_only_for_a_fast_pin():
    assert herald_latency_seconds(50_000_000, 4, fast=True) == pytest.approx(46.25e-9)
    assert herald_latency_seconds(50_000_000, 4) == pytest.approx(7.5625 * 20e-9)
    assert herald_latency_seconds(50_000_000, 4, "exact", fast=True) == pytest.approx(9.5 * 20e-9)
    # Blocks without a fast path: the core's figure whatever `fast` says.
    assert (herald_latency_seconds(24_000_000, 2, fast=True)
            == herald_latency_seconds(24_000_000, 2))
    with pytest.raises(ValueError, match="no fast herald path"):
        measure("ICE40DDRInputs", fast=True)
