//! Go-live: the backup becomes the primary.
//!
//! The order follows VMware FT: the backup has already replayed every record it
//! received (the drain), and won the arbiter. It then switches its devices to the real
//! world, re-issues the I/O that was started but whose completion never reached the
//! log, re-sends the outputs the old primary may not have released (marked as possible
//! repeats; their sequence numbers let a sink drop the copies), and announces itself.

use crate::event_source::EventSource;
use crate::node::{Node, Phase};
use crate::phase_state::Duty;
use crate::record::Nanos;
use crate::world::World;
use crate::Notice;

impl<S: EventSource, W: World> Node<S, W> {
    pub(crate) fn go_live(&mut self, now: Nanos) {
        let live = Duty::Live { clone_out: None };
        let Some(old) = self.enter_with(Phase::Live, live, now) else {
            return;
        };
        self.world.go_live(now);
        let reissued_io = self.pending_io.len();
        for req in self.pending_io.values() {
            self.world.start_io(req, now);
        }
        let mut resent_outputs = 0;
        if let Duty::Replay(rep) = old {
            for o in rep.tentative.iter().filter(|o| o.seq >= rep.released_below) {
                resent_outputs += 1;
                self.stats.released += 1;
                self.world.emit(o, true, now);
            }
        }
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
