//! Who may run: the two sides of a pair must be distinct nodes starting from the same
//! guest (a backup with the primary's `--node-id`, or with another `--image`, is refused
//! at the log channel's handshake with a clear message and the setup exit code, and
//! the primary keeps waiting for a proper backup); and a node asks the arbiter before
//! it starts (a generation that already has a live member, or a VM with a newer
//! generation, is refused: a restarted primary never becomes a second live copy, and a
//! stale claim from an earlier run is reported at once instead of deciding a later
//! failover).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ft_core::{Arbiter, NodeId, PairId, Purpose};
use ft_node::node::EXIT_SETUP;
use ft_node::testkit::{start_pair, write_key, NodeProc, Pair, PairOptions};
use ft_transport::arbiter::FileArbiter;

const LIMIT: Duration = Duration::from_secs(20);

/// The process tests share two cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Flags of a node with the file arbiter in `arbiter` and the key file `key`.
fn args(role: &str, arbiter: &Path, key: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--role",
        role,
        "--client-listen",
        "127.0.0.1:0",
        "--arbiter",
        &format!("file:{}", arbiter.display()),
        "--key-file",
        &key.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// A primary waiting for its backup, then a backup with `extra` flags: the backup's
/// exit status and its last lines; the primary is checked to be still waiting.
fn refused_backup(extra: &[&str]) -> (Option<i32>, String) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bin = Path::new(env!("CARGO_BIN_EXE_ft-node"));
    let dir = tempfile::tempdir().unwrap();
    let key = write_key(dir.path()).unwrap();
    let mut primary = NodeProc::spawn(
        bin,
        "primary",
        &args(
            "primary",
            dir.path(),
            &key,
            &["--listen", "127.0.0.1:0", "--node-id", "1"],
        ),
        false,
    )
    .unwrap();
    let line = primary
        .wait_for("waiting for the backup on ", LIMIT)
        .unwrap();
    let addr = line
        .msg
        .split("waiting for the backup on ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let mut bargs = vec!["--peer", addr.as_str(), "--connect-timeout-ms", "3000"];
    bargs.extend_from_slice(extra);
    let mut backup = NodeProc::spawn(
        bin,
        "backup",
        &args("backup", dir.path(), &key, &bargs),
        false,
    )
    .unwrap();
    let status = backup.wait_exit(LIMIT).expect("the backup was not refused");
    let tail = backup.tail(5);
    assert!(
        primary.wait_exit(Duration::from_millis(300)).is_none(),
        "the primary left instead of waiting for a proper backup: {}",
        primary.tail(5)
    );
    assert!(
        !primary.printed("running:"),
        "the primary started with a refused backup: {}",
        primary.tail(5)
    );
    primary.kill9().unwrap();
    (status.code(), tail)
}

#[test]
fn a_backup_with_the_primarys_node_id_is_refused() {
    let (code, tail) = refused_backup(&["--node-id", "1"]);
    assert_eq!(code, Some(EXIT_SETUP), "{tail}");
    assert!(tail.contains("node id collision"), "{tail}");
}

#[test]
fn a_backup_with_another_guest_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("other.bin");
    // Raw RISC-V code: `j .` (an endless loop), a guest unlike the built-in service.
    std::fs::write(&image, 0x0000_006fu32.to_le_bytes()).unwrap();
    let (code, tail) = refused_backup(&["--image", &image.display().to_string()]);
    assert_eq!(code, Some(EXIT_SETUP), "{tail}");
    assert!(tail.contains("guest image mismatch"), "{tail}");
}

fn pair(generation: u64) -> PairId {
    PairId { vm: 1, generation }
}

/// A node started with `extra` flags that must refuse at once: its exit code and lines.
fn refused_node(role: &str, dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let bin = Path::new(env!("CARGO_BIN_EXE_ft-node"));
    let key = write_key(dir).unwrap();
    let link = if role == "primary" {
        "--listen"
    } else {
        "--peer"
    };
    let mut flags = vec![link, "127.0.0.1:1"];
    flags.extend_from_slice(extra);
    let all = args(role, &dir.join("arbiter"), &key, &flags);
    let mut node = NodeProc::spawn(bin, role, &all, false).unwrap();
    let status = node
        .wait_exit(LIMIT)
        .unwrap_or_else(|| panic!("the {role} was not refused: {}", node.tail(5)));
    assert!(
        !node.printed("clients: "),
        "the refused {role} bound its client address first: {}",
        node.tail(5)
    );
    (status.code(), node.tail(5))
}

/// A pair on loopback with the file arbiter in `arb_dir`, 10/150 ms timing.
fn pair_options(dir: &Path, arb_dir: &Path, extra: &[&str]) -> PairOptions {
    PairOptions {
        bin: env!("CARGO_BIN_EXE_ft-node").into(),
        dir: dir.to_path_buf(),
        heartbeat_ms: 10,
        timeout_ms: 150,
        backup_timeout_ms: None,
        proxy: false,
        arbiter: Some(format!("file:{}", arb_dir.display())),
        extra: extra.iter().map(|s| s.to_string()).collect(),
        echo: false,
    }
}

/// A temporary directory with an empty file arbiter in `arbiter/` under it.
fn arbiter_dir() -> (tempfile::TempDir, std::path::PathBuf, FileArbiter) {
    let dir = tempfile::tempdir().unwrap();
    let arb_dir = dir.path().join("arbiter");
    std::fs::create_dir_all(&arb_dir).unwrap();
    let arb = FileArbiter::new(&arb_dir);
    (dir, arb_dir, arb)
}

fn wait_claim(arb: &FileArbiter, p: PairId, node: NodeId) {
    let deadline = Instant::now() + LIMIT;
    while Arbiter::holder(arb, p).unwrap() != Some(node) {
        assert!(
            Instant::now() < deadline,
            "node {} never claimed {p:?}",
            node.0
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_stale_claim_is_refused_at_startup_and_a_new_generation_runs() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, arb_dir, arb) = arbiter_dir();
    // An earlier run of the recipe left its failover's claim behind.
    arb.test_and_set(pair(1), NodeId(2)).unwrap();
    for role in ["primary", "backup"] {
        let (code, tail) = refused_node(role, dir.path(), &[]);
        assert_eq!(code, Some(EXIT_SETUP), "{tail}");
        assert!(
            tail.contains("vm 1 generation 1 is taken: node 2 went live in it"),
            "{tail}"
        );
        assert!(tail.contains("--generation 2"), "{tail}");
    }
    // A generation below the newest claimed one is refused as well.
    arb.test_and_set(pair(3), NodeId(1)).unwrap();
    let (code, tail) = refused_node("primary", dir.path(), &["--generation", "2"]);
    assert_eq!(code, Some(EXIT_SETUP), "{tail}");
    assert!(
        tail.contains("the newer generation 3 was claimed"),
        "{tail}"
    );
    assert!(tail.contains("--generation 4"), "{tail}");

    // The new pair on a fresh generation: its failover is decided by its own claim,
    // not the stale ones. Kill the backup: the primary goes on alone.
    let opts = pair_options(dir.path(), &arb_dir, &["--generation", "4"]);
    let Pair {
        mut primary,
        mut backup,
        ..
    } = start_pair(&opts).unwrap();
    backup.kill9().unwrap();
    wait_claim(&arb, pair(4), NodeId(1));
    primary.wait_for("ALONE:", LIMIT).unwrap();
    assert!(
        primary.wait_exit(Duration::from_millis(300)).is_none(),
        "the primary stopped after its backup died: {}",
        primary.tail(5)
    );
    primary.kill9().unwrap();
}

/// A live member (node 2, which went live in generation 1) reserved generation 2 for
/// a clone of itself. That generation is the running pair's: a primary is refused,
/// `--supersede 1` included (1 is no longer the newest), and so is a backup (it
/// would otherwise adopt the member's reservation as its primary's); both say whose
/// clone it is.
#[test]
fn a_live_members_clone_reservation_is_the_running_pairs() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, _arb_dir, arb) = arbiter_dir();
    arb.test_and_set(pair(1), NodeId(2)).unwrap();
    assert_eq!(
        arb.reserve_generation(1, NodeId(2), Some(1), Purpose::Clone)
            .unwrap(),
        Some(2)
    );
    let m = arb.membership(1).unwrap().unwrap();
    assert!(m.clone_of_live_member(), "{m:?}");
    for (role, extra) in [
        ("primary", &[][..]),
        ("primary", &["--supersede", "1"][..]),
        ("backup", &[][..]),
    ] {
        let (code, tail) = refused_node(role, dir.path(), extra);
        assert_eq!(code, Some(EXIT_SETUP), "{role} {extra:?}: {tail}");
        assert!(
            tail.contains(
                "vm 1 generation 2 is taken: node 2, the live member of generation 1, reserved it for a clone of itself"
            ),
            "{role} {extra:?}: {tail}"
        );
    }
    // Nothing new was reserved or claimed by the refused nodes.
    assert_eq!(arb.newest_generation(1).unwrap(), Some(2));
    assert_eq!(Arbiter::holder(&arb, pair(2)).unwrap(), None);
}

/// No `--generation` anywhere: the arbiter reserves them. An earlier run left a
/// failover's claim (generation 1) and another primary's reservation (generation 2)
/// behind. A primary is refused until `--supersede 2` declares that run over; then it
/// reserves generation 3, the next. Its backup, started first with the same flag,
/// waits for it and takes 3. When the backup dies, the primary wins generation 3 and
/// goes on alone: no outage. The same `--supersede 2` given again later starts no
/// new run: generation 2 is no longer the newest, and the node is refused as any
/// restart is.
#[test]
fn a_superseding_pair_reserves_the_next_generation_above_an_earlier_run_and_survives_a_failover() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bin = Path::new(env!("CARGO_BIN_EXE_ft-node"));
    let dir = tempfile::tempdir().unwrap();
    let arb_dir = dir.path().join("arbiter");
    std::fs::create_dir_all(&arb_dir).unwrap();
    let arb = FileArbiter::new(&arb_dir);
    arb.test_and_set(pair(1), NodeId(2)).unwrap();
    assert_eq!(
        arb.reserve_generation(1, NodeId(5), Some(1), Purpose::NewPair),
        Ok(Some(2))
    );

    let (code, tail) = refused_node("primary", dir.path(), &[]);
    assert_eq!(code, Some(EXIT_SETUP), "{tail}");
    assert!(
        tail.contains("vm 1 generation 2 is taken: node 5 reserved it for a new pair"),
        "{tail}"
    );
    assert!(tail.contains("--supersede 2 on both sides"), "{tail}");
    // A stale --supersede (not the newest generation) is no declaration at all.
    let (code, tail) = refused_node("primary", dir.path(), &["--supersede", "1"]);
    assert_eq!(code, Some(EXIT_SETUP), "{tail}");
    assert!(tail.contains("vm 1 generation 2 is taken"), "{tail}");
    // --supersede is for a new pair's two sides, and does not go with --generation.
    let (code, tail) = refused_node(
        "primary",
        dir.path(),
        &["--supersede", "2", "--generation", "9"],
    );
    assert_eq!(code, Some(EXIT_SETUP), "{tail}");
    assert!(tail.contains("does not go with --generation"), "{tail}");
    let disk = dir.path().join("disk").display().to_string();
    let join = [
        "--supersede",
        "2",
        "--node-id",
        "3",
        "--disk",
        &disk,
        "--listen",
        "127.0.0.1:0",
    ];
    let (code, tail) = refused_node("join", dir.path(), &join);
    assert_eq!(code, Some(EXIT_SETUP), "{tail}");
    assert!(tail.contains("--supersede starts a new pair"), "{tail}");

    let key = write_key(dir.path()).unwrap();
    let timing = [
        "--heartbeat-ms",
        "10",
        "--timeout-ms",
        "150",
        "--supersede",
        "2",
    ];
    let listen = ft_node::testkit::spare_addr().unwrap().to_string();
    let mut bflags = vec!["--peer", listen.as_str(), "--connect-timeout-ms", "15000"];
    bflags.extend_from_slice(&timing);
    let mut backup = NodeProc::spawn(
        bin,
        "backup",
        &args("backup", &arb_dir, &key, &bflags),
        false,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        backup.wait_exit(Duration::from_millis(10)).is_none() && !backup.printed("generation"),
        "the backup did not wait for the new pair's reservation: {}",
        backup.tail(5)
    );
    let mut pflags = vec!["--listen", listen.as_str()];
    pflags.extend_from_slice(&timing);
    let mut primary = NodeProc::spawn(
        bin,
        "primary",
        &args("primary", &arb_dir, &key, &pflags),
        false,
    )
    .unwrap();
    primary
        .wait_for(
            "reserved generation 3 of vm 1 from the arbiter (--supersede 2",
            LIMIT,
        )
        .unwrap();
    backup
        .wait_for("generation 3 of vm 1: the one node 1 reserved", LIMIT)
        .unwrap();
    backup.wait_for("log channel up", LIMIT).unwrap();
    primary.wait_for("log channel up", LIMIT).unwrap();
    assert_eq!(arb.reserved_by(pair(3)), Ok(Some(NodeId(1))));

    backup.kill9().unwrap();
    wait_claim(&arb, pair(3), NodeId(1));
    primary.wait_for("ALONE:", LIMIT).unwrap();
    assert!(
        primary.wait_exit(Duration::from_millis(300)).is_none(),
        "the primary stopped after its backup died: {}",
        primary.tail(5)
    );
    // The stale claim decided nothing; the old command again is an ordinary restart.
    assert_eq!(Arbiter::holder(&arb, pair(1)), Ok(Some(NodeId(2))));
    let (code, tail) = refused_node(
        "primary",
        dir.path(),
        &["--supersede", "2", "--node-id", "7"],
    );
    assert_eq!(code, Some(EXIT_SETUP), "{tail}");
    assert!(
        tail.contains("vm 1 generation 3 is taken: node 1 went live in it"),
        "{tail}"
    );
    assert_eq!(
        arb.newest_generation(1),
        Ok(Some(3)),
        "no new run was started"
    );
    primary.kill9().unwrap();
}

/// Two primaries started alone at the same moment for a VM the arbiter has never
/// seen: they race for its first generation, and exactly one of them serves, with
/// distinct node ids and with the same (default) one, which the arbiter's "a holder
/// wins again" cannot tell apart.
#[test]
fn racing_lone_primaries_one_serves() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bin = Path::new(env!("CARGO_BIN_EXE_ft-node"));
    for round in 0..6 {
        let ids = if round % 2 == 0 { [1, 2] } else { [1, 1] };
        let dir = tempfile::tempdir().unwrap();
        let arb_dir = dir.path().join("arbiter");
        std::fs::create_dir_all(&arb_dir).unwrap();
        let key = write_key(dir.path()).unwrap();
        let disk = dir.path().join("disk").display().to_string();
        let mut nodes: Vec<NodeProc> = ids
            .iter()
            .map(|id| {
                let id = id.to_string();
                let flags = [
                    "--alone",
                    "--node-id",
                    &id,
                    "--listen",
                    "127.0.0.1:0",
                    "--disk",
                    &disk,
                ];
                let all = args("primary", &arb_dir, &key, &flags);
                NodeProc::spawn(bin, &format!("p{id}"), &all, false).unwrap()
            })
            .collect();
        // Each one either serves alone or is refused.
        let deadline = Instant::now() + LIMIT;
        let mut serving = Vec::new();
        for (i, n) in nodes.iter_mut().enumerate() {
            loop {
                if n.printed("ALONE:") {
                    serving.push(i + 1);
                    break;
                }
                if n.wait_exit(Duration::from_millis(20)).is_some() {
                    break;
                }
                assert!(Instant::now() < deadline, "p{}: {}", i + 1, n.tail(5));
            }
        }
        assert_eq!(serving.len(), 1, "round {round}: serving {serving:?}");
        let arb = FileArbiter::new(&arb_dir);
        assert_eq!(arb.newest_generation(1), Ok(Some(1)), "round {round}");
        for n in &mut nodes {
            let _ = n.kill9();
        }
    }
}

#[test]
fn a_restarted_primary_is_refused_while_its_promoted_backup_is_live() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, arb_dir, arb) = arbiter_dir();
    let opts = pair_options(dir.path(), &arb_dir, &[]);
    let Pair {
        mut primary,
        mut backup,
        ..
    } = start_pair(&opts).unwrap();
    primary.kill9().unwrap();
    wait_claim(&arb, pair(1), NodeId(2));
    backup.wait_for("LIVE at", LIMIT).unwrap();
    // The old primary, restarted with its old command line.
    let (code, tail) = refused_node("primary", dir.path(), &[]);
    assert_eq!(code, Some(EXIT_SETUP), "{tail}");
    assert!(
        tail.contains("vm 1 generation 1 is taken: node 2 went live in it"),
        "{tail}"
    );
    assert!(
        backup.wait_exit(Duration::from_millis(300)).is_none(),
        "the live backup stopped: {}",
        backup.tail(5)
    );
    backup.kill9().unwrap();
}
