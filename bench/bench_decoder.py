"""Speed of the host stream decoder against ptufile reading the same events as PTU T2.

Figures: ``decoder_mevents_per_s``: 10^7 events (4 channels, Poisson 10^5 events/s, 10 ns bins)
decoded by ``host.decoder.StreamDecoder`` from bytes in memory fed in 1 MB chunks, best of 3
after a warm-up call. ``decoder_compile_s``: numba compiling the kernel from scratch (in a child
process with an empty cache); ``decoder_first_call_s``: making it callable in this process (from
numba's cache when it is warm). ``ptufile_mevents_per_s``: ``ptufile.PtuFile.decode_records`` on
the same events written as PTU T2 (HydraHarp V2, 0x01010204), records already in memory, best of
3; ``ptufile_file_mevents_per_s`` the same including opening and reading the file.
``decoder_ratio_vs_ptufile`` = ours / ptufile (in memory; higher is better). Both decoders'
times and channels are checked against the generated events.
"""

import os
import subprocess
import sys
import tempfile

import numpy as np

from .common import best_of, check_encode_tags, encode_tags, poisson_tags, write_ptu_t2

EVENTS = 10_000_000
CHANNELS = 4
RATE_HZ = 1e5
BIN_FS = 10_000_000            # 10 ns
CHUNK = 1 << 20


def _fresh_compile_seconds():
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        code = "from heraldry.host.decoder import compile_seconds; print(compile_seconds())"
        done = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                              capture_output=True, text=True)
        return float(done.stdout.split()[-1])


def run():
    from heraldry.host.decoder import StreamDecoder, _decode_kernel, compile_seconds
    compile_s = _fresh_compile_seconds()
    first_s = compile_seconds()
    hits = sum(_decode_kernel.stats.cache_hits.values())
    print(f"  numba: compile from scratch {compile_s:.2f} s; first call here {first_s:.2f} s "
          f"({'from the cache' if hits else 'compiled'})")

    times, channels = poisson_tags(EVENTS, RATE_HZ, CHANNELS, seed=2)
    check_encode_tags(times[:20_000], channels[:20_000], CHANNELS)
    data = encode_tags(times, channels, CHANNELS)
    chunks = [memoryview(data)[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    print(f"  stream: {len(data) / 1e6:.1f} MB, {len(data) / EVENTS:.3f} bytes/event, "
          f"{len(chunks)} chunks")

    def decode():
        dec = StreamDecoder(CHANNELS, 1, bin_fs=BIN_FS)
        parts = [dec.feed(chunk).events for chunk in chunks] + [dec.close().events]
        return parts, dec

    decode()                                         # warm-up
    ours_s, (parts, dec) = best_of(decode, 3)
    events = np.concatenate(parts)
    assert (dec.decode_errors, dec.skipped_bytes, dec.unverified) == (0, 0, 0)
    assert len(events) == EVENTS
    assert np.array_equal(events["time_ps"], times * (BIN_FS // 1000))
    assert np.array_equal(events["channel"], channels)
    del parts, events

    import ptufile
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "bench.ptu")
        n_records = write_ptu_t2(path, times, channels, BIN_FS * 1e-15)
        with ptufile.PtuFile(path) as ptu:
            records = ptu.read_records()
            assert len(records) == n_records
            ptu_s, decoded = best_of(lambda: ptu.decode_records(records), 3)

        def from_file():
            with ptufile.PtuFile(path) as ptu:
                return ptu.decode_records()

        file_s, _ = best_of(from_file, 3)
    photons = decoded[decoded["channel"] >= 0]
    assert len(photons) == EVENTS
    assert np.array_equal(photons["time"].astype(np.int64), times)
    assert np.array_equal(photons["channel"].astype(np.uint8), channels)

    ours = EVENTS / ours_s / 1e6
    theirs = EVENTS / ptu_s / 1e6
    print(f"  StreamDecoder: {ours:.1f} M events/s ({ours_s * 1e3:.0f} ms); ptufile "
          f"decode_records: {theirs:.1f} M events/s ({ptu_s * 1e3:.0f} ms; from the file "
          f"{EVENTS / file_s / 1e6:.1f}); ratio {ours / theirs:.2f}; same times and channels")
    return {
        "decoder_mevents_per_s": round(ours, 2),
        "decoder_compile_s": round(compile_s, 2),
        "decoder_first_call_s": round(first_s, 3),
        "ptufile_mevents_per_s": round(theirs, 2),
        "ptufile_file_mevents_per_s": round(EVENTS / file_s / 1e6, 2),
        "decoder_ratio_vs_ptufile": round(ours / theirs, 3),
    }


if __name__ == "__main__":
    print(run())
