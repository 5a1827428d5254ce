//! Snapshot and restore of a whole sim machine, and HTIF `tohost` exits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use ft_core::{AsyncEvent, EventSource, ExecPoint, Stop};
use ft_sim::devices::id;
use ft_sim::{guests, Machine, MachineConfig};

/// Drive a machine with a fixed script of answers: inputs get `n`, I/O completes at
/// once, packets arrive at fixed points. Returns the stops seen.
fn drive(m: &mut Machine, until: u64) -> Vec<Stop> {
    let mut stops = Vec::new();
    let mut n = 0u64;
    let mut pending_io = Vec::new();
    let packets = [3_000u64, 9_000, 15_000];
    loop {
        let next_packet = packets.iter().copied().find(|p| *p > m.point().count);
        let target = next_packet.unwrap_or(until).min(until);
        let stop = m.run(ExecPoint::at(target)).unwrap();
        match &stop {
            Stop::Reached => {
                if m.point().count >= until {
                    break;
                }
                for io in pending_io.drain(..) {
                    m.inject(&AsyncEvent::IoComplete {
                        io,
                        status: 0,
                        data: Some(Bytes::from(vec![7u8; 512])),
                    })
                    .ok();
                }
                m.inject(&AsyncEvent::DeviceInput {
                    device: id::NET,
                    data: Bytes::from_static(b"ping"),
                })
                .unwrap();
            }
            Stop::Input(_) => {
                n += 1;
                m.supply_input(&n.to_le_bytes()).unwrap();
            }
            Stop::IoStart(req) => {
                if req.device == id::BLOCK {
                    pending_io.push(req.id);
                    for io in pending_io.drain(..) {
                        m.inject(&AsyncEvent::IoComplete {
                            io,
                            status: 0,
                            data: Some(Bytes::from(vec![7u8; 512])),
                        })
                        .unwrap();
                    }
                }
            }
            Stop::Idle => {
                // Nothing would wake it but the next packet: jump there.
                match next_packet {
                    Some(_) => m
                        .inject(&AsyncEvent::DeviceInput {
                            device: id::NET,
                            data: Bytes::from_static(b"ping"),
                        })
                        .unwrap(),
                    None => break,
                }
            }
            Stop::Output(_) => {}
            Stop::Halted(_) => break,
        }
        stops.push(stop);
    }
    stops
}

#[test]
fn restored_snapshot_continues_identically() {
    let img = guests::service().unwrap();
    let mut a = Machine::from_raw(MachineConfig::default(), &img).unwrap();
    drive(&mut a, 2_000);
    let snap = a.snapshot().unwrap();
    let digest_at_snap = a.digest();

    // A fresh machine with a different program, restored from the snapshot.
    let mut b = Machine::from_raw(MachineConfig::default(), &[0x13, 0, 0, 0]).unwrap();
    b.restore(&snap).unwrap();
    assert_eq!(b.digest(), digest_at_snap);
    assert_eq!(b.point(), a.point());

    let sa = drive(&mut a, 20_000);
    let sb = drive(&mut b, 20_000);
    assert!(
        sa.iter().any(|s| matches!(s, Stop::Output(_))),
        "the run produced outputs: {sa:?}"
    );
    assert_eq!(sa, sb, "same stops after restore");
    assert_eq!(a.digest(), b.digest(), "same state after restore");
    assert_eq!(a.point(), b.point());
}

#[test]
fn corrupt_snapshots_are_rejected() {
    let img = guests::service().unwrap();
    let m = Machine::from_raw(MachineConfig::default(), &img).unwrap();
    let snap = m.snapshot().unwrap();
    let mut target = Machine::from_raw(MachineConfig::default(), &img).unwrap();
    let before = target.digest();

    let mut bad = snap.clone();
    bad[0] ^= 1;
    assert!(target.restore(&bad).is_err(), "bad magic");
    let mut bad = snap.clone();
    bad[8] = 99;
    let e = target.restore(&bad).unwrap_err().to_string();
    assert!(e.contains("version"), "{e}");
    let mut bad = snap.clone();
    let n = bad.len();
    bad[n / 2] ^= 0x10;
    assert!(target
        .restore(&bad)
        .unwrap_err()
        .to_string()
        .contains("checksum"));
    assert!(
        target.restore(&snap[..snap.len() - 1]).is_err(),
        "truncated"
    );
    assert!(target.restore(&[]).is_err(), "empty");
    // Nothing was half-applied.
    assert_eq!(target.digest(), before);
}
