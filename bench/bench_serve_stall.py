"""``heraldry serve`` with a stalled subscriber: does it slow the acquisition down?

One server on the virtual board (pairs test signal, 1e5 pairs/s), one fast subscriber reading
every events message, and a rates subscriber timing device time against wall time. Three
stretches of ``SECONDS`` each: free (the fast subscriber alone), stalled (plus a subscriber that
never reads: receive high-water mark 1, 2 kB buffer, so its queue on the server is full at once),
free again. Figures: device seconds per wall second in each stretch and the ratio stalled / free
(mean of the two free stretches; 1.0 = unaffected; the virtual board's pace varies with the
machine's load, so compare the three side by side), the messages the fast subscriber missed
(must be 0), the messages and records the stalled one missed (counted from ``seq``, ``first``),
and the server's own drop counters (must stay 0).
"""

import json
import signal
import subprocess
import sys
import time

SECONDS = 8.0


def _stretch(rates, fast, tracker, seconds):
    """Read the fast subscriber for ``seconds``; return device seconds per wall second from the
    rates messages seen in the stretch, and the last rates message."""
    from heraldry.host.serve import decode_events
    first = last = None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        while fast.poll(0):
            header, _ = decode_events(fast.recv_multipart())
            tracker.feed(header["seq"], header["first"], header["count"])
        if rates.poll(20):
            message = json.loads(rates.recv_multipart()[1])
            stamp = (time.monotonic(), message["device_time_s"])
            first = first or stamp
            last = stamp
            final = message
    return (last[1] - first[1]) / (last[0] - first[0]), final


def run():
    import zmq
    from heraldry.host.serve import SequenceTracker, decode_events, free_port
    from heraldry.sim.twin import build_twin
    build_twin(4, 2)
    ports = [free_port() for _ in range(3)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "heraldry.host.cli", "serve", "--board", "sim", "--quiet",
         "--pub-port", str(ports[0]), "--control-port", str(ports[1]),
         "--metrics-port", str(ports[2]), "--rates-hz", "5", "--hwm", "4", "--sndbuf", "4096",
         "--pair-rate", "1e5", "--herald", "0b0011"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    context = zmq.Context()
    try:
        endpoints = json.loads(proc.stdout.readline())

        def sub(topic, **options):
            sock = context.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            for name, value in options.items():
                sock.setsockopt(getattr(zmq, name), value)
            sock.connect(endpoints["pub"])
            sock.subscribe(topic)
            return sock

        rates, fast = sub(b"rates"), sub(b"events")
        fast_seen = SequenceTracker()
        _stretch(rates, fast, fast_seen, 2.0)             # connected, running
        free1, _ = _stretch(rates, fast, fast_seen, SECONDS)
        stalled = sub(b"events", RCVHWM=1, RCVBUF=2048)
        slow, _ = _stretch(rates, fast, fast_seen, SECONDS)
        stalled_seen = SequenceTracker()
        deadline = time.monotonic() + 1.0      # what it held, then some fresh messages
        while time.monotonic() < deadline and stalled.poll(100):
            header, _ = decode_events(stalled.recv_multipart())
            stalled_seen.feed(header["seq"], header["first"], header["count"])
        stalled.close()
        free2, final = _stretch(rates, fast, fast_seen, SECONDS)
    finally:
        context.destroy(linger=0)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    free = (free1 + free2) / 2
    print(f"  device s per wall s: free {free1:.4f}, stalled subscriber {slow:.4f}, free "
          f"{free2:.4f}; ratio stalled / free {slow / free:.3f}")
    print(f"  fast subscriber: {fast_seen.received} messages, {fast_seen.missed} missed; "
          f"stalled subscriber: {stalled_seen.received} received, {stalled_seen.missed} "
          f"messages ({stalled_seen.missed_events} records) missed, counted from seq/first; "
          f"server drops {final['dropped']}, refused {final['publish_refused']}")
    return {
        "serve_device_s_per_wall_s_free": round(free, 5),
        "serve_device_s_per_wall_s_stalled": round(slow, 5),
        "serve_stalled_vs_free_ratio": round(slow / free, 3),
        "serve_fast_subscriber_missed": fast_seen.missed,
        "serve_stalled_subscriber_missed_messages": stalled_seen.missed,
        "serve_server_dropped": sum(final["dropped"].values()),
    }


if __name__ == "__main__":
    print(run())
