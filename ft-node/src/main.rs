//! `ft-node`: one side of a protected pair. See the crate docs and `ft-node --help`.

use clap::Parser;

fn main() {
    let args = ft_node::node::NodeArgs::parse();
    // The libraries report through `tracing` (the TCP link's refusals and
    // reconnects); print their events on stderr, beside the node's own lines.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .without_time()
        .with_level(false)
        .init();
    let code = match ft_node::node::run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ft-node: {e}");
            ft_node::node::EXIT_SETUP
        }
    };
    std::process::exit(code);
}
