//! Go-live: the backup becomes the primary.
//!
//! The order follows VMware FT: the backup has already replayed every record it
//! received (the drain), and won the arbiter. It then switches its devices to the real
//! world, re-issues the I/O that was started but whose completion never reached the
//! log, re-sends the outputs the old primary may not have released (marked as possible
//! repeats; their sequence numbers let a sink drop the copies), and announces itself.

use crate::event_source::EventSource;
use crate::node::{Node, Phase};
use crate::record::Nanos;
use crate::world::World;
use crate::Notice;

impl<S: EventSource, W: World> Node<S, W> {
    pub(crate) fn go_live(&mut self, now: Nanos) {
        if !self.enter(Phase::Live, now) {
            return;
        }
        self.world.go_live(now);
        let reissued_io = self.pending_io.len();
        let pending: Vec<_> = self.pending_io.values().cloned().collect();
        for req in &pending {
            self.world.start_io(req, now);
        }
        let mut resent_outputs = 0;
        while let Some(o) = self.tentative.pop_front() {
            if o.seq >= self.released_below {
                resent_outputs += 1;
                self.stats.released += 1;
                self.world.emit(&o, true, now);
            }
        }
        self.gate.open();
        self.world.announce(now);
        self.notices.push_back((
            now,
            Notice::WentLive {
                reissued_io,
                resent_outputs,
                point: self.source.point(),
            },
        ));
    }
}
