"""Bit-exact model of the built-in test signal (photon-pair emulator, ``gateware/testsignal.py``).

Plain Python and numpy, no Amaranth: this module *is* the specification the gateware reproduces.

Cycle numbering
---------------
Cycle ``k = 0`` is the first cycle in which the generator's ``clear`` input is low after one or
more cycles in which it was high (the generator is re-seeded at every clock edge at which it
samples ``clear`` high, and emits nothing in a cycle in which ``clear`` is high). Every later
cycle increments ``k``. Cycle ``k`` of the test signal is the cycle in which its ``rise`` output
carries cycle ``k``'s events.

Random draws
------------
There are ``3 + channels`` independent xorshift32 generators (shifts 13, 17, 5), one per draw:
stream ``STREAM_PAIR`` (0: pair birth), ``STREAM_ETA_A`` (1: arm A detected),
``STREAM_ETA_B`` (2: arm B detected) and ``STREAM_DARK + c`` (3 + c: dark count on channel c),
and seven more for the BSM source, numbered after the largest core's dark streams so that they
do not depend on the channel count: ``STREAM_BSM_EVENT`` (11: a two-photon event),
``STREAM_BSM_STATE`` (12: psi- rather than psi+), ``STREAM_BSM_SPLIT`` (13: which of the
state's two patterns) and ``STREAM_BSM_ETA + d`` (14 + d: detector ``d`` detects its photon).
Every stream steps once per cycle, whatever the sources are. Stream ``i`` holds the state

    ``x_i(0) = seed ^ C_i``, or ``C_i`` if that is zero (``seed == C_i``),
    ``C_i = (i + 1) * MIX_MULTIPLIER  mod 2**32``,
    ``x_i(k + 1) = xorshift32(x_i(k))``.

The ``C_i`` are distinct and non-zero, so the initial states are distinct and non-zero for every
seed (xorshift32 never reaches zero from a non-zero state). The *draw* of cycle ``k`` is
``x_i(k) - 1``, uniform over ``0 .. 2**32 - 2`` across the generator's period; an event with
threshold ``T`` happens iff ``draw < T``, i.e. ``x_i(k) <= T``. So ``T = 0`` never fires,
``T = 2**32 - 1`` always fires, and the probability is ``T / (2**32 - 1)`` (the protocol's
``T / 2**32`` up to a relative 2**-32).

Caveat: all non-zero xorshift32 states lie on one cycle of length 2**32 - 1, so any two streams
are copies of one sequence at some seed-dependent lag (about 43 s at 100 MHz for the whole cycle).
For a random seed the chance that some lag falls within +-1024 cycles is about 10**-5.

Events of cycle ``k``
---------------------
* periodic: ``period != 0`` and ``k % period == 0`` (first pulse at k = 0, all periodic channels
  in phase); ``period == 0`` is off.
* pair born: ``pair`` draw fires. Arm A at ``k``: born and ``eta_a`` draw fires (same cycle).
* arm B of the pair born at ``k``: born and ``eta_b`` draw (of cycle ``k``) fires; it appears at
  ``k + pair_delay``. Pairs born before cycle 0 do not exist.
* dark count on channel ``c``: ``dark[c]`` draw fires.
* Bell-state measurement (BSM) attempt: ``period != 0`` and ``k % period == bsm_offset`` (the
  ``bsm_offset``-th cycle after each periodic pulse, which is the attempt clock or *sync*; an
  offset of ``period`` or more never happens). In an attempt cycle a two-photon event happens
  iff the ``bsm_event`` draw fires; it is psi- iff the ``bsm_psi_minus`` draw fires (else
  psi+), and the ``SPLIT_THRESHOLD`` draw (probability 1/2 up to 2**-32) picks one of the two
  patterns of that state (see :data:`BSM_PATTERNS`): psi- gives D0 & D3 (draw fires) or
  D1 & D2, psi+ gives D0 & D1 (fires) or D2 & D3. Each of the two detectors hit clicks iff
  its own efficiency draw ``bsm_eta[d]`` fires. All draws are those of cycle ``k``.
* channel ``c`` pulses when its source is ``"periodic"`` / ``"pair_a"`` / ``"pair_b"`` /
  ``"bsm_d0"`` .. ``"bsm_d3"`` and that signal or its own dark count fires; ``"pin"`` channels
  never pulse.

The BSM source models the middle station of a heralded entanglement link: photons A and B (one
from each node) meet at a 50:50 beam splitter whose two output ports, ``a`` and ``b``, each end
in a polarising beam splitter with two detectors: D0 = ``a``/H, D1 = ``a``/V, D2 = ``b``/H,
D3 = ``b``/V. Two-photon interference (HOM) sends the antisymmetric Bell state psi- to
different ports with orthogonal polarisations (D0 & D3 or D1 & D2, equally likely), the
symmetric psi+ to one port with orthogonal polarisations (D0 & D1 or D2 & D3). Per detector,
an efficiency and dark counts; the sync is a ``"periodic"`` channel (``period`` cycles, the
attempt clock). Photons are never lost to both ports at once: a photon that is not detected
is simply missing from the pattern (a one-fold).

Performance: xorshift32 is linear over GF(2), so the state ``j * B`` steps ahead is ``M**(j*B)``
applied to the seed state. :func:`generate` jumps every stream to ``sqrt(n)`` evenly spaced
starting points (a byte-sliced table lookup of ``M**B``) and then steps all those lanes together
with numpy, so both Python loops are ``O(sqrt(n))`` long. 10**6 cycles take 0.15 .. 0.35 s (4 to 8
channels; measured on a shared 2-core machine), 10**7 about 2 .. 3.5 s. The BSM streams are
only read in attempt cycles: they are jumped to the first attempt, then ``period`` steps at a
time (:func:`bsm_attempts`, the same lanes with a stride).
"""

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "PROBABILITY_BITS", "PAIR_DELAY_BITS", "PERIOD_BITS", "SEED_BITS", "MAX_CHANNELS",
    "XORSHIFT_SHIFTS", "MIX_MULTIPLIER", "SOURCES",
    "STREAM_PAIR", "STREAM_ETA_A", "STREAM_ETA_B", "STREAM_DARK",
    "BSM_DETECTORS", "BSM_PATTERNS", "SPLIT_THRESHOLD", "STREAM_BSM_EVENT", "STREAM_BSM_STATE",
    "STREAM_BSM_SPLIT", "STREAM_BSM_ETA", "BSM_STREAMS",
    "TestSignalSettings", "xorshift32", "stream_constant", "initial_states", "stream_state",
    "generate", "bsm_attempts", "threshold", "probability_threshold", "probability",
]

# These mirror heraldry.protocol, which cannot be imported here (it imports Amaranth);
# tests/test_testsignal_model.py checks that they agree.
PROBABILITY_BITS = 32
PAIR_DELAY_BITS = 10
PERIOD_BITS = 32
SEED_BITS = 32
MAX_CHANNELS = 8

#: Shifts of the xorshift32 step: ``x ^= x << 13; x ^= x >> 17; x ^= x << 5`` (mod 2**32).
XORSHIFT_SHIFTS = (13, 17, 5)
#: Odd constant (2**32 / golden ratio) whose multiples separate the streams' initial states.
MIX_MULTIPLIER = 0x9E3779B9

#: Source names, in the order of ``protocol.Source`` (the test maps them by name).
SOURCES = ("pin", "periodic", "pair_a", "pair_b", "bsm_d0", "bsm_d1", "bsm_d2", "bsm_d3")

STREAM_PAIR = 0
STREAM_ETA_A = 1
STREAM_ETA_B = 2
#: Stream of channel ``c``'s dark counts is ``STREAM_DARK + c``.
STREAM_DARK = 3
#: Detectors of the BSM source (D0 = port a/H, D1 = a/V, D2 = b/H, D3 = b/V).
BSM_DETECTORS = 4
STREAM_BSM_EVENT = STREAM_DARK + MAX_CHANNELS
STREAM_BSM_STATE = STREAM_BSM_EVENT + 1
STREAM_BSM_SPLIT = STREAM_BSM_EVENT + 2
#: Stream of detector ``d``'s efficiency draw is ``STREAM_BSM_ETA + d``.
STREAM_BSM_ETA = STREAM_BSM_EVENT + 3
BSM_STREAMS = tuple(range(STREAM_BSM_EVENT, STREAM_BSM_ETA + BSM_DETECTORS))
#: Threshold of the split draw: fires with probability 2**31 / (2**32 - 1) = 1/2 + 1.2e-10.
SPLIT_THRESHOLD = 1 << 31
#: Detector bitmask (bit d: D``d`` hit) of a two-photon event, by (psi-, split draw fired).
BSM_PATTERNS = {(True, True): 0b1001, (True, False): 0b0110,
                (False, True): 0b0011, (False, False): 0b1100}

_MASK = (1 << 32) - 1
_THRESHOLD_MAX = (1 << PROBABILITY_BITS) - 1


def _check_uint(name, value, bits):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{name} must be in 0 .. {(1 << bits) - 1}, not {value}")
    return int(value)


@dataclass(frozen=True)
class TestSignalSettings:
    """Test-signal configuration: the fields of ``protocol.test_signal_layout`` plus the sources.

    Members
    -------
    seed : int, 32 bits.
    period : int, cycles between periodic pulses, 0 = off.
    pair_threshold, eta_a, eta_b : int, per-cycle thresholds (see :func:`probability_threshold`).
    pair_delay : int, 0 .. 2**PAIR_DELAY_BITS - 1 cycles from arm A to arm B.
    dark : tuple of int, one threshold per channel.
    sources : tuple of str, one of :data:`SOURCES` per channel (1 .. MAX_CHANNELS channels).
    bsm_offset : int, cycles from each periodic pulse (the sync) to the BSM attempt cycle.
    bsm_event : int, threshold of a two-photon event per attempt.
    bsm_psi_minus : int, threshold of an event being psi- (else psi+).
    bsm_eta : tuple of 4 int, detection threshold of D0 .. D3.

    The ``bsm_*`` fields are ``protocol.bsm_layout()`` (the ``test_bsm`` registers); they
    default to a BSM source that never fires.

    Raises ``ValueError``/``TypeError`` on out-of-range values or mismatched lengths.
    """
    __test__ = False  # not a pytest test class despite its name

    seed: int
    period: int
    pair_threshold: int
    eta_a: int
    eta_b: int
    pair_delay: int
    dark: tuple
    sources: tuple
    bsm_offset: int = 0
    bsm_event: int = 0
    bsm_psi_minus: int = 0
    bsm_eta: tuple = (0,) * BSM_DETECTORS

    def __post_init__(self):
        _check_uint("seed", self.seed, SEED_BITS)
        _check_uint("period", self.period, PERIOD_BITS)
        for name in ("pair_threshold", "eta_a", "eta_b"):
            _check_uint(name, getattr(self, name), PROBABILITY_BITS)
        _check_uint("pair_delay", self.pair_delay, PAIR_DELAY_BITS)
        dark = tuple(_check_uint(f"dark[{c}]", t, PROBABILITY_BITS)
                     for c, t in enumerate(self.dark))
        sources = tuple(self.sources)
        for c, source in enumerate(sources):
            if source not in SOURCES:
                raise ValueError(f"sources[{c}] must be one of {SOURCES}, not {source!r}")
        if not 1 <= len(sources) <= MAX_CHANNELS:
            raise ValueError(f"need 1 .. {MAX_CHANNELS} sources, not {len(sources)}")
        if len(dark) != len(sources):
            raise ValueError(f"{len(sources)} sources but {len(dark)} dark thresholds")
        _check_uint("bsm_offset", self.bsm_offset, PERIOD_BITS)
        for name in ("bsm_event", "bsm_psi_minus"):
            _check_uint(name, getattr(self, name), PROBABILITY_BITS)
        bsm_eta = tuple(_check_uint(f"bsm_eta[{d}]", t, PROBABILITY_BITS)
                        for d, t in enumerate(self.bsm_eta))
        if len(bsm_eta) != BSM_DETECTORS:
            raise ValueError(f"bsm_eta needs {BSM_DETECTORS} thresholds, not {len(bsm_eta)}")
        object.__setattr__(self, "dark", dark)
        object.__setattr__(self, "sources", sources)
        object.__setattr__(self, "bsm_eta", bsm_eta)

    @property
    def channels(self):
        return len(self.sources)

    def config_fields(self):
        """Values for ``protocol.test_signal_layout(channels).const(...)`` (sources excluded)."""
        return {
            "seed": self.seed, "period": self.period, "pair_threshold": self.pair_threshold,
            "eta_a": self.eta_a, "eta_b": self.eta_b, "pair_delay": self.pair_delay,
            "dark": list(self.dark),
        }

    def bsm_fields(self):
        """Values for ``protocol.bsm_layout().const(...)``."""
        return {"offset": self.bsm_offset, "event": self.bsm_event,
                "psi_minus": self.bsm_psi_minus, "eta": list(self.bsm_eta)}


def xorshift32(x):
    """One xorshift32 (13, 17, 5) step of a Python int state."""
    a, b, c = XORSHIFT_SHIFTS
    x ^= (x << a) & _MASK
    x ^= x >> b
    x ^= (x << c) & _MASK
    return x


def stream_constant(stream):
    """``C_i`` of stream ``i``: distinct and non-zero for every stream index used."""
    return ((stream + 1) * MIX_MULTIPLIER) & _MASK


def stream_state(seed, stream):
    """State ``x_i(0)`` of stream ``i`` after a clear with ``seed``."""
    constant = stream_constant(stream)
    return (seed ^ constant) or constant


def initial_states(seed, channels):
    """States ``x_i(0)`` of the ``3 + channels`` pair and dark streams after a clear with
    ``seed`` (the BSM streams: :func:`stream_state`)."""
    return tuple(stream_state(seed, stream) for stream in range(STREAM_DARK + channels))


def probability_threshold(p):
    """Threshold for a per-cycle probability ``p`` (0 <= p <= 1): ``round(p * (2**32 - 1))``.

    ``p = 1`` gives ``2**32 - 1``, which fires every cycle. Raises ``ValueError`` for ``p < 0``,
    ``p > 1`` or NaN.
    """
    p = float(p)
    if not 0.0 <= p <= 1.0:  # also refuses NaN
        raise ValueError(f"probability must be in [0, 1], not {p}")
    return min(round(p * _THRESHOLD_MAX), _THRESHOLD_MAX)


def threshold(rate_hz, clock_hz):
    """Threshold for a mean event rate ``rate_hz`` with clock ``clock_hz`` (one draw per cycle).

    Raises ``ValueError`` if ``clock_hz <= 0``, ``rate_hz < 0``, ``rate_hz > clock_hz`` or either
    is not finite.
    """
    rate_hz, clock_hz = float(rate_hz), float(clock_hz)
    if not (math.isfinite(clock_hz) and clock_hz > 0):
        raise ValueError(f"clock must be a positive frequency, not {clock_hz} Hz")
    if not (math.isfinite(rate_hz) and rate_hz >= 0):
        raise ValueError(f"rate must be a non-negative frequency, not {rate_hz} Hz")
    if rate_hz > clock_hz:
        raise ValueError(f"rate {rate_hz} Hz exceeds one event per cycle at {clock_hz} Hz")
    return probability_threshold(rate_hz / clock_hz)


def probability(threshold_value):
    """Exact per-cycle probability of a threshold: ``threshold / (2**32 - 1)``."""
    return _check_uint("threshold", threshold_value, PROBABILITY_BITS) / _THRESHOLD_MAX


# --- GF(2) machinery: a 32x32 bit matrix is the list of its 32 column words. ---

def _apply(columns, x):
    out = 0
    bit = 0
    while x:
        if x & 1:
            out ^= columns[bit]
        x >>= 1
        bit += 1
    return out


def _compose(outer, inner):
    return [_apply(outer, column) for column in inner]


@lru_cache(maxsize=None)
def _jump_tables(steps):
    """Byte-sliced lookup tables (4 x 256, uint32) of the matrix of ``steps`` xorshift steps."""
    result = [1 << bit for bit in range(32)]
    power = [xorshift32(1 << bit) for bit in range(32)]
    while steps:
        if steps & 1:
            result = _compose(power, result)
        power = _compose(power, power)
        steps >>= 1
    tables = np.zeros((4, 256), dtype=np.uint32)
    for byte in range(4):
        for value in range(1, 256):
            low = value & -value  # tables built incrementally: t[v] = t[v - low] ^ t[low]
            if low == value:
                tables[byte, value] = result[byte * 8 + value.bit_length() - 1]
            else:
                tables[byte, value] = tables[byte, value ^ low] ^ tables[byte, low]
    return tables


def _jump(tables, x):
    return (tables[0][x & 0xFF] ^ tables[1][(x >> 8) & 0xFF]
            ^ tables[2][(x >> 16) & 0xFF] ^ tables[3][x >> 24])


def _step(x):
    a, b, c = XORSHIFT_SHIFTS
    x = x ^ (x << a)
    x = x ^ (x >> b)
    return x ^ (x << c)


def _states(start, count):
    """``(streams, count)`` uint32 array: ``count`` consecutive states from ``start`` per stream."""
    lane_length = max(1, math.isqrt(count))
    lanes = -(-count // lane_length)
    tables = _jump_tables(lane_length)
    out = np.empty((start.size, lanes, lane_length), dtype=np.uint32)
    current = np.empty((start.size, lanes), dtype=np.uint32)
    current[:, 0] = start
    for lane in range(1, lanes):
        current[:, lane] = _jump(tables, current[:, lane - 1])
    for step in range(lane_length):
        out[:, :, step] = current
        current = _step(current)
    return out.reshape(start.size, lanes * lane_length)[:, :count]


def _strided_states(start, first, stride, count):
    """``(streams, count)`` uint32 array: the states of cycles ``first + j * stride``,
    ``j = 0 .. count - 1``, of streams whose cycle-0 states are ``start``."""
    lane_length = max(1, math.isqrt(count))
    lanes = -(-count // lane_length)
    step = _jump_tables(stride)
    lane_jump = _jump_tables(stride * lane_length)
    out = np.empty((start.size, lanes, lane_length), dtype=np.uint32)
    current = np.empty((start.size, lanes), dtype=np.uint32)
    current[:, 0] = _jump(_jump_tables(first), start)
    for lane in range(1, lanes):
        current[:, lane] = _jump(lane_jump, current[:, lane - 1])
    for j in range(lane_length):
        out[:, :, j] = current
        current = _jump(step, current)
    return out.reshape(start.size, lanes * lane_length)[:, :count]


def bsm_attempts(settings, cycles):
    """The BSM source's attempts in cycles ``0 .. cycles - 1``: ``(cycle, pattern, clicks)``.

    ``cycle`` (int64) holds every attempt cycle; ``pattern`` (uint8) the detectors the
    event's two photons hit (0 without an event, else one of :data:`BSM_PATTERNS`);
    ``clicks`` (uint8) those of them that detected their photon (dark counts not included).
    """
    cycles = int(cycles)
    period, offset = settings.period, settings.bsm_offset
    if not period or offset >= period or cycles <= offset:
        empty = np.zeros(0, np.uint8)
        return np.zeros(0, np.int64), empty, empty.copy()
    count = (cycles - 1 - offset) // period + 1
    start = np.array([stream_state(settings.seed, s) for s in BSM_STREAMS], dtype=np.uint32)
    limits = np.array([settings.bsm_event, settings.bsm_psi_minus, SPLIT_THRESHOLD,
                       *settings.bsm_eta], dtype=np.uint32)[:, None]
    fired = _strided_states(start, offset, period, count) <= limits
    event, minus, split = (fired[s - STREAM_BSM_EVENT] for s in
                           (STREAM_BSM_EVENT, STREAM_BSM_STATE, STREAM_BSM_SPLIT))
    pattern = np.zeros(count, np.uint8)
    for (is_minus, splits), mask in BSM_PATTERNS.items():
        pattern[event & (minus == is_minus) & (split == splits)] = mask
    detected = np.zeros(count, np.uint8)
    for d in range(BSM_DETECTORS):
        detected |= fired[STREAM_BSM_ETA - STREAM_BSM_EVENT + d].astype(np.uint8) << d
    cycle = offset + period * np.arange(count, dtype=np.int64)
    return cycle, pattern, pattern & detected


def generate(settings, cycles, *, chunk_cycles=1 << 18):
    """Events of the test signal in cycles ``0 .. cycles - 1`` after a clear.

    Returns one sorted ``int64`` array of cycle indices per channel (empty for ``"pin"``).
    ``chunk_cycles`` bounds the memory used (about 5 bytes per stream per cycle of a chunk); it
    does not change the result.
    """
    cycles = int(cycles)
    if cycles < 0:
        raise ValueError(f"cycles must be >= 0, not {cycles}")
    if chunk_cycles < 1:
        raise ValueError(f"chunk_cycles must be >= 1, not {chunk_cycles}")
    channels = settings.channels
    thresholds = np.array(
        [settings.pair_threshold, settings.eta_a, settings.eta_b, *settings.dark],
        dtype=np.uint32)[:, None]
    state = np.array(initial_states(settings.seed, channels), dtype=np.uint32)

    arm_a, birth_b = [], []
    dark = [[] for _ in range(channels)]
    for begin in range(0, cycles, chunk_cycles):
        count = min(chunk_cycles, cycles - begin)
        states = _states(state, count)
        fired = states <= thresholds
        born = fired[STREAM_PAIR]
        arm_a.append(np.flatnonzero(born & fired[STREAM_ETA_A]) + begin)
        birth_b.append(np.flatnonzero(born & fired[STREAM_ETA_B]) + begin)
        for c in range(channels):
            dark[c].append(np.flatnonzero(fired[STREAM_DARK + c]) + begin)
        state = _step(states[:, -1])

    def join(parts):
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    arm_a = join(arm_a)
    arm_b = join(birth_b) + settings.pair_delay
    arm_b = arm_b[arm_b < cycles]
    if settings.period:
        periodic = np.arange(0, cycles, settings.period, dtype=np.int64)
    else:
        periodic = np.zeros(0, np.int64)
    signal = {"periodic": periodic, "pair_a": arm_a, "pair_b": arm_b}
    if any(source.startswith("bsm_") for source in settings.sources):
        attempt, _, clicks = bsm_attempts(settings, cycles)
        for d in range(BSM_DETECTORS):
            signal[f"bsm_d{d}"] = attempt[(clicks >> d) & 1 == 1]

    result = []
    for c, source in enumerate(settings.sources):
        if source == "pin":
            result.append(np.zeros(0, np.int64))
        else:
            result.append(np.union1d(signal[source], join(dark[c])).astype(np.int64))
    return result
