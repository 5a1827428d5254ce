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
        Err(e @ ft_node::node::NodeError::SupersededWhileWaiting { .. }) => {
            eprintln!("ft-node: {e}");
            // A fresh process image: every socket of this one closes (close-on-exec),
            // and the new run asks the arbiter what this node may be.
            restart();
            ft_node::node::EXIT_SETUP
        }
        Err(e) => {
            eprintln!("ft-node: {e}");
            ft_node::node::EXIT_SETUP
        }
    };
    std::process::exit(code);
}

/// Replace this process with `ft-node` and the same arguments; returns only if that
/// fails (after saying why).
#[cfg(unix)]
fn restart() {
    use std::os::unix::process::CommandExt;
    let err = match std::env::current_exe() {
        Ok(exe) => std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .exec(),
        Err(e) => e,
    };
    eprintln!("ft-node: cannot start again: {err}");
}

/// Without exec: the operator (or supervisor) starts it again.
#[cfg(not(unix))]
fn restart() {}
