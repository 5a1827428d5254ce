//! Shared by the fuzz targets: a deterministic in-process pair driver (a primary and a
//! backup `Node` over ft-sim machines, records and acks moved by hand, no network),
//! seeded disk images, and a reference run whose log the backup targets mutate.
#![allow(dead_code)]

use std::collections::VecDeque;

use bytes::Bytes;
use ft_core::log_codec::{self, Frame};
use ft_core::{
    Ack, AsyncEvent, Config, EventSource, Nanos, Node, Notice, Output, Record, StepOutcome,
    Transmit,
};
use ft_sim::devices::id;
use ft_sim::machine::DiskMode;
use ft_sim::progen::{self, Params, Program};
use ft_sim::{Disk, Machine, MachineConfig, OutputSink, SimWorld, SimWorldConfig};

/// Disk size of every pair (progen's default `disk_sectors` of 128).
pub const DISK_SIZE: usize = 64 * 1024;

/// A deterministic pseudo-random disk image (xorshift64*).
pub fn disk_image(seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(DISK_SIZE);
    while out.len() < DISK_SIZE {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(DISK_SIZE);
    out
}

/// An engine configuration for a pair that never fails over: the failure detector
/// never fires, so every record must be replayed exactly.
pub fn engine_config(slice: u64, digest_interval: u64, max_batch: usize) -> Config {
    Config {
        slice: slice.max(1),
        digest_interval,
        heartbeat_interval: 1_000_000,
        peer_timeout: u64::MAX / 4,
        max_lag: 5_000_000,
        batch_delay: 100_000,
        max_batch: max_batch.max(1),
        ..Config::default()
    }
}

/// Everything a pair run is built from.
#[derive(Debug, Clone)]
pub struct PairSetup {
    /// Engine configuration of both sides.
    pub engine: Config,
    /// The machine both sides start from.
    pub machine: Machine,
    /// The initial disk image.
    pub disk: Vec<u8>,
    /// Seed of the primary's world (clock, RNG).
    pub world_seed: u64,
    /// Disk latency of the primary's world.
    pub disk_latency: Nanos,
    /// Asynchronous events put into the primary's world: (time, event).
    pub events: Vec<(Nanos, AsyncEvent)>,
    /// Virtual time per tick.
    pub tick: Nanos,
    /// Ticks a batch or an ack spends on the way.
    pub link_ticks: u64,
    /// The backup steps once every this many ticks.
    pub backup_every: u64,
    /// Send every batch and ack through the log codec (and check the round trip).
    pub through_codec: bool,
}

/// A finished (or abandoned) pair run.
pub struct PairRun {
    /// The primary.
    pub primary: Node<Machine, SimWorld>,
    /// The backup.
    pub backup: Node<Machine, SimWorld>,
    /// Every record the primary sent, in order.
    pub records: Vec<Record>,
    /// The shared output sink.
    pub sink: OutputSink,
    /// Ticks run.
    pub ticks: u64,
    /// Whether both guests ended, every output was released and the backup replayed up
    /// to the end.
    pub finished: bool,
}

impl PairRun {
    /// A one-line state description for panic messages.
    pub fn describe(&self) -> String {
        format!(
            "primary {:?} exit {:?} point {} last_seq {} held {} | backup {:?} exit {:?} point {} replayed {} buffered {} | ticks {}",
            self.primary.phase(),
            self.primary.exit_code(),
            self.primary.source().point(),
            self.primary.last_seq(),
            self.primary.held_outputs(),
            self.backup.phase(),
            self.backup.exit_code(),
            self.backup.source().point(),
            self.backup.replayed_seq(),
            self.backup.buffered_records(),
            self.ticks,
        )
    }

    /// Outputs the primary released, in order.
    pub fn primary_released(&self) -> Vec<Output> {
        self.sink
            .all()
            .into_iter()
            .filter(|e| e.side == "primary")
            .map(|e| e.output)
            .collect()
    }
}

fn shared(mode: DiskMode) -> bool {
    matches!(mode, DiskMode::Shared { .. })
}

/// Build the two nodes of `setup`.
pub fn build_pair(
    setup: &PairSetup,
) -> (Node<Machine, SimWorld>, Node<Machine, SimWorld>, OutputSink) {
    let sink = OutputSink::new();
    let disk = Disk::from_bytes(setup.disk.clone());
    let backup_disk = if shared(setup.machine.config().disk) {
        disk.clone()
    } else {
        disk.deep_copy()
    };
    let wcfg = SimWorldConfig {
        seed: setup.world_seed,
        disk_latency: setup.disk_latency,
        ..SimWorldConfig::default()
    };
    let mut pw = SimWorld::new("primary", wcfg.clone(), disk, sink.clone(), true);
    for (at, ev) in &setup.events {
        pw.schedule_event(*at, ev.clone());
    }
    let bw = SimWorld::new(
        "backup",
        SimWorldConfig {
            seed: setup.world_seed.wrapping_add(0x9e37_79b9),
            ..wcfg
        },
        backup_disk,
        sink.clone(),
        false,
    );
    let mut pcfg = setup.engine.clone();
    pcfg.node = ft_core::NodeId(1);
    let mut bcfg = setup.engine.clone();
    bcfg.node = ft_core::NodeId(2);
    (
        Node::primary(pcfg, setup.machine.clone(), pw, 0),
        Node::backup(bcfg, setup.machine.clone(), bw, 0),
        sink,
    )
}

fn codec_round_trip_records(batch: &[Record]) -> Vec<Record> {
    let mut buf = Vec::new();
    if let Err(e) = log_codec::encode_records(batch, &mut buf) {
        panic!("the primary produced a batch the codec cannot encode: {e}; batch {batch:?}");
    }
    match log_codec::decode_frame(&buf) {
        Ok(Frame::Records(r)) if r == batch => r,
        other => panic!("log codec round trip changed a batch: {batch:?} became {other:?}"),
    }
}

fn codec_round_trip_ack(ack: Ack) -> Ack {
    let mut buf = Vec::new();
    if let Err(e) = log_codec::encode_ack(&ack, &mut buf) {
        panic!("the backup produced an ack the codec cannot encode: {e}; {ack:?}");
    }
    match log_codec::decode_frame(&buf) {
        Ok(Frame::Ack(a)) if a == ack => a,
        other => panic!("log codec round trip changed an ack: {ack:?} became {other:?}"),
    }
}

/// Run a pair until both guests ended (and every output was released and the backup
/// replayed the end), or `max_ticks`. Any engine error, any divergence notice, any
/// transmit of the wrong kind and any arbiter request is a bug of the engine in an
/// honest in-process pair, and panics with a description.
pub fn run_pair(setup: &PairSetup, max_ticks: u64) -> PairRun {
    let (mut primary, mut backup, sink) = build_pair(setup);
    let mut records = Vec::new();
    let mut to_backup: VecDeque<(u64, Vec<Record>)> = VecDeque::new();
    let mut to_primary: VecDeque<(u64, Ack)> = VecDeque::new();
    let mut now: Nanos = 0;
    let mut ticks = 0u64;
    let tick = setup.tick.max(1);
    let every = setup.backup_every.max(1);
    let done = |p: &Node<Machine, SimWorld>, b: &Node<Machine, SimWorld>| {
        p.exit_code().is_some() && p.held_outputs() == 0 && b.exit_code().is_some()
    };
    while ticks < max_ticks && !done(&primary, &backup) {
        ticks += 1;
        now = now.saturating_add(tick);

        // Link, primary to backup: deliver due batches while the inbox has room.
        while let Some((at, batch)) = to_backup.front() {
            if *at > ticks || backup.inbox_space() < batch.len() {
                break;
            }
            let Some((_, batch)) = to_backup.pop_front() else {
                break;
            };
            if let Err(e) = backup.handle_records(batch, now) {
                panic!("backup refused the primary's records: {e}");
            }
        }
        // Link, backup to primary.
        while let Some((at, _)) = to_primary.front() {
            if *at > ticks {
                break;
            }
            let Some((_, ack)) = to_primary.pop_front() else {
                break;
            };
            if let Err(e) = primary.handle_ack(ack, now) {
                panic!("primary refused the backup's ack {ack:?}: {e}");
            }
        }

        let mut wake = None;
        match primary.step(now) {
            Ok(StepOutcome::Idle { wake_at }) => wake = wake_at,
            Ok(_) => {}
            Err(e) => panic!("primary step failed: {e}"),
        }
        while let Some(t) = primary.poll_transmit(now) {
            match t {
                Transmit::Records(batch) => {
                    let batch = if setup.through_codec {
                        codec_round_trip_records(&batch)
                    } else {
                        batch
                    };
                    records.extend(batch.iter().cloned());
                    to_backup.push_back((ticks + setup.link_ticks, batch));
                }
                Transmit::Ack(a) => panic!("the primary transmitted an ack: {a:?}"),
                Transmit::Clone(c) => panic!("the primary transmitted a clone message: {c:?}"),
            }
        }
        if ticks % every == 0 {
            if let Err(e) = backup.step(now) {
                panic!("REPLAY FAILED: backup step: {e}");
            }
        }
        while let Some(t) = backup.poll_transmit(now) {
            match t {
                Transmit::Ack(a) => {
                    let a = if setup.through_codec {
                        codec_round_trip_ack(a)
                    } else {
                        a
                    };
                    to_primary.push_back((ticks + setup.link_ticks, a));
                }
                Transmit::Records(r) => panic!("the backup transmitted records: {r:?}"),
                Transmit::Clone(c) => panic!("the backup transmitted a clone message: {c:?}"),
            }
        }
        if let Some(c) = primary.poll_command().or_else(|| backup.poll_command()) {
            panic!("arbiter request in a pair that never fails over: {c:?}");
        }
        for n in std::iter::from_fn(|| primary.poll_notice())
            .chain(std::iter::from_fn(|| backup.poll_notice()))
        {
            if let (_, Notice::Diverged(d)) = &n {
                panic!("REPLAY DIVERGENCE notice: {d}");
            }
        }
        // A runtime sleeps while the primary's guest is idle: jump to its deadline.
        if let Some(w) = wake {
            if w > now.saturating_add(tick) {
                now = w - tick;
            }
        }
    }
    let finished = done(&primary, &backup);
    PairRun {
        primary,
        backup,
        records,
        sink,
        ticks,
        finished,
    }
}

/// A reference run: a devices program (every device, DMA races) with a few
/// asynchronous events, recorded by a primary and replayed by a backup.
pub struct Reference {
    /// The setup it ran from.
    pub setup: PairSetup,
    /// The primary's log up to and including the guest's exit.
    pub records: Vec<Record>,
    /// The primary's final digest.
    pub digest: u64,
}

/// The reference run for `variant` (0: devices program, 1: instruction stream).
pub fn reference(variant: u8) -> Reference {
    let (seed, params) = match variant % 2 {
        0 => (
            0x00f7_f022_0001,
            Params {
                items: 24,
                ..Params::devices()
            },
        ),
        _ => (
            0x00f7_f022_0002,
            Params {
                items: 60,
                ..Params::stream()
            },
        ),
    };
    let prog: Program = progen::generate(seed, &params).unwrap();
    let machine = prog.machine(MachineConfig::default()).unwrap();
    let events = vec![
        (30_000, AsyncEvent::Interrupt { device: id::TIMER }),
        (
            70_000,
            AsyncEvent::DeviceInput {
                device: id::NET,
                data: Bytes::from_static(b"fuzz packet"),
            },
        ),
        (120_000, AsyncEvent::Interrupt { device: id::NET }),
    ];
    let setup = PairSetup {
        engine: engine_config(300, 500, 16),
        machine,
        disk: disk_image(seed),
        world_seed: seed,
        disk_latency: 50_000,
        events,
        tick: 10_000,
        link_ticks: 1,
        backup_every: 1,
        through_codec: true,
    };
    let mut run = run_pair(&setup, 200_000);
    assert!(
        run.finished,
        "reference run did not finish: {}",
        run.describe()
    );
    let halt = run
        .records
        .iter()
        .position(|r| matches!(r.event, ft_core::Event::Halt { .. }))
        .unwrap();
    let digest = run
        .primary
        .source_mut()
        .digest()
        .expect("the primary's digest");
    assert_eq!(Ok(digest), run.backup.source_mut().digest());
    Reference {
        setup,
        records: run.records[..=halt].to_vec(),
        digest,
    }
}
