//! Failover of a real x86-64 guest on KVM.
//!
//! Two KVM VMs in this process run the same guest (a tiny CPL0 kernel and a CPL3
//! service built with iced-x86): the primary is recorded through ft's engine, the
//! backup replays its log. Midway the primary's side is killed; the backup drains the
//! log, wins the arbiter, goes live, and the guest finishes there. The timeline and the
//! outputs (deduplicated by sequence number) are printed.
//!
//! Run: `cargo run --release --example kvm_failover` (needs `/dev/kvm`).

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn main() {
    if let Err(e) = demo::run() {
        eprintln!("kvm_failover: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn main() {
    println!("kvm_failover needs Linux on x86-64 with /dev/kvm");
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod demo {
    use ft_core::{Config, EventSource, Node, NodeId, Notice};
    use ft_kvm::machine::{KvmMachine, MachineConfig};
    use ft_kvm::pair::{LocalPair, Side};
    use ft_sim::world::{Disk, OutputSink, SimWorld, SimWorldConfig};

    const TICK: u64 = 20_000;

    fn ms(t: u64) -> String {
        format!("{:>8.3} ms", t as f64 / 1e6)
    }

    pub fn run() -> Result<(), String> {
        if ft_kvm::probe().is_err() {
            println!("kvm_failover: no usable /dev/kvm on this host; nothing to show");
            return Ok(());
        }
        let rounds = 10;
        let workload = ft_kvm::guest::service_workload(rounds).map_err(|e| e.to_string())?;
        let mcfg = MachineConfig::default();
        let pm = KvmMachine::with_workload(mcfg, workload.clone()).map_err(|e| e.to_string())?;
        let bm = KvmMachine::with_workload(mcfg, workload).map_err(|e| e.to_string())?;
        let sink = OutputSink::new();
        let disk = Disk::new(64 * 1024);
        let wcfg = SimWorldConfig::default();
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
        let mut bcfg = cfg.clone();
        bcfg.node = NodeId(2);
        let mut pair = LocalPair::new(
            Node::primary(cfg, pm, pw, 0),
            Node::backup(bcfg, bm, bw, 0),
            TICK,
        );
        println!("ft kvm_failover: a KVM guest replicated across two VMs in one process");
        println!(
            "  points are deterministic exits (MMIO/PIO/HLT); time is virtual, {TICK} ns per step"
        );
        let wall = std::time::Instant::now();
        let half = 1 + 2 * (rounds as usize / 2);
        pair.run_until(1_000_000, |_| {
            sink.all().iter().filter(|e| e.side == "primary").count() >= half
        });
        println!(
            "{}  primary at {}, backup replayed to {}, {} records sent; killing the primary",
            ms(pair.now()),
            pair.primary.source().point(),
            pair.backup.source().point(),
            pair.trace().records.len()
        );
        pair.crash_primary();
        let ok = pair.run_until(1_000_000, |p| {
            p.backup.exit_code().is_some() || !p.trace().errors.is_empty()
        });
        let mut notices = pair.trace().notices.clone();
        notices.sort_by_key(|(t, _, _)| *t);
        println!("timeline:");
        for (t, side, n) in &notices {
            let who = match side {
                Side::Primary => "primary",
                Side::Backup => "backup ",
            };
            println!("{}  {who}  {n:?}", ms(*t));
        }
        for (t, side, e) in &pair.trace().errors {
            println!("{}  {side:?} ERROR {e}", ms(*t));
        }
        let outs = sink.deduplicated()?;
        println!("outputs after dedupe ({}):", outs.len());
        for e in sink.all() {
            println!(
                "  #{:<3} {:<8}{} {}",
                e.output.seq.0,
                e.side,
                if e.possible_repeat {
                    " (possible repeat)"
                } else {
                    ""
                },
                String::from_utf8_lossy(&e.output.data).trim_end()
            );
        }
        let went_live = notices
            .iter()
            .any(|(_, s, n)| *s == Side::Backup && matches!(n, Notice::WentLive { .. }));
        println!(
            "guest exit code on the backup: {:?}; went live: {went_live}; {:.1} ms of host time",
            pair.backup.exit_code(),
            wall.elapsed().as_secs_f64() * 1e3
        );
        if !ok || !went_live || pair.backup.exit_code() != Some(0) {
            return Err("the backup did not finish the guest".into());
        }
        Ok(())
    }
}
