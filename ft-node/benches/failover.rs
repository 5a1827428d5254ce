//! Failover time between two `ft-node` processes on loopback, over many runs.
//!
//! Each run starts a primary and a backup (file arbiter in a temporary directory), a
//! client sending requests back to back (8 in flight), and `kill -9`s the primary at a
//! seeded random moment. From the nodes' progress lines (Unix microseconds) and the
//! client:
//!
//! * kill → detection: the backup's `PEER DECLARED DEAD`;
//! * detection → live: the backup's `LIVE` (it re-sends the outputs the old primary
//!   may not have released at that instant);
//! * detection → first new output: the backup's first output that is not a re-send
//!   (a reply to a request the client sent after failing over);
//! * kill → client's first answer after the failover.
//!
//! The sim guest runs in four timing configurations; where `/dev/kvm` is usable, a
//! fifth runs the KVM guest (`--backend kvm`) at 10 / 30 ms.
//!
//! Printed figures only (min / median / max). Run:
//!
//! ```sh
//! cargo bench -p ft-node --bench failover            # FT_BENCH_RUNS=N to change the runs
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ft_node::client::{self, ClientConfig, ClientStatus};
use ft_node::testkit::{start_pair, Pair, PairOptions};
use rand::{Rng, SeedableRng};

struct Config {
    name: &'static str,
    heartbeat_ms: u64,
    timeout_ms: u64,
    disconnect_is_failure: bool,
    /// `--backend`.
    backend: &'static str,
}

#[derive(Default)]
struct Samples {
    detect: Vec<f64>,
    live: Vec<f64>,
    first_new: Vec<f64>,
    client: Vec<f64>,
    /// Runs whose client waited past `SLOW_MS`, with their breakdown.
    slow: Vec<String>,
}

/// A run whose client's first answer took longer than this is printed in detail.
const SLOW_MS: f64 = 250.0;

fn stats(v: &[f64]) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    format!(
        "min {:>8.3}  median {:>8.3}  max {:>8.3} ms",
        s[0],
        median,
        s[s.len() - 1]
    )
}

fn one_run(cfg: &Config, rng: &mut impl Rng, out: &mut Samples) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut extra = vec![
        "--progress-ms".to_string(),
        "0".to_string(),
        "--backend".to_string(),
        cfg.backend.to_string(),
    ];
    if cfg.disconnect_is_failure {
        extra.push("--disconnect-is-failure".into());
    }
    let opts = PairOptions {
        bin: env!("CARGO_BIN_EXE_ft-node").into(),
        dir: dir.path().to_path_buf(),
        heartbeat_ms: cfg.heartbeat_ms,
        timeout_ms: cfg.timeout_ms,
        backup_timeout_ms: None,
        proxy: false,
        arbiter: None,
        extra,
        echo: false,
    };
    let Pair {
        mut primary,
        mut backup,
        client_addrs,
        ..
    } = start_pair(&opts).map_err(|e| e.to_string())?;
    let requests = 3000;
    let status = Arc::new(ClientStatus::default());
    let s = status.clone();
    let ccfg = ClientConfig {
        addrs: client_addrs,
        requests,
        window: 8,
        gap: Duration::ZERO,
        quit: true,
        limit: Duration::from_secs(60),
    };
    let client = std::thread::spawn(move || client::run(&ccfg, &s, None));
    let k = rng.gen_range(200..1500);
    while status.answered() < k {
        std::thread::sleep(Duration::from_micros(200));
    }
    std::thread::sleep(Duration::from_micros(rng.gen_range(0..3000)));
    let killed_at = Instant::now();
    let killed = primary.kill9().map_err(|e| e.to_string())?;
    let limit = Duration::from_secs(30);
    let detected = backup
        .wait_for("PEER DECLARED DEAD", limit)
        .map_err(|e| e.to_string())?;
    let live = backup
        .wait_for("LIVE at", limit)
        .map_err(|e| e.to_string())?;
    let first_new = backup
        .wait_for("first new output as the new primary", limit)
        .map_err(|e| e.to_string())?;
    let report = client
        .join()
        .map_err(|_| "client panicked".to_string())?
        .map_err(|e| e.to_string())?;
    report
        .verify(requests, true)
        .map_err(|e| format!("verification: {e}"))?;
    let _ = backup.wait_exit(Duration::from_secs(10));
    let ms = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e3;
    out.detect.push(ms(killed, detected.unix_us));
    out.live.push(ms(detected.unix_us, live.unix_us));
    out.first_new.push(ms(detected.unix_us, first_new.unix_us));
    if let Some(t) = report.first_answer_after_loss.first() {
        let client = t.saturating_duration_since(killed_at).as_secs_f64() * 1e3;
        out.client.push(client);
        if client > SLOW_MS {
            // A slow run: where its time went, for the record.
            let lost = report.losses.first().map_or(f64::NAN, |l| {
                l.saturating_duration_since(killed_at).as_secs_f64() * 1e3
            });
            out.slow.push(format!(
                "kill -> client {client:.1} ms: detection {:.1}, live {:.1}, first new output {:.1} (after detection); the client lost its connection {lost:.1} ms after the kill, connected {} times",
                ms(killed, detected.unix_us),
                ms(detected.unix_us, live.unix_us),
                ms(detected.unix_us, first_new.unix_us),
                report.connections.len()
            ));
        }
    }
    Ok(())
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let runs: usize = std::env::var("FT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let seed: u64 = std::env::var("FT_BENCH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(42);
    let mut configs = vec![
        Config {
            name: "defaults (silence only)",
            heartbeat_ms: 10,
            timeout_ms: 100,
            disconnect_is_failure: false,
            backend: "sim",
        },
        Config {
            name: "10 ms heartbeat (silence only)",
            heartbeat_ms: 10,
            timeout_ms: 30,
            disconnect_is_failure: false,
            backend: "sim",
        },
        Config {
            name: "tight LAN (silence only)",
            heartbeat_ms: 5,
            timeout_ms: 40,
            disconnect_is_failure: false,
            backend: "sim",
        },
        Config {
            name: "defaults + connection loss",
            heartbeat_ms: 10,
            timeout_ms: 100,
            disconnect_is_failure: true,
            backend: "sim",
        },
    ];
    if ft_kvm::probe().is_ok() {
        configs.push(Config {
            name: "KVM guest, 10 ms heartbeat (silence only)",
            heartbeat_ms: 10,
            timeout_ms: 30,
            disconnect_is_failure: false,
            backend: "kvm",
        });
    } else {
        println!("(no usable /dev/kvm: the KVM configuration is skipped)");
    }
    println!("ft-node failover benchmark: {runs} runs per configuration, seed {seed} (FT_BENCH_RUNS, FT_BENCH_SEED)");
    println!("two processes on loopback, file arbiter, client with 8 requests in flight, primary killed with SIGKILL at a random moment\n");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut failed = false;
    for cfg in &configs {
        let mut s = Samples::default();
        let mut errors = Vec::new();
        for _ in 0..runs {
            if let Err(e) = one_run(cfg, &mut rng, &mut s) {
                errors.push(e);
            }
        }
        println!(
            "{} ({}) — heartbeat {} ms, timeout {} ms{}: {} runs ok, {} failed",
            cfg.name,
            cfg.backend,
            cfg.heartbeat_ms,
            cfg.timeout_ms,
            if cfg.disconnect_is_failure {
                ", a lost connection counts as death"
            } else {
                ""
            },
            s.detect.len(),
            errors.len()
        );
        println!("  kill -> detection             {}", stats(&s.detect));
        println!("  detection -> live             {}", stats(&s.live));
        println!("  detection -> first new output {}", stats(&s.first_new));
        println!("  kill -> client's first answer {}", stats(&s.client));
        for slow in &s.slow {
            println!("  slow run: {slow}");
        }
        for e in &errors {
            println!("  FAILED RUN: {e}");
            failed = true;
        }
        println!();
    }
    if failed {
        std::process::exit(1);
    }
}
