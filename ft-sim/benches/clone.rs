//! Live-clone cost on the sim machine, beside QEMU's live migration in the same run.
//!
//! **ft.** A 256 MiB guest that keeps writing a working set of 0, 1 and 8 MiB (the
//! [`guests::dirtier`]) runs alone; a fresh machine connects over the authenticated
//! TCP link on loopback and is cloned from it while it runs. The sender is driven on
//! this thread by ft-core's driver loop, the receiver on its own thread by
//! [`ft_transport::run`], as in production.
//!
//! **QEMU.** `qemu-system-riscv64 -M virt -m 256` running Debian's OpenSBI and S-mode
//! U-Boot writes the same working set from the U-Boot shell
//! (`while true; do mw.l 0x84000000 0x12345678 <words>; done`, typed into its serial
//! socket) and is migrated to a second QEMU started with `-incoming tcp:...`:
//! `migrate -d` on the source's monitor, then `info migrate` until it completes, for
//! its "total time" and "downtime" (sent as human-monitor commands over QMP).
//!
//! Each side runs several times (`FT_CLONE_BENCH_RUNS`, default 5, and
//! `FT_CLONE_BENCH_QEMU_RUNS`, default 5); each figure is the median of its runs.
//! `FT_CLONE_BENCH_WS=8` (a comma list) picks the working sets, in MiB.
//! One line per working set:
//! `clone: mem_mib=256 ws_mib=W rounds=R bytes=B total_ms=T pause_ms=P qemu_total_ms=QT qemu_downtime_ms=QD`
//! - `total_ms`: from the start of the clone until the new backup confirmed the final
//!   state's digest (QEMU: its total time);
//! - `pause_ms`: the driver turn that holds the final pause, during which the guest is
//!   stopped (the last dirty pages copied out, CPU and devices saved, the digest
//!   taken); after it the guest runs on while the last messages travel, its outputs
//!   held by the output gate until the new backup acknowledges them (QEMU: downtime,
//!   which also covers the last transfer, as QEMU's destination must have it all
//!   before it runs);
//! - `bytes`: bytes the sender put on the link until then (frames, headers and log
//!   records after the pause included; TCP's own framing and MACs not).
//!
//! A `clone-detail:` line per working set adds the pages sent, those of the final
//! pause, and the time from the pause to the confirmation. A `clone-inproc:` line
//! measures the engine and machine alone (frames handed across in one thread).
//! Without QEMU installed (or with `FT_CLONE_BENCH_QEMU=0`), its figures print as
//! `NA`, with the reason on stderr. `FT_BENCH_TRACE=1` prints both sides' notices.
//!
//! Run: `cargo bench -p ft-sim --bench clone`

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ft_core::log_codec::{self, Frame};
use ft_core::{CloneConfig, EventSource, Node, Notice, Transmit};
use ft_sim::{guests, Machine, MachineConfig};

mod clone_tcp;
use clone_tcp::{median, ms, runs, world, FtRun};

/// The engine of node `node` in `generation` (slices of 20,000 instructions).
fn engine(node: u64, generation: u64) -> ft_core::Config {
    clone_tcp::engine(node, generation, 20_000)
}

const MEM_MIB: usize = 256;
const QEMU: &str = "qemu-system-riscv64";
const OPENSBI: &str = "/usr/share/qemu/opensbi-riscv64-generic-fw_dynamic.bin";
const UBOOT: &str = "/usr/lib/u-boot/qemu-riscv64_smode/u-boot.bin";

fn machine(ws_mib: u64) -> Machine {
    let cfg = MachineConfig {
        ram_size: MEM_MIB << 20,
        ..MachineConfig::default()
    };
    Machine::from_raw(cfg, &guests::dirtier(ws_mib << 20, 0, 0).unwrap()).unwrap()
}

/// Clone a running 256 MiB guest over loopback TCP.
fn ft_tcp(ws_mib: u64) -> FtRun {
    clone_tcp::measure(move || machine(ws_mib), 20_000, 200)
}

/// The in-process measurement: the engine and the machine, no socket.
fn ft_inproc(ws_mib: u64) {
    let mut s = Node::unprotected(engine(1, 1), machine(ws_mib), world(true), 0);
    let mut r = Node::clone_target(engine(2, 2), machine(ws_mib), world(false), 0);
    for _ in 0..200 {
        s.step(0).unwrap();
    }
    let carry = |t: Transmit| {
        let Transmit::Clone(m) = t else {
            panic!("only clone frames are expected here")
        };
        let mut b = Vec::new();
        log_codec::encode_clone(&m, &mut b).unwrap();
        match log_codec::decode_frame(&b).unwrap() {
            Frame::Clone(m) => m,
            other => panic!("decoded {other:?}"),
        }
    };
    let start = Instant::now();
    s.start_clone(engine(1, 2).pair, CloneConfig::default(), 0)
        .unwrap();
    let (mut pause, mut digest_ms, mut summary, mut done, mut now) = (None, 0.0, None, false, 0);
    while !done {
        now += 1_000;
        let t0 = Instant::now();
        s.step(now).unwrap();
        let step = t0.elapsed();
        while let Some((_, n)) = s.poll_notice() {
            match n {
                Notice::ClonePaused {
                    rounds,
                    pages,
                    bytes,
                    ..
                } => {
                    pause = Some(step);
                    summary = Some((rounds, pages, bytes));
                    // The digest part of the pause, measured apart on the same state.
                    let t1 = Instant::now();
                    std::hint::black_box(s.source_mut().digest().unwrap());
                    digest_ms = ms(t1.elapsed());
                }
                Notice::CloneComplete { .. } => done = true,
                Notice::CloneAborted { reason } => panic!("clone abandoned: {reason}"),
                _ => {}
            }
        }
        while let Some(t) = s.poll_transmit(now) {
            r.handle_clone(carry(t), now).unwrap();
        }
        while let Some(t) = r.poll_transmit(now) {
            if let Transmit::Clone(m) = t {
                s.handle_clone(m, now).unwrap();
            }
        }
    }
    let (rounds, pages, bytes) = summary.unwrap();
    println!(
        "clone-inproc: mem_mib={MEM_MIB} ws_mib={ws_mib} rounds={rounds} pages={pages} bytes={bytes} total_ms={:.1} pause_ms={:.2} digest_ms={digest_ms:.2}",
        ms(start.elapsed()),
        ms(pause.unwrap())
    );
}

/// Kills its QEMU processes and removes its socket directory when dropped.
struct QemuRun {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for QemuRun {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn connect_unix(path: &Path, within: Duration) -> Result<UnixStream, String> {
    let deadline = Instant::now() + within;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("connecting to {}: {e}", path.display()))
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Read from the serial console until `pat` appears.
fn read_until(serial: &mut UnixStream, pat: &str, within: Duration) -> Result<(), String> {
    serial
        .set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match serial.read(&mut buf) {
            Ok(0) => return Err("the serial console closed".into()),
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&seen).contains(pat) {
                    return Ok(());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("reading the serial console: {e}")),
        }
    }
    Err(format!(
        "no {pat:?} on the serial console; it showed: {}",
        String::from_utf8_lossy(&seen)
    ))
}

/// A QMP session: one command at a time, answered by a `return` or `error` line.
struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qmp {
    fn open(path: &Path) -> Result<Qmp, String> {
        let s = connect_unix(path, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let w = s.try_clone().map_err(|e| e.to_string())?;
        let mut q = Qmp {
            r: BufReader::new(s),
            w,
        };
        let mut greeting = String::new();
        q.r.read_line(&mut greeting).map_err(|e| e.to_string())?;
        q.execute(r#"{"execute":"qmp_capabilities"}"#)?;
        Ok(q)
    }

    fn execute(&mut self, cmd: &str) -> Result<String, String> {
        self.w
            .write_all(format!("{cmd}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err("QMP closed".into());
            }
            if line.contains("\"error\"") {
                return Err(format!("QMP {cmd}: {line}"));
            }
            if line.contains("\"return\"") {
                return Ok(line);
            }
        }
    }

    /// A human-monitor command (what one types at `(qemu)`), and its output.
    fn hmp(&mut self, line: &str) -> Result<String, String> {
        self.execute(&format!(
            r#"{{"execute":"human-monitor-command","arguments":{{"command-line":"{line}"}}}}"#
        ))
    }
}

/// The number after `key` in `text` (as `info migrate` prints it).
fn field(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// QEMU's migration of a U-Boot guest writing `ws_mib` MiB: (total, downtime) in ms.
fn qemu(ws_mib: u64) -> Result<(u64, u64), String> {
    for f in [OPENSBI, UBOOT] {
        if !Path::new(f).exists() {
            return Err(format!(
                "{f} is missing (apt install qemu-system-misc qemu-system-data u-boot-qemu)"
            ));
        }
    }
    let dir = std::env::temp_dir().join(format!("ft-clone-bench-{}-{ws_mib}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut run = QemuRun {
        dir: dir.clone(),
        children: Vec::new(),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let spawn = |name: &str, serial_wait: bool, extra: &[String]| {
        let sock = |what: &str, wait: bool| {
            format!(
                "unix:{},server=on,wait={}",
                dir.join(format!("{name}-{what}.sock")).display(),
                if wait { "on" } else { "off" }
            )
        };
        Command::new(QEMU)
            .args(["-M", "virt", "-m", &MEM_MIB.to_string(), "-display", "none"])
            .args(["-bios", OPENSBI, "-kernel", UBOOT, "-monitor", "none"])
            .args(["-serial", &sock("serial", serial_wait)])
            .args(["-qmp", &sock("qmp", false)])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{QEMU}: {e} (apt install qemu-system-misc)"))
    };
    // The source waits for its serial console, so nothing it prints is lost.
    run.children.push(spawn("src", true, &[])?);
    run.children.push(spawn(
        "dst",
        false,
        &["-incoming".into(), format!("tcp:127.0.0.1:{port}")],
    )?);
    let mut serial = connect_unix(&dir.join("src-serial.sock"), Duration::from_secs(10))?;
    read_until(&mut serial, "autoboot", Duration::from_secs(60))?;
    serial.write_all(b"\n").map_err(|e| e.to_string())?;
    read_until(&mut serial, "=> ", Duration::from_secs(10))?;
    if ws_mib > 0 {
        let words = (ws_mib << 20) / 4;
        serial
            .write_all(
                format!("while true; do mw.l 0x84000000 0x12345678 {words:x}; done\n").as_bytes(),
            )
            .map_err(|e| e.to_string())?;
        // Let the loop run a while before migrating.
        thread::sleep(Duration::from_millis(500));
    }
    // The destination is up and listening once its QMP socket answers.
    let _dst = Qmp::open(&dir.join("dst-qmp.sock"))?;
    let mut src = Qmp::open(&dir.join("src-qmp.sock"))?;
    src.hmp(&format!("migrate -d tcp:127.0.0.1:{port}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = src.hmp("info migrate")?;
        if info.contains("Migration status: completed") {
            let total = field(&info, "total time:").ok_or("no total time")?;
            let down = field(&info, "downtime:").ok_or("no downtime")?;
            return Ok((total, down));
        }
        if info.contains("Migration status: failed") || Instant::now() >= deadline {
            return Err(format!("QEMU's migration did not complete: {info}"));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn main() {
    let qemu_off = std::env::var("FT_CLONE_BENCH_QEMU").is_ok_and(|v| v == "0");
    let qemu_missing = qemu_off
        || Command::new(QEMU)
            .arg("--version")
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true);
    let (ft_runs, qemu_runs) = (
        runs("FT_CLONE_BENCH_RUNS", 5),
        runs("FT_CLONE_BENCH_QEMU_RUNS", 5),
    );
    println!("clone bench: medians of {ft_runs} ft clones and {qemu_runs} QEMU migrations per working set");
    let sets: Vec<u64> = std::env::var("FT_CLONE_BENCH_WS")
        .ok()
        .map(|v| v.split(',').filter_map(|w| w.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![0, 1, 8]);
    for ws in sets {
        ft_inproc(ws);
        let ft: Vec<FtRun> = (0..ft_runs).map(|_| ft_tcp(ws)).collect();
        let m = |f: fn(&FtRun) -> f64| median(ft.iter().map(f).collect());
        let q: Result<Vec<(u64, u64)>, String> = if qemu_off {
            Err("FT_CLONE_BENCH_QEMU=0".into())
        } else if qemu_missing {
            Err(format!(
                "{QEMU} is not installed (apt install qemu-system-misc)"
            ))
        } else {
            (0..qemu_runs).map(|_| qemu(ws)).collect()
        };
        let (qt, qd) = match q {
            Ok(v) => (
                format!("{}", median(v.iter().map(|r| r.0 as f64).collect())),
                format!("{}", median(v.iter().map(|r| r.1 as f64).collect())),
            ),
            Err(e) => {
                eprintln!("qemu side skipped for ws_mib={ws}: {e}");
                ("NA".into(), "NA".into())
            }
        };
        println!(
            "clone: mem_mib={MEM_MIB} ws_mib={ws} rounds={} bytes={} total_ms={:.1} pause_ms={:.2} qemu_total_ms={qt} qemu_downtime_ms={qd}",
            m(|r| f64::from(r.rounds)),
            m(|r| r.bytes as f64),
            m(|r| r.total_ms),
            m(|r| r.pause_ms)
        );
        println!(
            "clone-detail: ws_mib={ws} pages={} final_pages={} pause_to_confirmed_ms={:.1} pause_ms_max={:.2}",
            m(|r| r.pages as f64),
            m(|r| r.final_pages as f64),
            m(|r| r.confirm_ms),
            ft.iter().map(|r| r.pause_ms).fold(0.0, f64::max)
        );
    }
}
