//! Live clone over the authenticated TCP link, each node on its own thread with a real
//! clock, driven by the same loop as production ([`ft_transport::run`]): a guest that
//! ran alone is cloned into a fresh machine while it keeps writing memory, the clone
//! replays it and takes over when the primary dies; a clone the receiver refuses, or
//! whose receiver dies half-way, leaves the primary running alone and able to clone
//! again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use ft_core::driver::{Link, NoLink};
use ft_core::log_codec::Frame;
use ft_core::{
    Arbiter, ChannelError, CloneConfig, Config, EventSource, HaltReason, InProcessArbiter, Nanos,
    Node, NodeId, Notice, PairId, Phase, Transmit,
};
use ft_sim::guests::{self, DIRTY_BASE};
use ft_sim::{Disk, Machine, MachineConfig, OutputSink, SimWorld, SimWorldConfig};
use ft_transport::tcp::{PreSharedKey, PrimaryListener, TcpConfig, TcpLink};
use ft_transport::{
    nanos_since, run, BackupEnd, Control, Exit, PrimaryEnd, RunReport, RuntimeConfig,
};

const VM: u64 = 7;
const PATIENCE: Duration = Duration::from_secs(20);

type Report<L> = RunReport<Machine, SimWorld, L>;
type Log = (Nanos, NodeId, Notice);

/// A dirtier guest on `ram_mib` MiB of RAM, writing `ws_pages` pages per pass.
fn dirtier(ram_mib: usize, ws_pages: u64) -> Machine {
    let img = guests::dirtier(ws_pages * 4096, 0, 2_000).unwrap();
    let cfg = MachineConfig {
        ram_size: ram_mib << 20,
        ..MachineConfig::default()
    };
    assert!(DIRTY_BASE + ws_pages * 4096 <= ft_sim::memory::RAM_BASE + (ram_mib << 20) as u64);
    Machine::from_raw(cfg, &img).unwrap()
}

fn pair(generation: u64) -> PairId {
    PairId { vm: VM, generation }
}

fn engine(node: u64, generation: u64) -> Config {
    Config {
        pair: pair(generation),
        node: NodeId(node),
        heartbeat_interval: 5_000_000,
        // Generous: a loaded CI machine must not fail a peer that is only slow.
        peer_timeout: 500_000_000,
        ..Config::default()
    }
}

fn tcp(node: u64, generation: u64, image: u64) -> TcpConfig {
    let mut c = TcpConfig::new(
        PreSharedKey::new([0x5c; 32]).unwrap(),
        pair(generation),
        NodeId(node),
    );
    c.image = image;
    c.log = false;
    c
}

/// What the nodes share: one arbiter, one disk, one outside world, one clock.
struct Env {
    epoch: Instant,
    arbiter: Arc<dyn Arbiter>,
    disk: Disk,
    sink: OutputSink,
    notices: Sender<Log>,
    heard: Receiver<Log>,
    log: Vec<Log>,
}

impl Env {
    fn new() -> Env {
        let (notices, heard) = crossbeam_channel::unbounded();
        Env {
            epoch: Instant::now(),
            arbiter: Arc::new(InProcessArbiter::new()),
            disk: Disk::new(64 << 10),
            sink: OutputSink::new(),
            notices,
            heard,
            log: Vec::new(),
        }
    }

    fn now(&self) -> Nanos {
        nanos_since(self.epoch)
    }

    fn world(&self, name: &'static str, live: bool) -> SimWorld {
        SimWorld::new(
            name,
            SimWorldConfig {
                seed: 0x7c9,
                ..SimWorldConfig::default()
            },
            self.disk.clone(),
            self.sink.clone(),
            live,
        )
    }

    /// Run `node` over `link` on a thread of its own.
    fn spawn<L: Link + Send + 'static>(
        &self,
        node: Node<Machine, SimWorld>,
        link: L,
    ) -> (Control, JoinHandle<Report<L>>) {
        let control = Control::new();
        let (c, arbiter, epoch, tx) = (
            control.clone(),
            self.arbiter.clone(),
            self.epoch,
            self.notices.clone(),
        );
        let id = node.config().node;
        let h = thread::spawn(move || {
            run(
                node,
                link,
                arbiter,
                epoch,
                RuntimeConfig::default(),
                c,
                move |t, n| {
                    let _ = tx.send((t, id, n.clone()));
                },
            )
        });
        (control, h)
    }

    /// Wait until a notice of `id` satisfies `f`; false after `within`.
    fn wait_for(&mut self, id: NodeId, within: Duration, f: impl Fn(&Notice) -> bool) -> bool {
        if self.log.iter().any(|(_, i, n)| *i == id && f(n)) {
            return true;
        }
        let deadline = Instant::now() + within;
        while let Ok(entry) = self.heard.recv_deadline(deadline) {
            let hit = entry.1 == id && f(&entry.2);
            self.log.push(entry);
            if hit {
                return true;
            }
        }
        false
    }

    /// [`Env::wait_for`], or fail with everything heard so far.
    fn expect(&mut self, id: NodeId, what: &str, f: impl Fn(&Notice) -> bool) {
        assert!(
            self.wait_for(id, PATIENCE, f),
            "node {} never said {what}: {:?}",
            id.0,
            self.log
        );
    }

    fn drain(&mut self) {
        self.log.extend(self.heard.try_iter());
    }

    fn notices(&self, id: NodeId) -> Vec<&Notice> {
        self.log
            .iter()
            .filter(|(_, i, _)| *i == id)
            .map(|(_, _, n)| n)
            .collect()
    }

    /// Wait until the guest printed `more` lines beyond what it has now.
    fn wait_outputs(&self, more: usize) {
        let want = self.sink.all().len() + more;
        let deadline = Instant::now() + PATIENCE;
        while self.sink.all().len() < want {
            assert!(Instant::now() < deadline, "the guest stopped printing");
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// The console lines the outside world saw, deduplicated: none missing, none
    /// repeated, none contradicting another. Returns how many.
    fn check_letters(&self) -> usize {
        guests::check_dirtier_letters(&self.sink.deduplicated().unwrap()).unwrap()
    }
}

fn stop<L>(control: &Control, h: JoinHandle<Report<L>>) -> Report<L> {
    control.stop();
    h.join().expect("node thread panicked")
}

/// Node 1 runs the guest alone, unprotected, in generation 1, until it printed
/// `lines` lines; then it is stopped, to be cloned.
fn ran_alone(env: &Env, machine: Machine, lines: usize) -> Report<NoLink> {
    let node = Node::unprotected(engine(1, 1), machine, env.world("n1", true), env.now());
    let (c, h) = env.spawn(node, NoLink);
    env.wait_outputs(lines);
    let alone = stop(&c, h);
    assert_eq!(alone.exit, Exit::Stopped);
    alone
}

/// Stop the lone runner, listen, connect a clone target with `target_machine` (as node
/// `target` in `generation`), and start the clone. Returns both running nodes.
#[allow(clippy::type_complexity)]
fn clone_over_tcp(
    env: &Env,
    alone: Report<impl Sized>,
    target: u64,
    generation: u64,
    target_machine: Machine,
    clone_cfg: CloneConfig,
) -> (
    (Control, JoinHandle<Report<PrimaryEnd<TcpLink>>>),
    (Control, JoinHandle<Report<BackupEnd<TcpLink>>>),
) {
    clone_over_tcp_with(
        env,
        alone,
        target,
        generation,
        target_machine,
        clone_cfg,
        |l| l,
    )
}

/// [`clone_over_tcp`], with the target's link wrapped by `wrap`.
#[allow(clippy::type_complexity)]
fn clone_over_tcp_with<L: Link + Send + 'static>(
    env: &Env,
    alone: Report<impl Sized>,
    target: u64,
    generation: u64,
    target_machine: Machine,
    clone_cfg: CloneConfig,
    wrap: impl FnOnce(BackupEnd<TcpLink>) -> L,
) -> (
    (Control, JoinHandle<Report<PrimaryEnd<TcpLink>>>),
    (Control, JoinHandle<Report<L>>),
) {
    let mut node = alone.node;
    assert!(node.is_live(), "{:?}", node.phase());
    let image = 0xfeed;
    let mut listener =
        PrimaryListener::bind("127.0.0.1:0", tcp(node.config().node.0, generation, image)).unwrap();
    let addr = listener.local_addr();
    let tcfg = tcp(target, generation, image);
    let dial = thread::spawn(move || TcpLink::connect(addr, tcfg, PATIENCE).unwrap());
    let plink = listener.accept(Some(PATIENCE)).unwrap();
    let blink = dial.join().unwrap();
    let tnode = Node::clone_target(
        engine(target, generation),
        target_machine,
        env.world("target", false),
        env.now(),
    );
    node.start_clone(pair(generation), clone_cfg, env.now())
        .unwrap();
    let b = env.spawn(tnode, wrap(BackupEnd::new(blink)));
    let p = env.spawn(node, PrimaryEnd::new(plink));
    (p, b)
}

/// A link that delivers `left` frames, then nothing more (a process that hung).
struct Hang<L> {
    inner: L,
    left: usize,
    tripped: Arc<AtomicBool>,
}

impl<L: Link> Link for Hang<L> {
    fn send(&mut self, item: &Transmit) -> Result<(), ChannelError> {
        if self.left == 0 {
            return Ok(());
        }
        self.inner.send(item)
    }

    fn recv(&mut self) -> Result<Option<Frame>, ChannelError> {
        if self.left == 0 {
            self.tripped.store(true, Ordering::SeqCst);
            return Ok(None);
        }
        let f = self.inner.recv()?;
        if f.is_some() {
            self.left -= 1;
        }
        Ok(f)
    }
}

#[test]
fn a_running_guest_is_cloned_over_tcp_and_its_clone_takes_over() {
    let mut env = Env::new();
    let machine = dirtier(16, 256);
    let alone = ran_alone(&env, machine.clone(), 20);
    let stopped_at = alone.node.source().point().count;

    // Two pages a message: the first round alone is 2048 messages, more than the
    // link's send queue holds (none of them is ever acknowledged like records are).
    let clone_cfg = CloneConfig {
        chunk_pages: 2,
        converge_pages: 16,
        max_rounds: 8,
        ..CloneConfig::default()
    };
    let ((pc, ph), (bc, bh)) = clone_over_tcp(&env, alone, 2, 2, machine, clone_cfg);
    env.expect(NodeId(1), "CloneComplete", |n| {
        matches!(n, Notice::CloneComplete { .. })
    });
    env.drain();
    let (point, digest, rounds, pages) = env
        .notices(NodeId(1))
        .iter()
        .find_map(|n| match n {
            Notice::ClonePaused {
                point,
                digest,
                rounds,
                pages,
                pair: p,
                ..
            } => {
                assert_eq!(*p, pair(2));
                Some((*point, *digest, *rounds, *pages))
            }
            _ => None,
        })
        .expect("the sender paused");
    assert!(rounds >= 2, "the guest kept writing: {rounds} rounds");
    assert!(
        pages >= 4096,
        "all of RAM went across at least once: {pages}"
    );
    // (The receiver's notice may reach us after the sender's, which it caused.)
    env.expect(NodeId(2), "CloneReceived at the clone point", |n| {
        matches!(
            n,
            Notice::CloneReceived { point: p, digest: d, .. } if *p == point && *d == digest
        )
    });
    assert!(
        point.count > stopped_at,
        "the guest ran while memory went across ({stopped_at} -> {})",
        point.count
    );

    // The pair runs: outputs now wait for the new backup's acknowledgement.
    env.wait_outputs(20);
    // kill -9 the primary: its thread stops dead, its socket closes without goodbye.
    pc.crash();
    let dead = ph.join().unwrap();
    assert_eq!(dead.exit, Exit::Crashed);
    assert!(dead.errors.is_empty(), "{:?}", dead.errors);
    assert_eq!(dead.node.config().pair, pair(2));
    dead.channel.into_link().abort();
    env.expect(NodeId(2), "WentLive", |n| {
        matches!(n, Notice::WentLive { .. })
    });
    let at_takeover = env.sink.all().len();
    env.wait_outputs(20);
    let survivor = stop(&bc, bh);
    assert_eq!(survivor.exit, Exit::Stopped);
    assert!(survivor.node.is_live());
    let st = survivor.node.stats();
    assert!(
        st.digests_checked > 0,
        "the clone replayed with digests checked: {st:?}"
    );
    assert!(
        survivor
            .errors
            .iter()
            .all(|e| e.to_string().contains("log channel")),
        "only the lost link is an error: {:?}",
        survivor.errors
    );
    assert!(env.sink.all().len() > at_takeover);
    let lines = env.check_letters();
    assert!(lines >= 60, "{lines} lines");
    // The clone's link carried the clone both ways and then the log.
    let t = survivor.channel.traffic();
    assert!(
        t.frames_received > u64::from(rounds) && t.frames_sent > 0,
        "{t:?}"
    );
}

#[test]
fn a_clone_the_receiver_refuses_leaves_the_primary_running_alone() {
    let mut env = Env::new();
    let machine = dirtier(8, 16);
    let alone = ran_alone(&env, machine.clone(), 5);
    // The receiver's machine has another memory size: it refuses the clone's layout.
    let ((pc, ph), (bc, bh)) =
        clone_over_tcp(&env, alone, 2, 2, dirtier(4, 16), CloneConfig::default());
    env.expect(NodeId(1), "CloneAborted", |n| {
        matches!(n, Notice::CloneAborted { .. })
    });
    let refused = bh.join().unwrap();
    assert!(
        matches!(&refused.exit, Exit::Halted(HaltReason::CloneFailed(why)) if why.contains("layout")),
        "{:?}",
        refused.exit
    );
    drop(bc);
    let before = env.sink.all().len();
    env.wait_outputs(5);
    let primary = stop(&pc, ph);
    assert_eq!(*primary.node.phase(), Phase::Live);
    assert!(!primary.node.cloning());
    assert_eq!(primary.node.config().pair, pair(1), "still the old pair");
    assert!(env.sink.all().len() > before);
    env.check_letters();
}

#[test]
fn a_receiver_killed_half_way_leaves_the_primary_alone_and_a_second_clone_works() {
    let mut env = Env::new();
    // 32 MiB: 8192 pages, 128 messages of 64 pages in the first round.
    let machine = dirtier(32, 16);
    let alone = ran_alone(&env, machine.clone(), 5);
    // The receiver takes 100 of the first round's 130 messages, then hangs, and is
    // killed: it dies half-way through the first round, whatever the timing.
    let tripped = Arc::new(AtomicBool::new(false));
    let ((pc, ph), (bc, bh)) = clone_over_tcp_with(
        &env,
        alone,
        2,
        2,
        machine.clone(),
        CloneConfig::default(),
        |l| Hang {
            inner: l,
            left: 100,
            tripped: tripped.clone(),
        },
    );
    let deadline = Instant::now() + PATIENCE;
    while !tripped.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the receiver never got 100 messages"
        );
        thread::sleep(Duration::from_millis(1));
    }
    bc.crash();
    let killed = bh.join().unwrap();
    assert_eq!(killed.exit, Exit::Crashed);
    killed.channel.inner.into_link().abort();
    env.expect(NodeId(1), "CloneAborted", |n| {
        matches!(n, Notice::CloneAborted { .. })
    });
    assert!(
        !env.notices(NodeId(1))
            .iter()
            .any(|n| matches!(n, Notice::ClonePaused { .. })),
        "the receiver died before the final pause: {:?}",
        env.log
    );
    let before = env.sink.all().len();
    env.wait_outputs(5);
    let primary = stop(&pc, ph);
    assert_eq!(*primary.node.phase(), Phase::Live);
    assert_eq!(primary.node.config().pair, pair(1));
    assert!(env.sink.all().len() > before, "it ran on alone");

    // The same primary clones again, into a later generation, and this one completes.
    let ((pc, ph), (bc, bh)) = clone_over_tcp(&env, primary, 3, 3, machine, CloneConfig::default());
    env.expect(NodeId(1), "CloneComplete", |n| {
        matches!(n, Notice::CloneComplete { .. })
    });
    env.wait_outputs(5);
    let p = stop(&pc, ph);
    let b = stop(&bc, bh);
    assert_eq!(*p.node.phase(), Phase::Recording);
    assert_eq!(p.node.config().pair, pair(3));
    assert_eq!(*b.node.phase(), Phase::Replaying);
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert!(b.errors.is_empty(), "{:?}", b.errors);
    env.check_letters();
}
