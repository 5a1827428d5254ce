//! `ft-node`: one side of a protected pair. See the crate docs and `ft-node --help`.

use clap::Parser;

fn main() {
    let args = ft_node::node::NodeArgs::parse();
    let code = match ft_node::node::run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ft-node: {e}");
            ft_node::node::EXIT_SETUP
        }
    };
    std::process::exit(code);
}
