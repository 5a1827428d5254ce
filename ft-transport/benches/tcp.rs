//! TCP log channel benchmark over loopback. Prints, each pair measured in the same
//! run:
//!
//! * output-rule latency: from an output's record handed to the primary's channel end
//!   until the backup's ack for it comes back (one record in flight, the backup acking
//!   at once), p50/p99, next to a raw TCP ping-pong of the same sizes, and the ratio;
//! * log-channel throughput in MB/s and records/s, for small records (16-byte inputs)
//!   and large ones (4 KiB DMA payloads), in batches of 256 with acks flowing back; the
//!   in-memory channel's figure is printed beside it for reference.
//!
//! Run: `cargo bench -p ft-transport --bench tcp`
//! (`FT_BENCH_SAMPLES` sets the latency sample count, default 5000.)

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{
    log_codec, Ack, AsyncEvent, ChannelError, DeviceId, Event, ExecPoint, IoId, LogChannel,
    LogReceiver, OutputSeq, PairId, Record,
};
use ft_transport::tcp::{
    PreSharedKey, PrimaryListener, TcpConfig, TcpLink, FRAME_HEADER_LEN, TAG_LEN,
};
use ft_transport::{BackupEnd, PrimaryEnd};

fn tcp_pair() -> (PrimaryEnd<TcpLink>, BackupEnd<TcpLink>) {
    let key = PreSharedKey::new(*b"benchmark key, 32 bytes long....").unwrap();
    let mut cfg = TcpConfig::new(
        key,
        PairId {
            vm: 1,
            generation: 1,
        },
        ft_core::NodeId(1),
    );
    cfg.log = false;
    let mut l = PrimaryListener::bind("127.0.0.1:0", cfg.clone()).unwrap();
    let addr = l.local_addr();
    let bcfg = TcpConfig {
        node: ft_core::NodeId(2),
        ..cfg
    };
    let b = std::thread::spawn(move || TcpLink::connect(addr, bcfg, Duration::from_secs(10)));
    let p = l.accept(Some(Duration::from_secs(10))).unwrap();
    (
        PrimaryEnd::new(p),
        BackupEnd::new(b.join().unwrap().unwrap()),
    )
}

/// Wait a little without giving the core away for long: the channel's own threads need
/// it on a small machine.
fn relax(spins: &mut u32) {
    *spins += 1;
    if *spins < 50 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The backup side of a benchmark: take batches, ack each one at once, until stopped.
fn acker<R: LogReceiver>(mut b: R, stop: Arc<AtomicBool>) -> R {
    let mut spins = 0;
    while !stop.load(Ordering::Relaxed) {
        match b.try_recv_records() {
            Ok(Some(batch)) => {
                spins = 0;
                let last = batch.last().map_or(0, |r| r.seq);
                let ack = Ack {
                    received: last,
                    replayed: last,
                };
                loop {
                    match b.send_ack(ack) {
                        Ok(()) => break,
                        Err(ChannelError::Full) => std::thread::yield_now(),
                        Err(e) => panic!("ack: {e}"),
                    }
                }
            }
            Ok(None) => relax(&mut spins),
            Err(e) => panic!("backup: {e}"),
        }
    }
    b
}

fn output_record(seq: u64) -> Record {
    Record {
        seq,
        point: ExecPoint::at(seq * 100),
        event: Event::Output {
            seq: OutputSeq(seq),
            digest: 0x1234_5678_9abc_def0 ^ seq,
        },
    }
}

/// One output record at a time through the TCP channel; the time until its ack.
fn channel_latency(samples: usize) -> (Vec<Duration>, usize, usize) {
    let (mut p, b) = tcp_pair();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let backup = std::thread::spawn(move || acker(b, s));
    let warmup = samples / 10;
    let mut out = Vec::with_capacity(samples);
    for i in 0..(warmup + samples) as u64 {
        let seq = i + 1;
        let rec = [output_record(seq)];
        let t0 = Instant::now();
        p.send_records(&rec).unwrap();
        let mut spins = 0;
        loop {
            match p.try_recv_ack() {
                Ok(Some(a)) if a.received >= seq => break,
                Ok(_) => relax(&mut spins),
                Err(e) => panic!("primary: {e}"),
            }
        }
        if i as usize >= warmup {
            out.push(t0.elapsed());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let b = backup.join().unwrap();
    let out_frame = (p.bytes_sent() / p.frames_sent()) as usize;
    let ack_frame = (b.bytes_sent() / b.frames_sent()) as usize;
    (out, out_frame, ack_frame)
}

/// Fill `buf` from a nonblocking socket, waiting the way the channel's users do.
fn read_polled(s: &mut TcpStream, buf: &mut [u8]) {
    let mut got = 0;
    let mut spins = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => panic!("peer closed"),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => relax(&mut spins),
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Raw TCP ping-pong with the same message sizes on the wire (log frame plus the
/// stream's header and tag each way), no threads in between: with blocking reads, or
/// with nonblocking reads polled like the channel ends are.
fn raw_latency(samples: usize, ping: usize, pong: usize, polled: bool) -> Vec<Duration> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let n = samples + samples / 10;
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        s.set_nonblocking(polled).unwrap();
        let mut buf = vec![0u8; ping];
        let reply = vec![7u8; pong];
        for _ in 0..n {
            if polled {
                read_polled(&mut s, &mut buf);
            } else {
                s.read_exact(&mut buf).unwrap();
            }
            s.write_all(&reply).unwrap();
        }
    });
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    c.set_nonblocking(polled).unwrap();
    let msg = vec![3u8; ping];
    let mut buf = vec![0u8; pong];
    let mut out = Vec::with_capacity(samples);
    for i in 0..n {
        let t0 = Instant::now();
        c.write_all(&msg).unwrap();
        if polled {
            read_polled(&mut c, &mut buf);
        } else {
            c.read_exact(&mut buf).unwrap();
        }
        if i >= samples / 10 {
            out.push(t0.elapsed());
        }
    }
    server.join().unwrap();
    out
}

fn latency(samples: usize) {
    let (mut chan, out_frame, ack_frame) = channel_latency(samples);
    let ping = out_frame + FRAME_HEADER_LEN + TAG_LEN;
    let pong = ack_frame + FRAME_HEADER_LEN + TAG_LEN;
    let mut blocking = raw_latency(samples, ping, pong, false);
    let mut polled = raw_latency(samples, ping, pong, true);
    chan.sort();
    println!("output-rule latency over loopback, {samples} samples, one record in flight:");
    let (c50, c99) = (percentile(&chan, 0.5), percentile(&chan, 0.99));
    println!(
        "  tcp log channel, record -> ack:        p50 {:7.1} us  p99 {:7.1} us",
        micros(c50),
        micros(c99)
    );
    for (name, raw) in [("blocking", &mut blocking), ("polled", &mut polled)] {
        raw.sort();
        let (r50, r99) = (percentile(raw, 0.5), percentile(raw, 0.99));
        println!(
            "  raw tcp ping-pong {ping}/{pong} B, {name:<8}  p50 {:7.1} us  p99 {:7.1} us   channel/raw: p50 {:.2}x  p99 {:.2}x",
            micros(r50),
            micros(r99),
            c50.as_secs_f64() / r50.as_secs_f64(),
            c99.as_secs_f64() / r99.as_secs_f64()
        );
    }
}

/// A batch template whose records carry `size` payload bytes each.
fn template(size: usize, n: usize) -> Vec<Record> {
    let data = Bytes::from(vec![0xA5u8; size]);
    (0..n as u64)
        .map(|i| Record {
            seq: i + 1,
            point: ExecPoint::at(i * 50),
            event: if size <= 64 {
                Event::Input {
                    device: DeviceId(1),
                    data: data.clone(),
                }
            } else {
                Event::Async(AsyncEvent::IoComplete {
                    io: IoId(i),
                    status: 0,
                    data: Some(data.clone()),
                })
            },
        })
        .collect()
}

struct Throughput {
    secs: f64,
    records: u64,
    wire_bytes: u64,
    payload_bytes: u64,
}

/// Stream `batches` batches of 256 records through the channel, acks flowing back.
fn throughput<C, R>(
    p: &mut C,
    b: R,
    size: usize,
    batches: u64,
    wire: impl Fn(&C) -> u64,
) -> Throughput
where
    C: LogChannel,
    R: LogReceiver + Send + 'static,
{
    const BATCH: usize = 256;
    let mut batch = template(size, BATCH);
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let backup = std::thread::spawn(move || acker(b, s));
    let total = batches * BATCH as u64;
    let t0 = Instant::now();
    let mut next = 1u64;
    let mut acked = 0u64;
    let mut spins = 0;
    while acked < total {
        if next <= total {
            for (i, r) in batch.iter_mut().enumerate() {
                r.seq = next + i as u64;
                r.point = ExecPoint::at(r.seq * 50);
            }
            match p.send_records(&batch) {
                Ok(()) => next += BATCH as u64,
                Err(ChannelError::Full) => relax(&mut spins),
                Err(e) => panic!("send: {e}"),
            }
        } else {
            relax(&mut spins);
        }
        while let Some(a) = p.try_recv_ack().unwrap() {
            acked = acked.max(a.received);
            spins = 0;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    backup.join().unwrap();
    Throughput {
        secs,
        records: total,
        wire_bytes: wire(p),
        payload_bytes: total * size as u64,
    }
}

fn report(what: &str, t: &Throughput) {
    println!(
        "  {what:<26} {:>8.1} MB/s on the wire  {:>8.1} MB/s payload  {:>10.0} records/s  ({} records in {:.2} s)",
        t.wire_bytes as f64 / t.secs / 1e6,
        t.payload_bytes as f64 / t.secs / 1e6,
        t.records as f64 / t.secs,
        t.records,
        t.secs
    );
}

fn main() {
    let samples = std::env::var("FT_BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000usize)
        .max(2000);
    latency(samples);

    println!("log-channel throughput, batches of 256 records, backup acking every batch:");
    for (name, size, batches) in [
        ("small (16 B inputs)", 16usize, 4000u64),
        ("large (4 KiB DMA)", 4096usize, 200u64),
    ] {
        let (mut p, b) = tcp_pair();
        let t = throughput(&mut p, b, size, batches, |p| p.link().stats().bytes_sent);
        let stats = p.link().stats();
        report(&format!("tcp, {name}"), &t);
        println!(
            "  {:<26} {} frames in {} flushes ({:.1} frames per write burst)",
            "",
            stats.frames_sent,
            stats.flushes,
            stats.frames_sent as f64 / stats.flushes.max(1) as f64
        );
        let (mut mp, mb) = ft_transport::pair(1024);
        let m = throughput(&mut mp, mb, size, batches, |p| p.bytes_sent());
        report(&format!("memory, {name}"), &m);
    }
    // For scale: what authenticating costs per byte on this machine.
    {
        use hmac::{Hmac, Mac};
        let data = vec![0x5Au8; 1 << 20];
        let mac = Hmac::<sha2::Sha256>::new_from_slice(b"benchmark key").unwrap();
        let n = 200;
        let t0 = Instant::now();
        for _ in 0..n {
            let mut m = mac.clone();
            m.update(&data);
            std::hint::black_box(m.finalize());
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "  (HMAC-SHA256 alone: {:.0} MB/s on one core; each byte is MACed once per side)",
            (n << 20) as f64 / secs / 1e6
        );
    }
    // Keep the encoder honest: a frame of the template decodes.
    let mut buf = Vec::new();
    log_codec::encode_records(&template(16, 2), &mut buf).unwrap();
    assert!(log_codec::decode_frame(&buf).is_ok());
}
