//! `ft-client`: sends numbered requests to the guest service through the nodes' client
//! addresses, fails over between them, and checks every answer came exactly once.

use std::time::Duration;

use clap::Parser;
use ft_node::client::{self, ClientConfig, ClientStatus};
use ft_node::progress::Log;

/// Send requests to a protected service and verify the answers.
#[derive(Debug, Parser)]
#[command(name = "ft-client", version, long_about = None)]
struct Args {
    /// A node's client address, HOST:PORT (a host name, an IPv4 address, or an IPv6
    /// address in brackets); give both, in the order to try them. A host name is
    /// resolved at start; each of its addresses is tried in turn.
    #[arg(long = "addr", required = true)]
    addrs: Vec<String>,
    /// Requests to send.
    #[arg(long, default_value_t = 500)]
    requests: u64,
    /// Most requests unanswered at once.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Milliseconds between two new requests.
    #[arg(long, default_value_t = 2)]
    gap_ms: u64,
    /// Do not send `quit` at the end (the service keeps running).
    #[arg(long)]
    no_quit: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    limit_s: u64,
}

fn main() {
    let args = Args::parse();
    let mut addrs = Vec::new();
    for a in &args.addrs {
        match client::resolve_addr(a) {
            Ok(all) => {
                for x in all {
                    if !addrs.contains(&x) {
                        addrs.push(x);
                    }
                }
            }
            Err(e) => {
                eprintln!("ft-client: {e}");
                std::process::exit(2);
            }
        }
    }
    let cfg = ClientConfig {
        addrs,
        requests: args.requests,
        window: args.window,
        gap: Duration::from_millis(args.gap_ms),
        quit: !args.no_quit,
        limit: Duration::from_secs(args.limit_s),
    };
    let log = Log::new("client");
    let status = ClientStatus::default();
    let report = match client::run(&cfg, &status, Some(&log)) {
        Ok(r) => r,
        Err(e) => {
            log.line(format_args!("FAILED: {e}"));
            std::process::exit(1);
        }
    };
    match report.verify(cfg.requests, cfg.quit) {
        Ok(s) => log.line(format_args!("verified: {s}")),
        Err(e) => {
            log.line(format_args!("VERIFICATION FAILED: {e}"));
            std::process::exit(1);
        }
    }
}
