// Behavioural models of the ECP5 primitives that Yosys's cells_sim.v has no model for
// (EHXPLLL, ECLKSYNCB, CLKDIVF, IDDRX2F) or only a black box (DP16KD), for simulating a
// synthesised ULX3S netlist. Written from the behaviour Lattice's documentation describes (ECP5
// sysCLOCK PLL guide, high-speed I/O interface note, sysMEM guide); zero-delay and cycle-level:
// no timing, no metastability. Whatever a netlist of this project does not use stops the
// simulation ($fatal) instead of being guessed.
//
// The PLL's output clocks come from the test bench: `netlist_tb.pll_a` (CLKOP) and
// `netlist_tb.pll_b` (CLKOS), at the frequencies heraldry.sim.netlist computes from the
// instance's dividers. Tests: tests/test_netlist.py.

// EHXPLLL: CLKOP and CLKOS from the test bench, LOCK high after LOCK_CYCLES rising edges of CLKI
// (RST clears it). CLKOS2/CLKOS3 and dynamic phase shifting are not modelled.
module EHXPLLL (
    input CLKI, CLKFB, PHASESEL1, PHASESEL0, PHASEDIR, PHASESTEP, PHASELOADREG, STDBY,
    input PLLWAKESYNC, RST, ENCLKOP, ENCLKOS, ENCLKOS2, ENCLKOS3,
    output CLKOP, CLKOS, CLKOS2, CLKOS3, LOCK, INTLOCK, REFCLK, CLKINTFB
);
    parameter CLKI_DIV = 1;
    parameter CLKFB_DIV = 1;
    parameter CLKOP_DIV = 8;
    parameter CLKOS_DIV = 8;
    parameter CLKOS2_DIV = 8;
    parameter CLKOS3_DIV = 8;
    parameter CLKOP_ENABLE = "ENABLED";
    parameter CLKOS_ENABLE = "DISABLED";
    parameter CLKOS2_ENABLE = "DISABLED";
    parameter CLKOS3_ENABLE = "DISABLED";
    parameter CLKOP_CPHASE = 0;
    parameter CLKOS_CPHASE = 0;
    parameter CLKOS2_CPHASE = 0;
    parameter CLKOS3_CPHASE = 0;
    parameter CLKOP_FPHASE = 0;
    parameter CLKOS_FPHASE = 0;
    parameter CLKOS2_FPHASE = 0;
    parameter CLKOS3_FPHASE = 0;
    parameter FEEDBK_PATH = "CLKOP";
    parameter CLKOP_TRIM_POL = "RISING";
    parameter CLKOP_TRIM_DELAY = 0;
    parameter CLKOS_TRIM_POL = "RISING";
    parameter CLKOS_TRIM_DELAY = 0;
    parameter OUTDIVIDER_MUXA = "DIVA";
    parameter OUTDIVIDER_MUXB = "DIVB";
    parameter OUTDIVIDER_MUXC = "DIVC";
    parameter OUTDIVIDER_MUXD = "DIVD";
    parameter PLL_LOCK_MODE = 0;
    parameter PLL_LOCK_DELAY = 200;
    parameter STDBY_ENABLE = "DISABLED";
    parameter REFIN_RESET = "DISABLED";
    parameter SYNC_ENABLE = "DISABLED";
    parameter INT_LOCK_STICKY = "ENABLED";
    parameter DPHASE_SOURCE = "DISABLED";
    parameter PLLRST_ENA = "DISABLED";
    parameter INTFB_WAKE = "DISABLED";
    // Reference cycles to lock (the silicon takes tens of microseconds; shorter here).
    parameter LOCK_CYCLES = 16;

    initial begin
        if (FEEDBK_PATH != "CLKOP")
            $fatal(1, "EHXPLLL model: only FEEDBK_PATH \"CLKOP\" is modelled");
        if (CLKOS2_ENABLE == "ENABLED" || CLKOS3_ENABLE == "ENABLED")
            $fatal(1, "EHXPLLL model: CLKOS2/CLKOS3 are not modelled");
        if (DPHASE_SOURCE == "ENABLED")
            $fatal(1, "EHXPLLL model: dynamic phase shifting is not modelled");
    end

    reg [15:0] ref_edges = 16'd0;
    always @(posedge CLKI or posedge RST)
        if (RST) ref_edges <= 16'd0;
        else if (ref_edges != LOCK_CYCLES) ref_edges <= ref_edges + 16'd1;

    assign LOCK = ref_edges == LOCK_CYCLES;
    assign INTLOCK = LOCK;
    assign CLKOP = CLKOP_ENABLE == "ENABLED" ? netlist_tb.pll_a : 1'b0;
    assign CLKOS = CLKOS_ENABLE == "ENABLED" ? netlist_tb.pll_b : 1'b0;
    assign CLKOS2 = 1'b0;
    assign CLKOS3 = 1'b0;
    assign REFCLK = CLKI;
    assign CLKINTFB = 1'b0;
endmodule

// ECLKSYNCB: the edge-clock buffer with a glitch-free stop. STOP is taken while the clock is
// low (at its falling edge), so a stop or restart never cuts a high phase short.
module ECLKSYNCB (input ECLKI, input STOP, output ECLKO);
    reg stopped = 1'b0;
    always @(negedge ECLKI) stopped <= STOP;
    assign ECLKO = ECLKI & ~stopped;
endmodule

// CLKDIVF: divides the edge clock by 2 or 4 (DIV "2.0", "4.0"; "3.5" is not modelled). The
// output rises at the first rising input edge after RST falls and then every DIV input cycles;
// RST holds it low. ALIGNWD (slipping the divider by one input cycle) is not modelled.
module CLKDIVF (input CLKI, input RST, input ALIGNWD, output CDIVX);
    parameter GSR = "DISABLED";
    parameter DIV = "2.0";
    localparam integer N = DIV == "2.0" ? 2 : DIV == "4.0" ? 4 : 0;
    initial if (N == 0) $fatal(1, "CLKDIVF model: DIV \"%s\" is not modelled", DIV);

    // count: input rising edges since the output last rose, modulo N
    reg [1:0] count = N - 1;
    reg out = 1'b0;
    wire [1:0] next = count == N - 1 ? 2'd0 : count + 2'd1;
    always @(posedge CLKI or posedge RST)
        if (RST) begin
            count <= N - 1;
            out <= 1'b0;
        end else begin
            count <= next;
            out <= next < N / 2;
        end
    always @(posedge ALIGNWD) $fatal(1, "CLKDIVF model: ALIGNWD is not modelled");
    assign CDIVX = out;
endmodule

// IDDRX2F: 4:1 input gearbox. D is sampled at every edge of ECLK (rising and falling); at each
// rising edge of SCLK (ECLK / 2, from CLKDIVF) Q0..Q3 take the four latest samples, Q0 the
// earliest. RST (asynchronous) clears the samples and the outputs. ALIGNWD is not modelled.
module IDDRX2F (input D, input SCLK, input ECLK, input RST, input ALIGNWD,
                output reg Q3, output reg Q2, output reg Q1, output reg Q0);
    parameter GSR = "ENABLED";
    reg [3:0] samples = 4'd0;           // samples[3]: the latest
    initial {Q3, Q2, Q1, Q0} = 4'd0;
    always @(posedge ECLK or negedge ECLK or posedge RST)
        if (RST) samples <= 4'd0;
        else samples <= {D, samples[3:1]};
    always @(posedge SCLK or posedge RST)
        if (RST) {Q3, Q2, Q1, Q0} <= 4'd0;
        else {Q3, Q2, Q1, Q0} <= samples;
    always @(posedge ALIGNWD) $fatal(1, "IDDRX2F model: ALIGNWD is not modelled");
endmodule

// DP16KD: 18 Kbit block RAM, two synchronous ports. Port widths (DATA_WIDTH_A/B) 1, 2, 4 (data
// bits only: address AD[13:0], AD[13:1], AD[13:2]), 9, 18 (with the parity bits: AD[13:3],
// AD[13:4], and for 18 the write byte enables on AD[1:0]) and 36 (Yosys's pseudo dual port:
// port A writes, port B reads, address AD[13:5], byte enables on ADA[3:0], data bits 0..17 on
// DIA/DOA and 18..35 on DIB/DOB). Both ports must have the same width (the netlists here do;
// mixed widths are not modelled). Writes need CE, WE and CS[2:0] == CSDECODE; a read of the
// address the other port writes at the same edge gives the old word. WRITEMODE NORMAL keeps the
// port's output during its own write, WRITETHROUGH shows the new word, READBEFOREWRITE the old
// one. REGMODE OUTREG adds the output register (enabled by OCE). RST clears the output
// (RESETMODE SYNC or ASYNC). INITVAL_xx: the 18-bit word 16 * xx + j is bits 20 j .. 20 j + 17
// (x9/x18/x36 layouts); a non-zero INITVAL with a narrower port is not modelled.
module DP16KD (
    input DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5,
    input DIA4, DIA3, DIA2, DIA1, DIA0,
    input ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0,
    input CEA, OCEA, CLKA, WEA, RSTA, CSA2, CSA1, CSA0,
    output DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6,
    output DOA5, DOA4, DOA3, DOA2, DOA1, DOA0,
    input DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5,
    input DIB4, DIB3, DIB2, DIB1, DIB0,
    input ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0,
    input CEB, OCEB, CLKB, WEB, RSTB, CSB2, CSB1, CSB0,
    output DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6,
    output DOB5, DOB4, DOB3, DOB2, DOB1, DOB0
);
    parameter DATA_WIDTH_A = 18;
    parameter DATA_WIDTH_B = 18;
    parameter REGMODE_A = "NOREG";
    parameter REGMODE_B = "NOREG";
    parameter RESETMODE = "SYNC";
    parameter ASYNC_RESET_RELEASE = "SYNC";
    parameter CSDECODE_A = "0b000";
    parameter CSDECODE_B = "0b000";
    parameter WRITEMODE_A = "NORMAL";
    parameter WRITEMODE_B = "NORMAL";
    parameter CLKAMUX = "CLKA";
    parameter CLKBMUX = "CLKB";
    parameter GSR = "ENABLED";
    parameter INIT_DATA = "STATIC";
    parameter WID = 0;
    parameter [319:0] INITVAL_00 = 0, INITVAL_01 = 0, INITVAL_02 = 0, INITVAL_03 = 0;
    parameter [319:0] INITVAL_04 = 0, INITVAL_05 = 0, INITVAL_06 = 0, INITVAL_07 = 0;
    parameter [319:0] INITVAL_08 = 0, INITVAL_09 = 0, INITVAL_0A = 0, INITVAL_0B = 0;
    parameter [319:0] INITVAL_0C = 0, INITVAL_0D = 0, INITVAL_0E = 0, INITVAL_0F = 0;
    parameter [319:0] INITVAL_10 = 0, INITVAL_11 = 0, INITVAL_12 = 0, INITVAL_13 = 0;
    parameter [319:0] INITVAL_14 = 0, INITVAL_15 = 0, INITVAL_16 = 0, INITVAL_17 = 0;
    parameter [319:0] INITVAL_18 = 0, INITVAL_19 = 0, INITVAL_1A = 0, INITVAL_1B = 0;
    parameter [319:0] INITVAL_1C = 0, INITVAL_1D = 0, INITVAL_1E = 0, INITVAL_1F = 0;
    parameter [319:0] INITVAL_20 = 0, INITVAL_21 = 0, INITVAL_22 = 0, INITVAL_23 = 0;
    parameter [319:0] INITVAL_24 = 0, INITVAL_25 = 0, INITVAL_26 = 0, INITVAL_27 = 0;
    parameter [319:0] INITVAL_28 = 0, INITVAL_29 = 0, INITVAL_2A = 0, INITVAL_2B = 0;
    parameter [319:0] INITVAL_2C = 0, INITVAL_2D = 0, INITVAL_2E = 0, INITVAL_2F = 0;
    parameter [319:0] INITVAL_30 = 0, INITVAL_31 = 0, INITVAL_32 = 0, INITVAL_33 = 0;
    parameter [319:0] INITVAL_34 = 0, INITVAL_35 = 0, INITVAL_36 = 0, INITVAL_37 = 0;
    parameter [319:0] INITVAL_38 = 0, INITVAL_39 = 0, INITVAL_3A = 0, INITVAL_3B = 0;
    parameter [319:0] INITVAL_3C = 0, INITVAL_3D = 0, INITVAL_3E = 0, INITVAL_3F = 0;

    localparam integer W = DATA_WIDTH_A;
    // address bits below the word address (36: 5, 18: 4, 9: 3, 4: 2, 2: 1, 1: 0)
    localparam integer LOW = W == 36 ? 5 : W == 18 ? 4 : W == 9 ? 3 : W == 4 ? 2 : W == 2 ? 1 : 0;
    localparam integer WORDS = W == 36 ? 512 : W >= 9 ? 18432 / W : 16384 / W;

    wire [17:0] dia = {DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7,
                       DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0};
    wire [17:0] dib = {DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7,
                       DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0};
    wire [13:0] ada = {ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2,
                       ADA1, ADA0};
    wire [13:0] adb = {ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2,
                       ADB1, ADB0};
    wire csa = {CSA2, CSA1, CSA0} == decode(CSDECODE_A);
    wire csb = {CSB2, CSB1, CSB0} == decode(CSDECODE_B);

    function [2:0] decode(input [8*5-1:0] text);       // "0b101" -> 3'b101
        decode = {text[23:16] == "1", text[15:8] == "1", text[7:0] == "1"};
    endfunction

    reg [35:0] mem [0:WORDS-1];
    reg [35:0] out_a = 36'd0, out_b = 36'd0, reg_a = 36'd0, reg_b = 36'd0;

    integer i, j;
    reg [319:0] iv;
    initial begin
        if (DATA_WIDTH_A != DATA_WIDTH_B)
            $fatal(1, "DP16KD model: ports of different widths are not modelled");
        if (!(W == 1 || W == 2 || W == 4 || W == 9 || W == 18 || W == 36))
            $fatal(1, "DP16KD model: DATA_WIDTH %0d", W);
        for (i = 0; i < WORDS; i = i + 1) mem[i] = 36'd0;
        for (i = 0; i < 64; i = i + 1) begin
            iv = initval(i);
            if (iv != 320'd0 && W < 9)
                $fatal(1, "DP16KD model: INITVAL with a port narrower than 9 is not modelled");
            for (j = 0; j < 16; j = j + 1)
                if (W == 36) begin
                    if ((16 * i + j) % 2 == 0) mem[(16 * i + j) / 2][17:0] = iv[20 * j +: 18];
                    else mem[(16 * i + j) / 2][35:18] = iv[20 * j +: 18];
                end else if (W == 18) mem[16 * i + j][17:0] = iv[20 * j +: 18];
                else if (W == 9) begin
                    mem[2 * (16 * i + j)][8:0] = iv[20 * j +: 9];
                    mem[2 * (16 * i + j) + 1][8:0] = iv[20 * j + 9 +: 9];
                end
        end
    end

    function [319:0] initval(input integer k);
        case (k)
            0: initval = INITVAL_00;   1: initval = INITVAL_01;   2: initval = INITVAL_02;
            3: initval = INITVAL_03;   4: initval = INITVAL_04;   5: initval = INITVAL_05;
            6: initval = INITVAL_06;   7: initval = INITVAL_07;   8: initval = INITVAL_08;
            9: initval = INITVAL_09;  10: initval = INITVAL_0A;  11: initval = INITVAL_0B;
            12: initval = INITVAL_0C; 13: initval = INITVAL_0D;  14: initval = INITVAL_0E;
            15: initval = INITVAL_0F; 16: initval = INITVAL_10;  17: initval = INITVAL_11;
            18: initval = INITVAL_12; 19: initval = INITVAL_13;  20: initval = INITVAL_14;
            21: initval = INITVAL_15; 22: initval = INITVAL_16;  23: initval = INITVAL_17;
            24: initval = INITVAL_18; 25: initval = INITVAL_19;  26: initval = INITVAL_1A;
            27: initval = INITVAL_1B; 28: initval = INITVAL_1C;  29: initval = INITVAL_1D;
            30: initval = INITVAL_1E; 31: initval = INITVAL_1F;  32: initval = INITVAL_20;
            33: initval = INITVAL_21; 34: initval = INITVAL_22;  35: initval = INITVAL_23;
            36: initval = INITVAL_24; 37: initval = INITVAL_25;  38: initval = INITVAL_26;
            39: initval = INITVAL_27; 40: initval = INITVAL_28;  41: initval = INITVAL_29;
            42: initval = INITVAL_2A; 43: initval = INITVAL_2B;  44: initval = INITVAL_2C;
            45: initval = INITVAL_2D; 46: initval = INITVAL_2E;  47: initval = INITVAL_2F;
            48: initval = INITVAL_30; 49: initval = INITVAL_31;  50: initval = INITVAL_32;
            51: initval = INITVAL_33; 52: initval = INITVAL_34;  53: initval = INITVAL_35;
            54: initval = INITVAL_36; 55: initval = INITVAL_37;  56: initval = INITVAL_38;
            57: initval = INITVAL_39; 58: initval = INITVAL_3A;  59: initval = INITVAL_3B;
            60: initval = INITVAL_3C; 61: initval = INITVAL_3D;  62: initval = INITVAL_3E;
            default: initval = INITVAL_3F;
        endcase
    endfunction

    // Write data and byte enables of each port as one 36-bit word.
    wire [35:0] wdata_a = W == 36 ? {dib, dia} : {18'd0, dia};
    wire [35:0] wdata_b = {18'd0, dib};
    wire [35:0] wmask_a = W == 36 ? {{9{ada[3]}}, {9{ada[2]}}, {9{ada[1]}}, {9{ada[0]}}}
                        : W == 18 ? {18'd0, {9{ada[1]}}, {9{ada[0]}}} : {36{1'b1}} >> (36 - W);
    wire [35:0] wmask_b = W == 18 ? {18'd0, {9{adb[1]}}, {9{adb[0]}}} : {36{1'b1}} >> (36 - W);
    wire [13:0] word_a = ada >> LOW;
    wire [13:0] word_b = adb >> LOW;
    wire write_a = CEA && WEA && csa;
    wire write_b = W != 36 && CEB && WEB && csb;

    wire arst_a = RESETMODE == "ASYNC" && RSTA;
    wire arst_b = RESETMODE == "ASYNC" && RSTB;
    wire srst_a = RESETMODE == "SYNC" && RSTA;
    wire srst_b = RESETMODE == "SYNC" && RSTB;
    always @(posedge CLKA)
        if (write_a) mem[word_a] <= (mem[word_a] & ~wmask_a) | (wdata_a & wmask_a);
    always @(posedge CLKB)
        if (write_b) mem[word_b] <= (mem[word_b] & ~wmask_b) | (wdata_b & wmask_b);
    always @(posedge CLKA or posedge arst_a)
        if (arst_a || srst_a) out_a <= 36'd0;
        else if (W != 36 && CEA && csa) begin
            if (!write_a || WRITEMODE_A == "READBEFOREWRITE") out_a <= mem[word_a];
            else if (WRITEMODE_A == "WRITETHROUGH")
                out_a <= (mem[word_a] & ~wmask_a) | (wdata_a & wmask_a);
        end
    always @(posedge CLKB or posedge arst_b)
        if (arst_b || srst_b) out_b <= 36'd0;
        else if (CEB && csb) begin
            if (!write_b || WRITEMODE_B == "READBEFOREWRITE") out_b <= mem[word_b];
            else if (WRITEMODE_B == "WRITETHROUGH")
                out_b <= (mem[word_b] & ~wmask_b) | (wdata_b & wmask_b);
        end
    always @(posedge CLKA) if (OCEA) reg_a <= RSTA ? 36'd0 : out_a;
    always @(posedge CLKB) if (OCEB) reg_b <= RSTB ? 36'd0 : out_b;

    wire [35:0] do_a = REGMODE_A == "OUTREG" ? reg_a : out_a;
    wire [35:0] do_b = REGMODE_B == "OUTREG" ? reg_b : out_b;
    // x36: port B's word is DOA (bits 0..17) and DOB (18..35); port A reads nothing.
    wire [17:0] doa = W == 36 ? do_b[17:0] : do_a[17:0];
    wire [17:0] dob = W == 36 ? do_b[35:18] : do_b[17:0];
    assign {DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5,
            DOA4, DOA3, DOA2, DOA1, DOA0} = doa;
    assign {DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5,
            DOB4, DOB3, DOB2, DOB1, DOB0} = dob;
endmodule

// I/O buffers. Verilator refuses a top-level input on an inout port (TRELLIS_IO's pad B), so
// heraldry.sim.netlist renames each TRELLIS_IO of a netlist by its DIR parameter (INPUT:
// TRELLIS_IO_IN, OUTPUT: TRELLIS_IO_OUT) and these models have a one-way pad; the RTL's IB, OB
// and OBZ are the same buffers. Tristating (T high) and BIDIR are not modelled.
module TRELLIS_IO_IN (input B, input I, input T, output O);
    parameter DIR = "INPUT";
    assign O = B;
endmodule

module TRELLIS_IO_OUT (output B, input I, input T, output O);
    parameter DIR = "OUTPUT";
    assign B = I;
    assign O = 1'b0;
    always @(posedge T) $fatal(1, "TRELLIS_IO model: a tristated output is not modelled");
endmodule

module IB (input I, output O);
    assign O = I;
endmodule

module OB (input I, output O);
    assign O = I;
endmodule

module OBZ (input I, input T, output O);
    assign O = I;
    always @(posedge T) $fatal(1, "OBZ model: a tristated output is not modelled");
endmodule
