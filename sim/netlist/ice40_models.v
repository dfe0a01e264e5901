// Behavioural model of the iCE40 PLL the iCEBreaker build uses, for simulating its synthesised
// netlist (Yosys's cells_sim.v declares SB_PLL40_2F_PAD without behaviour; heraldry.sim.netlist
// leaves that declaration out and uses this one). Port A and port B come from the test bench:
// `netlist_tb.pll_a` and `netlist_tb.pll_b`, at the frequencies heraldry.sim.netlist computes
// from DIVR/DIVF/DIVQ and PLLOUT_SELECT_PORTA/B (GENCLK: the output, GENCLK_HALF: half of it,
// rising edges coinciding). LOCK rises after LOCK_CYCLES rising edges of PACKAGEPIN; RESETB low
// clears it. Feedback other than SIMPLE, bypass and dynamic delay are not modelled.
module SB_PLL40_2F_PAD (
    input PACKAGEPIN,
    output PLLOUTCOREA,
    output PLLOUTGLOBALA,
    output PLLOUTCOREB,
    output PLLOUTGLOBALB,
    input EXTFEEDBACK,
    input [7:0] DYNAMICDELAY,
    output LOCK,
    input BYPASS,
    input RESETB,
    input LATCHINPUTVALUE,
    output SDO,
    input SDI,
    input SCLK
);
    parameter FEEDBACK_PATH = "SIMPLE";
    parameter DELAY_ADJUSTMENT_MODE_FEEDBACK = "FIXED";
    parameter DELAY_ADJUSTMENT_MODE_RELATIVE = "FIXED";
    parameter SHIFTREG_DIV_MODE = 2'b00;
    parameter FDA_FEEDBACK = 4'b0000;
    parameter FDA_RELATIVE = 4'b0000;
    parameter PLLOUT_SELECT_PORTA = "GENCLK";
    parameter PLLOUT_SELECT_PORTB = "GENCLK";
    parameter DIVR = 4'b0000;
    parameter DIVF = 7'b0000000;
    parameter DIVQ = 3'b000;
    parameter FILTER_RANGE = 3'b000;
    parameter ENABLE_ICEGATE_PORTA = 1'b0;
    parameter ENABLE_ICEGATE_PORTB = 1'b0;
    parameter TEST_MODE = 1'b0;
    parameter EXTERNAL_DIVIDE_FACTOR = 1;
    parameter LOCK_CYCLES = 16;

    initial if (FEEDBACK_PATH != "SIMPLE")
        $fatal(1, "SB_PLL40_2F_PAD model: only FEEDBACK_PATH \"SIMPLE\" is modelled");

    reg [15:0] ref_edges = 16'd0;
    always @(posedge PACKAGEPIN or negedge RESETB)
        if (!RESETB) ref_edges <= 16'd0;
        else if (ref_edges != LOCK_CYCLES) ref_edges <= ref_edges + 16'd1;

    assign LOCK = ref_edges == LOCK_CYCLES;
    wire bypassed = BYPASS;
    assign PLLOUTGLOBALA = bypassed ? PACKAGEPIN : netlist_tb.pll_a;
    assign PLLOUTGLOBALB = bypassed ? PACKAGEPIN : netlist_tb.pll_b;
    assign PLLOUTCOREA = PLLOUTGLOBALA;
    assign PLLOUTCOREB = PLLOUTGLOBALB;
    assign SDO = 1'b0;
endmodule

// SB_IO, in two one-way variants: Verilator refuses an input port on an inout pad and a
// tristated output port, so heraldry.sim.netlist renames each SB_IO by its PIN_TYPE: no output
// (PIN_TYPE[5:4] == 0): SB_IO_IN; otherwise SB_IO_OUT. Modelled: inputs PIN_TYPE[1:0] 00
// (D_IN_0 registered at the rising edge of INPUT_CLK, D_IN_1 at the falling edge: the DDR input)
// and 01 (D_IN_0 the pad); outputs PIN_TYPE[3:2] 10 (the pad follows D_OUT_0) with
// PIN_TYPE[5:4] 01 (always driven) or 10 (driven while OUTPUT_ENABLE; a disabled output is not
// modelled). CLOCK_ENABLE, NEG_TRIGGER and the rest stop the simulation where they matter.
module SB_IO_IN (
    input PACKAGE_PIN, input LATCH_INPUT_VALUE, input CLOCK_ENABLE, input INPUT_CLK,
    input OUTPUT_CLK, input OUTPUT_ENABLE, input D_OUT_0, input D_OUT_1,
    output D_IN_0, output D_IN_1
);
    parameter [5:0] PIN_TYPE = 6'b000000;
    parameter [0:0] PULLUP = 1'b0;
    parameter [0:0] NEG_TRIGGER = 1'b0;
    parameter IO_STANDARD = "SB_LVCMOS";
    initial if (PIN_TYPE[1:0] > 2'b01 || NEG_TRIGGER)
        $fatal(1, "SB_IO model: PIN_TYPE %b / NEG_TRIGGER is not modelled", PIN_TYPE);
    reg q0 = 1'b0, q1 = 1'b0;
    always @(posedge INPUT_CLK) q0 <= PACKAGE_PIN;
    always @(negedge INPUT_CLK) q1 <= PACKAGE_PIN;
    assign D_IN_0 = PIN_TYPE[0] ? PACKAGE_PIN : q0;
    assign D_IN_1 = q1;
endmodule

module SB_IO_OUT (
    output PACKAGE_PIN, input LATCH_INPUT_VALUE, input CLOCK_ENABLE, input INPUT_CLK,
    input OUTPUT_CLK, input OUTPUT_ENABLE, input D_OUT_0, input D_OUT_1,
    output D_IN_0, output D_IN_1
);
    parameter [5:0] PIN_TYPE = 6'b011000;
    parameter [0:0] PULLUP = 1'b0;
    parameter [0:0] NEG_TRIGGER = 1'b0;
    parameter IO_STANDARD = "SB_LVCMOS";
    initial if (PIN_TYPE[3:2] != 2'b10 || PIN_TYPE[5:4] == 2'b11)
        $fatal(1, "SB_IO model: PIN_TYPE %b is not modelled", PIN_TYPE);
    assign PACKAGE_PIN = D_OUT_0;
    assign D_IN_0 = D_OUT_0;
    assign D_IN_1 = 1'b0;
    always @(negedge OUTPUT_ENABLE)
        if (PIN_TYPE[5:4] == 2'b10) $fatal(1, "SB_IO model: a disabled output is not modelled");
endmodule
