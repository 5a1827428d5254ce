//! # kvm_failover: failover of a real x86-64 guest on KVM
//!
//! Two KVM VMs in this process run the same guest (ft-kvm's tiny CPL0 kernel and a
//! CPL3 service built with iced-x86: ten rounds of a timer sleep, a clock read, an RNG
//! read and a running hash, each printed, then the tick count). The primary is
//! recorded through ft's engine, the backup replays its log; both are turned on
//! virtual time by ft-kvm's `LocalPair`. After a number of outputs chosen by the seed
//! the primary is killed; the backup declares it dead, drains the log, wins the
//! arbiter, goes live, and the guest finishes there. The demo prints a timeline and
//! the outputs the outside world saw, and checks them: exactly once after dropping
//! repeats by sequence number, no gap, no contradiction, every output the old primary
//! released present in the backup's stream, and the guest's rounds complete and in
//! order.
//!
//! Run: `cargo run --release --example kvm_failover [-- --seed N]` (needs `/dev/kvm`;
//! without it, it says so and exits 0).

const USAGE: &str = "usage: kvm_failover [--seed N]

Runs a small x86-64 service guest in two KVM VMs, recorded on a primary and replayed
on a backup, kills the primary after a number of outputs chosen by the seed, and
checks that every output came exactly once and in order after the backup took over.
Without --seed, a seed is picked from the clock and printed, so any run can be
replayed. Without a usable /dev/kvm it prints a SKIP line and exits 0.

exit status: 0 when the outputs verify (or KVM is missing), 1 on any failure, 2 on a
usage error";

/// The seed from the command line (as `examples/failover.rs` takes it): `--help`
/// prints the usage and exits 0; anything else it does not take prints the usage on
/// standard error and exits 2.
fn seed_from_args() -> u64 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        std::process::exit(0);
    }
    match args.as_slice() {
        [] => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000)
            .unwrap_or(1),
        [flag, v] if flag == "--seed" => v.parse().unwrap_or_else(|e| {
            eprintln!("bad --seed {v}: {e}\n\n{USAGE}");
            std::process::exit(2)
        }),
        other => {
            eprintln!("unknown arguments {other:?}\n\n{USAGE}");
            std::process::exit(2);
        }
    }
}

fn main() {
    let seed = seed_from_args();
    if let Err(e) = ft_kvm::probe() {
        println!("SKIP kvm_failover: no usable /dev/kvm on this host ({e}); nothing was run");
        return;
    }
    if let Err(e) = demo::run(seed) {
        eprintln!("kvm_failover FAILED: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
mod demo {
    /// The KVM backend is built for Linux on x86-64 only (where `probe` can succeed).
    pub fn run(_seed: u64) -> Result<(), String> {
        Err("the KVM backend is built for Linux on x86-64 only".into())
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod demo {
    use std::collections::BTreeMap;

    use ft_core::{Config, EventSource, Nanos, Node, NodeId, Notice};
    use ft_kvm::machine::{KvmMachine, MachineConfig};
    use ft_kvm::pair::{LocalPair, Side};
    use ft_sim::world::{Disk, OutputSink, SimWorld, SimWorldConfig};
    use rand::{Rng, SeedableRng};

    /// Virtual nanoseconds per step of the pair.
    const TICK: u64 = 20_000;
    /// Rounds of the guest's service.
    const ROUNDS: u32 = 10;
    /// Outputs the guest makes: the kernel's banner, a `round` and a `state` line per
    /// round, the `ticks` line.
    const OUTPUTS: usize = 2 + 2 * ROUNDS as usize;
    /// Steps either phase may take before the demo gives up.
    const MAX_STEPS: u64 = 1_000_000;

    fn ms(t: Nanos) -> f64 {
        t as f64 / 1e6
    }

    fn plural(n: usize, one: &str, many: &str) -> String {
        format!("{n} {}", if n == 1 { one } else { many })
    }

    fn who(side: Side) -> &'static str {
        match side {
            Side::Primary => "primary",
            Side::Backup => "backup",
        }
    }

    /// A notice as a line of the timeline (the wording of `examples/failover.rs`).
    fn describe(side: Side, n: &Notice) -> String {
        let side = who(side);
        match n {
            Notice::PeerSuspected { last_heard } => format!(
                "{side}: peer declared dead (last heard at {:.3} ms)",
                ms(*last_heard)
            ),
            Notice::Drained { replayed, point } => format!(
                "{side}: drained the log: {} replayed, at point {point}",
                plural(*replayed as usize, "record", "records")
            ),
            Notice::ArbiterWon { token } => {
                format!("{side}: won the arbiter (fencing token {token})")
            }
            Notice::ArbiterLost { winner } => {
                format!("{side}: lost the arbiter to node {}", winner.0)
            }
            Notice::ArbiterUnreachable { attempt, error } => {
                format!("{side}: arbiter unreachable (attempt {attempt}): {error}")
            }
            Notice::WentLive {
                reissued_io,
                resent_outputs,
                point,
            } => format!(
                "{side}: LIVE at point {point}: re-issued {} pending I/O, re-sent {} the old primary may have sent",
                reissued_io,
                plural(*resent_outputs, "output", "outputs")
            ),
            Notice::WentAlone { released } => format!(
                "{side}: going on alone, released {}",
                plural(*released, "held output", "held outputs")
            ),
            Notice::Diverged(d) => format!("{side}: DIVERGED: {d}"),
            Notice::GuestExited { code } => format!("{side}: guest exited with code {code}"),
            other => format!("{side}: {other}"),
        }
    }

    /// The guest's lines in sequence order are its banner, `round i` and `state ...`
    /// for each round in order, and `ticks ...`.
    fn check_rounds(lines: &[String]) -> Result<(), String> {
        if lines.len() != OUTPUTS {
            return Err(format!(
                "{} distinct outputs, the guest makes {OUTPUTS}",
                lines.len()
            ));
        }
        for i in 0..ROUNDS as usize {
            let (round, state) = (&lines[1 + 2 * i], &lines[2 + 2 * i]);
            if *round != format!("round {i:016x}") || !state.starts_with("state ") {
                return Err(format!(
                    "output #{} is {round:?} then {state:?}, not round {i} and its state",
                    1 + 2 * i
                ));
            }
        }
        match lines.last() {
            Some(l) if l.starts_with("ticks ") => Ok(()),
            other => Err(format!("the last output is {other:?}, not the tick count")),
        }
    }

    pub fn run(seed: u64) -> Result<(), String> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        // Kill after 1 to OUTPUTS - 2 released outputs: the backup has work left.
        let kill_after = rng.gen_range(1..OUTPUTS - 1);
        println!("ft kvm_failover demo — seed {seed} (rerun with --seed {seed})");
        println!(
            "guest: ft-kvm's x86-64 kernel and a service of {ROUNDS} rounds (timer sleep, clock and RNG reads, a hash), {OUTPUTS} outputs in all; the primary is killed once it released {}",
            plural(kill_after, "output", "outputs")
        );

        let workload = ft_kvm::guest::service_workload(ROUNDS).map_err(|e| e.to_string())?;
        let mcfg = MachineConfig::default();
        let pm = KvmMachine::with_workload(mcfg, workload.clone()).map_err(|e| e.to_string())?;
        let bm = KvmMachine::with_workload(mcfg, workload).map_err(|e| e.to_string())?;
        let sink = OutputSink::new();
        let disk = Disk::new(64 * 1024);
        let wcfg = SimWorldConfig {
            seed,
            ..SimWorldConfig::default()
        };
        let pw = SimWorld::new("primary", wcfg.clone(), disk.clone(), sink.clone(), true);
        let bw = SimWorld::new("backup", wcfg, disk, sink.clone(), false);
        let cfg = Config {
            slice: 4,
            digest_interval: 25,
            heartbeat_interval: 1_000_000,
            peer_timeout: 4_000_000,
            batch_delay: 40_000,
            ..Config::default()
        };
        let bcfg = Config {
            node: NodeId(2),
            ..cfg.clone()
        };
        println!(
            "engine: two VMs in one process on virtual time ({} µs per step); points are deterministic exits (MMIO, port I/O, hlt); heartbeat {} ms, peer timeout {} ms, digest every {} points\n",
            TICK / 1_000,
            ms(cfg.heartbeat_interval),
            ms(cfg.peer_timeout),
            cfg.digest_interval
        );
        let mut pair = LocalPair::new(
            Node::primary(cfg.clone(), pm, pw, 0),
            Node::backup(bcfg, bm, bw, 0),
            TICK,
        );
        let wall = std::time::Instant::now();
        let released_by_primary =
            |sink: &OutputSink| sink.all().iter().filter(|e| e.side == "primary").count();
        if !pair.run_until(MAX_STEPS, |_| released_by_primary(&sink) >= kill_after) {
            return Err(format!(
                "the primary released {} of {kill_after} outputs in {MAX_STEPS} steps",
                released_by_primary(&sink)
            ));
        }
        let killed = pair.now();
        let released_at_kill = released_by_primary(&sink);
        let primary_point = pair.primary.source().point();
        let backup_point = pair.backup.source().point();
        let records_at_kill = pair.trace().records.len();
        let log_bytes = pair.trace().log_bytes;
        pair.crash_primary();
        let finished = pair.run_until(MAX_STEPS, |p| {
            p.backup.exit_code().is_some() || !p.trace().errors.is_empty()
        });

        // Timeline.
        let mut timeline: Vec<(Nanos, String)> = vec![
            (0, "primary recording, backup replaying".into()),
            (
                killed,
                format!(
                    "primary KILLED at point {primary_point}, after it released {} ({} shipped, {log_bytes} log bytes); the backup had replayed to point {backup_point}",
                    plural(released_at_kill, "output", "outputs"),
                    plural(records_at_kill, "record", "records"),
                ),
            ),
        ];
        let mut notices = pair.trace().notices.clone();
        notices.sort_by_key(|(t, _, _)| *t);
        let mut detected = None;
        let mut live = None;
        for (t, side, n) in &notices {
            match n {
                Notice::PeerSuspected { .. } if *side == Side::Backup => {
                    detected.get_or_insert(*t);
                }
                Notice::WentLive { .. } if *side == Side::Backup => {
                    live.get_or_insert(*t);
                }
                _ => {}
            }
            timeline.push((*t, describe(*side, n)));
        }
        for (t, side, e) in &pair.trace().errors {
            timeline.push((*t, format!("{}: ERROR {e}", who(*side))));
        }
        for (t, side, e) in &pair.trace().link_errors {
            timeline.push((*t, format!("{}: LINK ERROR {e}", who(*side))));
        }
        let all = sink.all();
        let first_new = all
            .iter()
            .filter(|e| e.side == "backup" && !e.possible_repeat)
            .min_by_key(|e| e.at);
        if let Some(e) = first_new {
            timeline.push((
                e.at,
                format!("backup: first new output, #{}", e.output.seq.0),
            ));
        }
        timeline.sort_by_key(|(t, _)| *t);
        println!("timeline (ms of virtual time):");
        for (t, line) in &timeline {
            println!("  {:>9.3}  {line}", ms(*t));
        }

        // The outputs: one line per distinct one, with who released it first.
        let dedup = sink.deduplicated()?;
        let repeats = all.len() - dedup.len();
        let mut copies: BTreeMap<u64, Vec<&ft_sim::world::Emitted>> = BTreeMap::new();
        for e in &all {
            copies.entry(e.output.seq.0).or_default().push(e);
        }
        println!(
            "\noutputs: {} seen by the outside world, {} after dropping {} by sequence number:",
            all.len(),
            dedup.len(),
            plural(repeats, "repeat", "repeats")
        );
        let mut lines = Vec::with_capacity(dedup.len());
        for o in &dedup {
            let text = String::from_utf8_lossy(&o.data).trim_end().to_string();
            let seen = copies.get(&o.seq.0).map(Vec::as_slice).unwrap_or_default();
            let first = seen.first().map_or("?", |e| e.side);
            let again: Vec<String> = seen
                .iter()
                .skip(1)
                .map(|e| {
                    if e.possible_repeat {
                        format!("re-sent by the {} at go-live as a possible repeat", e.side)
                    } else {
                        format!("sent again by the {}", e.side)
                    }
                })
                .collect();
            let note = if again.is_empty() {
                String::new()
            } else {
                format!("   [{}: dropped]", again.join("; "))
            };
            println!("  #{:<3} {first:<8} {text}{note}", o.seq.0);
            lines.push(text);
        }

        // Verification.
        if !finished {
            return Err(format!(
                "the backup did not finish the guest in {MAX_STEPS} steps"
            ));
        }
        if let Some((_, side, e)) = pair.trace().errors.first() {
            return Err(format!("{} engine error: {e}", who(*side)));
        }
        if let Some((_, side, e)) = pair.trace().link_errors.first() {
            return Err(format!("{} link error: {e}", who(*side)));
        }
        let (Some(d), Some(l)) = (detected, live) else {
            return Err("the backup never declared the primary dead and went live".into());
        };
        if pair.backup.exit_code() != Some(0) {
            return Err(format!(
                "the guest did not end cleanly on the new primary: {:?}",
                pair.backup.exit_code()
            ));
        }
        let backup_world = pair.backup.world();
        let from_primary: Vec<_> = all.iter().filter(|e| e.side == "primary").collect();
        for e in &from_primary {
            let in_backup = backup_world
                .replayed_outputs()
                .iter()
                .chain(all.iter().filter(|x| x.side == "backup").map(|x| &x.output))
                .any(|o| *o == e.output);
            if !in_backup {
                return Err(format!(
                    "output #{} released by the primary is missing from the backup's stream",
                    e.output.seq.0
                ));
            }
        }
        check_rounds(&lines)?;

        let stats = pair.backup.stats();
        println!("\nsummary:");
        println!(
            "  detection      {:>8.3} ms after the kill (timeout {} ms)",
            ms(d.saturating_sub(killed)),
            ms(cfg.peer_timeout)
        );
        println!(
            "  go-live        {:>8.3} ms after detection",
            ms(l.saturating_sub(d))
        );
        match first_new {
            Some(e) => println!(
                "  time to failover (kill → first new output) {:.3} ms of virtual time",
                ms(e.at.saturating_sub(killed))
            ),
            None => println!(
                "  no new output after the failover: the old primary had released them all"
            ),
        }
        println!(
            "  backup: {} received, {} replayed, {} checked",
            plural(stats.records as usize, "record", "records"),
            stats.replayed,
            plural(stats.digests_checked as usize, "digest", "digests")
        );
        println!(
            "  outputs: {} seen by the outside world, {} after dropping {} by sequence number; {} released by the old primary, all in the backup's stream",
            all.len(),
            dedup.len(),
            plural(repeats, "repeat", "repeats"),
            from_primary.len()
        );
        println!(
            "  guest: rounds 0..{} each once and in order, then the tick count; exit code 0 on the new primary; {:.1} ms of host time",
            ROUNDS - 1,
            wall.elapsed().as_secs_f64() * 1e3
        );
        println!(
            "outputs verified consistent: exactly once after dedupe, no gap, no contradiction"
        );
        Ok(())
    }
}
