//! The shared-file arbiter: claims, generations, failures, races between threads and
//! between processes, and an engine that waits while the arbiter is unreachable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command as Process;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ft_core::{Arbiter, ArbiterError, Command, Decision, NodeId, Notice, PairId, Phase};
use ft_transport::arbiter::FileArbiter;
use rand::{Rng, SeedableRng};

fn pair(vm: u64, generation: u64) -> PairId {
    PairId { vm, generation }
}

fn seed() -> u64 {
    let s = std::env::var("FT_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000
        });
    println!("seed {s} (rerun with FT_TEST_SEED={s})");
    s
}

#[test]
fn first_claim_wins_and_the_winner_wins_again() {
    let dir = tempfile::tempdir().unwrap();
    let a = FileArbiter::new(dir.path());
    let b = FileArbiter::new(dir.path());
    let p = pair(1, 1);
    assert_eq!(a.test_and_set(p, NodeId(1)), Ok(Decision::Won { token: 1 }));
    assert_eq!(
        b.test_and_set(p, NodeId(2)),
        Ok(Decision::Lost { holder: NodeId(1) })
    );
    // A retry by the winner (its reply was lost, say) wins again, same token.
    assert_eq!(b.test_and_set(p, NodeId(1)), Ok(Decision::Won { token: 1 }));
    assert_eq!(
        a.test_and_set(p, NodeId(2)),
        Ok(Decision::Lost { holder: NodeId(1) })
    );
    let claim = a.read_claim(p).unwrap().unwrap();
    assert_eq!((claim.holder, claim.token, claim.pair), (NodeId(1), 1, p));
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["ft-claim-vm1-gen1".to_string()]);
}

#[test]
fn generations_and_vms_are_independent_and_tokens_grow() {
    let dir = tempfile::tempdir().unwrap();
    let a = FileArbiter::new(dir.path());
    assert_eq!(
        a.test_and_set(pair(1, 1), NodeId(1)),
        Ok(Decision::Won { token: 1 })
    );
    // A new pairing of the same VM: a fresh flag, and a larger token.
    assert_eq!(
        a.test_and_set(pair(1, 2), NodeId(2)),
        Ok(Decision::Won { token: 2 })
    );
    assert_eq!(
        a.test_and_set(pair(1, 1), NodeId(2)),
        Ok(Decision::Lost { holder: NodeId(1) })
    );
    assert_eq!(
        a.test_and_set(pair(2, 1), NodeId(2)),
        Ok(Decision::Won { token: 1 })
    );
    assert!(a.read_claim(pair(3, 1)).unwrap().is_none());
    // What a starting node asks: who holds a generation, and the newest claimed one.
    assert_eq!(Arbiter::holder(&a, pair(1, 1)), Ok(Some(NodeId(1))));
    assert_eq!(Arbiter::holder(&a, pair(1, 3)), Ok(None));
    assert_eq!(a.newest_claimed(1), Ok(Some(2)));
    assert_eq!(a.newest_claimed(2), Ok(Some(1)));
    assert_eq!(a.newest_claimed(3), Ok(None));
    // Numerically newest, not by name: generation 10 sorts before 9 as text.
    a.test_and_set(pair(1, 10), NodeId(1)).unwrap();
    a.test_and_set(pair(1, 9), NodeId(1)).unwrap();
    assert_eq!(a.newest_claimed(1), Ok(Some(10)));
    // Other files in the directory (a VM whose id starts the same, temporaries) are
    // not claims of vm 1.
    a.test_and_set(pair(11, 50), NodeId(1)).unwrap();
    std::fs::write(dir.path().join("ft-claim-vm1-gen77.tmp"), "x").unwrap();
    assert_eq!(a.newest_claimed(1), Ok(Some(10)));
    let missing = FileArbiter::new(dir.path().join("gone"));
    assert!(matches!(
        missing.newest_claimed(1),
        Err(ArbiterError::Unreachable(_))
    ));
}

/// The offer contract on the in-process arbiter too (two handles share one store).
#[test]
fn in_process_clone_offers_follow_the_claims() {
    let a = ft_core::InProcessArbiter::new();
    common::offers_follow_the_claims(&a, &a.clone(), 4);
}

#[test]
fn in_process_reservations_are_unique() {
    let a = ft_core::InProcessArbiter::new();
    common::reservations_are_unique(move || a.clone(), 5, 4, 25);
}

#[test]
fn reservations_are_unique_and_above_every_claim() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    common::reservations_are_unique(move || FileArbiter::new(&path), 5, 4, 25);
    let a = FileArbiter::new(dir.path());
    // A reservation file that is not one is a failure, never a reserver.
    let pair = PairId {
        vm: 5,
        generation: 1000,
    };
    std::fs::write(a.reservation_path(pair), "ft-arbiter-reservation 1\nvm 5\n").unwrap();
    assert!(matches!(a.reserved_by(pair), Err(ArbiterError::Failed(_))));
    // And a missing directory is unreachable, as for claims.
    let missing = FileArbiter::new(dir.path().join("gone"));
    assert!(matches!(
        missing.reserve_generation(1, NodeId(1), None, ft_core::Purpose::NewPair),
        Err(ArbiterError::Unreachable(_))
    ));
}

#[test]
fn clone_offers_follow_the_claims() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (FileArbiter::new(dir.path()), FileArbiter::new(dir.path()));
    common::offers_follow_the_claims(&a, &b, 4);
    // A foreign or torn offer file is a failure, never an offer.
    let pair = PairId {
        vm: 4,
        generation: 2,
    };
    std::fs::write(
        a.offer_path(pair),
        "ft-arbiter-offer 1\nvm 4\ngeneration 2\n",
    )
    .unwrap();
    assert!(matches!(a.clone_offer(4), Err(ArbiterError::Failed(_))));
    std::fs::write(a.offer_path(pair), "hello").unwrap();
    assert!(matches!(a.clone_offer(4), Err(ArbiterError::Failed(_))));
    // Withdrawing a broken offer is refused too (it is not known to be the member's).
    assert!(a.withdraw_offer(pair, NodeId(2)).is_err());
}

#[test]
fn missing_or_bad_directory_is_unreachable_until_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-mounted");
    let a = FileArbiter::new(&missing);
    let p = pair(1, 1);
    for _ in 0..3 {
        let r = a.test_and_set(p, NodeId(1));
        assert!(matches!(r, Err(ArbiterError::Unreachable(_))), "{r:?}");
    }
    // A file where the directory should be.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let r = FileArbiter::new(&file).test_and_set(p, NodeId(1));
    assert!(matches!(r, Err(ArbiterError::Unreachable(_))), "{r:?}");
    // The storage comes back: the claim goes through.
    std::fs::create_dir(&missing).unwrap();
    assert_eq!(a.test_and_set(p, NodeId(1)), Ok(Decision::Won { token: 1 }));
}

#[cfg(unix)]
#[test]
fn read_only_directory_is_unreachable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    // root ignores permission bits: then there is nothing to test.
    if std::fs::write(dir.path().join("probe"), b"x").is_ok() {
        println!("SKIP read_only_directory_is_unreachable: running with root's rights");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        return;
    }
    let r = FileArbiter::new(dir.path()).test_and_set(pair(1, 1), NodeId(1));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(matches!(r, Err(ArbiterError::Unreachable(_))), "{r:?}");
}

#[test]
fn a_foreign_claim_file_is_a_failure_not_a_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let a = FileArbiter::new(dir.path());
    let p = pair(5, 5);
    std::fs::write(a.claim_path(p), b"hello\n").unwrap();
    let r = a.test_and_set(p, NodeId(1));
    assert!(matches!(r, Err(ArbiterError::Failed(_))), "{r:?}");
    // A valid claim for another pair under this name is refused too.
    let other = tempfile::tempdir().unwrap();
    let b = FileArbiter::new(other.path());
    b.test_and_set(pair(9, 9), NodeId(1)).unwrap();
    std::fs::copy(b.claim_path(pair(9, 9)), a.claim_path(p)).unwrap();
    let r = a.test_and_set(p, NodeId(1));
    assert!(matches!(r, Err(ArbiterError::Failed(_))), "{r:?}");
}

#[test]
fn racing_threads_exactly_one_winner_per_generation() {
    const THREADS: usize = 8;
    const ROUNDS: u64 = 150;
    let seed = seed();
    let dir = tempfile::tempdir().unwrap();
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (dir, barrier) = (dir.path().to_path_buf(), barrier.clone());
            std::thread::spawn(move || {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ t as u64);
                let arb = FileArbiter::new(dir);
                let me = NodeId(t as u64 + 1);
                (1..=ROUNDS)
                    .map(|g| {
                        barrier.wait();
                        for _ in 0..rng.gen_range(0..50) {
                            std::hint::spin_loop();
                        }
                        arb.test_and_set(pair(1, g), me).unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<Vec<Decision>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let arb = FileArbiter::new(dir.path());
    let mut wins_per_thread = [0u32; THREADS];
    for g in 1..=ROUNDS {
        let holder = arb.read_claim(pair(1, g)).unwrap().unwrap().holder;
        let mut winners = 0;
        for (t, r) in results.iter().enumerate() {
            match r[g as usize - 1] {
                Decision::Won { token } => {
                    winners += 1;
                    wins_per_thread[t] += 1;
                    assert_eq!(token, g);
                    assert_eq!(holder, NodeId(t as u64 + 1));
                }
                Decision::Lost { holder: h } => assert_eq!(h, holder, "generation {g}"),
            }
        }
        assert_eq!(winners, 1, "generation {g}: {winners} winners");
    }
    println!("wins per thread over {ROUNDS} rounds: {wins_per_thread:?}");
}

/// The claimant process: runs only when spawned by the cross-process test.
#[test]
fn child_claimant() {
    let Ok(spec) = std::env::var("FT_ARBITER_CHILD") else {
        return;
    };
    // dir|node|children|rounds|seed
    let parts: Vec<&str> = spec.split('|').collect();
    let dir = Path::new(parts[0]);
    let me: u64 = parts[1].parse().unwrap();
    let children: u64 = parts[2].parse().unwrap();
    let rounds: u64 = parts[3].parse().unwrap();
    let seed: u64 = parts[4].parse().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ me);
    let arb = FileArbiter::new(dir.join("claims"));
    let sync = dir.join("sync");
    for g in 1..=rounds {
        // A barrier between the processes: everyone marks the round and waits for all.
        std::fs::write(sync.join(format!("r{g}-n{me}")), b"").unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while (1..=children).any(|n| !sync.join(format!("r{g}-n{n}")).exists()) {
            assert!(Instant::now() < deadline, "barrier of round {g} timed out");
            std::thread::yield_now();
        }
        for _ in 0..rng.gen_range(0..200) {
            std::hint::spin_loop();
        }
        match arb.test_and_set(pair(1, g), NodeId(me)).unwrap() {
            Decision::Won { token } => println!("CLAIM gen {g} won {token}"),
            Decision::Lost { holder } => println!("CLAIM gen {g} lost {}", holder.0),
        }
    }
}

#[test]
fn racing_processes_exactly_one_winner_per_generation() {
    const CHILDREN: u64 = 4;
    const ROUNDS: u64 = 60;
    let seed = seed();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("claims")).unwrap();
    std::fs::create_dir(dir.path().join("sync")).unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (1..=CHILDREN)
        .map(|n| {
            Process::new(&exe)
                .args([
                    "--exact",
                    "child_claimant",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(
                    "FT_ARBITER_CHILD",
                    format!(
                        "{}|{n}|{CHILDREN}|{ROUNDS}|{seed}",
                        dir.path().to_str().unwrap()
                    ),
                )
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // generation -> (winners, losers' holders)
    let mut verdicts: BTreeMap<u64, (Vec<u64>, Vec<u64>)> = BTreeMap::new();
    let mut wins = BTreeMap::new();
    for (i, child) in children.into_iter().enumerate() {
        let node = i as u64 + 1;
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "claimant {node} failed");
        let text = String::from_utf8(out.stdout).unwrap();
        // libtest's own "test child_claimant ... " may start the first line.
        for line in text
            .lines()
            .filter_map(|l| l.find("CLAIM gen ").map(|i| &l[i + 10..]))
        {
            let w: Vec<&str> = line.split(' ').collect();
            let g: u64 = w[0].parse().unwrap();
            let v: u64 = w[2].parse().unwrap();
            let e = verdicts.entry(g).or_default();
            match w[1] {
                "won" => {
                    assert_eq!(v, g, "token of generation {g}");
                    e.0.push(node);
                    *wins.entry(node).or_insert(0) += 1;
                }
                _ => e.1.push(v),
            }
        }
    }
    assert_eq!(verdicts.len() as u64, ROUNDS);
    let arb = FileArbiter::new(dir.path().join("claims"));
    for (g, (winners, holders)) in &verdicts {
        assert_eq!(winners.len(), 1, "generation {g}: winners {winners:?}");
        assert_eq!(winners.len() + holders.len(), CHILDREN as usize);
        assert!(holders.iter().all(|h| *h == winners[0]), "generation {g}");
        let claim = arb.read_claim(pair(1, *g)).unwrap().unwrap();
        assert_eq!(claim.holder, NodeId(winners[0]));
    }
    println!("wins per process over {ROUNDS} rounds: {wins:?}");
}

/// The engine's side: a backup whose arbiter directory is gone keeps waiting in
/// `Arbitrating`, reports every failed attempt, backs off, never goes live; when the
/// storage is back, it goes live.
#[test]
fn engine_waits_in_arbitrating_while_the_directory_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("shared");
    let arb = FileArbiter::new(&mount);
    let cfg = ft_core::Config {
        arbiter_retry_min: 1_000_000,
        arbiter_retry_max: 16_000_000,
        ..common::config(2)
    };
    let mut now = 0;
    let mut node = common::backup(cfg, common::ToyParams::default(), 1_000_000, now);
    node.peer_failed(now);
    let mut attempts = Vec::new();
    let mut tries_at = Vec::new();
    while attempts.len() < 8 {
        let _ = node.step(now);
        while let Some(Command::TestAndSet { pair, me, attempt }) = node.poll_command() {
            tries_at.push(now);
            let r = arb.test_and_set(pair, me);
            assert!(matches!(r, Err(ArbiterError::Unreachable(_))));
            node.on_arbiter(r, now);
            assert_eq!(attempt as usize, attempts.len() + 1);
        }
        while let Some((_, n)) = node.poll_notice() {
            if let Notice::ArbiterUnreachable { attempt, .. } = n {
                attempts.push(attempt);
            }
            assert!(!matches!(n, Notice::WentLive { .. }));
        }
        assert!(!node.is_live());
        now = node.next_deadline().unwrap_or(now + 1_000_000).max(now + 1);
    }
    assert_eq!(*node.phase(), Phase::Arbitrating);
    assert_eq!(attempts, (1..=8).collect::<Vec<u32>>());
    let gaps: Vec<u64> = tries_at.windows(2).map(|w| w[1] - w[0]).collect();
    println!("retry gaps (fake ns): {gaps:?}");
    assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "backoff shrank");
    assert_eq!(*gaps.last().unwrap(), 16_000_000, "backoff is bounded");

    // The storage comes back.
    std::fs::create_dir(&mount).unwrap();
    for _ in 0..100 {
        let _ = node.step(now);
        while let Some(Command::TestAndSet { pair, me, .. }) = node.poll_command() {
            node.on_arbiter(arb.test_and_set(pair, me), now);
        }
        if node.is_live() {
            break;
        }
        now = node.next_deadline().unwrap_or(now + 1_000_000).max(now + 1);
    }
    assert!(node.is_live());
    assert_eq!(
        arb.read_claim(pair(1, 1)).unwrap().unwrap().holder,
        NodeId(2)
    );
}

/// The startup probe: a usable directory passes and is left as it was; a missing
/// directory or a plain file is unreachable, naming the path.
#[test]
fn probe_finds_a_missing_or_unusable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let arb = FileArbiter::new(dir.path());
    assert_eq!(arb.check(), Ok(()));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "probe left a file"
    );
    assert_eq!(arb.read_claim(pair(1, 1)).unwrap(), None);
    let missing = FileArbiter::new(dir.path().join("absent"));
    match missing.check() {
        Err(ArbiterError::Unreachable(m)) => assert!(m.contains("absent"), "{m}"),
        other => panic!("{other:?}"),
    }
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        FileArbiter::new(&file).check(),
        Err(ArbiterError::Unreachable(_))
    ));
}
