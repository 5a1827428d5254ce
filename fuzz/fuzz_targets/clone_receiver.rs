//! The receiving end of a live clone, fed frames it cannot trust: a genuine clone
//! stream (recorded once from a real sender) with frames dropped, repeated, reordered
//! and damaged by the fuzzer, and fuzzer-made frames of every kind.
//!
//! Invariants: never a panic; every refusal is a typed error; the clone target never
//! goes live and never arbitrates; once refused it stays halted with
//! `HaltReason::CloneFailed` and takes nothing more; and if it ever completes (its
//! state loaded and replay started), its machine's digest is the sender's at the clone
//! point.
#![no_main]

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use ft_core::live_clone::PageData;
use ft_core::log_codec::{self, Frame};
use ft_core::{
    CloneConfig, CloneMsg, Config, EventSource, ExecPoint, HaltReason, Node, NodeId, Notice,
    PairId, Phase, Transmit,
};
use ft_sim::{guests, Disk, Machine, MachineConfig, OutputSink, SimWorld, SimWorldConfig};
use libfuzzer_sys::fuzz_target;

const RAM: usize = 64 * 1024;

fn machine() -> Machine {
    let cfg = MachineConfig {
        ram_size: RAM,
        ..MachineConfig::default()
    };
    // No working set (RAM ends below it): the guest loops, reads the RNG and prints.
    Machine::from_raw(cfg, &guests::dirtier(0, 0, 3).expect("the guest assembles"))
        .expect("the guest loads")
}

fn world(live: bool) -> SimWorld {
    SimWorld::new(
        "fuzz",
        SimWorldConfig::default(),
        Disk::new(4096),
        OutputSink::new(),
        live,
    )
}

struct Genuine {
    frames: Vec<Vec<u8>>,
    digest: u64,
}

/// One real clone, sender to receiver, by hand: the encoded frames the sender sent.
fn genuine() -> &'static Genuine {
    static G: OnceLock<Genuine> = OnceLock::new();
    G.get_or_init(|| {
        let cfg = Config {
            slice: 500,
            ..Config::default()
        };
        let mut s = Node::unprotected(cfg.clone(), machine(), world(true), 0);
        let rcfg = Config {
            node: NodeId(2),
            ..cfg
        };
        let mut r = Node::clone_target(rcfg, machine(), world(false), 0);
        for _ in 0..20 {
            s.step(0).expect("the guest runs");
        }
        let pair = PairId {
            vm: 1,
            generation: 2,
        };
        let clone = CloneConfig {
            chunk_pages: 3,
            ..CloneConfig::default()
        };
        s.start_clone(pair, clone, 0)
            .expect("a live machine clones");
        let mut frames = Vec::new();
        let mut digest = None;
        for now in 1..10_000u64 {
            s.step(now).expect("the guest runs");
            while let Some(t) = s.poll_transmit(now) {
                if let Transmit::Clone(m) = &t {
                    let mut b = Vec::new();
                    log_codec::encode_clone(m, &mut b).expect("encodes");
                    frames.push(b);
                    r.handle_clone(m.clone(), now)
                        .expect("a genuine clone applies");
                }
            }
            while let Some(t) = r.poll_transmit(now) {
                if let Transmit::Clone(m) = t {
                    let _ = s.handle_clone(m, now);
                }
            }
            while let Some((_, n)) = s.poll_notice() {
                if let Notice::ClonePaused { digest: d, .. } = n {
                    digest = Some(d);
                }
            }
            if digest.is_some() && r.phase() == &Phase::Replaying {
                break;
            }
        }
        Genuine {
            frames,
            digest: digest.expect("the genuine clone completes"),
        }
    })
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// The genuine frame `i` (mod the count).
    Genuine(u16),
    /// The genuine frame `i` with one byte XORed.
    Damaged(u16, u16, u8),
    /// The genuine frame `i`'s message, edited, in a valid frame.
    Edited(u16, Edit),
    /// The genuine frame `i` renumbered `n` (a lost, repeated or reordered message).
    Renumbered(u16, u64),
    /// Bytes of the fuzzer's.
    Raw(Vec<u8>),
}

/// An edit of a genuine message's fields.
#[derive(Arbitrary, Debug)]
enum Edit {
    PageIndex(u64),
    PageLen(u16),
    PageZeroed,
    Round(u32),
    Digest(u64),
    Point(u64),
    NextSeq(u64),
    Vm(u64),
    StateByte(u16, u8),
    StateCut(u16),
    LayoutPages(u64),
    PageSize(u32),
    Sender(u64),
}

fn edit(m: &mut CloneMsg, e: Edit) {
    match (m, e) {
        (CloneMsg::Pages { pages, .. }, Edit::PageIndex(i)) => {
            if let Some(p) = pages.first_mut() {
                p.index = i;
            }
        }
        (CloneMsg::Pages { pages, .. }, Edit::PageLen(n)) => {
            if let Some(p) = pages.first_mut() {
                p.data = PageData::Full(Bytes::from(vec![0x5a; n as usize]));
            }
        }
        (CloneMsg::Pages { pages, .. }, Edit::PageZeroed) => {
            if let Some(p) = pages.last_mut() {
                p.data = PageData::Zero;
            }
        }
        (CloneMsg::Pages { round, .. } | CloneMsg::RoundEnd { round }, Edit::Round(r)) => {
            *round = r
        }
        (CloneMsg::Final { digest, .. }, Edit::Digest(d)) => *digest = d,
        (CloneMsg::Final { resume, .. }, Edit::Point(p)) => resume.point = ExecPoint::at(p),
        (CloneMsg::Final { resume, .. }, Edit::NextSeq(s)) => resume.next_seq = s,
        (CloneMsg::Final { resume, .. }, Edit::Vm(v)) => resume.pair.vm = v,
        (CloneMsg::Begin { pair, .. }, Edit::Vm(v)) => pair.vm = v,
        (CloneMsg::Final { state, .. }, Edit::StateByte(at, x)) => {
            let mut b = state.to_vec();
            if !b.is_empty() {
                let at = at as usize % b.len();
                b[at] ^= x.max(1);
            }
            *state = Bytes::from(b);
        }
        (CloneMsg::Final { state, .. }, Edit::StateCut(n)) => {
            let keep = (n as usize).min(state.len());
            *state = state.slice(..keep);
        }
        (CloneMsg::Begin { layout, .. }, Edit::LayoutPages(p)) => layout.pages = p,
        (CloneMsg::Begin { layout, .. }, Edit::PageSize(s)) => layout.page_size = s,
        (CloneMsg::Begin { sender, .. }, Edit::Sender(n)) => *sender = NodeId(n),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let g = genuine();
    let mut u = Unstructured::new(data);
    let Ok(ops) = Vec::<Op>::arbitrary(&mut u) else {
        return;
    };
    let rcfg = Config {
        node: NodeId(2),
        ..Config::default()
    };
    let mut r = Node::clone_target(rcfg, machine(), world(false), 0);
    let n = g.frames.len();
    let mut refused = false;
    for (k, op) in ops.into_iter().take(4 * n + 16).enumerate() {
        let now = k as u64 * 1_000;
        let bytes = match op {
            Op::Genuine(i) => g.frames[i as usize % n].clone(),
            Op::Damaged(i, at, x) => {
                let mut b = g.frames[i as usize % n].clone();
                let at = at as usize % b.len();
                b[at] ^= x.max(1);
                b
            }
            Op::Edited(i, e) => {
                let Ok(Frame::Clone(mut m)) = log_codec::decode_frame(&g.frames[i as usize % n])
                else {
                    continue;
                };
                edit(&mut m.msg, e);
                let mut b = Vec::new();
                if log_codec::encode_clone(&m, &mut b).is_err() {
                    continue;
                }
                b
            }
            Op::Renumbered(i, k) => {
                let Ok(Frame::Clone(mut m)) = log_codec::decode_frame(&g.frames[i as usize % n])
                else {
                    continue;
                };
                m.n = k;
                let mut b = Vec::new();
                if log_codec::encode_clone(&m, &mut b).is_err() {
                    continue;
                }
                b
            }
            Op::Raw(b) => b,
        };
        let frame = match log_codec::decode_frame(&bytes) {
            Ok(f) => f,
            Err(e) => {
                let _ = e.to_string();
                continue;
            }
        };
        let before = r.phase().clone();
        let res = match frame {
            Frame::Clone(m) => r.handle_clone(m, now),
            Frame::Records(recs) => r.handle_records(recs, now),
            Frame::Ack(a) => r.handle_ack(a, now),
        };
        if let Err(e) = &res {
            let _ = e.to_string();
        }
        let _ = r.step(now);
        while r.poll_transmit(now).is_some() {}
        while let Some((_, n)) = r.poll_notice() {
            let _ = n.to_string();
        }
        assert!(!r.is_live(), "a clone target went live");
        assert!(r.poll_command().is_none(), "a clone target arbitrated");
        if refused {
            assert_eq!(r.phase(), &before, "a refused clone target changed");
        }
        if let Phase::Halted(h) = r.phase() {
            assert!(matches!(h, HaltReason::CloneFailed(_)), "{h:?}");
            refused = true;
        }
    }
    if r.phase() == &Phase::Replaying {
        assert_eq!(
            r.source_mut().digest(),
            Ok(g.digest),
            "a completed clone is not the sender's state"
        );
    }
});
