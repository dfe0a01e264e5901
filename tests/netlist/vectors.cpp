// One evaluation of netlist_tb (prims_tb.v) per input line: `PLL_A PLL_B IN` (IN in hex); prints
// OUT in hex after each. Used by tests/test_netlist.py.
#include <cstdio>
#include <memory>
#include "verilated.h"
#include "Vnetlist_tb.h"

int main() {
    auto context = std::make_unique<VerilatedContext>();
    auto tb = std::make_unique<Vnetlist_tb>(context.get(), "tb");
    unsigned a, b;
    unsigned long long in;
    while (std::scanf("%u %u %llx", &a, &b, &in) == 3) {
        tb->pll_a = a;
        tb->pll_b = b;
        tb->in = in;
        tb->eval();
        std::printf("%llx\n", (unsigned long long)tb->out);
    }
    tb->final();
    return 0;
}
