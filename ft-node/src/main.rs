//! `ft-node`: one side of a protected pair. See the crate docs and `ft-node --help`.

use clap::Parser;

fn main() {
    let args = ft_node::node::NodeArgs::parse();
    logging();
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

/// The libraries report through `tracing` (the TCP link's connections, refusals and
/// reconnects): their events go to stderr beside the node's own lines, with the same
/// `[unix SECONDS.MICROS]` stamp. `RUST_LOG` filters them as `tracing-subscriber`'s
/// `Targets` reads it (`warn`, `ft_transport=debug,info`); the default is `info`.
fn logging() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let default = Targets::new().with_default(LevelFilter::INFO);
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => match v.parse::<Targets>() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("ft-node: ignoring RUST_LOG={v:?} ({e}); logging at info");
                default
            }
        },
        _ => default,
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_timer(UnixTime)
        .with_level(false);
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .init();
}

/// `[unix SECONDS.MICROS]`, as the node's own lines begin.
struct UnixTime;

impl tracing_subscriber::fmt::time::FormatTime for UnixTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        write!(w, "[unix {}.{:06}]", t.as_secs(), t.subsec_micros())
    }
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
