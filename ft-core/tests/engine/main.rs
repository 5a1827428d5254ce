//! Engine tests of `ft_core::Node`, one module per mechanism, on the scripted machine,
//! world and in-memory pair of `tests/support`. All time is virtual.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

mod arbiter;
mod digests;
mod driver;
mod go_live;
mod output_rule;
mod phases;
mod sequence;

use ft_core::{Config, Event, ExecPoint, Nanos, Record, StepOutcome};
use support::*;

/// Milliseconds in nanoseconds.
pub const MS: Nanos = 1_000_000;

/// Step `side` until `done` holds (at most `max` steps, clock unchanged); panics if it
/// never does.
pub fn step_until(
    pair: &mut Pair,
    side: Side,
    max: usize,
    mut done: impl FnMut(&Pair, Option<StepOutcome>) -> bool,
) {
    for _ in 0..max {
        let o = pair.step(side);
        if done(pair, o) {
            return;
        }
    }
    panic!(
        "{side:?} never got there; phase {:?}, errors {:?}",
        pair.node(side).phase(),
        pair.errors
    );
}

/// The records of `recs` that are state digests, as (point, record seq).
pub fn digest_points(recs: &[Record]) -> Vec<(ExecPoint, u64)> {
    recs.iter()
        .filter(|r| matches!(r.event, Event::Digest { .. }))
        .map(|r| (r.point, r.seq))
        .collect()
}

/// The seq of the record that logged output `n`.
pub fn output_record(recs: &[Record], n: u64) -> u64 {
    recs.iter()
        .find(|r| matches!(r.event, Event::Output { seq, .. } if seq.0 == n))
        .map(|r| r.seq)
        .unwrap_or_else(|| panic!("no record for output #{n}"))
}

/// The test configuration with tweaks.
pub fn cfg(tweak: impl FnOnce(&mut Config)) -> Config {
    let mut c = test_config();
    tweak(&mut c);
    c
}
