//! The outside world as one side of a pair sees it: the host half of every device.

use bytes::Bytes;

use crate::record::{AsyncEvent, InputRequest, IoRequest, Nanos, Output};

/// The host half of the guest's devices: where nondeterministic inputs come from and
/// where outputs go.
///
/// The engine calls the live-side methods only while its side is live (a recording
/// primary, a primary alone, or a backup after go-live). While replaying, inputs come
/// from the log instead, and only [`World::apply_private_write`] and
/// [`World::read_local`] are used, for the backup's own disk copy.
///
/// Device failures are not errors here: a real device reports them to the guest, so a
/// world reports them as completion statuses, just as hardware would.
pub trait World {
    /// The value of a synchronous nondeterministic read (live side).
    fn input(&mut self, req: &InputRequest, now: Nanos) -> Bytes;

    /// Append the asynchronous events that are ready at `now` (live side).
    fn poll(&mut self, now: Nanos, out: &mut Vec<AsyncEvent>);

    /// The time at which the next asynchronous event will be ready, if one is known.
    /// Runtimes sleep until then when the guest is idle.
    fn next_deadline(&self) -> Option<Nanos>;

    /// Start an I/O in the real world (live side). Its completion is reported later by
    /// [`World::poll`] as [`AsyncEvent::IoComplete`] with the same id. Re-issuing an I/O
    /// with the same id must be idempotent.
    fn start_io(&mut self, req: &IoRequest, now: Nanos);

    /// Release an output to the outside world (live side). `possible_repeat` is set
    /// for outputs re-sent at go-live, which the old primary may already have sent.
    fn emit(&mut self, output: &Output, possible_repeat: bool, now: Nanos);

    /// The replaying side produced `output` while replaying; it stays suppressed (the
    /// primary is the one that releases it). For checkers and metrics; the default
    /// does nothing.
    fn replayed_output(&mut self, output: &Output) {
        let _ = output;
    }

    /// The replaying side performs a private-disk write on its own copy.
    fn apply_private_write(&mut self, req: &IoRequest);

    /// The replaying side reads the data of a [`crate::IoKind::LocalRead`] from its own
    /// storage.
    fn read_local(&mut self, req: &IoRequest) -> Bytes;

    /// This side won the arbiter with fencing `token` (tokens grow with every win, in
    /// every generation). The effects it starts from now on should carry the token
    /// where they land, so that storage refuses them once a newer holder showed a
    /// newer one, as Chubby sequencers fence a paused leader. Called before
    /// [`World::go_live`] for a backup that takes over, and for a primary that goes on
    /// alone. The default ignores it: a world whose effects cannot carry a token.
    fn fence(&mut self, token: u64) {
        let _ = token;
    }

    /// Go-live: from now on this world is the real one.
    fn go_live(&mut self, now: Nanos);

    /// Announce that this side is now the live machine (VMware sends a gratuitous ARP;
    /// an embedder may move a service address).
    fn announce(&mut self, now: Nanos);
}
