//! Live clone of a KVM guest over the authenticated TCP link, each node on its own
//! thread with a real clock, driven by [`ft_transport::run`] as in production: a VM
//! that ran alone is cloned into a fresh VM while it runs; the original is then killed
//! and the clone finishes the guest, every output exactly once after dedupe.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ft_core::driver::NoLink;
use ft_core::{Arbiter, CloneConfig, Config, InProcessArbiter, Node, NodeId, Notice, PairId};
use ft_kvm::guest::service_workload;
use ft_kvm::machine::{KvmMachine, MachineConfig};
use ft_transport::tcp::{PreSharedKey, PrimaryListener, TcpConfig, TcpLink};
use ft_transport::{nanos_since, run, BackupEnd, Control, Exit, PrimaryEnd, RuntimeConfig};

const PATIENCE: Duration = Duration::from_secs(30);

fn pair(generation: u64) -> PairId {
    PairId { vm: 9, generation }
}

fn engine(node: u64, generation: u64) -> Config {
    Config {
        node: NodeId(node),
        pair: pair(generation),
        heartbeat_interval: 5_000_000,
        // Generous: a loaded CI machine must not fail a peer that is only slow.
        peer_timeout: 500_000_000,
        ..common::engine_config()
    }
}

fn tcp(node: u64) -> TcpConfig {
    let mut c = TcpConfig::new(
        PreSharedKey::new([0x3c; 32]).unwrap(),
        pair(2),
        NodeId(node),
    );
    c.image = 0x6b76;
    c.log = false;
    c
}

#[test]
fn a_kvm_guest_is_cloned_over_tcp_and_its_clone_finishes_it() {
    if !common::kvm_or_skip("a_kvm_guest_is_cloned_over_tcp_and_its_clone_finishes_it") {
        return;
    }
    let rounds = 400;
    let w = service_workload(rounds).unwrap();
    let (pw, bw, sink) = common::worlds(17, &[]);
    let arbiter: Arc<dyn Arbiter> = Arc::new(InProcessArbiter::new());
    let epoch = Instant::now();
    let (tx, rx) = crossbeam_channel::unbounded::<(NodeId, Notice)>();
    let mut listener = PrimaryListener::bind("127.0.0.1:0", tcp(1)).unwrap();
    let addr = listener.local_addr();
    let (alone, pc) = (Control::new(), Control::new());

    // The original: alone until told, then the clone's sender. Each VM is made and run
    // on the thread that owns it.
    let original = {
        let (w, arbiter, tx, alone, pc) = (
            w.clone(),
            arbiter.clone(),
            tx.clone(),
            alone.clone(),
            pc.clone(),
        );
        thread::spawn(move || {
            let m = KvmMachine::with_workload(MachineConfig::default(), w).unwrap();
            let node = Node::unprotected(engine(1, 1), m, pw, nanos_since(epoch));
            let r = run(
                node,
                NoLink,
                arbiter.clone(),
                epoch,
                RuntimeConfig::default(),
                alone,
                |_, _| {},
            );
            assert_eq!(r.exit, Exit::Stopped, "{:?}", r.node.phase());
            let mut node = r.node;
            let link = listener.accept(Some(PATIENCE)).unwrap();
            node.start_clone(pair(2), CloneConfig::default(), nanos_since(epoch))
                .unwrap();
            run(
                node,
                PrimaryEnd::new(link),
                arbiter,
                epoch,
                RuntimeConfig::default(),
                pc,
                move |_, n| {
                    let _ = tx.send((NodeId(1), n.clone()));
                },
            )
        })
    };
    // Let the guest run alone a while.
    let deadline = Instant::now() + PATIENCE;
    while sink.all().len() < 20 {
        assert!(Instant::now() < deadline, "the guest printed nothing alone");
        thread::sleep(Duration::from_millis(2));
    }
    alone.stop();
    let bc = Control::new();
    let clone = {
        let (arbiter, bc) = (arbiter.clone(), bc.clone());
        thread::spawn(move || {
            let link = TcpLink::connect(addr, tcp(2), PATIENCE).unwrap();
            let m = KvmMachine::with_workload(MachineConfig::default(), w).unwrap();
            let node = Node::clone_target(engine(2, 2), m, bw, nanos_since(epoch));
            run(
                node,
                BackupEnd::new(link),
                arbiter,
                epoch,
                RuntimeConfig::default(),
                bc,
                move |_, n| {
                    let _ = tx.send((NodeId(2), n.clone()));
                },
            )
        })
    };
    let mut heard = Vec::new();
    let wait = |heard: &mut Vec<(NodeId, Notice)>, id: NodeId, f: &dyn Fn(&Notice) -> bool| {
        let deadline = Instant::now() + PATIENCE;
        while !heard.iter().any(|(i, n)| *i == id && f(n)) {
            match rx.recv_deadline(deadline) {
                Ok(x) => heard.push(x),
                Err(_) => panic!("node {} never said it: {heard:?}", id.0),
            }
        }
    };
    wait(&mut heard, NodeId(1), &|n| {
        matches!(n, Notice::CloneComplete { .. })
    });
    wait(&mut heard, NodeId(2), &|n| {
        matches!(n, Notice::CloneReceived { .. })
    });
    let printed = sink.all().len();
    let deadline = Instant::now() + PATIENCE;
    while sink.all().len() < printed + 20 {
        assert!(Instant::now() < deadline, "the pair printed nothing");
        thread::sleep(Duration::from_millis(2));
    }
    // kill -9 the original.
    pc.crash();
    let dead = original.join().unwrap();
    assert_eq!(dead.exit, Exit::Crashed);
    dead.channel.into_link().abort();
    let survivor = clone.join().unwrap();
    assert_eq!(survivor.exit, Exit::Finished(0), "{:?}", survivor.errors);
    assert!(survivor.node.is_live());
    assert!(
        survivor.node.stats().digests_checked > 0,
        "{:?}",
        survivor.node.stats()
    );
    let text: Vec<String> = sink
        .deduplicated()
        .expect("outputs consistent after dedupe")
        .iter()
        .map(|o| String::from_utf8_lossy(&o.data).into_owned())
        .collect();
    let lines: Vec<&String> = text.iter().filter(|l| l.starts_with("round ")).collect();
    assert_eq!(lines.len(), rounds as usize, "{text:?}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(**l, format!("round {i:016x}\n"), "rounds out of order");
    }
}
