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
