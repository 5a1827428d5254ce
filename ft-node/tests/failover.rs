//! Two `ft-node` processes on loopback with a client driving load: `kill -9` the
//! primary (the backup goes live), `kill -9` the backup (the primary goes on alone),
//! or cut the log channel (exactly one side goes live, decided by the file arbiter);
//! in every case the client sees every answer exactly once, with no gap, and the
//! service's counter continues by +1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ft_core::{NodeId, PairId};
use ft_node::client::{self, ClientConfig, ClientReport, ClientStatus};
use ft_node::node::{EXIT_DONE, EXIT_LOST};
use ft_node::progress::Log;
use ft_node::testkit::{start_pair, Pair, PairOptions};
use ft_transport::arbiter::{EtcdArbiter, FileArbiter};
use rand::{Rng, SeedableRng};

/// The process tests share two cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const REQUESTS: u64 = 600;
const LIMIT: Duration = Duration::from_secs(30);

fn seed(test: &str) -> rand_chacha::ChaCha8Rng {
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
    println!("{test}: seed {s} (rerun with FT_TEST_SEED={s})");
    rand_chacha::ChaCha8Rng::seed_from_u64(s)
}

fn options(dir: &std::path::Path, proxy: bool) -> PairOptions {
    PairOptions {
        bin: env!("CARGO_BIN_EXE_ft-node").into(),
        dir: dir.to_path_buf(),
        heartbeat_ms: 10,
        timeout_ms: 150,
        backup_timeout_ms: None,
        proxy,
        arbiter: None,
        extra: vec!["--progress-ms".into(), "500".into()],
        echo: true,
    }
}

fn start_client(addrs: Vec<SocketAddr>) -> (JoinHandle<ClientReport>, Arc<ClientStatus>) {
    let status = Arc::new(ClientStatus::default());
    let s = status.clone();
    let cfg = ClientConfig {
        addrs,
        requests: REQUESTS,
        // Back to back: up to 8 requests in flight when a node dies.
        window: 8,
        gap: Duration::ZERO,
        quit: true,
        limit: LIMIT,
    };
    let h = std::thread::spawn(move || {
        let log = Log::new("client");
        client::run(&cfg, &s, Some(&log)).unwrap()
    });
    (h, status)
}

/// Wait until the client has `k` answers, then a random sub-request moment more.
fn wait_answers(status: &ClientStatus, k: u64, rng: &mut impl Rng) {
    let deadline = Instant::now() + LIMIT;
    while status.answered() < k {
        assert!(
            Instant::now() < deadline,
            "client stuck at {} answers",
            status.answered()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    std::thread::sleep(Duration::from_micros(rng.gen_range(0..3000)));
}

fn holder(dir: &std::path::Path) -> Option<NodeId> {
    claim_in(&dir.join("arbiter"))
}

/// The holder of the pair's claim in the arbiter directory `arbiter`.
fn claim_in(arbiter: &std::path::Path) -> Option<NodeId> {
    FileArbiter::new(arbiter.to_path_buf())
        .read_claim(PairId {
            vm: 1,
            generation: 1,
        })
        .unwrap()
        .map(|c| c.holder)
}

fn finish_client(h: JoinHandle<ClientReport>) -> ClientReport {
    let report = h.join().expect("client thread");
    match report.verify(REQUESTS, true) {
        Ok(s) => {
            println!("client verified: {s}");
            // A fresh pair's history holds everything: the client saw the boot line.
            assert_eq!(s.first_output, 0, "outputs from #0");
            assert_eq!(s.foreign, 0, "one session: every reply was to it");
        }
        Err(e) => panic!("client verification failed: {e}"),
    }
    report
}

fn code(p: &mut ft_node::testkit::NodeProc) -> Option<i32> {
    p.wait_exit(Duration::from_secs(20)).and_then(|s| s.code())
}

/// Wait for `p` to end with `expected`; on anything else, fail with its last lines.
fn expect_code(p: &mut ft_node::testkit::NodeProc, expected: i32, what: &str) {
    let got = code(p);
    assert_eq!(
        got,
        Some(expected),
        "{what}; its last lines:\n{}",
        p.tail(40)
    );
}

/// A pair started with `opts` and a client driving load through it, stopped at a
/// random number of answers (seeded by `test`).
struct Loaded {
    primary: ft_node::testkit::NodeProc,
    backup: ft_node::testkit::NodeProc,
    proxy: Option<ft_node::testkit::Proxy>,
    client: JoinHandle<ClientReport>,
    status: Arc<ClientStatus>,
    rng: rand_chacha::ChaCha8Rng,
}

fn under_load(test: &str, opts: &PairOptions) -> Loaded {
    let mut rng = seed(test);
    let Pair {
        primary,
        backup,
        client_addrs,
        proxy,
    } = start_pair(opts).unwrap();
    let (client, status) = start_client(client_addrs);
    let k = rng.gen_range(REQUESTS / 5..REQUESTS * 4 / 5);
    wait_answers(&status, k, &mut rng);
    Loaded {
        primary,
        backup,
        proxy,
        client,
        status,
        rng,
    }
}

/// Kill the primary; `etcd` replaces the file arbiter with that etcd; `backend` is
/// `--backend`'s value.
fn kill_primary(test: &str, etcd: Option<&str>, backend: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut opts = PairOptions {
        arbiter: etcd.map(|url| format!("etcd:{url}")),
        ..options(dir.path(), false)
    };
    opts.extra.extend(["--backend".into(), backend.into()]);
    let Loaded {
        mut primary,
        mut backup,
        client: h,
        status,
        ..
    } = under_load(test, &opts);
    let killed = primary.kill9().unwrap();
    println!("killed the primary after {} answers", status.answered());

    let detected = backup.wait_for("PEER DECLARED DEAD", LIMIT).unwrap();
    let live = backup.wait_for("LIVE at", LIMIT).unwrap();
    let report = finish_client(h);
    expect_code(&mut backup, EXIT_DONE, "backup did not end cleanly");
    let pair = PairId {
        vm: 1,
        generation: 1,
    };
    let winner = match etcd {
        None => holder(dir.path()),
        Some(url) => EtcdArbiter::new(&[url], Duration::from_secs(1))
            .unwrap()
            .holder(pair)
            .unwrap()
            .map(|(n, _)| n),
    };
    assert_eq!(winner, Some(NodeId(2)));
    assert_eq!(report.connections.len(), 2, "the client failed over once");
    assert_eq!(report.connections[1].2, 2, "to the backup");
    println!(
        "kill -> detection {:.3} ms, detection -> live {:.3} ms",
        detected.unix_us.saturating_sub(killed) as f64 / 1e3,
        live.unix_us.saturating_sub(detected.unix_us) as f64 / 1e3
    );
}

#[test]
fn kill_primary_backup_goes_live_exactly_once() {
    kill_primary("kill_primary", None, "sim");
}

/// Both processes open one `--disk` file: the counter the service keeps on disk
/// sector 0 is in the file after a failover, written there by the backup that took
/// over, with the fencing token it won (the file arbiter's token is the generation);
/// nothing was fenced off, since the dead primary wrote nothing after it.
#[test]
fn kill_primary_with_a_shared_disk_file() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("pair.disk");
    let mut opts = options(dir.path(), false);
    opts.extra
        .extend(["--disk".to_string(), disk.display().to_string()]);
    let Loaded {
        mut primary,
        mut backup,
        client: h,
        status,
        ..
    } = under_load("kill_primary_shared_disk", &opts);
    primary.wait_for("disk shared file", LIMIT).unwrap();
    let file = ft_sim::Disk::open_file(&disk, ft_node::node::DISK_BYTES).unwrap();
    let counter = |f: &ft_sim::Disk| u64::from_le_bytes(f.read(0, 8).unwrap().try_into().unwrap());
    let before = counter(&file);
    assert!(before > 0, "the primary wrote its counter to the file");
    assert_eq!(
        file.token().unwrap(),
        0,
        "the primary never won the arbiter"
    );
    primary.kill9().unwrap();
    println!("killed the primary after {} answers", status.answered());
    backup.wait_for("LIVE at", LIMIT).unwrap();
    finish_client(h);
    expect_code(&mut backup, EXIT_DONE, "backup did not end cleanly");
    assert!(
        backup.printed("disk: fencing token 1, 0 writes fenced off"),
        "{}",
        backup.tail(10)
    );
    // Every 4th request writes the counter; the last write is the backup's.
    let after = counter(&file);
    assert!(
        after > before && after + 4 > REQUESTS && after <= REQUESTS + 1,
        "counter on disk: {before} at the kill, {after} at the end of {REQUESTS} requests"
    );
    assert_eq!(file.token().unwrap(), 1, "the backup wrote with its token");
}

/// The same with a KVM guest (`--backend kvm`: ft-kvm's network service), where
/// `/dev/kvm` is usable (required with `FT_REQUIRE_KVM=1`).
#[test]
fn kvm_kill_primary_backup_goes_live_exactly_once() {
    if !ft_node::testkit::kvm_or_skip("kvm_kill_primary_backup_goes_live_exactly_once") {
        return;
    }
    kill_primary("kill_primary_kvm", None, "kvm");
}

/// The same with the etcd arbiter (skipped without etcd unless `FT_REQUIRE_ETCD=1`).
#[test]
fn kill_primary_with_etcd_arbiter() {
    let Some(bin) = ft_node::testkit::etcd_binary() else {
        if std::env::var("FT_REQUIRE_ETCD").as_deref() == Ok("1") {
            panic!("etcd not installed but FT_REQUIRE_ETCD=1: apt-get install -y etcd-server");
        }
        println!("SKIP kill_primary_with_etcd_arbiter: etcd not installed");
        return;
    };
    let etcd = ft_node::testkit::EtcdServer::start(&bin).unwrap();
    kill_primary("kill_primary_etcd", Some(etcd.url()), "sim");
}

/// The pause that breaks naive designs: the primary is frozen (SIGSTOP) past the
/// timeout while a client drives load, so the backup goes live; then it is thawed
/// (SIGCONT) with its old state and sockets. It must not serve a single answer more:
/// every output it still holds waits for acks the backup no longer sends, it asks the
/// arbiter, loses to the backup and halts. The client sees every answer exactly once
/// with the counter continuous across the two nodes.
#[test]
fn sigstop_primary_backup_goes_live_and_the_thawed_primary_halts() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let Loaded {
        mut primary,
        mut backup,
        client: h,
        status,
        mut rng,
        ..
    } = under_load("sigstop_primary", &options(dir.path(), false));
    primary.signal("-STOP").unwrap();
    let frozen_at = status.answered();
    println!("froze the primary after {frozen_at} answers");
    backup.wait_for("LIVE at", LIMIT).unwrap();
    assert_eq!(holder(dir.path()), Some(NodeId(2)));
    // Thaw it a random moment after the backup went live.
    std::thread::sleep(Duration::from_millis(rng.gen_range(0..300)));
    primary.signal("-CONT").unwrap();
    expect_code(
        &mut primary,
        EXIT_LOST,
        "the thawed primary did not halt on losing the arbiter",
    );
    assert!(
        primary.printed("arbiter: LOST to node 2"),
        "{}",
        primary.tail(20)
    );
    let report = finish_client(h);
    expect_code(&mut backup, EXIT_DONE, "backup did not end cleanly");
    assert_eq!(holder(dir.path()), Some(NodeId(2)), "the claim stays");
    // Whatever the client got from node 1 it got before the freeze took hold: after
    // it, only the live backup answers.
    assert_eq!(report.connections.last().map(|c| c.2), Some(2));
}

#[test]
fn kill_backup_primary_goes_on_alone() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let Loaded {
        mut primary,
        mut backup,
        client: h,
        status,
        ..
    } = under_load("kill_backup", &options(dir.path(), false));
    backup.kill9().unwrap();
    println!("killed the backup after {} answers", status.answered());

    primary.wait_for("PEER DECLARED DEAD", LIMIT).unwrap();
    primary.wait_for("ALONE", LIMIT).unwrap();
    let report = finish_client(h);
    expect_code(&mut primary, EXIT_DONE, "primary did not end cleanly");
    assert_eq!(holder(dir.path()), Some(NodeId(1)));
    assert_eq!(
        report.connections.len(),
        1,
        "the client never had to fail over"
    );
    assert_eq!(report.repeats, 0);
}

/// Cut the log channel; `backup_timeout_ms` gives the backup a head start.
fn network_cut(test: &str, backup_timeout_ms: Option<u64>) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let opts = PairOptions {
        backup_timeout_ms,
        ..options(dir.path(), true)
    };
    let Loaded {
        mut primary,
        mut backup,
        proxy,
        client: h,
        status,
        ..
    } = under_load(test, &opts);
    let proxy = proxy.unwrap();
    proxy.cut();
    println!("cut the log channel after {} answers", status.answered());

    // Both sides suspect the other; the arbiter picks one.
    let deadline = Instant::now() + LIMIT;
    let winner = loop {
        if let Some(NodeId(n)) = holder(dir.path()) {
            break n;
        }
        assert!(Instant::now() < deadline, "nobody won the arbiter");
        std::thread::sleep(Duration::from_millis(2));
    };
    println!("node {winner} won the arbiter");
    let (w, l) = if winner == 1 {
        (&mut primary, &mut backup)
    } else {
        (&mut backup, &mut primary)
    };
    expect_code(l, EXIT_LOST, "the loser must halt");
    let report = finish_client(h);
    expect_code(w, EXIT_DONE, "the winner did not end cleanly");
    assert_eq!(holder(dir.path()), Some(NodeId(winner)));
    let expected_connections = if winner == 1 { 1 } else { 2 };
    assert_eq!(report.connections.len(), expected_connections);
    // The loser never served after the cut: the client's last connection, the one
    // that saw the rest of the session verified, is to the winner.
    assert_eq!(
        report.connections.last().map(|c| c.2),
        Some(winner),
        "the loser answered after the cut"
    );
}

/// Equal timeouts: the two sides race to the arbiter (the primary, whose silence
/// started one round trip earlier, usually wins).
#[test]
fn network_cut_exactly_one_side_goes_live() {
    network_cut("network_cut", None);
}

/// The backup suspects first: it usually wins and goes live while the primary still
/// runs, gating every output; the primary then loses the arbiter and halts, and the
/// client fails over.
#[test]
fn network_cut_backup_first_exactly_one_side_goes_live() {
    network_cut("network_cut_backup_first", Some(50));
}

/// A backup with the wrong key is refused before any record flows and exits; the
/// right one then pairs (guest from `--image`), and the `ft-client` binary verifies a
/// run with no failure.
#[test]
fn wrong_key_is_refused_then_the_pair_serves_ft_client() {
    use ft_node::testkit::NodeProc;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_ft-node"));
    let key = ft_node::testkit::write_key(dir.path()).unwrap();
    let wrong = dir.path().join("wrong-key");
    std::fs::write(&wrong, "another key, also 40 bytes, but wrong!!\n").unwrap();
    std::fs::create_dir(dir.path().join("arbiter")).unwrap();
    let arb = format!("file:{}", dir.path().join("arbiter").display());
    // The guest from an image file (raw code), as an operator would give it.
    let image = dir.path().join("service.bin");
    std::fs::write(&image, ft_sim::guests::service().unwrap()).unwrap();
    let image = image.display().to_string();
    let args = |role: &str, key: &std::path::Path, link: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "--role",
            role,
            "--client-listen",
            "127.0.0.1:0",
            "--arbiter",
            &arb,
            "--key-file",
            &key.display().to_string(),
            "--image",
            &image,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(link.iter().map(|s| s.to_string()));
        v
    };
    let mut primary = NodeProc::spawn(
        bin,
        "primary",
        &args("primary", &key, &["--listen", "127.0.0.1:0"]),
        true,
    )
    .unwrap();
    let line = primary
        .wait_for("waiting for the backup on ", LIMIT)
        .unwrap();
    let log_addr = line.msg.rsplit(' ').next().unwrap().to_string();
    let pclient = primary.wait_for("clients: ", LIMIT).unwrap();
    let pclient = pclient.msg.split_whitespace().nth(1).unwrap().to_string();

    let mut intruder = NodeProc::spawn(
        bin,
        "intruder",
        &args("backup", &wrong, &["--peer", &log_addr]),
        true,
    )
    .unwrap();
    let status = intruder
        .wait_exit(LIMIT)
        .expect("the intruder must give up");
    assert_eq!(status.code(), Some(ft_node::node::EXIT_SETUP));
    assert!(
        intruder.printed("authentication failed"),
        "{}",
        intruder.tail(5)
    );
    assert!(
        !primary.printed("running:"),
        "the primary started with an intruder"
    );

    let mut backup = NodeProc::spawn(
        bin,
        "backup",
        &args("backup", &key, &["--peer", &log_addr]),
        true,
    )
    .unwrap();
    let bclient = backup.wait_for("clients: ", LIMIT).unwrap();
    let bclient = bclient.msg.split_whitespace().nth(1).unwrap().to_string();
    backup.wait_for("log channel up", LIMIT).unwrap();
    // ft-client takes a host name, as ft-node does.
    let pclient = pclient.replace("127.0.0.1:", "localhost:");
    let mut client = NodeProc::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_ft-client")),
        "client",
        &[
            "--addr".into(),
            pclient,
            "--addr".into(),
            bclient,
            "--requests".into(),
            "200".into(),
        ],
        true,
    )
    .unwrap();
    assert_eq!(client.wait_exit(LIMIT).and_then(|s| s.code()), Some(0));
    assert!(client.printed("verified: "));
    assert!(
        client.printed("outputs #0..") && client.printed("0 of them to other sessions"),
        "one fresh session sees everything from #0, all its own"
    );
    expect_code(&mut primary, EXIT_DONE, "primary did not end as expected");
    expect_code(&mut backup, EXIT_DONE, "backup did not end as expected");
    assert_eq!(holder(dir.path()), None, "nobody needed the arbiter");
}

/// The shared storage is gone when the primary dies: the backup keeps waiting (and
/// says so), never goes live on its own; when the storage is back, it goes live and
/// the client gets everything exactly once.
#[test]
fn unreachable_arbiter_backup_waits_then_goes_live() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let Loaded {
        mut primary,
        mut backup,
        client: h,
        status,
        ..
    } = under_load("unreachable_arbiter", &options(dir.path(), false));
    let mount = dir.path().join("arbiter");
    let away = dir.path().join("arbiter-unmounted");
    std::fs::rename(&mount, &away).unwrap();
    primary.kill9().unwrap();
    backup.wait_for("PEER DECLARED DEAD", LIMIT).unwrap();
    let deadline = Instant::now() + LIMIT;
    while backup
        .lines()
        .iter()
        .filter(|l| l.contains("arbiter unreachable"))
        .count()
        < 4
    {
        assert!(Instant::now() < deadline, "{}", backup.tail(10));
        std::thread::sleep(Duration::from_millis(5));
    }
    // Typed: the claim is still unmade, the backup still runs, and no client got an
    // answer from it.
    assert_eq!(claim_in(&away), None, "claimed while the storage was away");
    assert!(
        backup.wait_exit(Duration::from_millis(10)).is_none(),
        "the backup gave up"
    );
    let answered = status.answered();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(status.answered(), answered, "served without the arbiter");
    std::fs::rename(&away, &mount).unwrap();
    backup.wait_for("LIVE at", LIMIT).unwrap();
    finish_client(h);
    expect_code(&mut backup, EXIT_DONE, "backup did not end cleanly");
    assert_eq!(holder(dir.path()), Some(NodeId(2)));
}

/// Two `ft-client` sessions, one after the other, against one pair: the second gets
/// every answer too (its request names are its own: the first session's answers in
/// the node's history are not taken for its own), and across a failover in the second
/// its re-sent requests are told apart from the first session's by the bridge's
/// dedupe, so none is dropped as already received.
#[test]
fn a_second_client_session_gets_all_its_answers_across_a_failover() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut rng = seed("second_session");
    let Pair {
        mut primary,
        mut backup,
        client_addrs,
        ..
    } = start_pair(&options(dir.path(), false)).unwrap();
    let cfg = |requests, quit| ClientConfig {
        addrs: client_addrs.clone(),
        requests,
        window: 8,
        gap: Duration::ZERO,
        quit,
        limit: LIMIT,
    };
    // The first session leaves the service running.
    let first_cfg = cfg(300, false);
    let first = client::run(
        &first_cfg,
        &ClientStatus::default(),
        Some(&Log::new("client-1")),
    )
    .expect("the first session");
    let s1 = first
        .verify(300, false)
        .expect("the first session verifies");
    println!("first session verified: {s1}");
    // The second, killed over at a random answer.
    let second_cfg = cfg(REQUESTS, true);
    let status = Arc::new(ClientStatus::default());
    let st = status.clone();
    let h = std::thread::spawn(move || {
        client::run(&second_cfg, &st, Some(&Log::new("client-2"))).expect("the second session")
    });
    // Before answer 300, so any request re-sent carries an id the first session also
    // used (the bridge must not take it for a duplicate).
    let k = rng.gen_range(REQUESTS / 5..300);
    wait_answers(&status, k, &mut rng);
    primary.kill9().unwrap();
    println!(
        "killed the primary after {} answers of the second session",
        status.answered()
    );
    backup.wait_for("LIVE at", LIMIT).unwrap();
    let second = h.join().expect("client thread");
    let s2 = second
        .verify(REQUESTS, true)
        .expect("the second session verifies");
    println!("second session verified: {s2}");
    expect_code(&mut backup, EXIT_DONE, "backup did not end cleanly");
    assert_ne!(s1.session, s2.session, "each run is its own session");
    // The second saw the whole history: the first session's 300 replies (not its
    // own), then its own, with the service counter continuous across both.
    assert_eq!((s1.first_output, s2.first_output), (0, 0));
    assert_eq!((s1.foreign, s2.foreign), (0, 300));
    // Re-sends are not asserted: the requests unanswered at the loss are often
    // answered in the backup's history (it replayed them), and then none is re-sent.
    assert_eq!(s2.last_counter, 300 + REQUESTS + 1);
    assert_eq!(
        second.connections.len(),
        2,
        "the second session failed over once"
    );
}
