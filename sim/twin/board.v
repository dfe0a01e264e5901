// The virtual board's Verilog top: heraldry_top with a power-on reset.
//
// `rst` comes from a register here instead of a harness input. Amaranth's Verilog folds the
// synchronous reset into every next-state expression; with `rst` a top-level input, Verilator
// re-evaluates all of them on each eval() call (its input-combinational region, twice a cycle);
// from a register they are evaluated once, at the clock edge (about 1.5x faster overall).
// `rst` is high for the first RESET_CYCLES rising clock edges; the harness counts cycle 0 from
// the edge after them.
module heraldry_board #(
    parameter CHANNELS = 4,
    parameter RULES = 2,
    parameter RESET_CYCLES = 4
) (
    input clk,
    input [CHANNELS-1:0] pins,
    output [RULES-1:0] herald,
    output [1:0] led,
    input uart_rx,
    output uart_tx
);
    reg [7:0] reset_count = 8'd0;
    wire rst = reset_count != RESET_CYCLES;
    always @(posedge clk)
        if (rst) reset_count <= reset_count + 8'd1;

    heraldry_top top (
        .clk(clk), .rst(rst), .pins(pins), .herald(herald), .led(led),
        .uart_rx(uart_rx), .uart_tx(uart_tx)
    );
endmodule
