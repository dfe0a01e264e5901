// Multi-clock harness for a board's top level (its synthesised netlist or its RTL) in Verilator.
//
// Built by heraldry.sim.netlist around `netlist_tb` (a generated wrapper: ports ref_clk, pll_a,
// pll_b, pins, uart_rx, uart_tx, herald). Time runs in integer ticks; three clocks are driven:
// the board's oscillator pin (ref_clk) and the two PLL outputs the primitive models take from
// the wrapper (pll_a, pll_b). The model is evaluated at every clock edge only: inputs change
// between evaluations (a pin edge or a UART bit at tick t is set up before the clock edges of
// tick t), outputs are read after each evaluation.
//
// Command line (ticks everywhere; periods even):
//   --ref P:F  --a P:F  --b P:F   period and phase (first rising edge) of each clock
//   --pins FILE        lines `TICK CHANNEL LEVEL`, ticks non-decreasing
//   --uart FILE        lines `TICK HEX`: bytes queued for the UART input at TICK (sent 8N1,
//                      back to back, after what is queued before)
//   --bit N/D          one UART bit is N/D ticks
//   --max-ticks T      stop at T
//   --idle-ticks T     stop once every queued byte is sent and the UART output was idle for T
//   --out FILE         what happened: `U TICK BYTE` per byte from uart_tx (TICK: its start
//                      bit), `H TICK RULE LEVEL` per herald output change, `F TICK` per framing
//                      error, and a last line `E TICK EVALS SECONDS`
// Exit status 0 after a run, 2 for a bad command line or input file.

#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "verilated.h"
#include "Vnetlist_tb.h"

namespace {

[[noreturn]] void fail(const std::string& what) {
    std::fprintf(stderr, "netlist harness: %s\n", what.c_str());
    std::exit(2);
}

struct Clock {
    uint64_t period = 0, phase = 0;
    bool level(uint64_t t) const {
        if (t < phase) return false;
        return (t - phase) % period < period / 2;
    }
    uint64_t next_toggle(uint64_t t) const {       // first toggle strictly after t
        if (t < phase) return phase;
        uint64_t in = (t - phase) % period, base = t - in;
        return in < period / 2 ? base + period / 2 : base + period;
    }
};

Clock parse_clock(const char* text) {
    Clock c;
    unsigned long long p, f;
    char extra;
    if (std::sscanf(text, "%llu:%llu%c", &p, &f, &extra) != 2 || p < 2 || p % 2)
        fail(std::string("bad clock ") + text + ": want PERIOD:PHASE, PERIOD even");
    c.period = p;
    c.phase = f;
    return c;
}

struct PinEdge { uint64_t tick; unsigned channel, level; };
struct Batch { uint64_t tick; std::vector<uint8_t> bytes; };

FILE* open_file(const char* path, const char* mode) {
    FILE* f = std::fopen(path, mode);
    if (!f) fail(std::string("cannot open ") + path);
    return f;
}

std::vector<PinEdge> read_pins(const char* path) {
    std::vector<PinEdge> edges;
    FILE* f = open_file(path, "r");
    unsigned long long tick;
    unsigned channel, level;
    while (std::fscanf(f, "%llu %u %u", &tick, &channel, &level) == 3) {
        if (channel >= TB_CHANNELS || level > 1 || (!edges.empty() && tick < edges.back().tick))
            fail(std::string("bad line in ") + path);
        edges.push_back({tick, channel, level});
    }
    std::fclose(f);
    return edges;
}

std::vector<Batch> read_uart(const char* path) {
    std::vector<Batch> batches;
    FILE* f = open_file(path, "r");
    unsigned long long tick;
    char hex[65536];
    while (std::fscanf(f, "%llu %65535s", &tick, hex) == 2) {
        Batch b{tick, {}};
        size_t n = std::strlen(hex);
        if (n % 2) fail(std::string("odd hex string in ") + path);
        for (size_t i = 0; i < n; i += 2) {
            unsigned v;
            if (std::sscanf(hex + i, "%2x", &v) != 1) fail(std::string("bad hex in ") + path);
            b.bytes.push_back((uint8_t)v);
        }
        batches.push_back(b);
    }
    std::fclose(f);
    return batches;
}

// 8N1 into uart_rx: bit k of a frame starting at s spans [s + k*N/D, s + (k+1)*N/D).
struct Source {
    uint64_t num = 1, den = 1;
    std::deque<uint8_t> queue;
    bool busy = false;
    uint64_t start = 0;
    uint8_t byte = 0;

    uint64_t edge(unsigned k) const { return start + (k * num) / den; }

    // Advance to time t (starting queued frames back to back) and return the line level.
    unsigned level(uint64_t t) {
        for (;;) {
            if (!busy) {
                if (queue.empty()) return 1;
                busy = true;
                start = std::max(start, t);
                byte = queue.front();
                queue.pop_front();
            }
            if (t >= edge(10)) {               // this frame is over: the next starts at once
                busy = false;
                start = edge(10);
                continue;
            }
            unsigned k = 0;
            while (t >= edge(k + 1)) k++;
            if (k == 0) return 0;
            if (k == 9) return 1;
            return (byte >> (k - 1)) & 1;
        }
    }
    bool idle() const { return !busy && queue.empty(); }
};

// 8N1 from uart_tx, sampled at the middle of each bit counted from the start edge.
struct Sink {
    uint64_t num = 1, den = 1;
    enum { WAIT_HIGH, IDLE, FRAME } state = WAIT_HIGH;
    uint64_t start = 0;
    unsigned bit = 0, shift = 0;

    uint64_t sample_at(unsigned k) const { return start + ((2 * k + 1) * num) / (2 * den); }
};

}  // namespace

int main(int argc, char** argv) {
    Clock ref, a, b;
    const char *pins_path = nullptr, *uart_path = nullptr, *out_path = nullptr;
    uint64_t bit_num = 0, bit_den = 1, max_ticks = UINT64_MAX, idle_ticks = 0;
    for (int i = 1; i < argc; i++) {
        std::string arg = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) fail(arg + " needs a value");
            return argv[++i];
        };
        if (arg == "--ref") ref = parse_clock(value());
        else if (arg == "--a") a = parse_clock(value());
        else if (arg == "--b") b = parse_clock(value());
        else if (arg == "--pins") pins_path = value();
        else if (arg == "--uart") uart_path = value();
        else if (arg == "--out") out_path = value();
        else if (arg == "--bit") {
            unsigned long long n, d;
            if (std::sscanf(value(), "%llu/%llu", &n, &d) != 2 || !n || !d) fail("bad --bit");
            bit_num = n;
            bit_den = d;
        } else if (arg == "--max-ticks") max_ticks = std::strtoull(value(), nullptr, 10);
        else if (arg == "--idle-ticks") idle_ticks = std::strtoull(value(), nullptr, 10);
        else fail("unknown argument " + arg);
    }
    if (!ref.period || !a.period || !b.period || !bit_num || !out_path)
        fail("need --ref, --a, --b, --bit and --out");
    std::vector<PinEdge> pins = pins_path ? read_pins(pins_path) : std::vector<PinEdge>();
    std::vector<Batch> batches = uart_path ? read_uart(uart_path) : std::vector<Batch>();
    FILE* out = open_file(out_path, "w");

    auto context = std::make_unique<VerilatedContext>();
    context->commandArgs(0, (const char**)nullptr);
    auto tb = std::make_unique<Vnetlist_tb>(context.get(), "tb");

    Source source;
    source.num = bit_num;
    source.den = bit_den;
    Sink sink;
    sink.num = bit_num;
    sink.den = bit_den;

    tb->ref_clk = 0;
    tb->pll_a = 0;
    tb->pll_b = 0;
    tb->pins = 0;
    tb->uart_rx = 1;
    tb->eval();

    const auto t0 = std::chrono::steady_clock::now();
    size_t next_pin = 0, next_batch = 0;
    unsigned pin_state = 0, herald = tb->herald, tx = tb->uart_tx;
    uint64_t t = 0, evals = 0, last_activity = 0;
    while (true) {
        uint64_t next = std::min({ref.next_toggle(t), a.next_toggle(t), b.next_toggle(t)});
        // uart_tx samples due before this evaluation see the level of the last one.
        while (sink.state == Sink::FRAME && sink.sample_at(sink.bit) < next) {
            uint64_t at = sink.sample_at(sink.bit);
            if (sink.bit == 0) {
                if (tx) sink.state = Sink::IDLE;        // a glitch, not a start bit
            } else if (sink.bit <= 8) {
                sink.shift |= tx << (sink.bit - 1);
            } else {
                std::fprintf(out, "U %" PRIu64 " %u\n", sink.start, sink.shift);
                if (!tx) {
                    std::fprintf(out, "F %" PRIu64 "\n", at);
                    sink.state = Sink::WAIT_HIGH;
                } else {
                    sink.state = Sink::IDLE;
                }
                last_activity = at;
                break;
            }
            if (sink.state == Sink::FRAME) sink.bit++;
        }
        t = next;
        if (t > max_ticks) break;
        while (next_batch < batches.size() && batches[next_batch].tick <= t) {
            for (uint8_t v : batches[next_batch].bytes) source.queue.push_back(v);
            last_activity = std::max(last_activity, batches[next_batch].tick);
            next_batch++;
        }
        while (next_pin < pins.size() && pins[next_pin].tick <= t) {
            unsigned bit = 1u << pins[next_pin].channel;
            pin_state = pins[next_pin].level ? (pin_state | bit) : (pin_state & ~bit);
            next_pin++;
        }
        tb->pins = pin_state;
        tb->uart_rx = source.level(t);
        if (!source.idle()) last_activity = t;
        tb->ref_clk = ref.level(t);
        tb->pll_a = a.level(t);
        tb->pll_b = b.level(t);
        tb->eval();
        evals++;
        if (tb->herald != herald) {
            for (unsigned r = 0; r < TB_RULES; r++)
                if (((tb->herald ^ herald) >> r) & 1)
                    std::fprintf(out, "H %" PRIu64 " %u %u\n", t, r, (tb->herald >> r) & 1);
            herald = tb->herald;
        }
        tx = tb->uart_tx;
        if (sink.state == Sink::WAIT_HIGH && tx) sink.state = Sink::IDLE;
        else if (sink.state == Sink::IDLE && !tx) {
            sink.state = Sink::FRAME;
            sink.start = t;
            sink.bit = 0;
            sink.shift = 0;
            last_activity = t;
        }
        if (idle_ticks && next_batch == batches.size() && source.idle()
            && sink.state != Sink::FRAME && t >= last_activity + idle_ticks)
            break;
    }
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(out, "E %" PRIu64 " %" PRIu64 " %.3f\n", t, evals, seconds);
    std::fclose(out);
    tb->final();
    return 0;
}
