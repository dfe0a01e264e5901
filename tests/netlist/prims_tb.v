// Test bench of the behavioural primitive models (sim/netlist/ecp5_models.v), driven one
// evaluation per line by vectors.cpp from tests/test_netlist.py.
//
// in[0] pll_a (EHXPLLL CLKOP, the edge clock), in[1] pll_b (CLKOS), in[2] CLKI, in[3] PLL RST,
// in[4] ECLKSYNCB STOP, in[5] CLKDIVF RST, in[6] IDDRX2F D, in[7] IDDRX2F RST,
// in[8] a clock for CLKDIVF DIV "4.0" (ck4), in[9] RAM clock, in[10] CE, in[11] WE of port A,
// in[25:12] ADA, in[39:26] ADB, in[57:40] DIA, in[58] CEB of the x1 RAM, in[59] WEB of the x1 RAM.
// out[0] CLKOP, out[1] CLKOS, out[2] LOCK, out[3] ECLKO, out[4] CDIVX (2.0), out[8:5] Q3..Q0
// (out[5] Q0), out[9] CDIVX (4.0), out[27:10] DOA of the x36 RAM, out[45:28] DOB of the x36
// RAM, out[46] DOA of the x1 RAM, out[47] DOB of the x1 RAM.
module netlist_tb (input pll_a, input pll_b, input [63:0] in, output [63:0] out);
    wire clkop, clkos, lock, eclk, sclk, sclk4;
    wire q0, q1, q2, q3;
    EHXPLLL #(.CLKI_DIV(1), .CLKFB_DIV(16), .CLKOP_DIV(2), .CLKOS_DIV(16),
              .CLKOS_ENABLE("ENABLED"), .LOCK_CYCLES(5))
        pll (.CLKI(in[2]), .CLKFB(clkop), .RST(in[3]), .CLKOP(clkop), .CLKOS(clkos),
             .LOCK(lock));
    ECLKSYNCB sync (.ECLKI(clkop), .STOP(in[4]), .ECLKO(eclk));
    CLKDIVF #(.DIV("2.0")) div2 (.CLKI(eclk), .RST(in[5]), .ALIGNWD(1'b0), .CDIVX(sclk));
    CLKDIVF #(.DIV("4.0")) div4 (.CLKI(in[8]), .RST(in[5]), .ALIGNWD(1'b0), .CDIVX(sclk4));
    IDDRX2F iddr (.D(in[6]), .ECLK(eclk), .SCLK(sclk), .RST(in[7]), .ALIGNWD(1'b0),
                  .Q0(q0), .Q1(q1), .Q2(q2), .Q3(q3));

    wire [17:0] doa, dob;
    wire [13:0] ada = in[25:12], adb = in[39:26];
    wire [17:0] dia = in[57:40], dib = ~in[57:40];
    DP16KD #(.DATA_WIDTH_A(36), .DATA_WIDTH_B(36), .WRITEMODE_A("NORMAL"),
             .WRITEMODE_B("NORMAL"), .RESETMODE("ASYNC"), .CSDECODE_A("0b000"),
             .CSDECODE_B("0b000"))
        ram36 (.CLKA(in[9]), .CEA(in[10]), .WEA(in[11]), .OCEA(1'b1), .RSTA(1'b0),
               .CSA2(1'b0), .CSA1(1'b0), .CSA0(1'b0),
               .ADA13(ada[13]), .ADA12(ada[12]), .ADA11(ada[11]), .ADA10(ada[10]),
               .ADA9(ada[9]), .ADA8(ada[8]), .ADA7(ada[7]), .ADA6(ada[6]), .ADA5(ada[5]),
               .ADA4(ada[4]), .ADA3(ada[3]), .ADA2(ada[2]), .ADA1(ada[1]), .ADA0(ada[0]),
               .DIA17(dia[17]), .DIA16(dia[16]), .DIA15(dia[15]), .DIA14(dia[14]),
               .DIA13(dia[13]), .DIA12(dia[12]), .DIA11(dia[11]), .DIA10(dia[10]),
               .DIA9(dia[9]), .DIA8(dia[8]), .DIA7(dia[7]), .DIA6(dia[6]), .DIA5(dia[5]),
               .DIA4(dia[4]), .DIA3(dia[3]), .DIA2(dia[2]), .DIA1(dia[1]), .DIA0(dia[0]),
               .DIB17(dib[17]), .DIB16(dib[16]), .DIB15(dib[15]), .DIB14(dib[14]),
               .DIB13(dib[13]), .DIB12(dib[12]), .DIB11(dib[11]), .DIB10(dib[10]),
               .DIB9(dib[9]), .DIB8(dib[8]), .DIB7(dib[7]), .DIB6(dib[6]), .DIB5(dib[5]),
               .DIB4(dib[4]), .DIB3(dib[3]), .DIB2(dib[2]), .DIB1(dib[1]), .DIB0(dib[0]),
               .CLKB(in[9]), .CEB(in[10]), .WEB(1'b0), .OCEB(1'b1), .RSTB(1'b0),
               .CSB2(1'b0), .CSB1(1'b0), .CSB0(1'b0),
               .ADB13(adb[13]), .ADB12(adb[12]), .ADB11(adb[11]), .ADB10(adb[10]),
               .ADB9(adb[9]), .ADB8(adb[8]), .ADB7(adb[7]), .ADB6(adb[6]), .ADB5(adb[5]),
               .ADB4(adb[4]), .ADB3(adb[3]), .ADB2(adb[2]), .ADB1(adb[1]), .ADB0(adb[0]),
               .DOA17(doa[17]), .DOA16(doa[16]), .DOA15(doa[15]), .DOA14(doa[14]),
               .DOA13(doa[13]), .DOA12(doa[12]), .DOA11(doa[11]), .DOA10(doa[10]),
               .DOA9(doa[9]), .DOA8(doa[8]), .DOA7(doa[7]), .DOA6(doa[6]), .DOA5(doa[5]),
               .DOA4(doa[4]), .DOA3(doa[3]), .DOA2(doa[2]), .DOA1(doa[1]), .DOA0(doa[0]),
               .DOB17(dob[17]), .DOB16(dob[16]), .DOB15(dob[15]), .DOB14(dob[14]),
               .DOB13(dob[13]), .DOB12(dob[12]), .DOB11(dob[11]), .DOB10(dob[10]),
               .DOB9(dob[9]), .DOB8(dob[8]), .DOB7(dob[7]), .DOB6(dob[6]), .DOB5(dob[5]),
               .DOB4(dob[4]), .DOB3(dob[3]), .DOB2(dob[2]), .DOB1(dob[1]), .DOB0(dob[0]));

    // x1, READBEFOREWRITE on port A (writes), port B reads.
    wire d1a, d1b;
    DP16KD #(.DATA_WIDTH_A(1), .DATA_WIDTH_B(1), .WRITEMODE_A("READBEFOREWRITE"),
             .WRITEMODE_B("READBEFOREWRITE"))
        ram1 (.CLKA(in[9]), .CEA(in[10]), .WEA(in[11]), .OCEA(1'b1), .RSTA(1'b0),
              .CSA2(1'b0), .CSA1(1'b0), .CSA0(1'b0),
              .ADA13(ada[13]), .ADA12(ada[12]), .ADA11(ada[11]), .ADA10(ada[10]),
              .ADA9(ada[9]), .ADA8(ada[8]), .ADA7(ada[7]), .ADA6(ada[6]), .ADA5(ada[5]),
              .ADA4(ada[4]), .ADA3(ada[3]), .ADA2(ada[2]), .ADA1(ada[1]), .ADA0(ada[0]),
              .DIA0(dia[0]), .DOA0(d1a),
              .CLKB(in[9]), .CEB(in[58]), .WEB(in[59]), .OCEB(1'b1), .RSTB(1'b0),
              .CSB2(1'b0), .CSB1(1'b0), .CSB0(1'b0),
              .ADB13(adb[13]), .ADB12(adb[12]), .ADB11(adb[11]), .ADB10(adb[10]),
              .ADB9(adb[9]), .ADB8(adb[8]), .ADB7(adb[7]), .ADB6(adb[6]), .ADB5(adb[5]),
              .ADB4(adb[4]), .ADB3(adb[3]), .ADB2(adb[2]), .ADB1(adb[1]), .ADB0(adb[0]),
              .DIB0(dia[1]), .DOB0(d1b));

    assign out = {16'd0, d1b, d1a, dob, doa, sclk4, q3, q2, q1, q0, sclk, eclk, lock, clkos, clkop};
endmodule
