"""Acquisition configuration in lab units, validated and converted for the gateware and the model.

:class:`Acquisition` is what a user asks for (nanoseconds, hertz, probabilities). It is checked
against the ranges in :mod:`heraldry.protocol` *before* anything touches a board, and converted
to the gateware's config layout (:meth:`Acquisition.gateware_config`) and to the reference
model's settings (:meth:`Acquisition.model_settings`), so both always see the same numbers.
"""

import json
import math
import os
import stat
from dataclasses import dataclass, field
from numbers import Integral, Real

from .. import protocol
from ..model.core import HERALD_MODES, ROLES, STREAM_MODES, HeraldRule
from ..protocol import Edge, Source

__all__ = ["ConfigError", "Acquisition", "EDGES", "TEST_SIGNALS", "BSM_SYNC_CHANNEL",
           "fast_herald_pins", "parse_mask", "parse_herald",
           "herald_rule", "rule_text", "ns_to_bins", "read_config", "read_config_file",
           "CONFIG_FILE_KEYS", "CONFIG_TEST_SIGNAL_KEYS",
           "CONFIG_FILE_MAX_BYTES"]

EDGES = {"rising": Edge.RISING, "falling": Edge.FALLING, "both": Edge.BOTH}
TEST_SIGNALS = ("pairs", "periodic", "bsm", "off")
#: Channels of the ``bsm`` test signal: D0 .. D3 on channels 0 .. 3, the sync on channel 4.
BSM_SYNC_CHANNEL = 4


class ConfigError(ValueError):
    """A configuration value the board cannot take. The message is one line, for the user."""


#: The keys of a config file (``heraldry calibrate`` writes the first five; ``delays_ns`` and
#: ``test_signal`` are applied, the others record how the delays were found). Any other key is
#: refused: a misspelt ``delay_ns`` must not leave the delays at zero without a word.
CONFIG_FILE_KEYS = ("delays_ns", "reference", "measured_ns", "bin_ns", "tags", "test_signal",
                    "stream")
#: The keys of a config file's ``test_signal`` object and the ``heraldry.Settings`` field each
#: sets (``mode`` is ``Settings.test_signal``; ``acquire`` options given override them).
CONFIG_TEST_SIGNAL_KEYS = {
    "mode": "test_signal", "seed": "seed", "period_ns": "period_ns",
    "pair_rate_hz": "pair_rate_hz", "efficiency": "efficiency", "dark_rate_hz": "dark_rate_hz",
    "pair_delay_ns": "pair_delay_ns", "bsm_offset_ns": "bsm_offset_ns",
    "bsm_event_probability": "bsm_event_probability", "bsm_psi_minus": "bsm_psi_minus",
    "bsm_efficiencies": "bsm_efficiencies",
}
#: A config file larger than this is refused unread (one written by calibrate is < 1 KiB).
CONFIG_FILE_MAX_BYTES = 1 << 20


def read_config(path):
    """``{channel: delay_ns}`` from a config file ``{"delays_ns": {"CH": NS, ...}, ...}``
    (the delays of :func:`read_config_file`)."""
    return read_config_file(path)[0]


def read_config_file(path):
    """``({channel: delay_ns}, {Settings field: value})`` from a config file
    ``{"delays_ns": {"CH": NS, ...}, "test_signal": {"mode": "bsm", "period_ns": 1000, ...},
    "stream": {"CH": "coincident", ...}}`` (any object may be left out; the keys of
    ``test_signal``: :data:`CONFIG_TEST_SIGNAL_KEYS`; ``stream`` gives the ``stream`` field,
    ``{channel: mode}``).

    Raises :class:`ConfigError` (one line naming ``--config PATH``) for a file that cannot be
    read, is not a regular file (a folder, ``/dev/zero``, a pipe), is larger than
    :data:`CONFIG_FILE_MAX_BYTES`, is not UTF-8 JSON, has a key not in
    :data:`CONFIG_FILE_KEYS` or :data:`CONFIG_TEST_SIGNAL_KEYS`, or has a channel, delay or
    test-signal value of the wrong type (the values' ranges are checked with the options')."""
    what = f"--config {path}"
    try:
        # Checked before opening: opening a pipe would wait for a writer.
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what}: not a regular file")
        if info.st_size > CONFIG_FILE_MAX_BYTES:
            raise ConfigError(f"{what}: {info.st_size} bytes; a config file is at most "
                              f"{CONFIG_FILE_MAX_BYTES} bytes")
        with open(path, "rb") as f:
            data = f.read(CONFIG_FILE_MAX_BYTES + 1)    # it may have grown since
    except OSError as error:
        raise ConfigError(f"{what}: cannot read it ({error.strerror})") from None
    if len(data) > CONFIG_FILE_MAX_BYTES:
        raise ConfigError(f"{what}: larger than {CONFIG_FILE_MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{what}: not UTF-8 text (byte {error.start})") from None
    def unique(pairs):
        config = dict(pairs)
        if len(config) != len(pairs):
            seen = set()
            twice = next(key for key, _ in pairs if key in seen or seen.add(key))
            raise ConfigError(f"{what}: key {twice!r} is given twice")
        return config
    try:
        config = json.loads(text, object_pairs_hook=unique)
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(f"{what}: not valid JSON") from None
    except RecursionError:
        raise ConfigError(f"{what}: nested too deeply to be a config file") from None
    if (not isinstance(config, dict)
            or not ("delays_ns" in config or "test_signal" in config or "stream" in config)
            or not isinstance(config.get("delays_ns", {}), dict)):
        raise ConfigError(f"{what}: needs a \"delays_ns\" object such as "
                          f"{{\"delays_ns\": {{\"0\": 70}}}} (or a \"test_signal\" object)")
    unknown = sorted(set(config) - set(CONFIG_FILE_KEYS))
    if unknown:
        raise ConfigError(f"{what}: unknown key {unknown[0]!r} (a config file has "
                          f"{', '.join(CONFIG_FILE_KEYS)})")
    delays = {}
    for channel, ns in config.get("delays_ns", {}).items():
        try:
            number = int(channel)
        except ValueError:
            raise ConfigError(f"{what}: channel {channel!r} is not a number") from None
        if isinstance(ns, bool) or not isinstance(ns, (int, float)):
            raise ConfigError(f"{what}: delay {ns!r} of channel {channel} is not a number "
                              f"of ns")
        if number in delays:
            raise ConfigError(f"{what}: channel {number} is given twice in delays_ns")
        delays[number] = float(ns)
    settings = _config_test_signal(config.get("test_signal", {}), what)
    if "stream" in config:
        settings["stream"] = _config_stream(config["stream"], what)
    return delays, settings


def _config_stream(section, what):
    """``{channel: mode}`` of a config file's ``"stream": {"CH": "all"|"coincident"|"none"}``."""
    if not isinstance(section, dict):
        raise ConfigError(f"{what}: \"stream\" must be an object such as "
                          f"{{\"0\": \"coincident\"}}")
    modes = {}
    for channel, mode in section.items():
        try:
            number = int(channel)
        except ValueError:
            raise ConfigError(f"{what}: stream channel {channel!r} is not a number") from None
        if mode not in STREAM_MODES:
            raise ConfigError(f"{what}: stream {mode!r} of channel {channel} must be one of "
                              f"{', '.join(STREAM_MODES)}")
        if number in modes:
            raise ConfigError(f"{what}: channel {number} is given twice in stream")
        modes[number] = mode
    return modes


def _config_test_signal(section, what):
    if not isinstance(section, dict):
        raise ConfigError(f"{what}: \"test_signal\" must be an object such as "
                          f"{{\"mode\": \"bsm\", \"period_ns\": 1000}}")
    settings = {}
    for key, value in section.items():
        if key not in CONFIG_TEST_SIGNAL_KEYS:
            raise ConfigError(f"{what}: unknown test_signal key {key!r} (keys: "
                              f"{', '.join(CONFIG_TEST_SIGNAL_KEYS)})")
        if key == "mode":
            if value not in TEST_SIGNALS:
                raise ConfigError(f"{what}: test_signal mode {value!r} must be one of "
                                  f"{', '.join(TEST_SIGNALS)}")
        elif key == "bsm_efficiencies":
            if (not isinstance(value, list) or len(value) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                               for v in value)):
                raise ConfigError(f"{what}: test_signal bsm_efficiencies must be 4 numbers "
                                  f"(D0..D3), not {value!r}")
            value = tuple(float(v) for v in value)
        elif key == "seed":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{what}: test_signal seed {value!r} is not an integer")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{what}: test_signal {key} {value!r} is not a number")
        settings[CONFIG_TEST_SIGNAL_KEYS[key]] = value
    return settings


def parse_mask(text, channels, what="herald mask"):
    """Parse a channel mask such as ``0b011``, ``0x3`` or ``3``; refuse empty masks. ``what``
    names it in the messages."""
    text = text.strip()
    try:
        mask = int(text, 0)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a number like 0b011, 0x3 or 3") from None
    if mask <= 0:
        raise ConfigError(f"{what} {text!r} selects no channel")
    if mask >> channels:
        raise ConfigError(f"{what} {text!r} names a channel above {channels - 1} "
                          f"(the board has {channels} channels)")
    return mask


def parse_herald(text, channels, rules=None, what="--herald"):
    """Parse one herald rule: ``CHANNELS[,OPTION...]`` into a :class:`heraldry.model.HeraldRule`.

    ``CHANNELS`` is either terms joined by ``&``, each ``Dc`` (channel c required) or ``!Dc``
    (channel c vetoed), e.g. ``D0&D3&!D1&!D2``, or a channel mask such as ``0b0011`` (those
    channels required, none vetoed). ``OPTION`` is ``early`` (the default: decided at the
    completing event) or ``exact`` (decided when the window closes), or ``pin=P`` (the herald
    pin the rule drives; default: the pin of its own number; rules sharing a pin are OR'ed).
    ``rules`` is the board's rule count, which bounds ``pin``. Refuses anything else with a
    :class:`ConfigError` naming ``what``.
    """
    if not isinstance(text, str):
        raise ConfigError(f"{what} {text!r} is not a rule such as D0&D3&!D1&!D2,exact")
    parts = [part.strip() for part in text.split(",")]
    head, options = parts[0], parts[1:]
    if not head:
        raise ConfigError(f"{what} {text!r} names no channel; give e.g. D0&D3&!D1&!D2,exact")
    if head[0].isdigit():
        require, veto = parse_mask(head, channels, f"{what} mask"), 0
    else:
        require = veto = 0
        for term in head.split("&"):
            term = term.strip()
            negate = term.startswith("!")
            name = term[1:].strip() if negate else term
            if len(name) < 2 or name[0] not in "Dd" or not name[1:].isdigit():
                raise ConfigError(f"{what} {text!r}: {term!r} is not a channel term like D3 or "
                                  f"!D3")
            c = int(name[1:])
            if c >= channels:
                raise ConfigError(f"{what} {text!r}: there is no channel {c} (the board has "
                                  f"{channels} channels: D0..D{channels - 1})")
            if (require | veto) >> c & 1:
                raise ConfigError(f"{what} {text!r} names channel {c} twice")
            if negate:
                veto |= 1 << c
            else:
                require |= 1 << c
        if not require:
            raise ConfigError(f"{what} {text!r} requires no channel (only !D terms): it would "
                              f"never fire")
    mode, pin = None, None
    for option in options:
        key, _, value = option.partition("=")
        key = key.strip()
        if option in HERALD_MODES and mode is None:
            mode = option
        elif key == "pin" and _ and pin is None:
            value = value.strip()
            if not value.isdigit():
                raise ConfigError(f"{what} {text!r}: pin={value} is not a pin number")
            pin = int(value)
            if rules is not None and pin >= rules:
                raise ConfigError(f"{what} {text!r}: there is no herald pin {pin} (the board has "
                                  f"{rules}: 0..{rules - 1})")
        elif option in HERALD_MODES or key == "pin":
            twice = "mode" if option in HERALD_MODES else "pin"
            raise ConfigError(f"{what} {text!r} gives the {twice} twice")
        else:
            raise ConfigError(f"{what} {text!r}: unknown option {option!r} (options: early, "
                              f"exact, pin=P)")
    try:
        return HeraldRule(require, veto, mode or "early", pin)
    except ValueError as error:
        raise ConfigError(f"{what} {text!r}: {error}") from None


def rule_text(rule, number, channels):
    """How a summary names rule ``number``: ``mask 0011`` for a plain mask rule (early, no veto,
    its own pin), else the command-line form (``D0&D3&!D1&!D2,exact,pin=0``)."""
    if rule.veto == 0 and rule.mode == "early" and rule.pin in (None, number):
        return f"mask {rule.require:0{channels}b}"
    own = rule if rule.pin != number else HeraldRule(rule.require, rule.veto, rule.mode)
    return str(own)


def herald_rule(value, channels):
    """A :class:`HeraldRule` from a rule, a ``dict`` of its fields (as a saved acquisition holds
    them) or a plain channel mask; :class:`ConfigError` otherwise."""
    if isinstance(value, HeraldRule):
        rule = value
    elif isinstance(value, dict):
        try:
            rule = HeraldRule(**value)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"herald rule {value!r}: {error}") from None
    elif isinstance(value, Integral) and not isinstance(value, bool):
        if not 0 < value < 2 ** channels:
            raise ConfigError(f"herald mask {value:#b} must select channels among "
                              f"0..{channels - 1}")
        rule = HeraldRule(int(value))
    else:
        raise ConfigError(f"herald rule {value!r} is not a rule, a dict or a channel mask")
    return rule


def ns_to_bins(what, ns, bin_ps, lo, hi):
    """Convert nanoseconds to whole bins; refuse values outside ``lo..hi`` bins.

    Returns ``(bins, note)``; ``note`` is a message for the user when ``ns`` was not a whole
    number of bins and had to be rounded (to the nearest bin), else ``None``.
    """
    if not math.isfinite(ns):
        raise ConfigError(f"{what} must be a number of ns, not {ns:g}")
    exact = ns * 1000.0 / bin_ps
    if not math.isfinite(exact) or abs(exact) > 2 ** 62:
        raise ConfigError(f"{what} {ns:g} ns is far outside {lo}..{hi} bins of "
                          f"{bin_ps / 1000:g} ns")
    bins = int(round(exact))
    note = None
    if abs(exact - bins) > 1e-9:
        note = (f"{what} {ns:g} ns is not a whole number of {bin_ps / 1000:g} ns bins; "
                f"using {bins} bins = {bins * bin_ps / 1000:g} ns")
    if not lo <= bins <= hi:
        raise ConfigError(f"{what} {ns:g} ns is {exact:g} bins; it must be "
                          f"{lo * bin_ps / 1000:g} to {hi * bin_ps / 1000:g} ns "
                          f"({lo}..{hi} bins of {bin_ps / 1000:g} ns)")
    return bins, note


def _probability_threshold(what, p):
    # The test signal's own definition of a threshold (heraldry.model.testsignal), so the host,
    # the gateware and the model agree to the last bit.
    from ..model.testsignal import probability_threshold
    try:
        return probability_threshold(p)
    except ValueError:
        raise ConfigError(f"{what} {p:g} is not a probability between 0 and 1") from None


@dataclass
class Acquisition:
    """One acquisition's settings, in lab units. Call :meth:`validate` (done by every consumer).

    Times are in bins (``bin_ps`` each) once validated; the CLI converts nanoseconds with
    :func:`ns_to_bins`. ``herald_rules`` lists the rules in use (at most ``rules``), as
    :class:`heraldry.model.HeraldRule` s (or plain channel masks, or dicts of a rule's fields);
    ``herald_masks`` is the older way to give them (plain masks: early, no veto). Give either,
    or both if they agree; afterwards ``herald_rules`` holds the rules with every ``pin``
    filled in and ``herald_masks`` their ``require`` masks. ``test_signal`` is ``"off"`` (the
    pins) unless asked for: on a board that has the built-in signal, a forgotten setting must
    not measure synthetic photons (``heraldry acquire`` asks for ``"pairs"`` by default on a
    virtual board only, ``selftest`` always uses the signal, as their options say).

    ``"bsm"`` is the Bell-state-measurement source (``heraldry.model.testsignal``): detectors
    D0 .. D3 on channels 0 .. 3 (dark counts ``dark_rate_hz`` each), the sync (attempt clock,
    every ``period_cycles``) on channel :data:`BSM_SYNC_CHANNEL` if the board has it (no dark
    counts), further channels silent. Each attempt, ``bsm_offset_cycles`` after its sync, holds
    a two-photon event with probability ``bsm_event_probability``, psi- with probability
    ``bsm_psi_minus`` (else psi+); detector ``d`` detects with ``bsm_efficiencies[d]``
    (default: ``efficiency`` for all four).
    """
    channels: int = 4
    rules: int = 2
    bin_ps: int = 10_000
    clock_hz: float = 100e6
    fine_bits: int = 0
    window_bins: int = 1
    delays_bins: list = field(default_factory=list)
    dead_time_bins: list = field(default_factory=list)
    edges: list = field(default_factory=list)
    enabled: list = field(default_factory=list)
    herald_masks: list = field(default_factory=list)
    herald_width: int = 4
    coincidence_record_mask: int = 0
    test_signal: str = "off"
    pair_rate_hz: float = 1e5
    efficiency: float = 0.5
    dark_rate_hz: float = 1e3
    pair_delay_bins: int = 0
    period_cycles: int = 100
    seed: int = 1
    herald_rules: list = field(default_factory=list)
    #: Channels that read their pins whatever ``test_signal`` says (a loopback self-test feeds
    #: channel 0 from the signal and reads the jumper on another input).
    pin_channels: list = field(default_factory=list)
    bsm_offset_cycles: int = 0
    bsm_event_probability: float = 0.1
    bsm_psi_minus: float = 0.5
    bsm_efficiencies: list = field(default_factory=list)
    #: Per channel, which events are streamed (``heraldry.model.STREAM_MODES``; default all):
    #: docs/semantics.md, "Stream filters".
    stream: list = field(default_factory=list)
    #: Per channel ``"detector"`` (default), ``"sync"`` (the attempt clock, at most one) or
    #: ``"reference"`` (PPS markers): docs/semantics.md, "Sync, gates and reference markers".
    #: A board needs the gates capability for any but detectors.
    roles: list = field(default_factory=list)
    #: Per channel ``None`` (no gate) or ``(offset, width)`` in bins after the latest sync edge.
    gates_bins: list = field(default_factory=list)
    #: Stream every Nth sync edge as a marker (a tag of the sync channel); 0: none.
    sync_marker_every: int = 0

    def __post_init__(self):
        n = self.channels
        if (isinstance(n, bool) or not isinstance(n, Integral)
                or not 1 <= n <= protocol.MAX_CHANNELS):
            raise ConfigError(f"channels must be 1..{protocol.MAX_CHANNELS}, not {n!r}")
        if (isinstance(self.rules, bool) or not isinstance(self.rules, Integral)
                or not 1 <= self.rules <= protocol.MAX_RULES):
            raise ConfigError(f"rules must be 1..{protocol.MAX_RULES}, not {self.rules!r}")
        self.delays_bins = list(self.delays_bins) or [0] * n
        self.dead_time_bins = list(self.dead_time_bins) or [0] * n
        self.edges = list(self.edges) or ["rising"] * n
        self.enabled = list(self.enabled) or [True] * n
        self.stream = list(self.stream) or ["all"] * n
        self.roles = list(self.roles) or ["detector"] * n
        self.gates_bins = [None if g is None else tuple(g) for g in self.gates_bins] or [None] * n
        self.pin_channels = sorted(set(self.pin_channels))
        if not isinstance(self.bsm_efficiencies, (list, tuple)):
            raise ConfigError(f"bsm_efficiencies must be a list of 4 probabilities, not "
                              f"{self.bsm_efficiencies!r}")
        self.bsm_efficiencies = list(self.bsm_efficiencies) or [self.efficiency] * 4
        bad = [c for c in self.pin_channels
               if isinstance(c, bool) or not isinstance(c, Integral) or not 0 <= c < n]
        if bad:
            raise ConfigError(f"pin_channels {bad[0]!r}: no such channel "
                              f"(channels are 0..{n - 1})")
        if not isinstance(self.herald_rules, (list, tuple)):
            raise ConfigError(f"herald_rules must be a list, not {self.herald_rules!r}")
        if not isinstance(self.herald_masks, (list, tuple)):
            raise ConfigError(f"herald_masks must be a list, not {self.herald_masks!r}")
        rules = [herald_rule(r, n) for r in self.herald_rules]
        masks = list(self.herald_masks)
        if not rules:
            rules = [herald_rule(m, n) for m in masks]
        elif masks and masks != [r.require for r in rules]:
            raise ConfigError("give herald_rules or herald_masks, not both (they disagree)")
        self.herald_rules = [r if r.pin is not None else HeraldRule(r.require, r.veto, r.mode, i)
                             for i, r in enumerate(rules)]
        self.herald_masks = [r.require for r in self.herald_rules]
        self.validate()

    def validate(self):
        n = self.channels
        for name in ("bin_ps", "clock_hz"):         # a bin and a cycle: 1 fs .. 1 s
            value = getattr(self, name)
            limit = 1e12 if name == "bin_ps" else 1e15
            if (isinstance(value, bool) or not isinstance(value, Real)
                    or not 0 < value <= limit):
                raise ConfigError(f"{name} must be a positive number up to {limit:g}, not "
                                  f"{value!r}")
        def integer(value):
            return isinstance(value, Integral) and not isinstance(value, bool)
        for name in ("fine_bits", "window_bins", "herald_width", "coincidence_record_mask",
                     "pair_delay_bins", "period_cycles", "seed", "bsm_offset_cycles"):
            if not integer(getattr(self, name)):
                raise ConfigError(f"{name} must be an integer, not {getattr(self, name)!r}")
        for name in ("delays_bins", "dead_time_bins", "herald_masks"):
            if not all(integer(v) for v in getattr(self, name)):
                raise ConfigError(f"{name} must be integers, not {getattr(self, name)!r}")
        if not 0 <= self.fine_bits <= 8:          # the range of ident.fine_bits
            raise ConfigError(f"fine_bits must be 0..8, not {self.fine_bits}")
        for name in ("delays_bins", "dead_time_bins", "edges", "enabled"):
            if len(getattr(self, name)) != n:
                raise ConfigError(f"{name} has {len(getattr(self, name))} entries for {n} channels")
        if not 1 <= self.window_bins <= 2 ** protocol.WINDOW_BITS - 1:
            raise ConfigError(f"window must be 1..{2 ** protocol.WINDOW_BITS - 1} bins, "
                              f"not {self.window_bins}")
        if self.window_bins < 2 ** self.fine_bits:
            raise ConfigError(f"window must be at least one clock cycle "
                              f"({2 ** self.fine_bits} bins)")
        for c, d in enumerate(self.delays_bins):
            if not 0 <= d <= 2 ** protocol.DELAY_BITS - 1:
                raise ConfigError(f"delay of channel {c} must be 0..{2 ** protocol.DELAY_BITS - 1}"
                                  f" bins, not {d}")
        for c, d in enumerate(self.dead_time_bins):
            if not 0 <= d <= 2 ** protocol.DEAD_TIME_BITS - 1:
                raise ConfigError(f"dead time of channel {c} must be "
                                  f"0..{2 ** protocol.DEAD_TIME_BITS - 1} bins, not {d}")
        if len(self.stream) != n:
            raise ConfigError(f"stream has {len(self.stream)} entries for {n} channels")
        for c, mode in enumerate(self.stream):
            if mode not in STREAM_MODES:
                raise ConfigError(f"stream mode of channel {c} must be one of "
                                  f"{', '.join(STREAM_MODES)}, not {mode!r}")
        markers = ("reference" in getattr(self, "roles", ())
                   or bool(getattr(self, "sync_marker_every", 0)))
        if "coincident" in self.stream and markers:
            # A marker is streamed in its own cycle; one that came while the filter holds a
            # window's tags would go out before them (docs/semantics.md, "Stream filters").
            raise ConfigError("stream mode coincident cannot be combined with markers (a "
                              "reference channel or sync markers) yet")
        for c, e in enumerate(self.edges):
            if e not in EDGES:
                raise ConfigError(f"edge of channel {c} must be one of {', '.join(EDGES)}, "
                                  f"not {e!r}")
        self._validate_gates()
        if len(self.herald_rules) > self.rules:
            raise ConfigError(f"{len(self.herald_rules)} herald rules given; the gateware has "
                              f"{self.rules}")
        if [r.require for r in self.herald_rules] != list(self.herald_masks):
            raise ConfigError("herald_masks must be the require masks of herald_rules")
        for rule in self.herald_rules:
            if not isinstance(rule, HeraldRule):
                raise ConfigError(f"herald rule {rule!r} is not a heraldry.model.HeraldRule")
            if (rule.require | rule.veto) >> n:
                raise ConfigError(f"herald rule {rule} must name channels among 0..{n - 1}")
            if rule.pin is None or rule.pin >= self.rules:
                raise ConfigError(f"herald rule {rule} drives pin {rule.pin}; the gateware has "
                                  f"pins 0..{self.rules - 1}")
        if not 1 <= self.herald_width <= 2 ** protocol.HERALD_WIDTH_BITS - 1:
            raise ConfigError(f"herald width must be 1..{2 ** protocol.HERALD_WIDTH_BITS - 1} "
                              f"cycles, not {self.herald_width}")
        if not 0 <= self.coincidence_record_mask < 2 ** (2 ** n):
            raise ConfigError("coincidence record mask has bits for patterns that do not exist")
        if self.test_signal not in TEST_SIGNALS:
            raise ConfigError(f"test signal must be one of {', '.join(TEST_SIGNALS)}, "
                              f"not {self.test_signal!r}")
        for what, rate in (("pair rate", self.pair_rate_hz), ("dark rate", self.dark_rate_hz)):
            if not 0 <= rate <= self.clock_hz:
                raise ConfigError(f"{what} {rate:g} Hz must be 0..{self.clock_hz:g} Hz "
                                  f"(one per clock cycle)")
        _probability_threshold("efficiency", self.efficiency)
        if not 0 <= self.pair_delay_bins <= 2 ** protocol.PAIR_DELAY_BITS - 1:
            raise ConfigError(f"pair delay must be 0..{2 ** protocol.PAIR_DELAY_BITS - 1} cycles, "
                              f"not {self.pair_delay_bins}")
        if self.pair_delay_bins % (2 ** self.fine_bits):
            raise ConfigError("pair delay must be a whole number of clock cycles")
        if not 1 <= self.period_cycles <= 2 ** protocol.PERIOD_BITS - 1:
            raise ConfigError(f"test-signal period must be 1..{2 ** protocol.PERIOD_BITS - 1} "
                              f"cycles, not {self.period_cycles}")
        if not 0 <= self.seed < 2 ** 32:
            raise ConfigError(f"seed must be 0..{2 ** 32 - 1}, not {self.seed}")
        for what, value in (("bsm event probability", self.bsm_event_probability),
                            ("bsm psi- probability", self.bsm_psi_minus)):
            if isinstance(value, bool) or not isinstance(value, Real):
                raise ConfigError(f"{what} {value!r} is not a number")
            _probability_threshold(what, value)
        if len(self.bsm_efficiencies) != 4:
            raise ConfigError(f"bsm_efficiencies needs 4 probabilities (D0..D3), not "
                              f"{len(self.bsm_efficiencies)}")
        for d, value in enumerate(self.bsm_efficiencies):
            if isinstance(value, bool) or not isinstance(value, Real):
                raise ConfigError(f"efficiency of D{d} {value!r} is not a number")
            _probability_threshold(f"efficiency of D{d}", value)
        if self.test_signal == "bsm":
            if n < 4:
                raise ConfigError(f"test signal bsm needs 4 channels for D0..D3 (and a fifth "
                                  f"for the sync); the board has {n}")
            if not 0 <= self.bsm_offset_cycles < self.period_cycles:
                raise ConfigError(f"bsm offset {self.bsm_offset_cycles} cycles must be 0.."
                                  f"{self.period_cycles - 1}: within the period "
                                  f"({self.period_cycles} cycles)")

    def _validate_gates(self):
        """Roles, gates and sync markers: the refusals of ``--sync``, ``--gate``,
        ``--reference`` and ``--sync-marker-every``, one line each."""
        n = self.channels
        for name in ("roles", "gates_bins"):
            if len(getattr(self, name)) != n:
                raise ConfigError(f"{name} has {len(getattr(self, name))} entries for {n} "
                                  f"channels")
        for c, role in enumerate(self.roles):
            if role not in ROLES:
                raise ConfigError(f"role of channel {c} must be one of {', '.join(ROLES)}, "
                                  f"not {role!r}")
        syncs = [c for c, role in enumerate(self.roles) if role == "sync"]
        if len(syncs) > 1:
            raise ConfigError(f"only one channel can be the sync, not channels "
                              f"{', '.join(map(str, syncs))}")
        top = 2 ** protocol.GATE_BITS - 1
        for c, gate in enumerate(self.gates_bins):
            if gate is None:
                continue
            if (len(gate) != 2 or any(isinstance(v, bool) or not isinstance(v, Integral)
                                      for v in gate)):
                raise ConfigError(f"gate of channel {c} must be (offset, width) in bins, not "
                                  f"{gate!r}")
            offset, width = gate
            if self.roles[c] != "detector":
                raise ConfigError(f"channel {c} is the {self.roles[c]} channel: it cannot "
                                  f"have a gate (gates select detector events)")
            if not syncs:
                raise ConfigError(f"channel {c} has a gate but no channel is the sync "
                                  f"(--sync CH)")
            if width < 1:
                raise ConfigError(f"gate of channel {c}: width must be at least one bin, "
                                  f"not {width}")
            if offset < 0 or offset + width > top:
                raise ConfigError(f"gate of channel {c}: offset + width must be 0..{top} bins "
                                  f"(the offset counter), not {offset} + {width}")
        if (isinstance(self.sync_marker_every, bool)
                or not isinstance(self.sync_marker_every, Integral)
                or not 0 <= self.sync_marker_every <= 2 ** protocol.MARKER_EVERY_BITS - 1):
            raise ConfigError(f"sync marker interval must be 0.."
                              f"{2 ** protocol.MARKER_EVERY_BITS - 1} sync edges, not "
                              f"{self.sync_marker_every!r}")
        if self.sync_marker_every and not syncs:
            raise ConfigError("sync markers need a sync channel (--sync CH)")
        others = [c for c, role in enumerate(self.roles) if role != "detector"]
        for rule in self.herald_rules:
            if not isinstance(rule, HeraldRule):
                continue
            for c in others:
                if (rule.require | rule.veto) >> c & 1:
                    raise ConfigError(f"herald rule {rule} names channel {c}, the "
                                      f"{self.roles[c]} channel: rules take detectors only")

    @property
    def gated(self):
        """Some channel has a role other than detector, a gate or sync markers: the board
        needs the gates capability (``protocol.CAPABILITY_GATES``)."""
        return (any(role != "detector" for role in self.roles)
                or any(g is not None for g in self.gates_bins) or bool(self.sync_marker_every))

    @property
    def references_only(self):
        """Reference channels are the only thing :attr:`gated` asks for: a board with the
        reference role alone (``protocol.CAPABILITY_REFERENCES``) can run it."""
        return (self.gated and all(role in ("detector", "reference") for role in self.roles)
                and all(g is None for g in self.gates_bins) and not self.sync_marker_every)

    def roles_refusal(self, capabilities):
        """Why a board with ``capabilities`` (``ident.capabilities``) cannot run these roles
        and gates, or None."""
        if not self.gated or capabilities & protocol.CAPABILITY_GATES:
            return None
        if self.references_only and capabilities & protocol.CAPABILITY_REFERENCES:
            return None
        if capabilities & protocol.CAPABILITY_REFERENCES:
            return (f"this board has reference inputs but no sync or gates (ident.capabilities "
                    f"{capabilities:#x}): only --reference, no --sync, --gate or sync markers")
        return (f"this board has no sync, gates or reference inputs (ident.capabilities "
                f"{capabilities:#x}): every channel must be a detector without gate (no --sync, "
                f"--gate, --reference, sync markers)")

    @property
    def sync_channel(self):
        return next((c for c, role in enumerate(self.roles) if role == "sync"), None)

    def gates_config(self):
        """The ``gates`` fields (``protocol.gates_layout``)."""
        return {
            "role": [protocol.Role[role.upper()] for role in self.roles],
            "gate_offset": [0 if g is None else g[0] for g in self.gates_bins],
            "gate_width": [0 if g is None else g[1] for g in self.gates_bins],
            "marker_every": self.sync_marker_every,
        }

    # -- derived views -----------------------------------------------------------------------

    def sources(self):
        """Per-channel :class:`protocol.Source` for the chosen test signal.

        ``pairs``: channel 0 is arm A, channel 1 arm B, further channels see dark counts only
        (periodic source with the period off); ``periodic``: every channel periodic, in phase;
        ``bsm``: D0 .. D3 on channels 0 .. 3, the sync on channel 4, further channels their
        pins; ``off``: every channel reads its pin. Channels in ``pin_channels`` read their
        pins in every case.
        """
        if self.test_signal == "pairs":
            sources = ([Source.PAIR_A, Source.PAIR_B][:self.channels]
                       + [Source.PERIODIC] * (self.channels - 2))
        elif self.test_signal == "bsm":
            sources = ([Source.BSM_D0, Source.BSM_D1, Source.BSM_D2, Source.BSM_D3,
                        Source.PERIODIC][:self.channels] + [Source.PIN] * (self.channels - 5))
        elif self.test_signal == "periodic":
            sources = [Source.PERIODIC] * self.channels
        else:
            sources = [Source.PIN] * self.channels
        return [Source.PIN if c in self.pin_channels else source
                for c, source in enumerate(sources)]

    def pair_threshold(self):
        return _probability_threshold("pair probability per cycle",
                                      self.pair_rate_hz / self.clock_hz)

    def dark_threshold(self):
        return _probability_threshold("dark probability per cycle",
                                      self.dark_rate_hz / self.clock_hz)

    def efficiency_threshold(self):
        return _probability_threshold("efficiency", self.efficiency)

    def pair_delay_cycles(self):
        return self.pair_delay_bins >> self.fine_bits

    def dark_thresholds(self):
        """Per-channel dark threshold: the dark rate on every channel, but none on the ``bsm``
        sync (an attempt clock without stray pulses)."""
        dark = [self.dark_threshold()] * self.channels
        if self.test_signal == "bsm" and self.channels > BSM_SYNC_CHANNEL:
            dark[BSM_SYNC_CHANNEL] = 0
        return dark

    def bsm_config(self):
        """The ``test_bsm`` fields (``protocol.bsm_layout()``) as thresholds."""
        return {
            "offset": self.bsm_offset_cycles,
            "event": _probability_threshold("bsm event probability", self.bsm_event_probability),
            "psi_minus": _probability_threshold("bsm psi- probability", self.bsm_psi_minus),
            "eta": [_probability_threshold(f"efficiency of D{d}", e)
                    for d, e in enumerate(self.bsm_efficiencies)],
        }

    def test_signal_settings(self):
        """The test signal as :class:`heraldry.model.testsignal.TestSignalSettings` (what the
        board's generator emits after a clear, source for source)."""
        from ..model.testsignal import TestSignalSettings
        test = self.gateware_config().test
        bsm = self.bsm_config()
        return TestSignalSettings(
            seed=int(test.seed), period=int(test.period),
            pair_threshold=int(test.pair_threshold), eta_a=int(test.eta_a),
            eta_b=int(test.eta_b), pair_delay=int(test.pair_delay),
            dark=tuple(int(test.dark[c]) for c in range(self.channels)),
            sources=tuple(s.name.lower() for s in self.sources()),
            bsm_offset=bsm["offset"], bsm_event=bsm["event"], bsm_psi_minus=bsm["psi_minus"],
            bsm_eta=tuple(bsm["eta"]))

    def gateware_config(self):
        """The value for the core's ``config`` port: a ``protocol.config_layout`` constant."""
        layout = protocol.config_layout(self.channels, self.rules)
        unused = self.rules - len(self.herald_rules)
        masks = list(self.herald_masks) + [0] * unused
        vetoes = [r.veto for r in self.herald_rules] + [0] * unused
        exact = sum(1 << i for i, r in enumerate(self.herald_rules) if r.mode == "exact")
        # Unused rules (mask 0) never fire; they keep their own pins.
        pins = [r.pin for r in self.herald_rules] + list(range(len(self.herald_rules),
                                                               self.rules))
        sources = self.sources()
        return layout.const({
            "channel": [{
                "enable": int(self.enabled[c]),
                "edge": EDGES[self.edges[c]],
                "source": sources[c],
                "dead_time": self.dead_time_bins[c],
                "delay": self.delays_bins[c],
            } for c in range(self.channels)],
            "window": self.window_bins,
            "herald_mask": masks,
            "herald_veto": vetoes,
            "herald_exact": exact,
            "herald_pin": pins,
            "herald_width": self.herald_width,
            "coincidence_record_mask": self.coincidence_record_mask,
            "test": {
                "seed": self.seed,
                # 0 turns the periodic signal off: in "pairs" mode it leaves dark counts only
                "period": (self.period_cycles if self.test_signal in ("periodic", "bsm")
                           else 0),
                "pair_threshold": self.pair_threshold(),
                "eta_a": self.efficiency_threshold(),
                "eta_b": self.efficiency_threshold(),
                "pair_delay": self.pair_delay_cycles(),
                "dark": self.dark_thresholds(),
            },
            "test_bsm": self.bsm_config(),
            "stream": [protocol.StreamMode[mode.upper()] for mode in self.stream],
            "gates": self.gates_config(),
        })

    @property
    def filtering(self):
        """Some channel streams less than all its events (the streamed tags then no longer
        determine the counters: :func:`heraldry.model.counts_from_tags` refuses)."""
        return any(mode != "all" for mode in self.stream)

    def model_settings(self):
        """The same configuration as :class:`heraldry.model.CoreSettings`."""
        from ..model import ChannelSettings, CoreSettings
        return CoreSettings(
            channels=self.channels,
            fine_bits=self.fine_bits,
            window=self.window_bins,
            channel=tuple(ChannelSettings(enable=bool(self.enabled[c]), edge=self.edges[c],
                                          dead_time=self.dead_time_bins[c],
                                          delay=self.delays_bins[c], role=self.roles[c],
                                          gate=self.gates_bins[c])
                          for c in range(self.channels)),
            sync_marker_every=self.sync_marker_every,
            herald_rules=tuple(self.herald_rules),
            herald_width=self.herald_width,
            coincidence_record_mask=self.coincidence_record_mask,
            stream=tuple(self.stream),
        )


def fast_herald_pins(acq):
    """Bit mask of the herald pins a device with the fast herald path (``ident.capabilities``
    bit 6, ``protocol.CAPABILITY_FAST_HERALD``) drives from it rather than from the core, for
    the validated acquisition ``acq`` (docs/boards.md, "The ULX3S's fast herald path").

    A pin is fast only when that is exactly equivalent to the core's pin: every rule on it is
    ``early``, and every enabled channel reads its pin (no test signal), has delay 0, and is a
    detector without gate. The gateware decides the same from its registers
    (``heraldry.gateware.fastherald.fast_pin_mask``)."""
    sources = acq.sources()
    for c in range(acq.channels):
        if not acq.enabled[c]:
            continue
        if (acq.delays_bins[c] != 0 or sources[c] != Source.PIN or acq.roles[c] != "detector"
                or acq.gates_bins[c] is not None):
            return 0
    mask = (1 << acq.rules) - 1
    for rule in acq.herald_rules:
        if rule.mode != "early":
            mask &= ~(1 << rule.pin)
    return mask
