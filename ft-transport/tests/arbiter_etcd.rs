//! The etcd arbiter against a real `etcd` (Debian's `etcd-server`) on loopback: claims,
//! generations, racing threads, a stopped etcd, and an engine that waits for it.
//!
//! Without an `etcd` binary each test prints `SKIP ...: etcd not installed` and passes,
//! unless `FT_REQUIRE_ETCD=1` (CI), where it fails. `FT_ETCD_BIN` overrides the binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command as Process, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ft_core::{Arbiter, ArbiterError, Command, Decision, NodeId, Notice, PairId, Phase};
use ft_transport::arbiter::EtcdArbiter;
use rand::{Rng, SeedableRng};

const TIMEOUT: Duration = Duration::from_millis(500);

fn pair(vm: u64, generation: u64) -> PairId {
    PairId { vm, generation }
}

/// The etcd binary, or `None` after printing the skip line (panics if CI requires it).
fn etcd_binary(test: &str) -> Option<PathBuf> {
    let bin = std::env::var("FT_ETCD_BIN").unwrap_or_else(|_| "etcd".into());
    let found = Process::new(&bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if found {
        return Some(PathBuf::from(bin));
    }
    if std::env::var("FT_REQUIRE_ETCD").as_deref() == Ok("1") {
        panic!(
            "{test}: etcd not installed ({bin:?} does not run) but FT_REQUIRE_ETCD=1: \
             apt-get install -y etcd-server"
        );
    }
    println!("SKIP {test}: etcd not installed");
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A single-member etcd on loopback with a temporary data dir; killed on drop.
struct Etcd {
    child: Option<Child>,
    url: String,
    dir: tempfile::TempDir,
}

impl Etcd {
    fn start(bin: &PathBuf) -> Etcd {
        for attempt in 1..=3 {
            let dir = tempfile::tempdir().unwrap();
            let (client, peer) = (free_port(), free_port());
            let url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
            let child = Process::new(bin)
                .arg("--name=ft-test")
                .arg(format!("--data-dir={}", dir.path().join("data").display()))
                .arg(format!("--listen-client-urls={url}"))
                .arg(format!("--advertise-client-urls={url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster=ft-test={peer_url}"))
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap();
            let mut etcd = Etcd {
                child: Some(child),
                url,
                dir,
            };
            if etcd.wait_healthy(Duration::from_secs(20)) {
                println!("etcd up at {} (attempt {attempt})", etcd.url);
                return etcd;
            }
            let log = std::fs::read_to_string(etcd.dir.path().join("etcd.log")).unwrap_or_default();
            println!(
                "etcd did not become healthy (attempt {attempt}); log tail:\n{}",
                log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
            );
            etcd.stop();
        }
        panic!("etcd never became healthy");
    }

    fn wait_healthy(&mut self, limit: Duration) -> bool {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(500)))
            .http_status_as_error(false)
            .build()
            .into();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            if let Ok(mut r) = agent.get(format!("{}/health", self.url)).call() {
                let body = r.body_mut().read_to_string().unwrap_or_default();
                if body.contains("\"true\"") {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn arbiter(&self) -> EtcdArbiter {
        EtcdArbiter::new(&[&self.url], TIMEOUT).unwrap()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn etcd_first_claim_wins_second_loses_generations_independent() {
    let Some(bin) = etcd_binary("etcd_first_claim_wins_second_loses_generations_independent")
    else {
        return;
    };
    let etcd = Etcd::start(&bin);
    let a = etcd.arbiter();
    let b = etcd.arbiter();
    let p = pair(1, 1);
    assert_eq!(a.holder(p).unwrap(), None);
    assert_eq!(a.newest_claimed(1), Ok(None));
    let Ok(Decision::Won { token: t1 }) = a.test_and_set(p, NodeId(1)) else {
        panic!("first claim did not win")
    };
    assert_eq!(
        b.test_and_set(p, NodeId(2)),
        Ok(Decision::Lost { holder: NodeId(1) })
    );
    // The winner's retry wins again with the same token.
    assert_eq!(
        b.test_and_set(p, NodeId(1)),
        Ok(Decision::Won { token: t1 })
    );
    assert_eq!(a.holder(p).unwrap(), Some((NodeId(1), t1)));
    // A new generation is a fresh flag, with a larger token (etcd revisions grow).
    let Ok(Decision::Won { token: t2 }) = b.test_and_set(pair(1, 2), NodeId(2)) else {
        panic!("new generation did not win")
    };
    assert!(t2 > t1, "tokens {t1} then {t2}");
    assert_eq!(
        a.test_and_set(pair(1, 2), NodeId(1)),
        Ok(Decision::Lost { holder: NodeId(2) })
    );
    assert_eq!(
        a.test_and_set(pair(1, 1), NodeId(2)),
        Ok(Decision::Lost { holder: NodeId(1) })
    );
    // Another prefix is another namespace.
    let other = etcd.arbiter().with_prefix("elsewhere");
    assert!(matches!(
        other.test_and_set(p, NodeId(3)),
        Ok(Decision::Won { .. })
    ));
    // The newest claimed generation, numerically (10 sorts before 9 as a key), per VM
    // (vm 11's keys share vm 1's text prefix up to the digit) and per prefix.
    a.test_and_set(pair(1, 10), NodeId(1)).unwrap();
    a.test_and_set(pair(1, 9), NodeId(1)).unwrap();
    a.test_and_set(pair(11, 50), NodeId(1)).unwrap();
    assert_eq!(a.newest_claimed(1), Ok(Some(10)));
    assert_eq!(a.newest_claimed(11), Ok(Some(50)));
    assert_eq!(a.newest_claimed(2), Ok(None));
    assert_eq!(other.newest_claimed(1), Ok(Some(1)));
    assert_eq!(Arbiter::holder(&a, pair(1, 2)), Ok(Some(NodeId(2))));
    // A dead endpoint first in the list: the next one answers.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let both = EtcdArbiter::new(&[&dead, &etcd.url], TIMEOUT).unwrap();
    assert_eq!(
        both.test_and_set(p, NodeId(2)),
        Ok(Decision::Lost { holder: NodeId(1) })
    );
}

#[test]
fn etcd_clone_offers_follow_the_claims() {
    let Some(bin) = etcd_binary("etcd_clone_offers_follow_the_claims") else {
        return;
    };
    let etcd = Etcd::start(&bin);
    let (a, b) = (etcd.arbiter(), etcd.arbiter());
    common::offers_follow_the_claims(&a, &b, 4);
    // The offer lives under the prefix, next to the claims.
    assert_eq!(a.offer_key(pair(4, 2)), "ft/arbiter/vm/4/offer/2");
}

#[test]
fn etcd_reservations_are_unique_and_above_every_claim() {
    let Some(bin) = etcd_binary("etcd_reservations_are_unique_and_above_every_claim") else {
        return;
    };
    let etcd = Etcd::start(&bin);
    let a = etcd.arbiter();
    common::reservations_are_unique(move || a.clone(), 5, 4, 10);
    let a = etcd.arbiter();
    assert_eq!(a.reservation_key(pair(5, 7)), "ft/arbiter/vm/5/reserve/7");
}

#[test]
fn etcd_racing_threads_exactly_one_winner() {
    const THREADS: usize = 6;
    const ROUNDS: u64 = 40;
    let Some(bin) = etcd_binary("etcd_racing_threads_exactly_one_winner") else {
        return;
    };
    let seed = std::env::var("FT_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_u64);
    println!("seed {seed} (rerun with FT_TEST_SEED={seed})");
    let etcd = Etcd::start(&bin);
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (arb, barrier) = (etcd.arbiter(), barrier.clone());
            std::thread::spawn(move || {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ t as u64);
                (1..=ROUNDS)
                    .map(|g| {
                        barrier.wait();
                        std::thread::sleep(Duration::from_micros(rng.gen_range(0..300)));
                        arb.test_and_set(pair(2, g), NodeId(t as u64 + 1)).unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<Vec<Decision>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let arb = etcd.arbiter();
    let mut wins = [0u32; THREADS];
    let mut last_token = 0;
    for g in 1..=ROUNDS {
        let (holder, token) = arb.holder(pair(2, g)).unwrap().unwrap();
        assert!(token > last_token, "tokens grow with generations");
        last_token = token;
        let mut winners = 0;
        for (t, r) in results.iter().enumerate() {
            match r[g as usize - 1] {
                Decision::Won { token: tok } => {
                    winners += 1;
                    wins[t] += 1;
                    assert_eq!((holder, tok), (NodeId(t as u64 + 1), token));
                }
                Decision::Lost { holder: h } => assert_eq!(h, holder),
            }
        }
        assert_eq!(winners, 1, "generation {g}");
    }
    println!("wins per thread over {ROUNDS} rounds: {wins:?}");
}

#[test]
fn etcd_stopped_is_unreachable_and_the_engine_waits() {
    let Some(bin) = etcd_binary("etcd_stopped_is_unreachable_and_the_engine_waits") else {
        return;
    };
    let mut etcd = Etcd::start(&bin);
    let arb = etcd.arbiter();
    // The startup probe passes on a live etcd and claims nothing.
    assert_eq!(arb.check(), Ok(()));
    assert_eq!(arb.holder(pair(3, 1)).unwrap(), None);
    assert!(matches!(
        arb.test_and_set(pair(3, 1), NodeId(1)),
        Ok(Decision::Won { .. })
    ));
    etcd.stop();
    for p in [pair(3, 1), pair(3, 2)] {
        let r = arb.test_and_set(p, NodeId(2));
        assert!(matches!(r, Err(ArbiterError::Unreachable(_))), "{r:?}");
    }
    // And fails, as unreachable, once it is gone.
    assert!(
        matches!(arb.check(), Err(ArbiterError::Unreachable(_))),
        "{:?}",
        arb.check()
    );

    // A backup whose etcd is gone: Arbitrating, attempt after attempt, never live.
    let mut now = 0;
    let cfg = ft_core::Config {
        pair: pair(3, 2),
        arbiter_retry_min: 1_000_000,
        arbiter_retry_max: 4_000_000,
        ..common::config(2)
    };
    let mut node = common::backup(cfg, common::ToyParams::default(), 1_000_000, now);
    node.peer_failed(now);
    let mut unreachable = 0;
    while unreachable < 4 {
        let _ = node.step(now);
        while let Some(Command::TestAndSet { pair, me, .. }) = node.poll_command() {
            node.on_arbiter(arb.test_and_set(pair, me), now);
        }
        while let Some((_, n)) = node.poll_notice() {
            match n {
                Notice::ArbiterUnreachable { attempt, error } => {
                    unreachable += 1;
                    assert_eq!(attempt, unreachable);
                    assert!(error.contains("unreachable"), "{error}");
                }
                Notice::WentLive { .. } => panic!("went live without the arbiter"),
                _ => {}
            }
        }
        now = node.next_deadline().unwrap_or(now + 1_000_000).max(now + 1);
    }
    assert_eq!(*node.phase(), Phase::Arbitrating);
    assert!(!node.is_live());
}

/// A member's clone offer is put with its process's lease: when the arbiter holding
/// it goes (the process ends), the offer goes with it.
#[test]
fn etcd_offers_vanish_with_their_member() {
    let Some(bin) = etcd_binary("etcd_offers_vanish_with_their_member") else {
        return;
    };
    let etcd = Etcd::start(&bin);
    let reader = etcd.arbiter();
    let member = etcd.arbiter();
    let p = pair(3, 1);
    member.test_and_set(p, NodeId(1)).unwrap();
    let offer = ft_core::CloneOffer {
        pair: p,
        member: NodeId(1),
        addr: "127.0.0.1:1".into(),
    };
    member.publish_offer(&offer).unwrap();
    assert_eq!(reader.clone_offer(3), Ok(Some(offer.clone())));
    assert_eq!(reader.record(3).unwrap().offers.get(&1), Some(&offer));
    drop(member);
    assert_eq!(
        reader.clone_offer(3),
        Ok(None),
        "a dropped member's offer stays"
    );
}

/// Standbys: registration with a lease, node-id collisions refused, exactly one of
/// several racing standbys picked per offer, and a picked standby that dies releases
/// its pick to the next.
#[test]
fn etcd_exactly_one_standby_is_picked_per_offer() {
    use ft_transport::arbiter::etcd::standby::{Standby, StandbyError};
    let Some(bin) = etcd_binary("etcd_exactly_one_standby_is_picked_per_offer") else {
        return;
    };
    let etcd = Etcd::start(&bin);
    let arb = etcd.arbiter();
    let ttl = Duration::from_secs(2);
    let vm = 5;
    let standbys: Vec<Standby> = (10..14)
        .map(|n| Standby::register(&arb, vm, NodeId(n), &format!("127.0.0.1:{n}"), ttl).unwrap())
        .collect();
    assert_eq!(
        Standby::register(&arb, vm, NodeId(11), "x:1", ttl).map(|_| ()),
        Err(StandbyError::Taken { node: 11, vm })
    );
    let record = arb.record(vm).unwrap();
    assert_eq!(record.standbys.len(), 4);
    assert_eq!(
        record.standbys.get(&12).map(String::as_str),
        Some("127.0.0.1:12")
    );
    // The live member of generation 1 offers a clone; the member's id is refused.
    arb.test_and_set(pair(vm, 1), NodeId(1)).unwrap();
    assert!(matches!(
        Standby::register(&arb, vm, NodeId(1), "x:1", ttl),
        Err(StandbyError::Member { node: 1, .. })
    ));
    let offer = ft_core::CloneOffer {
        pair: pair(vm, 1),
        member: NodeId(1),
        addr: "127.0.0.1:9".into(),
    };
    arb.publish_offer(&offer).unwrap();
    // All four race; exactly one is picked, the others keep waiting.
    let (tx, rx) = crossbeam_channel::unbounded();
    let standbys: Vec<Arc<Standby>> = standbys.into_iter().map(Arc::new).collect();
    for (i, s) in standbys.iter().enumerate() {
        let (s, tx) = (s.clone(), tx.clone());
        std::thread::spawn(move || {
            let pick = s.wait_for_pick(Duration::from_millis(300), |_| {});
            let _ = tx.send((i, pick));
        });
    }
    let (first, pick) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(pick.offer, offer);
    assert_eq!(pick.pair(), pair(vm, 2));
    assert!(
        rx.recv_timeout(Duration::from_millis(800)).is_err(),
        "a second standby was picked for the same offer"
    );
    let record = arb.record(vm).unwrap();
    let picked = NodeId(10 + first as u64);
    assert_eq!(record.picks.get(&1), Some(&picked));
    assert!(
        !record.standbys.contains_key(&picked.0),
        "picked is still listed"
    );
    assert_eq!(record.standbys.len(), 3);
    // The picked standby dies before its clone is whole (its lease goes): the pick is
    // released and exactly one of the others takes the still-open offer.
    // (The threads of the waiting ones hold their own references.)
    let mut standbys = standbys;
    drop(standbys.remove(first));
    let (second, _) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_ne!(second, first);
    assert!(rx.recv_timeout(Duration::from_millis(800)).is_err());
    assert_eq!(
        arb.record(vm).unwrap().picks.get(&1),
        Some(&NodeId(10 + second as u64))
    );
}

/// A standby whose lease expired (as it does while the process is frozen past the
/// TTL) leaves the pool, and its keeper registers it again with a fresh lease.
#[test]
fn etcd_standby_registers_again_after_its_lease_expired() {
    use ft_transport::arbiter::etcd::standby::Standby;
    let Some(bin) = etcd_binary("etcd_standby_registers_again_after_its_lease_expired") else {
        return;
    };
    let etcd = Etcd::start(&bin);
    let arb = etcd.arbiter();
    let s = Standby::register(&arb, 8, NodeId(3), "127.0.0.1:3", Duration::from_secs(2)).unwrap();
    let old = s.lease().id();
    arb.revoke_lease(old).unwrap();
    assert!(arb.record(8).unwrap().standbys.is_empty());
    let deadline = Instant::now() + Duration::from_secs(5);
    while arb.record(8).unwrap().standbys.is_empty() {
        assert!(Instant::now() < deadline, "never registered again");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_ne!(s.lease().id(), old);
    drop(s);
    assert!(
        arb.record(8).unwrap().standbys.is_empty(),
        "a dropped standby stays listed"
    );
}
