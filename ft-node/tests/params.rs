//! Bad parameters are refused at once with a clear message and the setup exit code,
//! before anything is started or printed as running.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;

use ft_core::Arbiter;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run a primary with `extra` flags (and a usable file arbiter unless `extra` names
/// one); its exit code and standard error.
fn ft_node(extra: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    let mut args = vec![
        "--role",
        "primary",
        "--listen",
        "127.0.0.1:0",
        "--client-listen",
        "127.0.0.1:0",
    ];
    let arb = format!("file:{}", dir.path().display());
    if !extra.contains(&"--arbiter") {
        args.extend_from_slice(&["--arbiter", &arb]);
    }
    args.push("--key-file");
    let key = key.display().to_string();
    args.push(&key);
    args.extend_from_slice(extra);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ft-node"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A node that accepted the parameters would wait for its backup: give it a
    // bounded time to refuse, then fail instead of hanging.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("ft-node {extra:?} did not refuse its parameters within 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), err)
}

#[test]
fn bad_timing_parameters_are_refused_before_anything_runs() {
    for (flags, field) in [
        (&["--heartbeat-ms", "0"][..], "heartbeat_interval"),
        (&["--timeout-ms", "0"][..], "peer_timeout"),
        (
            &["--heartbeat-ms", "10", "--timeout-ms", "15"][..],
            "peer_timeout",
        ),
    ] {
        let (code, err) = ft_node(flags);
        assert_eq!(code, Some(ft_node::node::EXIT_SETUP), "{flags:?}: {err}");
        assert!(
            err.contains(&format!("invalid configuration: {field}")),
            "{flags:?}: {err}"
        );
        // Refused before the first progress line: nothing bound, nothing serving.
        assert_eq!(err.lines().count(), 1, "{flags:?}: {err}");
    }
}

/// An arbiter that cannot be used is reported at startup, not at failover: a missing
/// directory, and an etcd endpoint where nothing listens.
#[test]
fn an_unusable_arbiter_is_refused_at_startup() {
    let missing = "file:/nonexistent/ft-arbiter-dir";
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead_etcd = format!("etcd:http://127.0.0.1:{port}");
    for spec in [missing, dead_etcd.as_str()] {
        let (code, err) = ft_node(&["--arbiter", spec, "--arbiter-timeout-ms", "500"]);
        assert_eq!(code, Some(ft_node::node::EXIT_SETUP), "{spec}: {err}");
        assert!(
            err.contains(&format!("arbiter {spec} is not usable")),
            "{spec}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{spec}: {err}");
    }
}

/// A `--disk` that is not an ft disk file (or not of the guest's size, or in a missing
/// directory) is refused at startup with the reason, and the file is left as it was.
#[test]
fn a_bad_disk_file_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, b"an ordinary file, not an ft disk image").unwrap();
    let small = dir.path().join("small.disk");
    ft_sim::Disk::open_file(&small, 4096).unwrap();
    let missing = dir.path().join("no/such/dir/pair.disk");
    for (path, why) in [
        (&junk, "bad magic"),
        (&small, "holds 4096 bytes, not 65536"),
        (&missing, "No such file"),
    ] {
        let (code, err) = ft_node(&["--disk", &path.display().to_string()]);
        assert_eq!(code, Some(ft_node::node::EXIT_SETUP), "{path:?}: {err}");
        assert!(err.contains("--disk: disk file"), "{path:?}: {err}");
        assert!(err.contains(why), "{path:?}: {err}");
    }
    assert_eq!(
        std::fs::read(&junk).unwrap(),
        b"an ordinary file, not an ft disk image"
    );
}

/// A disk file left by an earlier run (it carries a winner's fencing token) is refused
/// with a fresh arbiter, which holds no claim that could outrank that token.
#[test]
fn a_disk_from_an_earlier_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pair.disk");
    let disk = ft_sim::Disk::open_file(&path, ft_node::node::DISK_BYTES).unwrap();
    disk.write_fenced(3, 0, &[1; 8]).unwrap();
    let (code, err) = ft_node(&["--disk", &path.display().to_string()]);
    assert_eq!(code, Some(ft_node::node::EXIT_SETUP), "{err}");
    assert!(
        err.contains("last written with fencing token 3")
            && err.contains("the disk is from an earlier run"),
        "{err}"
    );
    assert_eq!(disk.read(0, 8).unwrap(), [1; 8], "the file is untouched");
}

/// `--backend kvm` runs its own workload: an `--image` is refused; an unknown backend
/// is refused by the flag parser with the values it takes.
#[test]
fn a_kvm_backend_with_an_image_and_an_unknown_backend_are_refused() {
    let (code, err) = ft_node(&["--backend", "kvm", "--image", "/nonexistent"]);
    assert_eq!(code, Some(ft_node::node::EXIT_SETUP), "{err}");
    assert!(err.contains("--image is for sim guests"), "{err}");
    let (code, err) = ft_node(&["--backend", "qemu"]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("possible values: sim, kvm"), "{err}");
}

/// Run `ft-node` with `args` to its end (at most 20 s); its exit code, standard output
/// and standard error.
fn run_to_end(args: &[String]) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ft-node"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("ft-node {args:?} did not end within 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), out, err)
}

/// A primary's flags with a file arbiter in `dir`, and `key`.
fn primary_args(dir: &std::path::Path, key: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--role",
        "primary",
        "--arbiter",
        &format!("file:{}", dir.display()),
        "--key-file",
        &key.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// No false start: a node that cannot run (a key file that is missing or too short,
/// an address it listens on that is taken) exits with the setup code and the reason,
/// and has said nothing about clients or serving, on either stream. It has not asked
/// the arbiter either: a primary that reserved a generation and then failed would find
/// it taken when rerun with the mistake fixed. Fixed, the same command starts.
#[test]
fn a_node_that_cannot_run_never_says_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    let arbiter = dir.path().join("arbiter");
    std::fs::create_dir(&arbiter).unwrap();
    let good = dir.path().join("key");
    std::fs::write(&good, [7u8; 32]).unwrap();
    let short = dir.path().join("short-key");
    std::fs::write(&short, b"too short\n").unwrap();
    let missing = dir.path().join("no-such-key");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let free = "127.0.0.1:0";
    let mut cases: Vec<(Vec<String>, String)> = Vec::new();
    let both = |l: &str, c: &str| {
        vec![
            "--listen".to_string(),
            l.into(),
            "--client-listen".into(),
            c.into(),
        ]
    };
    for (key, why) in [
        (
            &missing,
            format!("cannot read key file {}", missing.display()),
        ),
        (&short, "pre-shared key of 9 bytes is too short".into()),
    ] {
        let extra = both(free, free);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        cases.push((primary_args(&arbiter, key, &extra), why.clone()));
        // A backup too, before it connects anywhere.
        let mut b = primary_args(
            &arbiter,
            key,
            &["--peer", &taken_addr, "--client-listen", free],
        );
        b[1] = "backup".into();
        cases.push((b, why));
    }
    for (l, c, flag) in [
        (taken_addr.as_str(), free, "--listen"),
        (free, taken_addr.as_str(), "--client-listen"),
    ] {
        let extra = both(l, c);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let why = format!("cannot listen on {flag} {taken_addr}: Address already in use");
        cases.push((primary_args(&arbiter, &good, &extra), why.clone()));
    }
    // Alone, the --listen its first clone offer will use.
    let disk = dir.path().join("pair.disk").display().to_string();
    let extra = both(&taken_addr, free);
    let mut extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    extra.extend(["--alone", "--disk", &disk]);
    cases.push((
        primary_args(&arbiter, &good, &extra),
        format!("cannot listen on --listen {taken_addr}"),
    ));
    for (args, why) in &cases {
        let (code, out, err) = run_to_end(args);
        assert_eq!(code, Some(ft_node::node::EXIT_SETUP), "{args:?}: {err}");
        assert!(
            err.contains(why.as_str()),
            "{args:?}: wanted {why:?} in:\n{err}"
        );
        for (name, text) in [("stdout", &out), ("stderr", &err)] {
            for word in ["serving", "clients:", "running"] {
                assert!(
                    !text.contains(word),
                    "{args:?}: {word:?} on {name} before the error:\n{text}"
                );
            }
        }
        assert_eq!(err.lines().count(), 1, "{args:?}: only the error: {err}");
        assert!(
            ft_transport::arbiter::FileArbiter::new(&arbiter)
                .membership(1)
                .unwrap()
                .is_none(),
            "{args:?}: the arbiter was asked for a generation"
        );
    }
    // The mistake fixed, the same command starts: it waits for its backup.
    drop(taken);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ft-node"))
        .args(primary_args(
            &arbiter,
            &good,
            &["--listen", free, "--client-listen", free],
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains("waiting for the backup on") {
        assert!(
            Instant::now() < deadline,
            "the fixed primary did not start:\n{seen}"
        );
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut lines, &mut line).unwrap() == 0 {
            panic!("the fixed primary ended:\n{seen}");
        }
        seen.push_str(&line);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen.contains("(serving)"), "{seen}");
}
