//! The driver loop's own rules, over a scripted link: a refused item waits and goes
//! first, a well-formed frame the engine refuses is refused alone, a broken or
//! corrupt link is given up for good, and a frame of the wrong kind breaks it.

use std::collections::VecDeque;

use ft_core::driver::{Driver, DriverConfig, DriverError, Immediate, Link, Turn};
use ft_core::log_codec::{CodecError, Frame};
use ft_core::{ChannelError, EngineError, InProcessArbiter, Record, Transmit};

use crate::support::*;
use crate::MS;

/// A link that hands out scripted frames and keeps what is sent; `full` refuses sends.
#[derive(Default)]
struct ScriptLink {
    inbound: VecDeque<Result<Frame, ChannelError>>,
    sent: Vec<Transmit>,
    full: bool,
}

impl Link for ScriptLink {
    fn send(&mut self, item: &Transmit) -> Result<(), ChannelError> {
        if self.full {
            return Err(ChannelError::Full);
        }
        self.sent.push(item.clone());
        Ok(())
    }

    fn recv(&mut self) -> Result<Option<Frame>, ChannelError> {
        self.inbound.pop_front().transpose()
    }
}

fn sent_seqs(link: &ScriptLink) -> Vec<u64> {
    link.sent
        .iter()
        .flat_map(|t| match t {
            Transmit::Records(r) => r.iter().map(|r| r.seq).collect(),
            Transmit::Ack(_) | Transmit::Clone(_) => Vec::new(),
        })
        .collect()
}

fn pair() -> Pair {
    Pair::new(
        Script::new(vec![output(10), output(20), output(30), idle(40)]),
        ScriptedWorld::live("p", 1),
        ScriptedWorld::standby("b", 2),
    )
}

#[test]
fn a_refused_item_waits_and_goes_out_first_in_order() {
    let mut p = pair();
    let arbiter = InProcessArbiter::new();
    let mut port = Immediate::new(&arbiter);
    let mut d = Driver::new(DriverConfig::default());
    let mut link = ScriptLink {
        full: true,
        ..ScriptLink::default()
    };
    let mut now = 0;
    for _ in 0..5 {
        now += MS / 10;
        d.turn(&mut p.primary, &now, &mut link, &mut port);
    }
    assert!(d.has_pending(), "the refused batch is kept");
    assert!(link.sent.is_empty());
    link.full = false;
    for _ in 0..5 {
        now += MS / 10;
        d.turn(&mut p.primary, &now, &mut link, &mut port);
    }
    assert!(!d.has_pending());
    let seqs = sent_seqs(&link);
    assert!(!seqs.is_empty());
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "every record once, in order, none lost");
    assert!(d.take_errors().is_empty());
    assert!(d.link_up());
}

#[test]
fn a_refused_frame_is_refused_alone_and_corruption_breaks_the_link() {
    let mut p = pair();
    // Records from the real primary.
    p.run(3, MS);
    let recs: Vec<Record> = p.sent.clone();
    assert!(recs.len() >= 3, "{recs:?}");
    let mut fresh = pair();
    let arbiter = InProcessArbiter::new();
    let mut port = Immediate::new(&arbiter);
    let mut d = Driver::new(DriverConfig::default());
    let mut gap = recs[1..].to_vec();
    gap.truncate(1);
    let mut link = ScriptLink::default();
    link.inbound.push_back(Ok(Frame::Records(gap)));
    link.inbound.push_back(Ok(Frame::Records(recs.clone())));
    d.turn(&mut fresh.backup, &MS, &mut link, &mut port);
    let errors = d.take_errors();
    assert!(
        matches!(
            errors.as_slice(),
            [DriverError::Engine(EngineError::SequenceGap {
                expected: 1,
                found: 2
            })]
        ),
        "{errors:?}"
    );
    assert!(d.link_up(), "a refused frame leaves the link up");
    assert_eq!(
        fresh.backup.last_seq(),
        recs.len() as u64,
        "the next frame was taken"
    );

    link.inbound
        .push_back(Err(ChannelError::Corrupt(CodecError::BadMagic {
            found: *b"GET ",
        })));
    link.inbound.push_back(Ok(Frame::Records(recs.clone())));
    d.turn(&mut fresh.backup, &(2 * MS), &mut link, &mut port);
    let errors = d.take_errors();
    assert!(
        matches!(
            errors.as_slice(),
            [DriverError::Channel(ChannelError::Corrupt(_))]
        ),
        "{errors:?}"
    );
    assert!(!d.link_up());
    assert_eq!(
        link.inbound.len(),
        1,
        "nothing is read after the corruption"
    );
    let acks_before = link.sent.len();
    d.turn(&mut fresh.backup, &(3 * MS), &mut link, &mut port);
    assert_eq!(
        link.sent.len(),
        acks_before,
        "nothing is sent on a broken link"
    );
}

#[test]
fn a_frame_of_the_wrong_kind_breaks_the_link() {
    let mut p = pair();
    let arbiter = InProcessArbiter::new();
    let mut port = Immediate::new(&arbiter);
    let mut d = Driver::new(DriverConfig::default());
    let mut link = ScriptLink::default();
    link.inbound.push_back(Ok(Frame::Records(Vec::new())));
    let turn = d.turn(&mut p.primary, &MS, &mut link, &mut port);
    assert_ne!(turn, Turn::Done(ft_core::driver::Exit::Finished(0)));
    assert_eq!(
        d.take_errors(),
        vec![DriverError::UnexpectedFrame {
            side: "primary",
            found: "records"
        }]
    );
    assert!(!d.link_up());
    assert!(
        Driver::default().link_up(),
        "a default driver starts with its link up"
    );
}
