//! The clone-over-TCP measurement both clone benchmarks share (ft-sim's and ft-kvm's,
//! which includes this file): a machine that runs alone is cloned over the
//! authenticated TCP link on loopback into a fresh machine of the same image. The
//! sender is driven on the calling thread by ft-core's driver loop, one timed turn at a
//! time; the receiver on its own thread by [`ft_transport::run`], as in production.
//! Each machine is made on the thread that runs it.

// Each bench that includes this uses a part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ft_core::driver::{Clock, Driver, DriverConfig, Immediate};
use ft_core::{
    Arbiter, CloneConfig, Config, EventSource, InProcessArbiter, Nanos, Node, NodeId, Notice,
    PairId,
};
use ft_sim::world::{Disk, OutputSink, SimWorld, SimWorldConfig};
use ft_transport::tcp::{PreSharedKey, PrimaryListener, TcpConfig, TcpLink};
use ft_transport::{nanos_since, BackupEnd, Control, PrimaryEnd, RuntimeConfig};

/// What one clone measured.
pub struct FtRun {
    /// Rounds, the final one included.
    pub rounds: u32,
    /// Pages sent, and those of the final pause.
    pub pages: u64,
    pub final_pages: u64,
    /// Bytes the sender put on the link until the new backup confirmed.
    pub bytes: u64,
    /// Start of the clone to the confirmation; the driver turn that held the final
    /// pause; the pause to the confirmation. Milliseconds.
    pub total_ms: f64,
    pub pause_ms: f64,
    pub confirm_ms: f64,
}

struct Wall(Instant);

impl Clock for Wall {
    fn now(&self) -> Nanos {
        nanos_since(self.0)
    }
}

/// A world for a bench node: no clients, a small private disk.
pub fn world(live: bool) -> SimWorld {
    SimWorld::new(
        "bench",
        SimWorldConfig::default(),
        Disk::new(4096),
        OutputSink::new(),
        live,
    )
}

/// The engine configuration of node `node` in `generation`, with `slice`.
pub fn engine(node: u64, generation: u64, slice: u64) -> Config {
    Config {
        node: NodeId(node),
        pair: PairId { vm: 1, generation },
        slice,
        digest_interval: 0,
        ..Config::default()
    }
}

/// Milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The median (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs from an environment variable, or `default`.
pub fn runs(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// Clone a machine made by `make` (after `warmup` steps alone, engine `slice`) into
/// another one made by `make`. `FT_BENCH_TRACE=1` prints both sides' notices.
pub fn measure<S, F>(make: F, slice: u64, warmup: usize) -> FtRun
where
    S: EventSource + 'static,
    F: Fn() -> S + Send + Clone + 'static,
{
    let trace = std::env::var_os("FT_BENCH_TRACE").is_some();
    let epoch = Instant::now();
    let clock = Wall(epoch);
    let arbiter: Arc<dyn Arbiter> = Arc::new(InProcessArbiter::new());
    let mut node = Node::unprotected(engine(1, 1, slice), make(), world(true), clock.now());
    for _ in 0..warmup {
        node.step(clock.now()).unwrap();
    }
    let tcp = |n: u64| {
        let mut c = TcpConfig::new(
            PreSharedKey::new([7; 32]).unwrap(),
            engine(n, 2, slice).pair,
            NodeId(n),
        );
        c.image = 0x5eed;
        c.log = false;
        c
    };
    let mut listener = PrimaryListener::bind("127.0.0.1:0", tcp(1)).unwrap();
    let addr = listener.local_addr();
    let control = Control::new();
    let receiver = {
        let (control, arbiter, cfg, make) =
            (control.clone(), arbiter.clone(), tcp(2), make.clone());
        thread::spawn(move || {
            let link = TcpLink::connect(addr, cfg, Duration::from_secs(10)).unwrap();
            let target = Node::clone_target(
                engine(2, 2, slice),
                make(),
                world(false),
                nanos_since(epoch),
            );
            let r = ft_transport::run(
                target,
                BackupEnd::new(link),
                arbiter,
                epoch,
                RuntimeConfig::default(),
                control,
                |t, n| {
                    if trace {
                        eprintln!("receiver {:.3} ms: {n}", t as f64 / 1e6);
                    }
                    if let Notice::CloneFailed { reason } = n {
                        eprintln!("the clone failed at the receiver: {reason}");
                    }
                },
            );
            r.exit
        })
    };
    let mut link = PrimaryEnd::new(listener.accept(Some(Duration::from_secs(10))).unwrap());
    let mut port = Immediate::new(&*arbiter);
    let mut driver = Driver::new(DriverConfig::default());

    let start = Instant::now();
    node.start_clone(
        engine(1, 2, slice).pair,
        CloneConfig::default(),
        clock.now(),
    )
    .unwrap();
    let mut pause = None;
    let mut paused_at = None;
    let mut summary = None;
    let done = loop {
        let t0 = Instant::now();
        driver.turn(&mut node, &clock, &mut link, &mut port);
        let turn = t0.elapsed();
        if let Some(e) = driver.take_errors().first() {
            panic!("the sender's driver: {e}");
        }
        let mut complete = false;
        while let Some((t, n)) = node.poll_notice() {
            if trace {
                eprintln!("sender {:.3} ms: {n}", t as f64 / 1e6);
            }
            match n {
                Notice::ClonePaused {
                    rounds,
                    pages,
                    final_pages,
                    ..
                } => {
                    pause = Some(turn);
                    paused_at = Some(Instant::now());
                    summary = Some((rounds, pages, final_pages));
                }
                Notice::CloneComplete { .. } => complete = true,
                Notice::CloneAborted { reason } => panic!("clone abandoned: {reason}"),
                _ => {}
            }
        }
        if complete {
            break Instant::now();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the clone did not finish"
        );
    };
    let bytes = link.traffic().bytes_sent;
    control.stop();
    receiver.join().expect("the receiver panicked");
    let (rounds, pages, final_pages) = summary.unwrap();
    FtRun {
        rounds,
        pages,
        final_pages,
        bytes,
        total_ms: ms(done - start),
        pause_ms: ms(pause.unwrap()),
        confirm_ms: ms(done - paused_at.unwrap()),
    }
}
