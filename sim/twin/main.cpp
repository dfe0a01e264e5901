// The Verilated virtual board: heraldry_top behind a pseudo-terminal.
//
// Built by heraldry.sim.twin.build_twin (Verilator --cc --exe --build) around board.v
// (heraldry_top plus its power-on reset). One process simulates one board: it drives `clk`, turns
// the gateware's `uart_tx` into bytes on a pty and the host's bytes on the pty into `uart_rx`,
// both 8N1 at the configured baud, and optionally drives `pins` from a file of edge times. No
// Python runs per cycle.
//
// Command line (every value must match the converted gateware):
//   --clock-hz N     system clock of the gateware (Hz)          default TWIN_CLOCK_HZ
//   --baud N         UART baud rate of the gateware             default TWIN_BAUD
//   --pins FILE      edges to drive on `pins` (format below)    default: pins stay low
//                    read as the simulation reaches them: a FIFO works (the board waits for
//                    its writer), so a run is not bounded by a file read up front
//   --max-cycles N   stop after N cycles after reset            default: run until told
//   --loopback H:C[:D]  a jumper from herald output H to input C: the level `herald[H]` had
//                    after the rising edge of cycle k drives input C from cycle k + 1 + D on
//                    (D extra cycles of wire, default 0: a wire shorter than a clock period);
//                    the input is high when the pins file or the jumper drives it high.
//                    Repeatable; D < LOOP_HISTORY.
//
// Output: one line `PORT <slave path>` on stdout once the pty is ready; at exit one line on
// stderr: `twin: cycles=... seconds=... cycles_per_s=... bytes_to_host=... bytes_from_host=...
// framing_errors=... herald_rises=a,b,... exit=<hangup|signal|max-cycles>`.
// Exit status 0 after any of those, 2 for a bad command line or pins file (a regular file is
// checked before the port opens; a FIFO's bad line ends the run when reached), 1 for a pty error.
//
// Pins file: text, one edge per line `CYCLE CHANNEL LEVEL` (decimal; LEVEL 1 = pin goes high,
// 0 = low), in non-decreasing CYCLE order; blank lines and lines starting with '#' are skipped.
// CYCLE counts clock cycles from the first rising clock edge with `rst` low (cycle 0; `rst` is
// high for the TWIN_RESET_CYCLES edges before it, see board.v): the new level is set up before
// the rising edge of that cycle, so the gateware samples it there.
//
// Time and the host: the simulation runs as fast as it can, but device time only advances while
// the host keeps up. Bytes for the host are buffered and written in batches; when the pty is full
// (the host is not reading) and the harness's own buffer holds HIGH_WATER bytes, the simulation
// stops until the host has read. No byte is ever dropped. The process ends when the host closes
// the pty (after having opened it), on SIGTERM/SIGINT/SIGHUP, or after --max-cycles (then it
// waits up to a second for the host to read what the gateware sent).

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "verilated.h"
#include "Vheraldry_board.h"

#ifndef TWIN_CLOCK_HZ
#define TWIN_CLOCK_HZ 100000000
#endif
#ifndef TWIN_BAUD
#define TWIN_BAUD 12000000
#endif
#ifndef TWIN_CHANNELS
#define TWIN_CHANNELS 4
#endif
#ifndef TWIN_RULES
#define TWIN_RULES 2
#endif
#ifndef TWIN_RESET_CYCLES
#define TWIN_RESET_CYCLES 4   // board.v's RESET_CYCLES
#endif

namespace {

// Cycles between looks at the pty (host input, batched output, hang-up). At 12 Mbaud from
// 100 MHz a byte takes 83 cycles, so the host's bytes are picked up within ~12 byte times.
constexpr uint64_t IO_INTERVAL = 1024;
// Our buffer beyond the kernel's (about 20 KiB): write when this much is pending; stop the
// simulation while this much is pending and the pty takes nothing.
constexpr size_t BATCH = 4096;
constexpr size_t HIGH_WATER = 4096;
// A batch smaller than BATCH goes out once it is this old (wall time), or at once when the
// gateware has sent nothing for IO_INTERVAL cycles (a reply to a command is not held back).
constexpr double FLUSH_AGE_S = 1e-3;

volatile sig_atomic_t g_signalled = 0;

void on_signal(int) { g_signalled = 1; }

[[noreturn]] void usage_error(const char* what) {
    std::fprintf(stderr, "twin: %s\n", what);
    std::exit(2);
}

uint64_t parse_u64(const char* text, const char* what) {
    char* end = nullptr;
    errno = 0;
    unsigned long long value = std::strtoull(text, &end, 10);
    if (errno || end == text || *end) {
        std::string msg = std::string("bad ") + what + ": " + text;
        usage_error(msg.c_str());
    }
    return value;
}

// Cycles of herald history kept for the loopback's wire delay.
constexpr unsigned LOOP_HISTORY = 1024;

struct Loop {
    unsigned herald, channel, delay;
};

Loop parse_loop(const char* text) {
    unsigned h, c, d = 0;
    char extra;
    int n = std::sscanf(text, "%u:%u:%u%c", &h, &c, &d, &extra);
    if ((n != 2 && n != 3) || h >= TWIN_RULES || c >= TWIN_CHANNELS || d >= LOOP_HISTORY) {
        std::string msg = std::string("bad --loopback ") + text + ": want HERALD:CHANNEL[:DELAY]"
            " with HERALD < " + std::to_string(TWIN_RULES) + ", CHANNEL < "
            + std::to_string(TWIN_CHANNELS) + ", DELAY < " + std::to_string(LOOP_HISTORY);
        usage_error(msg.c_str());
    }
    return {h, c, d};
}

struct Edge {
    uint64_t cycle;
    unsigned channel;
    unsigned level;
};

// The pins file, read as the simulation reaches it (a long or endless stream, e.g. a FIFO that
// a source program writes while the board runs, is never held in memory): `next` gives the edges
// in file order and blocks while a FIFO's writer has not written the next line yet (the board
// waits for its source). A line that breaks the format ends the process (exit 2) when reached;
// a regular file is checked whole before the port opens (`check`), so its errors come first.
struct PinsReader {
    FILE* f = nullptr;
    const char* path = nullptr;
    unsigned lineno = 0;
    bool have_last = false;
    uint64_t last_cycle = 0;

    void open(const char* p) {
        path = p;
        f = std::fopen(path, "r");
        if (!f) {
            std::string msg = std::string("cannot open pins file ") + path + ": "
                + std::strerror(errno);
            usage_error(msg.c_str());
        }
        // A FIFO: a small read buffer, so that a writer that waits until the pipe is empty
        // knows the board is at most a few dozen edges short of what it wrote.
        struct stat st;
        if (!fstat(fileno(f), &st) && !S_ISREG(st.st_mode)) std::setvbuf(f, nullptr, _IOFBF, 512);
    }

    // The next edge (true), or false at the end of the file (the writer closed a FIFO).
    bool next(Edge& edge) {
        char line[256];
        while (std::fgets(line, sizeof line, f)) {
            lineno++;
            const char* p = line;
            while (*p == ' ' || *p == '\t') p++;
            if (*p == '#' || *p == '\n' || *p == '\r' || *p == 0) continue;
            unsigned long long cycle;
            unsigned channel, level;
            char extra;
            if (std::sscanf(p, "%llu %u %u %c", &cycle, &channel, &level, &extra) != 3
                || channel >= TWIN_CHANNELS || level > 1 || (have_last && cycle < last_cycle)) {
                std::string msg = std::string("pins file ") + path + " line "
                    + std::to_string(lineno) + ": want `CYCLE CHANNEL LEVEL` with CHANNEL < "
                    + std::to_string(TWIN_CHANNELS) + ", LEVEL 0 or 1, cycles non-decreasing";
                usage_error(msg.c_str());
            }
            have_last = true;
            last_cycle = cycle;
            edge = {cycle, channel, level};
            return true;
        }
        return false;
    }

    // A regular file: read it through once (format errors exit here), then start over.
    void check() {
        struct stat st;
        if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode)) return;
        Edge edge;
        while (next(edge)) {}
        std::rewind(f);
        lineno = 0;
        have_last = false;
    }
};

// 8N1 receiver for the gateware's uart_tx. The transmitter's fractional baud generator moves each
// bit edge by up to one cycle, so every bit is sampled at its nominal middle counted from the
// start edge: bit k (0 = start, 1..8 = data LSB first, 9 = stop) at start + (2k+1)*clk/(2*baud).
struct UartSink {
    uint64_t clock_hz, baud;
    enum { WAIT_HIGH, IDLE, FRAME } state = WAIT_HIGH;
    uint64_t start = 0, next_sample = 0;
    unsigned bit = 0, shift = 0;
    uint64_t framing_errors = 0;

    uint64_t sample_at(unsigned k) const {
        return start + ((2 * k + 1) * clock_hz) / (2 * baud);
    }

    // Returns a byte (0..255) completed in this cycle, or -1.
    int step(uint64_t cycle, unsigned line) {
        switch (state) {
        case WAIT_HIGH:
            if (line) state = IDLE;
            return -1;
        case IDLE:
            if (!line) {
                state = FRAME;
                start = cycle;
                bit = 0;
                shift = 0;
                next_sample = sample_at(0);
            }
            return -1;
        case FRAME:
            if (cycle != next_sample) return -1;
            if (bit == 0) {
                if (line) {          // a glitch, not a start bit
                    state = IDLE;
                    return -1;
                }
            } else if (bit <= 8) {
                shift |= line << (bit - 1);
            } else {
                if (line) {
                    state = IDLE;
                } else {
                    framing_errors++;
                    state = WAIT_HIGH;
                }
                // A bad stop bit is counted; the byte still goes to the host, whose decoder
                // then sees (and counts) the damage, as it would from a real bridge.
                return shift;
            }
            bit++;
            next_sample = sample_at(bit);
            return -1;
        }
        return -1;
    }
};

// 8N1 transmitter for the gateware's uart_rx: a fractional baud generator (one bit per
// clock_hz/baud cycles on average, each edge within one cycle of nominal), frames back to back
// while the host has sent bytes, line high otherwise.
struct UartSource {
    uint64_t clock_hz, baud;
    std::vector<uint8_t> queue;
    size_t head = 0;
    bool busy = false;
    unsigned bit = 0;
    uint8_t current = 0;
    uint64_t acc = 0;

    unsigned line() const {
        if (!busy || bit == 9) return 1;
        if (bit == 0) return 0;
        return (current >> (bit - 1)) & 1;
    }

    bool pending() const { return head < queue.size(); }

    void begin() {
        current = queue[head++];
        if (head == queue.size()) {
            queue.clear();
            head = 0;
        }
        busy = true;
        bit = 0;
    }

    // Called once per cycle after the line for this cycle was applied.
    void step() {
        if (!busy) {
            if (pending()) {
                begin();
                acc = 0;
            }
            return;
        }
        acc += baud;
        if (acc >= clock_hz) {
            acc -= clock_hz;
            if (++bit == 10) {
                busy = false;
                if (pending()) begin();
            }
        }
    }
};

struct Pty {
    int fd = -1;
    std::string path;
    bool hung_up = false;
    std::vector<uint8_t> out;
    size_t out_head = 0;
    uint64_t bytes_to_host = 0, bytes_from_host = 0;

    void open_master() {
        fd = posix_openpt(O_RDWR | O_NOCTTY);
        if (fd < 0 || grantpt(fd) || unlockpt(fd)) {
            std::fprintf(stderr, "twin: cannot open a pseudo-terminal: %s\n", std::strerror(errno));
            std::exit(1);
        }
        // Raw mode: no echo (the host's commands would come back as device bytes), no line
        // editing, no CR/LF translation, 8 bits. Termios calls on the master set the slave's.
        struct termios t;
        tcgetattr(fd, &t);
        cfmakeraw(&t);
        tcsetattr(fd, TCSANOW, &t);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        const char* name = ptsname(fd);
        if (!name) {
            std::fprintf(stderr, "twin: ptsname: %s\n", std::strerror(errno));
            std::exit(1);
        }
        path = name;
    }

    size_t pending() const { return out.size() - out_head; }

    // Before the host first opens the slave, the master neither reads EOF nor reports POLLHUP
    // (writes are buffered for it); after the host closes it, POLLHUP and EIO.
    void read_input(UartSource& source) {
        uint8_t buf[4096];
        for (;;) {
            ssize_t n = ::read(fd, buf, sizeof buf);
            if (n > 0) {
                source.queue.insert(source.queue.end(), buf, buf + n);
                bytes_from_host += n;
                continue;
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && errno == EIO) hung_up = true;
            return;
        }
    }

    void write_output() {
        while (pending()) {
            ssize_t n = ::write(fd, out.data() + out_head, pending());
            if (n > 0) {
                out_head += n;
                bytes_to_host += n;
                continue;
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && errno == EIO) hung_up = true;
            break;
        }
        if (out_head == out.size()) {
            out.clear();
            out_head = 0;
        } else if (out_head > (1u << 16)) {
            out.erase(out.begin(), out.begin() + out_head);
            out_head = 0;
        }
    }

    // At --max-cycles: hand the host what the gateware sent. Closing the master discards what
    // the slave has not read yet, so wait (up to timeout_s) until the host has read it all.
    void drain(double timeout_s) {
        const auto deadline = std::chrono::steady_clock::now()
            + std::chrono::duration<double>(timeout_s);
        auto left = [&] { return std::chrono::steady_clock::now() < deadline; };
        while (pending() && !hung_up && !g_signalled && left()) {
            struct pollfd p = {fd, POLLOUT, 0};
            if (poll(&p, 1, 20) > 0 && (p.revents & POLLHUP)) hung_up = true;
            write_output();
        }
        if (pending() || hung_up || g_signalled) return;
        int slave = open(path.c_str(), O_RDWR | O_NOCTTY | O_NONBLOCK);
        if (slave < 0) return;
        // TIOCINQ counts the line discipline's buffer only; the kernel refills it from the pty's
        // own buffer after each read, so only a count that stays 0 for a while means "all read".
        int unread = 0, quiet_ms = 0;
        while (left() && !g_signalled && quiet_ms < 50 && ioctl(slave, TIOCINQ, &unread) == 0) {
            quiet_ms = unread ? 0 : quiet_ms + 1;
            usleep(1000);
        }
        close(slave);
    }

    bool check_hangup() {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 0) > 0 && (p.revents & POLLHUP)) hung_up = true;
        return hung_up;
    }

    // Simulation stopped: wait for the host to read (taking its input meanwhile, so a host that
    // writes before it reads cannot deadlock us).
    void wait_for_host(UartSource& source) {
        while (pending() >= HIGH_WATER && !hung_up && !g_signalled) {
            struct pollfd p = {fd, POLLIN | POLLOUT, 0};
            int r = poll(&p, 1, 100);
            if (r < 0) continue;   // EINTR: the loop condition sees the signal
            if (p.revents & POLLHUP) {
                hung_up = true;
                break;
            }
            if (p.revents & POLLIN) read_input(source);
            if (p.revents & POLLOUT) write_output();
        }
    }
};

}  // namespace

int main(int argc, char** argv) {
    uint64_t clock_hz = TWIN_CLOCK_HZ, baud = TWIN_BAUD;
    uint64_t max_cycles = UINT64_MAX;
    const char* pins_path = nullptr;
    std::vector<Loop> loops;
    for (int i = 1; i < argc; i++) {
        std::string arg = argv[i];
        auto value = [&](const char* what) -> const char* {
            if (i + 1 >= argc) usage_error((std::string(what) + " needs a value").c_str());
            return argv[++i];
        };
        if (arg == "--clock-hz") clock_hz = parse_u64(value("--clock-hz"), "--clock-hz");
        else if (arg == "--baud") baud = parse_u64(value("--baud"), "--baud");
        else if (arg == "--pins") pins_path = value("--pins");
        else if (arg == "--loopback") loops.push_back(parse_loop(value("--loopback")));
        else if (arg == "--max-cycles")
            max_cycles = parse_u64(value("--max-cycles"), "--max-cycles");
        else usage_error(("unknown argument " + arg).c_str());
    }
    if (!baud || clock_hz < 4 * baud) usage_error("need --clock-hz >= 4 * --baud > 0");
    PinsReader pins_file;
    Edge edge = {0, 0, 0};
    bool have_edge = false;
    if (pins_path) {
        pins_file.open(pins_path);
        pins_file.check();
        have_edge = pins_file.next(edge);
    }

    struct sigaction sa = {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGHUP, &sa, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    Pty pty;
    pty.open_master();

    auto context = std::make_unique<VerilatedContext>();
    context->commandArgs(0, (const char**)nullptr);
    auto top = std::make_unique<Vheraldry_board>(context.get(), "board");

    UartSink sink{clock_hz, baud};
    UartSource source{clock_hz, baud};

    top->clk = 0;
    top->pins = 0;
    top->uart_rx = 1;
    top->eval();
    for (unsigned i = 0; i < TWIN_RESET_CYCLES; i++) {
        top->clk = 1;
        top->eval();
        top->clk = 0;
        top->eval();
    }

    std::printf("PORT %s\n", pty.path.c_str());
    std::fflush(stdout);

    const auto t0 = std::chrono::steady_clock::now();
    auto last_flush = t0;
    unsigned pins = 0;
    unsigned herald_prev = 0;
    uint64_t herald_rises[TWIN_RULES] = {};
    // herald_history[k % LOOP_HISTORY]: `herald` after the rising edge of cycle k.
    std::vector<unsigned> herald_history(LOOP_HISTORY, 0);
    uint64_t cycle = 0;
    size_t pending_at_check = 0;
    const char* reason = "max-cycles";

    while (cycle < max_cycles) {
        uint64_t stop = std::min(max_cycles, cycle + IO_INTERVAL);
        for (; cycle < stop; cycle++) {
            while (have_edge && edge.cycle <= cycle) {
                unsigned bit = 1u << edge.channel;
                pins = edge.level ? (pins | bit) : (pins & ~bit);
                have_edge = pins_file.next(edge);
            }
            unsigned looped = 0;
            for (const Loop& l : loops) {
                if (cycle >= 1 + (uint64_t)l.delay) {
                    unsigned h = herald_history[(cycle - 1 - l.delay) % LOOP_HISTORY];
                    looped |= ((h >> l.herald) & 1u) << l.channel;
                }
            }
            top->pins = pins | looped;
            top->uart_rx = source.line();
            top->clk = 1;
            top->eval();
            top->clk = 0;
            top->eval();
            source.step();
            int byte = sink.step(cycle, top->uart_tx);
            if (byte >= 0) pty.out.push_back((uint8_t)byte);
            unsigned herald = top->herald;
            herald_history[cycle % LOOP_HISTORY] = herald;
            if (herald != herald_prev) {
                unsigned rose = herald & ~herald_prev;
                for (unsigned r = 0; r < TWIN_RULES; r++) herald_rises[r] += (rose >> r) & 1;
                herald_prev = herald;
            }
        }
        if (g_signalled) {
            reason = "signal";
            break;
        }
        pty.read_input(source);
        auto now = std::chrono::steady_clock::now();
        size_t pending = pty.pending();
        bool quiet = pending && pending == pending_at_check;
        if (pending >= BATCH || quiet
            || (pending && std::chrono::duration<double>(now - last_flush).count() > FLUSH_AGE_S)) {
            pty.write_output();
            last_flush = now;
            if (pty.pending() >= HIGH_WATER) pty.wait_for_host(source);
        }
        pending_at_check = pty.pending();
        if (pty.check_hangup()) {
            reason = "hangup";
            break;
        }
        if (g_signalled) {
            reason = "signal";
            break;
        }
    }
    // A host that stopped reading (or never connected) must not hold the exit for long.
    if (!std::strcmp(reason, "max-cycles")) pty.drain(1.0);

    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::string rises;
    for (unsigned r = 0; r < TWIN_RULES; r++) {
        if (r) rises += ",";
        rises += std::to_string(herald_rises[r]);
    }
    std::fprintf(stderr,
                 "twin: cycles=%llu seconds=%.3f cycles_per_s=%.0f bytes_to_host=%llu "
                 "bytes_from_host=%llu framing_errors=%llu herald_rises=%s exit=%s\n",
                 (unsigned long long)cycle, seconds, seconds > 0 ? cycle / seconds : 0.0,
                 (unsigned long long)pty.bytes_to_host, (unsigned long long)pty.bytes_from_host,
                 (unsigned long long)sink.framing_errors, rises.c_str(), reason);
    top->final();
    close(pty.fd);
    return 0;
}
