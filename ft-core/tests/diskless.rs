//! An embedder's disk-less machine: a world whose go-live methods keep their defaults
//! (and whose I/O methods are never called) protects a guest through a failover, and
//! a machine that follows the documented contract (an input's value held until the
//! next `run`; an output that retires exactly on `until` reported as the output)
//! replays with every digest matching.

use std::sync::{Arc, Mutex};

use ft_core::driver::{Driver, DriverConfig, Immediate, VirtualWire, WireConfig};
use ft_core::{
    AsyncEvent, Bytes, Config, DeviceId, EventSource, ExecPoint, InProcessArbiter, InputRequest,
    IoRequest, Nanos, Node, NodeId, Output, Phase, RawOutput, SourceError, SourceResult, Stop,
    World,
};

/// Instruction `q` (running from point `q` to `q + 1`) reads a clock when
/// `q % 7 == 3`, and otherwise writes an output when it retires at a multiple of 5.
/// What it read is folded into `acc`, which every output carries.
#[derive(Debug, Default)]
struct Counter {
    point: u64,
    acc: u64,
    /// A read stalled at `point`, waiting for its value.
    waiting: bool,
    /// The value supplied for the stalled read, taken when it executes again.
    held: Option<u64>,
}

const CLOCK: InputRequest = InputRequest {
    device: DeviceId(1),
    offset: 0,
    size: 8,
};

impl EventSource for Counter {
    fn point(&self) -> ExecPoint {
        ExecPoint::at(self.point)
    }

    fn run(&mut self, until: ExecPoint) -> SourceResult<Stop> {
        if until.count < self.point {
            return Err(SourceError::Backwards {
                current: self.point(),
                target: until,
            });
        }
        while self.point < until.count {
            if self.point % 7 == 3 {
                match self.held.take() {
                    // The stalled read executes again and retires with its value.
                    Some(v) => {
                        self.acc = self.acc.wrapping_mul(31).wrapping_add(v);
                        self.point += 1;
                        continue;
                    }
                    None => {
                        self.waiting = true;
                        return Ok(Stop::Input(CLOCK));
                    }
                }
            }
            self.point += 1;
            if self.point.is_multiple_of(5) {
                // Also when `point == until`: the output is the stop.
                let mut data = self.point.to_le_bytes().to_vec();
                data.extend_from_slice(&self.acc.to_le_bytes());
                return Ok(Stop::Output(RawOutput {
                    device: DeviceId(0),
                    data: Bytes::from(data),
                }));
            }
        }
        Ok(Stop::Reached)
    }

    fn supply_input(&mut self, data: &[u8]) -> SourceResult<()> {
        if !self.waiting {
            return Err(SourceError::UnexpectedInput("no read is pending".into()));
        }
        let bytes: [u8; 8] = data
            .try_into()
            .map_err(|_| SourceError::UnexpectedInput(format!("{} bytes", data.len())))?;
        self.waiting = false;
        self.held = Some(u64::from_le_bytes(bytes));
        Ok(())
    }

    fn inject(&mut self, event: &AsyncEvent) -> SourceResult<()> {
        Err(SourceError::BadEvent(format!("{event:?}")))
    }

    fn digest(&mut self) -> SourceResult<u64> {
        Ok(ft_core::digest::digest_bytes(
            &[
                self.point,
                self.acc,
                u64::from(self.waiting),
                self.held.map_or(0, |v| v ^ 1 << 63),
            ]
            .map(u64::to_le_bytes)
            .concat(),
        ))
    }

    fn snapshot(&self) -> SourceResult<Vec<u8>> {
        Err(SourceError::Unsupported("snapshots"))
    }

    fn restore(&mut self, _: &[u8]) -> SourceResult<()> {
        Err(SourceError::Unsupported("snapshots"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    side: &'static str,
    output: Output,
    possible_repeat: bool,
}

/// The required methods only.
struct Console {
    side: &'static str,
    sink: Arc<Mutex<Vec<Sent>>>,
}

impl World for Console {
    fn input(&mut self, _: &InputRequest, now: Nanos) -> Bytes {
        Bytes::copy_from_slice(&now.to_le_bytes())
    }
    fn poll(&mut self, _: Nanos, _: &mut Vec<AsyncEvent>) {}
    fn next_deadline(&self) -> Option<Nanos> {
        None
    }
    fn emit(&mut self, output: &Output, possible_repeat: bool, _: Nanos) {
        if let Ok(mut s) = self.sink.lock() {
            s.push(Sent {
                side: self.side,
                output: output.clone(),
                possible_repeat,
            });
        }
    } // No disk: the machine never reports `Stop::IoStart`.
    fn start_io(&mut self, req: &IoRequest, _: Nanos) {
        unreachable!("no disk, yet I/O {:?}", req.id)
    }
    fn apply_private_write(&mut self, req: &IoRequest) {
        unreachable!("no disk, yet I/O {:?}", req.id)
    }
    fn read_local(&mut self, req: &IoRequest) -> Bytes {
        unreachable!("no disk, yet I/O {:?}", req.id)
    }
}

#[test]
fn a_diskless_world_with_the_go_live_defaults_survives_a_failover() {
    let sink = Arc::new(Mutex::new(Vec::new()));
    let world = |side| Console {
        side,
        sink: sink.clone(),
    };
    // Digests every 10 points: every one of them lands where an output retires.
    let cfg = |id| Config {
        node: NodeId(id),
        digest_interval: 10,
        ..Config::default()
    };
    Config::validate_pair(&cfg(1), &cfg(2)).unwrap();
    let mut primary = Node::primary(cfg(1), Counter::default(), world("primary"), 0);
    let mut backup = Node::backup(cfg(2), Counter::default(), world("backup"), 0);
    let mut wire = VirtualWire::new(WireConfig::default());
    let arbiter = InProcessArbiter::new();
    let (mut pa, mut ba) = (Immediate::new(&arbiter), Immediate::new(&arbiter));
    let mut pd = Driver::new(DriverConfig::default());
    let mut bd = Driver::new(DriverConfig::default());
    let crash_at: Nanos = 20_000_000;
    let mut now: Nanos = 0;
    while now < 400_000_000 {
        now += 100_000;
        if now < crash_at {
            pd.turn(&mut primary, &now, &mut wire.primary_end(now), &mut pa);
        }
        bd.turn(&mut backup, &now, &mut wire.backup_end(now), &mut ba);
    }
    assert!(pd.take_errors().is_empty());
    assert!(bd.take_errors().is_empty(), "{:?}", bd.take_errors());
    assert_eq!(*backup.phase(), Phase::Live, "the backup took over");
    assert!(
        backup.stats().digests_checked > 10,
        "digests at output points were compared: {:?}",
        backup.stats()
    );

    let sent = sink.lock().unwrap().clone();
    let by_primary = sent.iter().filter(|s| s.side == "primary").count();
    let after = sent
        .iter()
        .filter(|s| s.side == "backup" && !s.possible_repeat)
        .count();
    assert!(
        by_primary > 0,
        "the primary released outputs before it died"
    );
    assert!(
        after > 0,
        "the backup produced outputs of its own once live"
    );
    // What an exactly-once consumer sees: every sequence number once, in order, each
    // copy alike, each output's point the one its number says.
    let mut seen: std::collections::BTreeMap<u64, Output> = Default::default();
    for s in &sent {
        if let Some(prev) = seen.insert(s.output.seq.0, s.output.clone()) {
            assert_eq!(prev, s.output, "two copies of #{} differ", s.output.seq.0);
        }
    }
    // Outputs retire at the multiples of 5 whose instruction is not a read.
    let mut points = (1..).map(|k| k * 5).filter(|p: &u64| (p - 1) % 7 != 3);
    for (i, (seq, out)) in seen.iter().enumerate() {
        assert_eq!(*seq, i as u64, "no output is missing");
        let point = u64::from_le_bytes(out.data[..8].try_into().unwrap());
        assert_eq!(Some(point), points.next(), "output #{seq} at its point");
    }
}

#[test]
fn the_test_machine_follows_the_documented_contract() {
    let mut m = Counter::default();
    // Instruction 3 reads: the value is held, and the read retires on the next run.
    assert_eq!(m.run(ExecPoint::at(5)), Ok(Stop::Input(CLOCK)));
    assert_eq!(m.point(), ExecPoint::at(3));
    assert_eq!(
        m.run(ExecPoint::at(5)),
        Ok(Stop::Input(CLOCK)),
        "asked again"
    );
    m.supply_input(&9u64.to_le_bytes()).unwrap();
    assert_eq!(m.point(), ExecPoint::at(3), "the read has not retired yet");
    // The read retires, and instruction 4's output retires exactly on `until`.
    assert!(matches!(m.run(ExecPoint::at(5)), Ok(Stop::Output(_))));
    assert_eq!(m.point(), ExecPoint::at(5));
    assert_eq!(m.acc, 9);
    assert_eq!(m.run(ExecPoint::at(5)), Ok(Stop::Reached));
}
