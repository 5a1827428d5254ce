//! Snapshot decoding: `ft_core::snapshot_frame::decode` and the sim machine's
//! `EventSource::restore`, fed arbitrary bytes, genuine snapshots with fuzzer-chosen
//! byte flips, and genuine snapshots whose metadata the fuzzer edited and that were
//! then framed again with a valid checksum (so the bytes reach the metadata decoder and
//! the restored machine).
//!
//! Invariants: never a panic; every failure is a typed `SnapshotError` /
//! `SourceError`; and
//! * a frame that decodes re-encodes to the same bytes (the frame is exact);
//! * a refused snapshot leaves the machine untouched (same CPU, devices and RAM);
//! * a damaged genuine snapshot is refused whenever the damage is a burst of at most
//!   32 bits inside the header or inside the checksummed bytes (which CRC-32 always
//!   detects); any damage it accepts restores cleanly;
//! * a restored machine works: it digests, snapshots again (and that snapshot restores
//!   to the same digest), and runs a bounded number of instructions (at most 16,000)
//!   returning typed stops or errors.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use ft_core::snapshot_frame;
use ft_core::{AsyncEvent, EventSource, Stop};
use ft_sim::devices::id;
use ft_sim::{Machine, MachineConfig};
use libfuzzer_sys::fuzz_target;

/// The sim machine's snapshot magic and version (the first 12 bytes of any of its
/// snapshots).
const MAGIC: &[u8; 8] = b"FTSIMSNP";
const VERSION: u32 = 3;

struct Templates {
    /// Machines in several states: fresh, mid-run (I/O and timers in flight), ended;
    /// with 64 KiB of RAM (first) and with 1 MiB.
    machines: Vec<Machine>,
    snapshots: Vec<Vec<u8>>,
}

fn templates() -> &'static Templates {
    static T: OnceLock<Templates> = OnceLock::new();
    T.get_or_init(|| {
        let mut machines = Vec::new();
        for variant in 0..2 {
            let r = common::reference(variant);
            machines.push(r.setup.machine.clone());
            for ticks in [15, 60] {
                let run = common::run_pair(&r.setup, ticks);
                machines.push(run.primary.source().clone());
            }
            let run = common::run_pair(&r.setup, 200_000);
            machines.push(run.backup.source().clone());
        }
        let snapshots: Vec<Vec<u8>> = machines.iter().map(|m| m.snapshot().unwrap()).collect();
        // Small copies of every state (64 KiB of RAM: the first 64 KiB of the image),
        // 16 times cheaper to copy, check and hash, so the metadata decoder gets most
        // of the executions. `MachineConfig::ram_size` is the first field of the
        // metadata: 1 MiB and 64 KiB are both 3-byte postcard varints.
        let mut small_machines = Vec::new();
        let mut small_snapshots = Vec::new();
        for snap in &snapshots {
            let (meta, mem) = snapshot_frame::decode(snap, MAGIC, VERSION, "sim").unwrap();
            assert_eq!(meta[..3], [0x80, 0x80, 0x40], "RAM size is not 1 MiB first");
            let mut meta = meta.to_vec();
            meta[..3].copy_from_slice(&[0x80, 0x80, 0x04]);
            let small = snapshot_frame::encode(MAGIC, VERSION, &meta, &mem[..SMALL_RAM]);
            let mut m = Machine::from_raw(
                MachineConfig {
                    ram_size: SMALL_RAM,
                    ..MachineConfig::default()
                },
                &[],
            )
            .unwrap();
            m.restore(&small).unwrap();
            small_machines.push(m);
            small_snapshots.push(small);
        }
        small_machines.extend(machines);
        small_snapshots.extend(snapshots);
        Templates {
            machines: small_machines,
            snapshots: small_snapshots,
        }
    })
}

/// A template index: a small one seven times in eight.
fn pick(which: u8, n: usize) -> usize {
    let half = n / 2;
    if which & 7 != 7 {
        usize::from(which >> 3) % half
    } else {
        half + usize::from(which >> 3) % half
    }
}

/// RAM of the small templates.
const SMALL_RAM: usize = 64 * 1024;

#[derive(Arbitrary, Debug)]
enum Case {
    /// Raw bytes, as a snapshot.
    Raw(Vec<u8>),
    /// A genuine snapshot with bytes xored at fuzzer-chosen offsets.
    Flipped { which: u8, flips: Vec<(u32, u8)> },
    /// A genuine snapshot whose metadata was edited, framed again (valid checksum).
    Reframed {
        which: u8,
        edits: Vec<(u16, u8)>,
        truncate: Option<u16>,
        extra: Vec<u8>,
        memory: MemoryEdit,
    },
    /// A frame around fuzzer bytes as metadata and a genuine memory image.
    Built { which: u8, meta: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
enum MemoryEdit {
    Same,
    Truncate(u32),
    Empty,
    Poke(u32, u8),
}

/// A fingerprint of a machine's whole state: its `Debug` form (CPU, devices, flags and
/// RAM size) and its RAM. Cheaper than a digest under coverage instrumentation.
fn state(m: &Machine) -> (String, &[u8]) {
    (format!("{m:?}"), m.ram().as_slice())
}

/// Restore `bytes` into a clone of template `which`. Checks the refusal contract and
/// exercises a machine that took it. Returns whether it was accepted.
fn restore(which: usize, bytes: &[u8]) -> bool {
    let t = templates();
    let mut m = t.machines[which].clone();
    match m.restore(bytes) {
        Err(e) => {
            let _ = e.to_string();
            assert!(
                state(&m) == state(&t.machines[which]),
                "a refused snapshot changed the machine ({e})"
            );
            false
        }
        Ok(()) => {
            exercise(&mut m);
            true
        }
    }
}

/// A restored machine must digest, snapshot, restore its own snapshot to the same
/// state, and run with typed outcomes only.
fn exercise(m: &mut Machine) {
    let d = m
        .digest()
        .unwrap_or_else(|e| panic!("a restored machine cannot digest itself: {e}"));
    let snap = m
        .snapshot()
        .unwrap_or_else(|e| panic!("a restored machine cannot snapshot: {e}"));
    let mut again = templates().machines[0].clone();
    again
        .restore(&snap)
        .unwrap_or_else(|e| panic!("a restored machine's own snapshot is refused: {e}"));
    assert_eq!(
        again.digest(),
        Ok(d),
        "snapshot round trip changed the state"
    );
    assert_eq!(again.point(), m.point());

    let mut budget: u64 = 16_000;
    for _ in 0..64 {
        if budget == 0 {
            break;
        }
        let step = budget.min(4_000);
        let here = m.point();
        let res = m.run(here.plus(step));
        let ran = m.point().count.saturating_sub(here.count);
        assert!(ran <= step, "run went past its target ({ran} > {step})");
        budget = budget.saturating_sub(ran.max(1));
        match res {
            Err(e) => {
                let _ = e.to_string();
                break;
            }
            Ok(Stop::Reached) | Ok(Stop::Output(_)) => {}
            Ok(Stop::Input(req)) => {
                let v = vec![0x5a; usize::from(req.size)];
                if m.supply_input(&v).is_err() {
                    break;
                }
            }
            Ok(Stop::IoStart(req)) => {
                let data = (req.len <= 4096).then(|| Bytes::from(vec![0x3c; req.len as usize]));
                let _ = m.inject(&AsyncEvent::IoComplete {
                    io: req.id,
                    status: 0,
                    data,
                });
            }
            Ok(Stop::Idle) => {
                if m.inject(&AsyncEvent::Interrupt { device: id::TIMER })
                    .is_err()
                {
                    break;
                }
            }
            Ok(Stop::Halted(_)) => break,
        }
    }
    let _ = m.digest();
}

/// Whether the bytes that differ between `a` and `b` (same length; they can differ
/// only at the offsets `touched`) lie within 32 consecutive bits.
fn burst_within_32_bits(a: &[u8], b: &[u8], touched: &[usize]) -> bool {
    let mut diff: Vec<usize> = touched.iter().copied().filter(|&i| a[i] != b[i]).collect();
    diff.sort_unstable();
    let (Some(&first), Some(&last)) = (diff.first(), diff.last()) else {
        return true;
    };
    if first < 16 && last >= 16 {
        // Straddles the stored checksum and the checked bytes: no guarantee there.
        return false;
    }
    if last - first > 4 {
        return false;
    }
    // Bit span: from the lowest differing bit of the first byte to the highest of the
    // last (CRC-32 as crc32fast computes it is reflected: bit 0 comes first).
    let lo = (a[first] ^ b[first]).trailing_zeros() as usize;
    let hi = 7 - (a[last] ^ b[last]).leading_zeros() as usize;
    (last - first) * 8 + hi + 1 - lo <= 32
}

fn run(data: &[u8]) {
    let t = templates();
    let n = t.snapshots.len();
    // The frame itself, with the sim's magic and another one.
    for (magic, version) in [(MAGIC, VERSION), (b"OTHERSNP", 7)] {
        if let Ok((meta, mem)) = snapshot_frame::decode(data, magic, version, "fuzz") {
            assert_eq!(meta.len() + mem.len() + 32, data.len());
            assert_eq!(
                snapshot_frame::encode(magic, version, meta, mem),
                data,
                "a decoded frame does not re-encode to its bytes"
            );
        }
    }
    let mut u = Unstructured::new(data);
    let Ok(case) = Case::arbitrary(&mut u) else {
        return;
    };
    match case {
        Case::Raw(bytes) => {
            restore(0, &bytes);
        }
        Case::Flipped { which, flips } => {
            let which = pick(which, n);
            let orig = &t.snapshots[which];
            let mut bytes = orig.clone();
            let mut touched = Vec::new();
            for (off, x) in flips.into_iter().take(16) {
                let i = off as usize % bytes.len();
                bytes[i] ^= x;
                touched.push(i);
            }
            let changed = bytes != *orig;
            let accepted = restore(which, &bytes);
            if changed && burst_within_32_bits(orig, &bytes, &touched) {
                assert!(
                    !accepted,
                    "a snapshot damaged by a short burst was accepted"
                );
            }
            if !changed {
                assert!(accepted, "a genuine snapshot was refused");
            }
        }
        Case::Reframed {
            which,
            edits,
            truncate,
            extra,
            memory,
        } => {
            let which = pick(which, n);
            let Ok((meta, mem)) =
                snapshot_frame::decode(&t.snapshots[which], MAGIC, VERSION, "sim machine")
            else {
                panic!("a genuine snapshot does not decode");
            };
            let mut meta = meta.to_vec();
            for (off, x) in edits.into_iter().take(16) {
                if !meta.is_empty() {
                    let i = usize::from(off) % meta.len();
                    meta[i] ^= x;
                }
            }
            if let Some(k) = truncate {
                meta.truncate(usize::from(k));
            }
            meta.extend_from_slice(&extra);
            let mut mem = mem.to_vec();
            match memory {
                MemoryEdit::Same => {}
                MemoryEdit::Truncate(k) => mem.truncate(k as usize),
                MemoryEdit::Empty => mem.clear(),
                MemoryEdit::Poke(off, x) => {
                    if !mem.is_empty() {
                        let i = off as usize % mem.len();
                        mem[i] ^= x;
                    }
                }
            }
            restore(which, &snapshot_frame::encode(MAGIC, VERSION, &meta, &mem));
        }
        Case::Built { which, meta } => {
            let which = pick(which, n);
            let Ok((_, mem)) =
                snapshot_frame::decode(&t.snapshots[which], MAGIC, VERSION, "sim machine")
            else {
                panic!("a genuine snapshot does not decode");
            };
            restore(which, &snapshot_frame::encode(MAGIC, VERSION, &meta, mem));
        }
    }
}

fuzz_target!(|data: &[u8]| run(data));
