//! The two sides of a pair must be distinct nodes starting from the same guest: a
//! backup with the primary's `--node-id`, or with another `--image`, is refused at the
//! log channel's handshake with a clear message and the setup exit code, and the
//! primary keeps waiting for a proper backup (it never serves a second copy).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use ft_node::node::EXIT_SETUP;
use ft_node::testkit::{write_key, NodeProc};

const LIMIT: Duration = Duration::from_secs(20);

fn args(role: &str, dir: &Path, key: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--role",
        role,
        "--client-listen",
        "127.0.0.1:0",
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

/// A primary waiting for its backup, then a backup with `extra` flags: the backup's
/// exit status and its last lines; the primary is checked to be still waiting.
fn refused_backup(extra: &[&str]) -> (Option<i32>, String) {
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
