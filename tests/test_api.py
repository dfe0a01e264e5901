"""The instrument API (``heraldry.open``, ``Tagger``, ``Settings``, ``Run``, bound measurements):
the README's script on the virtual board and on a replay, unit conversion and its messages
against the command line's, measurements bound to a run against the same objects fed by hand,
and a :class:`Tagger` on the scripted pty board (baud probing, the run's register writes, a
verification that fails)."""

import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import heraldry
from heraldry import model, protocol
from heraldry.host import measure
from heraldry.host.config import ConfigError
from heraldry.host.events import EVENT_DTYPE, Block
from heraldry.host.driver import IdentificationError, Identity
from heraldry.host.replay import ReplaySource
from heraldry.host.tagger import Settings, SettingsNote, known_bauds, settings_to_acquisition
from heraldry.protocol import Command, Kind, Source

from pty_board import PtyBoard

ROOT = Path(__file__).resolve().parent.parent
HYDRAHARP = "tests/data/hydraharp_v30_t2.ptu"


def readme_script():
    """The README's Python API example (the fenced block after its ``api-example`` marker)."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- api-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its api-example block"
    return match.group(1)


def run_script(source, capsys):
    namespace = {"__name__": "__readme__"}
    exec(compile(source, "README.md", "exec"), namespace)
    return namespace, capsys.readouterr().out


def identity(channels=4, rules=2, fine_bits=0, bin_fs=10_000_000, clock_hz=100_000_000,
             capabilities=protocol.CAPABILITY_TEST_SIGNAL):
    return Identity(magic=protocol.MAGIC, protocol=protocol.PROTOCOL_VERSION, gateware=0x100,
                    channels=channels, rules=rules, fine_bits=fine_bits, bin_fs=bin_fs,
                    clock_hz=clock_hz, capabilities=capabilities,
                    counters=protocol.RegisterMap(channels, rules).counters.size)


# -- the README script ------------------------------------------------------------------------

def test_readme_script_on_the_virtual_board(capsys):
    assert len(readme_script().strip().splitlines()) <= 12
    ns, out = run_script(readme_script(), capsys)
    run, g2, heralded = ns["run"], ns["g2"].result(), ns["heralded"].result()
    assert run.ended and run.checks == {"stream_verified": True, "tags_match_singles": True}
    # The gate was open for the duration, give or take the start command's round trip.
    assert 0.049 < run.device_seconds < 0.06
    lines = [line for line in out.splitlines() if line.strip().endswith("]")]
    assert lines and all(" ms " in line for line in lines)      # live rates were printed
    # Live rates from the STATUS snapshots: an arm of the pair source sees pair rate x
    # efficiency + dark counts (1e5 x 0.5 + 1e3 per second of device time).
    live = [eval(line.split(" ms ", 1)[1]) for line in lines]
    arm = [rates[0] for rates in live if rates[0] > 0]
    assert arm and abs(arm[-1] / 51_000 - 1) < 0.3, live
    assert "g2 peak" in out
    # The hardware herald counter (gateware) against the windows counted from the tags.
    assert heralded.heralds == run.counters["heralds"][0] > 0
    # Nothing lost: the tags of the g2 are the singles counters.
    assert (g2.n1, g2.n2) == tuple(run.counters["singles"][:2])
    # Arm B comes 30 ns after arm A; channel 0 is delayed 30 ns: the peak is at 0 ns.
    peak = int(np.argmax(g2.counts))
    assert g2.edges_ps[peak] == 0 and g2.g2[peak] > 10
    # Times are from the run start: every tag within the run's device time.
    assert heralded.duration_ps == pytest.approx(run.device_seconds * 1e12)


def test_readme_script_on_a_replay(capsys):
    source = readme_script().replace('heraldry.open("sim")',
                                     f'heraldry.open("replay:{ROOT / HYDRAHARP}")')
    assert source != readme_script()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ns, out = run_script(source, capsys)
    notes = [str(w.message) for w in caught if w.category is SettingsNote]
    assert any("delays_ns" in n and "test_signal 'pairs'" in n for n in notes)
    run, g2, heralded = ns["run"], ns["g2"].result(), ns["heralded"].result()
    # Independently: the file's records read directly, the first 50 ms.
    events = ReplaySource(ROOT / HYDRAHARP).events
    first = events[(events["time_ps"] < 50 * 10 ** 9) & (events["kind"] == Kind.TAG.value)]
    per_channel = np.bincount(first["channel"], minlength=2)
    assert (g2.n1, g2.n2) == tuple(per_channel) and per_channel[0] > 1000
    assert run.counters["singles"] == per_channel.tolist()
    assert heralded.heralds == 0 == run.counters["heralds"][0]      # channel 1 never fires
    assert run.device_seconds == pytest.approx(0.05)
    assert run.checks == {"file_declares_no_loss": True}


def test_replay_counters_equal_acquire_replay():
    from heraldry.host.replay import acquire_replay
    result, _ = acquire_replay(ReplaySource(ROOT / HYDRAHARP))
    with heraldry.open(f"replay:{HYDRAHARP}") as tagger:
        assert tagger.is_replay and tagger.channels == 2 and tagger.bin_ps == 1
        with tagger.run(keep=True) as run:
            blocks = sum(1 for _ in run)
        assert blocks > 1
        for group in ("singles", "patterns", "heralds"):
            assert run.counters[group] == result.counters[group][:len(run.counters[group])]
        assert np.array_equal(run.result.events, result.events)
        # A second run plays the file again from its start.
        with tagger.run(duration=0.01) as again:
            again.wait()
        assert 0 < again.counters["singles"][0] < run.counters["singles"][0]


def test_replay_recounts_exact_rules_and_refuses_an_early_veto():
    """A replay recounts heralds from software windows: an exact rule from the windows' closed
    patterns; an early rule with a veto depends on the click order, which it does not keep."""
    with heraldry.open(f"replay:{HYDRAHARP}") as tagger:
        # The file has clicks on channel 0 only; 1 us windows hold several of them.
        settings = Settings(window_ns=1000, heralds=["D0&D1,exact", "D0&!D1,exact"])
        run = tagger.run(settings, duration=0.05)
        with run:
            run.wait()
        patterns = run.counters["patterns"]            # pattern p at index p - 1
        assert run.counters["heralds"] == [patterns[0b11 - 1], patterns[0b01 - 1]]
        assert 0 < patterns[0b01 - 1] < run.counters["singles"][0]
        with pytest.raises(ConfigError, match="early with a veto: a replay cannot recount it"):
            tagger.run(Settings(heralds=["D0&!D1"]))


# -- settings in lab units --------------------------------------------------------------------

def test_settings_convert_to_bins_with_test_signal_off_by_default():
    acq, notes = settings_to_acquisition(Settings(window_ns=20, delays_ns={1: 30},
                                                  dead_times_ns={2: 100}, heralds=[0b11, "0b100"],
                                                  edges={3: "falling"}, disabled=[2]),
                                         identity())
    assert notes == []
    assert acq.window_bins == 2 and acq.delays_bins == [0, 3, 0, 0]
    assert acq.dead_time_bins == [0, 0, 10, 0] and acq.herald_masks == [3, 4]
    assert acq.edges == ["rising"] * 3 + ["falling"] and acq.enabled == [True, True, False, True]
    assert acq.test_signal == "off" and acq.sources() == [Source.PIN] * 4
    # No window given: one clock cycle (4 bins on a board with 2 fine bits).
    acq, _ = settings_to_acquisition(Settings(), identity(fine_bits=2, bin_fs=2_500_000))
    assert acq.window_bins == 4


def test_herald_rules_in_settings():
    """Settings.heralds takes masks, the command line's rule form and HeraldRules alike; the
    rules reach the gateware config and the model settings."""
    from heraldry.model import HeraldRule
    psi = HeraldRule(0b0110, 0b1001, "exact", 0)
    acq, _ = settings_to_acquisition(Settings(heralds=["D0&D3&!D1&!D2,exact", psi]), identity())
    assert acq.herald_rules == [HeraldRule(0b1001, 0b0110, "exact", 0), psi]
    config = acq.gateware_config()
    assert list(config.herald_mask) == [0b1001, 0b0110]
    assert list(config.herald_veto) == [0b0110, 0b1001]
    assert config.herald_exact == 0b11 and list(config.herald_pin) == [0, 0]
    assert acq.model_settings().herald_rules == tuple(acq.herald_rules)
    acq, _ = settings_to_acquisition(Settings(heralds=[0b11]), identity())
    assert acq.herald_rules == [HeraldRule(0b11, pin=0)]
    config = acq.gateware_config()
    assert list(config.herald_pin) == [0, 1] and config.herald_exact == 0      # rule 1 unused


def test_herald_rules_survive_a_saved_acquisition():
    """A PTU file keeps its acquisition as JSON (dataclasses.asdict): the rules come back as
    they were, and a file of the older kind (masks only) still reads."""
    import dataclasses
    import json
    from heraldry.host.config import Acquisition
    from heraldry.model import HeraldRule
    rules = [HeraldRule(0b1001, 0b0110, "exact", 0), HeraldRule(0b0110, 0b0001, pin=0)]
    acq = Acquisition(channels=4, rules=2, herald_rules=rules, test_signal="off")
    again = Acquisition(**json.loads(json.dumps(dataclasses.asdict(acq))))
    assert again.herald_rules == rules and again.model_settings() == acq.model_settings()
    old = dataclasses.asdict(Acquisition(channels=4, rules=2, herald_masks=[3]))
    del old["herald_rules"]
    assert Acquisition(**old).herald_rules == [HeraldRule(3, pin=0)]
    with pytest.raises(ConfigError, match="not both"):
        Acquisition(channels=4, rules=2, herald_masks=[3], herald_rules=rules)


def test_rounding_is_reported_with_the_command_lines_wording():
    from heraldry.host import cli
    # An iCEBreaker-like bin of 10.416667 ns: 31.25 ns is 3.0000 bins, 30 ns is 2.88.
    ident = identity(channels=2, rules=1, bin_fs=10_416_667, clock_hz=24_000_000)
    acq, notes = settings_to_acquisition(Settings(window_ns=30), ident)
    assert acq.window_bins == round(30_000 / 10_416.667) == 3
    args = cli.build_parser().parse_args(["acquire", "--board", "/dev/null", "--window", "30",
                                          "--test-signal", "off"])
    _, cli_notes = cli.acquisition_from_args(args, cli.board_from_identity(ident))
    assert [n.replace("window_ns", "--window") for n in notes] == [
        n for n in cli_notes if n.startswith("--window")]
    assert notes == ["window_ns 30 ns is not a whole number of 10.4167 ns bins; using 3 bins = "
                     "31.25 ns"]
    with pytest.warns(SettingsNote, match="not a whole number"):
        warnings.warn(notes[0], SettingsNote)


@pytest.mark.parametrize("settings, message", [
    (Settings(window_ns=20_000), "window_ns 20000 ns is 2000 bins; it must be 10 to 10230 ns"),
    (Settings(delays_ns={1: -15}), "delays_ns -15 ns is -1.5 bins; it must be 0 to 10230 ns"),
    (Settings(delays_ns={4: 5}), "no channel 4 (channels are 0..3)"),
    (Settings(delays_ns=[5]), "delays_ns must be a dict"),
    (Settings(window_ns="20"), "window_ns '20' is not a number"),
    (Settings(heralds=[0b10000]), "names a channel above 3"),
    (Settings(heralds=[1, 2, 3]), "3 herald rules given; the board has 2"),
    (Settings(heralds=["D0&D5"]), "there is no channel 5"),
    (Settings(heralds=["D0,pin=2"]), "there is no herald pin 2"),
    (Settings(heralds=[1.5]), "is not a channel mask such as 0b011, a rule"),
    (Settings(edges={0: "up"}), "edges 'up' must be one of rising, falling, both"),
    (Settings(test_signal="noise"), "test_signal 'noise' must be one of pairs, periodic, bsm, off"),
    (Settings(disabled=[7]), "disabled 7: no such channel"),
])
def test_settings_refused_in_one_line(settings, message):
    with pytest.raises(ConfigError) as error:
        settings_to_acquisition(settings, identity())
    assert message in str(error.value) and "\n" not in str(error.value)


def test_test_signal_refused_on_a_board_without_it():
    with pytest.raises(ConfigError, match="no built-in test signal; use test_signal \"off\""):
        settings_to_acquisition(Settings(test_signal="pairs"), identity(capabilities=0))
    acq, _ = settings_to_acquisition(Settings(), identity(capabilities=0))
    assert acq.test_signal == "off"


def test_open_refuses_what_cannot_work():
    for target, kwargs, message in [
            ("nonsense", {}, "unknown board 'nonsense'"),
            ("/dev/no-such-tty", {}, "no such serial device"),
            ("replay:/no/such.ptu", {}, "no such file"),
            ("sim", {"channels": 9}, "channels must be 1..8"),
            ("sim", {"board": "icebreaker"}, "\"sim\" is the virtual one"),
            ("/dev/null", {"board": "arty"}, "unknown board 'arty'; use one of icebreaker"),
            (f"replay:{HYDRAHARP}", {"baud": 3_000_000}, "a replay describes itself")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            heraldry.open(target, **kwargs)


def test_import_heraldry_is_cheap():
    code = ("import sys, heraldry; heavy = [m for m in ('numpy', 'amaranth', 'serial', "
            "'numba') if m in sys.modules]; print(heavy, heraldry.Settings.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["[]", "Settings"]


# -- measurements bound to a run --------------------------------------------------------------

class FakeRun:
    """A source as measurements see it: ``attach``, ``elapsed_ps``, ``window_ps``, ``tagger``."""

    def __init__(self, channels, window_ps):
        self.measurements = []
        self.elapsed_ps = 0
        self.window_ps = window_ps
        self.tagger = type("T", (), {"channels": channels})()

    def attach(self, m):
        self.measurements.append(m)
        return m

    def play(self, events, cuts):
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(events)]):
            block = Block(events[a:b].copy(), {})
            for m in self.measurements:
                m.feed(block)       # a Block, as a Run delivers them
        self.elapsed_ps = int(events["time_ps"][-1]) + 1000


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bound_measurements_equal_the_functions_on_the_same_tags(seed):
    rng = np.random.default_rng(seed)
    n, window = 3, 2_000
    times = np.sort(rng.integers(0, 400_000, 900)) // 100 * 100
    events = np.zeros(len(times) + 40, EVENT_DTYPE)
    events["time_ps"][:len(times)] = times
    events["channel"][:len(times)] = rng.integers(0, n, len(times))
    events["kind"][len(times):] = Kind.HERALD.value       # other records are ignored
    events["time_ps"][len(times):] = times[-1]
    run = FakeRun(n, window)
    g2 = heraldry.Correlation(run, 0, 1, bin_ps=500, range_ps=10_000)
    windows = heraldry.Coincidences(run, range(n), groups=[0b011])
    counter = heraldry.Counter(run, n)
    herald = heraldry.HeraldRate(run, 0b011)
    run.play(events, np.sort(rng.integers(0, len(events), 9)))
    tags = events[events["kind"] == Kind.TAG.value]
    t = [np.sort(tags["time_ps"][tags["channel"] == c]).astype(np.int64) for c in range(n)]
    # Correlation: the bare kernel on the whole arrays; duration: the run's.
    r = g2.result()
    assert np.array_equal(r.counts, measure.correlate(t[0], t[1], 500, -10_000, 10_000))
    assert r.duration_ps == run.elapsed_ps
    # Coincidences with the run's window: the reference model's windows (in bins of 100 ps).
    tag_model = np.zeros(len(tags), model.TAG_DTYPE)
    tag_model["time"], tag_model["channel"] = tags["time_ps"] // 100, tags["channel"]
    expect = model.counts_from_tags(tag_model, model.CoreSettings(
        channels=n, window=window // 100, herald_masks=(0b011,)))
    assert np.array_equal(windows.result().patterns[1:2 ** n], expect.patterns[1:])
    assert herald.result().heralds == int(expect.herald_counts[0])
    assert herald.result().rate_hz == pytest.approx(
        expect.herald_counts[0] / (run.elapsed_ps * 1e-12))
    assert counter.result().counts.tolist() == [len(x) for x in t]


def test_tags_of_takes_the_drivers_blocks():
    events = np.zeros(3, EVENT_DTYPE)
    events["time_ps"] = [30, 10, 20]
    events["channel"] = [1, 0, 2]
    events["kind"] = [Kind.TAG.value, Kind.TAG.value, Kind.HERALD.value]
    times, chans = measure.tags_of(Block(events, {}))
    assert times.tolist() == [10, 30] and chans.tolist() == [0, 1]


# -- a Tagger on the scripted pty board ------------------------------------------------------

def test_tagger_on_a_serial_port_runs_the_acquire_sequence():
    with PtyBoard(tag_rate_hz=2e5, cycles_per_s=2e6) as board:
        with heraldry.open(board.port, baud=board.baud) as tagger:
            assert (tagger.channels, tagger.rules, tagger.bin_ps) == (4, 2, 10_000)
            assert tagger.baud == 12_000_000 and tagger.has_test_signal
            with tagger.run(Settings(window_ns=20), duration=0.02) as run:
                blocks = list(run)
            names = board.names()
        assert blocks and all(b.events["time_ps"].min() >= 0 for b in blocks)
        writes = [(board.map.by_address[f["address"]].name, f["value"]) for f in board.writes]
        status = [v for name, v in writes if name == "control.status_period"]
        # Snapshots off while configuring, on for the run (20 ms at 100 MHz: 32 records of 9
        # bytes take 0.24 ms at 12 Mbaud, under 2 % of 20 ms), off after.
        assert status == [0, 2_000_000, 0] and run.status_interval == 0.02
        runs = [v for name, v in writes if name == "control.run"]
        assert runs == [0, 1, 0]
        assert ("config.channel[0].source", Source.PIN.value) in writes or \
            all(v == Source.PIN.value for name, v in writes if name.endswith(".source"))
        assert names.index("control.clear") < names.index("control.run", names.index(
            "control.clear"))
        # Live counters come from STATUS snapshots: no counter is read while the gate is open.
        start = max(i for i, f in enumerate(board.frames) if f["op"] is Command.WRITE
                    and f["address"] == board.map["control.run"].address and f["value"] == 1)
        stop = next(i for i, f in enumerate(board.frames) if i > start
                    and f["address"] == board.map["control.run"].address)
        assert not [n for n in names[start:stop] if n.startswith("counter.")]
        assert [n for n in names[stop:] if n.startswith("counter.")]    # the final read
        # The fake board's counters read 0 while it streams tags: the check must fail.
        assert run.checks["tags_match_singles"] is False
        assert sum(run.tags_per_channel) > 0 == sum(run.counters["singles"])


def test_snapshot_interval_follows_the_link():
    """At 3 Mbaud a snapshot of 44 counters (4 channels, 2 rules: 4 singles, 15 patterns, 2
    heralds, 4 + 4 + 2 + 1 drop counters, 4 gated_out, 4 filtered, 4 filter_dropped; 9 bytes
    each, 10 bits a byte) takes 1.32 ms: the default interval grows to keep snapshots at 2 % of
    the link (66 ms); an interval under two snapshots is refused before anything is written."""
    with PtyBoard(baud=3_000_000) as board:
        with heraldry.open(board.port, baud=3_000_000) as tagger:
            assert tagger.run(duration=0.01).status_interval == pytest.approx(0.066)
            with pytest.raises(ConfigError, match=r"takes 1.32 ms at 3000000 baud"):
                tagger.run(duration=0.01, status_interval=0.0026)
            assert tagger.run(duration=0.01, status_interval=0.003).status_interval == 0.003
            with pytest.raises(ConfigError, match="window_ns 20000 ns is 2000 bins"):
                tagger.run(Settings(window_ns=20_000), duration=0.01)
            with pytest.raises(ConfigError, match="duration must be positive"):
                tagger.run(duration=-1)
        assert not board.writes             # refused settings never reach the board


def test_a_board_that_goes_away_mid_run_keeps_what_arrived():
    from heraldry.host.driver import DeviceLost
    with PtyBoard(tag_rate_hz=2e5, cycles_per_s=2e6) as board:
        tagger = heraldry.open(board.port, baud=board.baud)
        seen = 0
        with pytest.raises(DeviceLost) as lost:
            with tagger.run(duration=10.0, keep=True) as run:
                for block in run:
                    seen += len(block.tags)
                    if seen > 50:
                        board.disconnect()
        tagger.close()
    partial = lost.value.partial
    assert partial is run.result and partial.error and partial.counters is None
    assert run.ended and len(partial.tags) >= seen > 50


def test_baud_is_probed_in_the_known_boards_order():
    from heraldry.boards import BOARDS
    from heraldry.host.tagger import BOARD_BAUDS
    assert BOARD_BAUDS == {name: board.baud for name, board in BOARDS.items()}
    assert known_bauds() == [3_000_000, 12_000_000]
    with PtyBoard(baud=12_000_000, host_baud="port") as board:
        with heraldry.open(board.port) as tagger:
            assert tagger.baud == 12_000_000 and tagger.channels == 4
    with PtyBoard(baud=3_000_000, host_baud="port") as board:
        with heraldry.open(board.port, board="icebreaker") as tagger:
            assert tagger.baud == 3_000_000


def test_no_board_at_any_known_baud_is_one_error():
    with PtyBoard(baud=115_200, host_baud="port") as board:
        with pytest.raises(IdentificationError, match=r"at 3000000, 12000000 baud"):
            heraldry.open(board.port)


# -- the docs' examples -----------------------------------------------------------------------

def python_blocks(page):
    return re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), re.S)


@pytest.mark.parametrize("page", ["docs/api.md", "docs/measurements.md"])
def test_docs_examples_run(page, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    blocks = python_blocks(page)
    assert blocks
    for source in blocks:
        ns, _ = run_script(source, capsys)
    if page == "docs/measurements.md":
        # Independently: channel 0's tags in the first 0.5 s of the file.
        events = ReplaySource(ROOT / HYDRAHARP).events
        tags = events[(events["time_ps"] < 5 * 10 ** 11) & (events["kind"] == Kind.TAG.value)]
        assert ns["r"].n1 == np.count_nonzero(tags["channel"] == 0) > 0
        assert ns["r"].duration_ps == pytest.approx(5e11)


def test_acquire_finds_a_3_mbaud_board_without_baud():
    """``heraldry acquire --board PORT`` without ``--baud`` opens the port as the API does:
    a board at 3 Mbaud (both real boards' rate) identifies at the first rate tried (the port's
    set rate is what the scripted board sees), where a 12 Mbaud default garbled every byte.
    The run is the API's: the board's writes are the run sequence of ``Tagger.run``."""
    import json
    with PtyBoard(baud=3_000_000, host_baud="port", cycles_per_s=2e6, tag_rate_hz=2e5) as board:
        proc = subprocess.run([sys.executable, "-m", "heraldry.host.cli", "acquire", "--board",
                               board.port, "--duration", "0.01", "--quiet"],
                              capture_output=True, text=True, timeout=120)
        writes = [(board.map.by_address[f["address"]].name, f["value"]) for f in board.writes]
    # The scripted board's counters read 0 while it streams tags: the checks fail (exit 1).
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["port"] == board.port and summary["tags"] > 0
    # acquire reads its counters (no STATUS snapshots: switched off, never on).
    assert [v for name, v in writes if name == "control.status_period"] == [0]
    assert [v for name, v in writes if name == "control.run"] == [0, 1, 0]


def test_library_acquisition_reads_the_pins_by_default():
    """``Acquisition()`` (the settings in bins that ``tagger.run`` and ``acquire_device`` take)
    reads the pins unless the test signal is asked for, like ``Settings()``; the command line
    keeps its documented ``--test-signal pairs`` default."""
    from heraldry.host import cli
    from heraldry.host.config import Acquisition
    acq = Acquisition()
    acq.validate()
    assert acq.test_signal == "off" and acq.sources() == [Source.PIN] * 4
    assert settings_to_acquisition(Settings(), identity())[0].sources() == acq.sources()
    args = cli.build_parser().parse_args(["acquire"])
    assert cli.acquisition_from_args(args)[0].sources()[:2] == [Source.PAIR_A, Source.PAIR_B]


def test_a_run_polls_at_its_pace_while_blocks_flow():
    """Iterating a run whose every poll brings a block still polls ``control.now`` once per
    ``poll`` seconds (it polled back to back, filling the link with replies: 10 % more link
    bytes and merger drops at 2e5 pairs/s on the virtual board)."""
    import time as _time
    with PtyBoard(tag_rate_hz=5e5, cycles_per_s=2e7) as board:    # 0.5 s of wall time
        # The stand-in board is a Python thread that encodes its tags between replies: on a
        # loaded machine a reply can take over a second (CI once saw BoardSilent after 4 x 1 s).
        # This test is about the poll's pace, not the reply time.
        with heraldry.open(board.port, baud=board.baud, timeout=5.0) as tagger:
            began = _time.monotonic()
            blocks = 0
            with tagger.run(duration=0.1, poll=0.05) as run:
                for _ in run:
                    blocks += 1
            wall = _time.monotonic() - began
        now = board.map["control.now"].address
        run_reg = board.map["control.run"].address
        frames = board.frames
        start = next(i for i, f in enumerate(frames) if f["address"] == run_reg
                     and f["op"] is Command.WRITE and f["value"] == 1)
        stop = next(i for i, f in enumerate(frames) if i > start and f["address"] == run_reg)
        polls = sum(1 for f in frames[start:stop] if f["address"] == now)
    assert blocks >= 3
    assert polls <= wall / 0.05 + 2, (polls, wall)


def test_poll_steps_a_run_without_a_duration_and_returns_the_stops_blocks():
    """``run.poll()`` (an event loop's step, what ``heraldry serve`` runs on) on the virtual
    board: a run without a duration goes on until stopped; the counters' snapshots
    (``counters_seconds``) are whole status intervals apart and the counts only grow; the
    run's times count from ``start_cycles``, read between two ``control.now`` reads around the
    start; after the stop, iterating yields nothing but ``poll()`` returns the blocks that came
    in while stopping, and the tags of every block polled equal the board's singles
    counters."""
    interval = 0.002
    with heraldry.open("sim") as tagger:
        device = tagger.device
        run = tagger.run(Settings(test_signal="pairs"), status_interval=interval, poll=0.005)
        with pytest.raises(ConfigError, match="start the run first"):
            run.poll()
        before = device.now()
        run.start()
        after = device.now()
        assert before <= run.start_cycles <= after
        tags = np.zeros(tagger.channels, np.int64)
        seen = [(0.0, run.counters)]
        nones = 0
        while len(seen) < 4:
            block = run.poll()
            if block is None:
                nones += 1
            else:
                t = block.tags
                assert t["time_ps"].min() >= 0
                tags += np.bincount(t["channel"], minlength=tagger.channels)
            if run.counters_seconds != seen[-1][0]:
                seen.append((run.counters_seconds, run.counters))
        assert nones > 0 and not run.ended
        for (t0, c0), (t1, c1) in zip(seen, seen[1:]):
            assert t1 > t0
            if t0:      # snapshots are whole intervals apart (the first counts from before
                k = (t1 - t0) / interval        # the start, when snapshots were switched on)
                assert k == pytest.approx(round(k), abs=1e-6) and round(k) >= 1
            assert all(b >= a for a, b in zip(c0["singles"], c1["singles"]))
        final = run.stop()
        assert run.ended and list(run) == []
        tail = 0
        while (block := run.poll()) is not None:
            tail += 1
            tags += np.bincount(block.tags["channel"], minlength=tagger.channels)
        assert run.poll() is None
        assert tags.tolist() == final["singles"] and sum(final["singles"]) > 0
        assert run.checks["tags_match_singles"] and run.counters_seconds == run.device_seconds


def test_poll_never_waits_and_keeps_the_runs_pace():
    """Calling ``poll()`` back to back returns at once (None between the run's polls) and reads
    ``control.now`` once per ``poll`` seconds, as iterating does."""
    import time as _time
    with PtyBoard(tag_rate_hz=5e5, cycles_per_s=2e7) as board:
        with heraldry.open(board.port, baud=board.baud, timeout=5.0) as tagger:   # as above
            calls = nones = 0
            with tagger.run(poll=0.05) as run:
                began = _time.monotonic()
                while _time.monotonic() - began < 0.4:
                    calls += 1
                    nones += run.poll() is None
            wall = _time.monotonic() - began
        now = board.map["control.now"].address
        run_reg = board.map["control.run"].address
        frames = board.frames
        start = next(i for i, f in enumerate(frames) if f["address"] == run_reg
                     and f["op"] is Command.WRITE and f["value"] == 1)
        stop = next(i for i, f in enumerate(frames) if i > start and f["address"] == run_reg)
        polls = sum(1 for f in frames[start:stop] if f["address"] == now)
    assert calls > 100 and nones > calls - polls - 1
    assert 2 <= polls <= wall / 0.05 + 2, (polls, wall)


def test_pin_channels_read_their_pins_whatever_the_test_signal():
    """``Settings.pin_channels``: those channels read their pins, the others keep the test
    signal's sources; a channel the board lacks is refused in one line."""
    from heraldry.host.config import ConfigError
    from heraldry.host.tagger import Settings, settings_to_acquisition, sim_identity
    from heraldry.protocol import Source
    ident = sim_identity(4)
    acq, _ = settings_to_acquisition(Settings(test_signal="periodic", pin_channels=(1, 3)),
                                     ident)
    assert acq.sources() == [Source.PERIODIC, Source.PIN, Source.PERIODIC, Source.PIN]
    acq, _ = settings_to_acquisition(Settings(test_signal="pairs", pin_channels=(2,)), ident)
    assert acq.sources() == [Source.PAIR_A, Source.PAIR_B, Source.PIN, Source.PERIODIC]
    with pytest.raises(ConfigError, match="pin_channels 4: no such channel"):
        settings_to_acquisition(Settings(test_signal="periodic", pin_channels=(4,)), ident)
