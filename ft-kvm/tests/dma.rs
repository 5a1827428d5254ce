//! DMA through bounce buffers: device data reaches guest memory only when the
//! completion is injected (at its logged point), and a guest polling the buffer sees
//! the same thing on both sides of a pair.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use ft_core::{AsyncEvent, Event, EventSource, Stop};
use ft_kvm::arch::x86_64::{kdata, DMA_BASE, USER_DATA};
use ft_kvm::devices::{map, op, reg, BLK_CMD_READ};
use ft_kvm::guest::UserAsm;
use ft_kvm::machine::{KvmMachine, MachineConfig};
use iced_x86::code_asm::*;

const SENTINEL: u64 = 0x5e5e_5e5e_5e5e_5e5e;

/// Write a sector, read it back into a buffer holding a sentinel, count the polls
/// (each poll is a deterministic exit) until the data shows, print count and data.
fn dma_workload() -> Vec<u8> {
    let mut u = UserAsm::new().unwrap();
    u.a.mov(rax, 0x0123_4567_89ab_cdefu64).unwrap();
    u.a.mov(qword_ptr(USER_DATA), rax).unwrap();
    u.block_write(3, USER_DATA).unwrap();
    u.a.mov(rax, SENTINEL).unwrap();
    u.a.mov(rcx, DMA_BASE).unwrap();
    u.a.mov(qword_ptr(rcx), rax).unwrap();
    u.a.mov(qword_ptr(map::BLOCK + reg::BLK_SECTOR), 3).unwrap();
    u.a.mov(qword_ptr(map::BLOCK + reg::BLK_DMA), rcx).unwrap();
    u.a.mov(qword_ptr(map::BLOCK + reg::BLK_COUNT), 1).unwrap();
    u.a.mov(qword_ptr(map::BLOCK + reg::BLK_CMD), BLK_CMD_READ as i32)
        .unwrap();
    u.a.xor(r12d, r12d).unwrap();
    let mut poll = u.a.create_label();
    u.a.set_label(&mut poll).unwrap();
    u.a.inc(r12).unwrap();
    u.poll_exit(rdx).unwrap();
    u.a.cmp(qword_ptr(rcx), rax).unwrap();
    u.a.je(poll).unwrap();
    u.a.mov(r13, qword_ptr(rcx)).unwrap();
    u.print(b"polls ").unwrap();
    u.print_hex(r12).unwrap();
    u.print(b"data ").unwrap();
    u.print_hex(r13).unwrap();
    u.a.mov(rax, qword_ptr(kdata::BLK_IRQS)).unwrap();
    u.exit_with(rax).unwrap();
    u.finish().unwrap()
}

#[test]
fn dma_data_lands_only_when_the_completion_is_injected() {
    if !common::kvm_or_skip("dma_data_lands_only_when_the_completion_is_injected") {
        return;
    }
    let mut m = KvmMachine::with_workload(MachineConfig::default(), dma_workload()).unwrap();
    let word = |m: &KvmMachine| m.vm().memory().read_u64(DMA_BASE).unwrap();
    let mut read_io = None;
    let mut polls_before = 0;
    let mut code = None;
    for _ in 0..2000 {
        match m.run(m.point().plus(1)).unwrap() {
            Stop::IoStart(req) if req.op == op::DISK_WRITE => {
                m.inject(&AsyncEvent::IoComplete {
                    io: req.id,
                    status: 0,
                    data: None,
                })
                .unwrap();
            }
            Stop::IoStart(req) => read_io = Some(req),
            Stop::Halted(c) => {
                code = Some(c);
                break;
            }
            _ => {}
        }
        if let Some(req) = &read_io {
            // The guest polls while the "device" works: memory keeps the sentinel.
            assert_eq!(
                word(&m),
                SENTINEL,
                "DMA data appeared before the completion"
            );
            polls_before += 1;
            if polls_before == 25 {
                let data = Bytes::from(vec![0x42u8; req.len as usize]);
                let at = m.point();
                m.inject(&AsyncEvent::IoComplete {
                    io: req.id,
                    status: 0,
                    data: Some(data),
                })
                .unwrap();
                assert_eq!(m.point(), at);
                assert_eq!(
                    word(&m),
                    0x4242_4242_4242_4242,
                    "data not there at the point"
                );
                read_io = None;
            }
        }
    }
    assert_eq!(code, Some(2), "two block completions were taken");
}

#[test]
fn dma_polling_guest_sees_the_same_on_both_sides() {
    if !common::kvm_or_skip("dma_polling_guest_sees_the_same_on_both_sides") {
        return;
    }
    let (mut pair, sink) = common::kvm_pair(&dma_workload(), 5, &[]);
    let done = pair.run_until(100_000, |p| {
        p.replay_complete() || !p.trace().errors.is_empty()
    });
    assert!(pair.trace().errors.is_empty(), "{:?}", pair.trace().errors);
    assert!(done);
    let dma_rec = pair
        .trace()
        .records
        .iter()
        .find(|r| matches!(&r.event, Event::Async(AsyncEvent::IoComplete { data: Some(d), .. }) if !d.is_empty()))
        .cloned();
    eprintln!(
        "DMA completion record: {:?}",
        dma_rec.as_ref().map(|r| (r.seq, r.point))
    );
    assert!(dma_rec.is_some(), "the read data travels in the log");
    let p = common::released(&sink, "primary");
    let b: Vec<String> = pair
        .backup
        .world()
        .replayed_outputs()
        .iter()
        .map(|o| String::from_utf8_lossy(&o.data).into_owned())
        .collect();
    eprintln!("primary {p:?}");
    assert_eq!(p, b);
    assert!(p.iter().any(|l| l == "data 0123456789abcdef\n"));
    assert_eq!(
        pair.primary.source_mut().digest(),
        pair.backup.source_mut().digest()
    );
}
