//! # redundancy: a protected VM through five failures, a new backup cloned each time
//!
//! The sim service guest (it answers requests with a counter) runs as a protected pair
//! in ft-sim's deterministic simulation, under a client's steady requests. Five times
//! in a row a member dies (the primary or the backup, chosen by the seed); the
//! survivor goes on alone, and a new backup is made from it by live clone while it
//! keeps serving: pre-copy rounds, a brief final pause, then the new backup replays
//! from the clone point. The demo prints a timeline of every failure and clone and
//! checks what the client saw: every answer exactly once after dropping repeats, and
//! the counter continuous through every failure. The client does not resend, so the
//! requests that reached a member as it died go unanswered.
//!
//! Run: `cargo run --release --example redundancy [-- --seed N]`

use bytes::Bytes;
use ft_core::{CloneConfig, Nanos, NodeId, Notice};
use ft_sim::devices::id;
use ft_sim::guests::{self, parse_reply};
use ft_sim::{ChainSim, Machine, MachineConfig, PairConfig};
use rand::{Rng, SeedableRng};

const FAILURES: usize = 5;

fn ms(n: Nanos) -> f64 {
    n as f64 / 1e6
}

fn main() {
    if let Err(e) = run() {
        eprintln!("redundancy demo FAILED: {e}");
        std::process::exit(1);
    }
}

fn seed_arg() -> Result<u64, String> {
    let mut args = std::env::args().skip(1);
    let mut seed = 7;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seed" => {
                let v = args.next().ok_or("--seed needs a number")?;
                seed = v
                    .parse()
                    .map_err(|_| format!("--seed: not a number: {v}"))?;
            }
            "--help" | "-h" => {
                println!("usage: redundancy [--seed N]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other} (try --help)")),
        }
    }
    Ok(seed)
}

/// Tick `sim` with a request every `gap` until `done` or `max` ticks.
fn serve(
    sim: &mut ChainSim,
    sent: &mut u64,
    gap: Nanos,
    max: u64,
    done: impl Fn(&ChainSim) -> bool,
) -> Result<(), String> {
    for _ in 0..max {
        if done(sim) {
            return Ok(());
        }
        if sim.now() / gap != (sim.now() + sim.config().tick) / gap {
            sim.send_packet(0, Bytes::from(format!("req-{sent}")));
            *sent += 1;
        }
        sim.tick();
    }
    if done(sim) {
        Ok(())
    } else {
        Err(format!(
            "nothing happened for {max} ticks at {:.1} ms",
            ms(sim.now())
        ))
    }
}

fn run() -> Result<(), String> {
    let seed = seed_arg()?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let img = guests::service().map_err(|e| e.to_string())?;
    let machine = Machine::from_raw(MachineConfig::default(), &img).map_err(|e| e.to_string())?;
    let cfg = PairConfig {
        seed,
        ..PairConfig::default()
    };
    let mut sim = ChainSim::pair(cfg, CloneConfig::default(), machine);
    let gap = 500_000;
    let mut sent = 0u64;
    let (mut primary, mut backup) = (NodeId(1), NodeId(2));
    println!("seed {seed}: vm 1 runs on m1 (primary) and m2 (backup)");
    for round in 1..=FAILURES {
        let until = sim.now() + rng.gen_range(5_000_000..20_000_000);
        serve(&mut sim, &mut sent, gap, 1_000_000, |s| s.now() >= until)?;
        let victim = if rng.gen_bool(0.5) { primary } else { backup };
        let name = |id: NodeId| format!("m{}", id.0);
        println!(
            "{:>9.3} ms  failure {round}: {} ({}) KILLED",
            ms(sim.now()),
            name(victim),
            if victim == primary {
                "primary"
            } else {
                "backup"
            }
        );
        sim.crash(victim).map_err(|e| e.to_string())?;
        serve(&mut sim, &mut sent, gap, 1_000_000, |s| {
            s.live_members().len() == 1 && s.running().len() == 1
        })?;
        let survivor = sim.live_members()[0];
        println!(
            "{:>9.3} ms  {} is live alone",
            ms(sim.now()),
            name(survivor)
        );
        let target = sim.start_clone(survivor).map_err(|e| e.to_string())?;
        let mark = sim.trace().notices.len();
        serve(&mut sim, &mut sent, gap, 1_000_000, |s| {
            s.trace().notices[mark..]
                .iter()
                .any(|(_, _, n)| matches!(n, Notice::CloneComplete { .. }))
        })?;
        for (t, id, n) in &sim.trace().notices[mark..] {
            if matches!(
                n,
                Notice::ClonePaused { .. }
                    | Notice::CloneReceived { .. }
                    | Notice::CloneComplete { .. }
            ) {
                println!("{:>9.3} ms  {}: {n}", ms(*t), name(*id));
            }
        }
        primary = survivor;
        backup = target;
    }
    let until = sim.now() + 10_000_000;
    serve(&mut sim, &mut sent, gap, 1_000_000, |s| s.now() >= until)?;
    // Let the last requests be answered.
    let end = sim.now() + 20_000_000;
    while sim.now() < end {
        sim.tick();
    }
    let outputs = sim.sink().deduplicated()?;
    let counters: Vec<u64> = outputs
        .iter()
        .filter(|o| o.device == id::NET)
        .filter_map(|o| parse_reply(&o.data).map(|r| r.counter))
        .collect();
    if let Some((i, c)) = counters
        .iter()
        .enumerate()
        .find(|(i, c)| **c != *i as u64 + 1)
    {
        return Err(format!("the counter jumps at reply {i}: {c}"));
    }
    if sim.trace().max_live > 1 {
        return Err("two members were live at once".into());
    }
    println!(
        "OK: {FAILURES} failures, {} members in all; {} requests sent, {} answered (this client does not resend: requests that reached a member as it died are lost), counter 1..{} continuous; never two live members",
        sim.members().len(),
        sent,
        counters.len(),
        counters.len()
    );
    Ok(())
}
