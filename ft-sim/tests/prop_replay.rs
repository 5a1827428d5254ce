//! Replay equivalence of random programs under random asynchronous schedules, the DMA
//! race, and determinism of the whole simulation (same seed, same log).
//!
//! Rerun one case: `FT_SEED=<seed> cargo test -p ft-sim --release --test prop_replay
//! replay_seed -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod prop_support;

use bytes::Bytes;
use ft_core::{AsyncEvent, Event, EventSource, IoId, Nanos};
use ft_sim::asm::{Assembler, T0, T1, T2, T3, T4, ZERO};
use ft_sim::cpu::csr;
use ft_sim::devices::{blk_status, map, reg, BLK_CMD_READ};
use ft_sim::memory::RAM_BASE;
use ft_sim::progen::{Family, Params};
use ft_sim::{Disk, Machine, MachineConfig, PairSim};
use prop_support::*;
use proptest::prelude::*;
use rand::Rng;

/// Generate, run to the end and check one case.
fn equivalence_case(seed: u64, family: Family) {
    let params = random_params(seed, family);
    let mut rng = case_rng(seed ^ 1);
    let n_events = rng.gen_range(0..=60);
    let horizon: Nanos = rng.gen_range(200_000..=4_000_000);
    let mut case = build_case(seed, &params, n_events, horizon, |_| {});
    let ok = run_to_end(&mut case.sim, 400_000);
    assert!(
        ok,
        "seed {seed:#x} ({family:?}): did not finish: {}",
        describe(&case.sim)
    );
    check_equivalence(&mut case);
}

/// Random instruction streams (traps, U-mode, loops, interrupts) replay exactly. A
/// failure's minimal input is the case seed: `FT_SEED=<seed>` with `replay_seed`
/// reruns it alone.
#[test]
fn replay_equivalence_stream() {
    check_prop(400, 0xf7_0001, any::<u64>(), |seed| {
        equivalence_case(seed, Family::Stream);
        Ok(())
    });
}

/// Structured device programs (every device, DMA races) replay exactly.
#[test]
fn replay_equivalence_devices() {
    check_prop(400, 0xf7_0002, any::<u64>(), |seed| {
        equivalence_case(seed, Family::Devices);
        Ok(())
    });
}

/// Rerun one seed from `FT_SEED` in both families (a fixed seed without it).
#[test]
fn replay_seed() {
    let seed = env_seed().unwrap_or(0x1234_5678);
    equivalence_case(seed, Family::Stream);
    equivalence_case(seed, Family::Devices);
}

const OLD: i64 = 0x0bad_0bad_0bad_0bad;
const LOG: u64 = RAM_BASE + 0x9_0000;

/// A guest that starts a block read into a buffer holding `OLD` and polls the
/// buffer's first word with interrupts off, recording at each poll the retired
/// instruction count: it logs (last count that saw `OLD`, first count that saw
/// something else, the new value).
fn dma_poller(sector: u64) -> Vec<u8> {
    let buf = RAM_BASE + 0x8_0000;
    let mut a = Assembler::with_base(RAM_BASE);
    a.li(T0, OLD);
    a.li(T1, buf as i64);
    a.sd(T0, T1, 0);
    a.li(T2, map::BLOCK as i64);
    a.li(T0, sector as i64);
    a.sd(T0, T2, reg::BLK_SECTOR as i64);
    a.sd(T1, T2, reg::BLK_DMA as i64);
    a.li(T0, 1);
    a.sd(T0, T2, reg::BLK_COUNT as i64);
    a.li(T0, BLK_CMD_READ as i64);
    a.sd(T0, T2, reg::BLK_CMD as i64);
    a.li(T4, OLD);
    a.li(T2, -1); // no poll saw OLD yet
    let poll = a.here();
    let changed = a.label();
    a.csrr(T3, csr::MINSTRET); // T3 = k; the load below executes at point k + 1
    a.ld(T0, T1, 0);
    a.bne(T0, T4, changed);
    a.mv(T2, T3); // last k that saw OLD
    a.j(poll);
    a.bind(changed);
    a.li(T1, LOG as i64);
    a.sd(T2, T1, 0);
    a.sd(T3, T1, 8);
    a.sd(T0, T1, 16);
    // Wait for the status to say done (it must already), then exit.
    a.li(T2, map::BLOCK as i64);
    a.ld(T0, T2, reg::BLK_STATUS as i64);
    a.sd(T0, T1, 24);
    a.li(T1, map::EXIT as i64);
    a.sd(ZERO, T1, 0);
    a.finish().unwrap()
}

/// The DMA race: the guest polls the buffer while the read is in flight. It must see
/// the old contents up to the logged completion point and the new ones from there on,
/// identically on the backup.
#[test]
fn dma_race_is_bracketed_by_the_logged_completion_point() {
    for seed in seeds(0xd1a, 60) {
        let mut rng = case_rng(seed);
        let mut cfg = random_config(&mut rng, seed);
        cfg.engine.slice = rng.gen_range(30..=500);
        // The read takes a few ticks: the guest is polling when it lands.
        cfg.world.disk_latency = cfg.tick * rng.gen_range(2..=20) + rng.gen_range(0..cfg.tick);
        let sector = rng.gen_range(0..16u64);
        let mut disk = vec![0u8; cfg.disk_size];
        rng.fill(&mut disk[..]);
        let new = u64::from_le_bytes(
            disk[(sector * 512) as usize..(sector * 512 + 8) as usize]
                .try_into()
                .unwrap(),
        );
        let m = Machine::from_raw(MachineConfig::default(), &dma_poller(sector)).unwrap();
        let mut sim = PairSim::with_disk(cfg, m, Disk::from_bytes(disk));
        assert!(
            run_to_end(&mut sim, 200_000),
            "seed {seed:#x}: {}",
            describe(&sim)
        );
        assert!(
            sim.errors().is_empty(),
            "seed {seed:#x}: {:?}",
            sim.errors()
        );
        let completion = sim
            .trace()
            .records
            .iter()
            .find_map(|r| match &r.event {
                Event::Async(AsyncEvent::IoComplete {
                    io: IoId(0), data, ..
                }) => {
                    assert!(data.is_some(), "seed {seed:#x}: read data not logged");
                    Some(r.point.count)
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("seed {seed:#x}: no completion record"));
        let words = |ram: &[u8]| -> Vec<u64> {
            let off = (LOG - RAM_BASE) as usize;
            (0..4)
                .map(|i| u64::from_le_bytes(ram[off + 8 * i..off + 8 * i + 8].try_into().unwrap()))
                .collect()
        };
        let p = words(sim.primary.source().ram().as_slice());
        let b = words(sim.backup.source().ram().as_slice());
        assert_eq!(p, b, "seed {seed:#x}: the backup saw the DMA differently");
        let (last_old, first_new, value, status) = (p[0], p[1], p[2], p[3]);
        assert_eq!(value, new, "seed {seed:#x}: wrong data");
        assert_eq!(status, blk_status::DONE, "seed {seed:#x}: status");
        assert_ne!(
            last_old,
            u64::MAX,
            "seed {seed:#x}: the read completed before the first poll"
        );
        assert!(
            last_old + 1 < completion && completion <= first_new + 1,
            "seed {seed:#x}: loads at {} (old) and {} (new), completion logged at {completion}",
            last_old + 1,
            first_new + 1
        );
        assert_eq!(
            sim.primary.source_mut().digest(),
            sim.backup.source_mut().digest(),
            "seed {seed:#x}"
        );
    }
}

fn run_devices(seed: u64, world_seed: u64) -> (Vec<ft_core::Record>, Vec<ft_sim::world::Emitted>) {
    let params = Params {
        items: 40,
        ..Params::devices()
    };
    let mut case = build_case(seed, &params, 20, 2_000_000, |c| c.world.seed = world_seed);
    assert!(
        run_to_end(&mut case.sim, 400_000),
        "seed {seed:#x}: {}",
        describe(&case.sim)
    );
    (case.sim.trace().records.clone(), case.sim.sink().all())
}

/// The same seed gives the same log and the same outputs, bit for bit; another world
/// seed (other RNG values) gives another log.
#[test]
fn same_seed_same_log_other_seed_other_log() {
    for seed in seeds(0x5a3e, 12) {
        // A devices program that reads the RNG.
        let mut s = seed;
        while ft_sim::progen::generate(
            s,
            &Params {
                items: 40,
                ..Params::devices()
            },
        )
        .unwrap()
        .features
        .rng_reads
            == 0
        {
            s = s.wrapping_add(1);
        }
        let (log1, out1) = run_devices(s, 1);
        let (log2, out2) = run_devices(s, 1);
        assert!(!log1.is_empty(), "seed {s:#x}");
        assert_eq!(log1, log2, "seed {s:#x}: same seed, different logs");
        assert_eq!(out1, out2, "seed {s:#x}: same seed, different outputs");
        let (log3, _) = run_devices(s, 2);
        assert_ne!(
            log1, log3,
            "seed {s:#x}: another RNG seed gave the same log"
        );
        let rng_values = |log: &[ft_core::Record]| -> Vec<Bytes> {
            log.iter()
                .filter_map(|r| match &r.event {
                    Event::Input { device, data } if *device == ft_sim::devices::id::RNG => {
                        Some(data.clone())
                    }
                    _ => None,
                })
                .collect()
        };
        assert!(
            !rng_values(&log1).is_empty(),
            "seed {s:#x}: no RNG input logged"
        );
        assert_ne!(rng_values(&log1), rng_values(&log3), "seed {s:#x}");
    }
}

#[test]
fn generated_programs_differ_by_seed() {
    let a = ft_sim::progen::generate(1, &Params::stream()).unwrap();
    let b = ft_sim::progen::generate(2, &Params::stream()).unwrap();
    assert_ne!(a.image, b.image);
}
