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
///
/// # What a world must implement
///
/// [`World::input`], [`World::poll`], [`World::next_deadline`] and [`World::emit`]:
/// every machine reads, waits and writes. [`World::start_io`],
/// [`World::apply_private_write`] and [`World::read_local`] are required too, with
/// no default: a machine without asynchronous I/O (no disk) never causes a call, but
/// a default could only drop an I/O in silence (a lost write, a completion the guest
/// waits for forever) or panic, so the embedder says which is right for its machine.
/// [`World::go_live`], [`World::announce`], [`World::fence`] and
/// [`World::replayed_output`] default to doing nothing, which loses nothing.
///
/// A world for a disk-less machine whose outputs go to a channel:
///
/// ```
/// use ft_core::{AsyncEvent, Bytes, InputRequest, IoRequest, Nanos, Output, World};
///
/// #[derive(Default)]
/// struct Console {
///     sent: Vec<(u64, Bytes, bool)>,
/// }
///
/// impl World for Console {
///     fn input(&mut self, _: &InputRequest, now: Nanos) -> Bytes {
///         Bytes::copy_from_slice(&now.to_le_bytes()) // a clock
///     }
///     fn poll(&mut self, _: Nanos, _: &mut Vec<AsyncEvent>) {}
///     fn next_deadline(&self) -> Option<Nanos> {
///         None
///     }
///     fn emit(&mut self, output: &Output, possible_repeat: bool, _: Nanos) {
///         self.sent.push((output.seq.0, output.data.clone(), possible_repeat));
///     }
///     // The machine has no disk: it never reports `Stop::IoStart`.
///     fn start_io(&mut self, req: &IoRequest, _: Nanos) {
///         unreachable!("no disk, yet I/O {:?}", req.id)
///     }
///     fn apply_private_write(&mut self, req: &IoRequest) {
///         unreachable!("no disk, yet I/O {:?}", req.id)
///     }
///     fn read_local(&mut self, req: &IoRequest) -> Bytes {
///         unreachable!("no disk, yet I/O {:?}", req.id)
///     }
/// }
///
/// let mut w = Console::default();
/// w.go_live(5); // the defaults: nothing to switch,
/// w.announce(5); // nothing to announce
/// assert!(w.sent.is_empty());
/// ```
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
    /// with the same id must be idempotent: go-live re-issues every I/O the machine
    /// started whose completion never reached the log.
    ///
    /// The engine calls it for every [`crate::Stop::IoStart`] the machine reports
    /// (a shared-disk write once the backup holds the records before it), and at
    /// go-live. A machine that never reports `Stop::IoStart` never causes a call.
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

    /// The replaying side performs a private-disk write on its own copy. Called only
    /// for a [`crate::IoKind::PrivateWrite`] the replayed machine starts.
    fn apply_private_write(&mut self, req: &IoRequest);

    /// The replaying side reads the data of a [`crate::IoKind::LocalRead`] from its own
    /// storage. Called only when the log holds the completion of such a read (the
    /// primary logs those without their data).
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

    /// Go-live: from now on this world is the real one. Called once, on a backup that
    /// drained its log and won the arbiter, before the I/O re-issue
    /// ([`World::start_io`]), the output re-send ([`World::emit`] with
    /// `possible_repeat`) and [`World::announce`].
    ///
    /// The default does nothing, which is right for a world whose live-side methods
    /// always face the real world: the engine calls those only once its side is live,
    /// so such a world needs no switch, and nothing is lost by the no-op.
    fn go_live(&mut self, now: Nanos) {
        let _ = now;
    }

    /// Announce that this side is now the live machine (VMware sends a gratuitous ARP;
    /// an embedder may move a service address). Called once, at the end of go-live.
    ///
    /// The default does nothing: a world with no address to move has nothing to
    /// announce. The re-sent outputs have already gone through [`World::emit`].
    fn announce(&mut self, now: Nanos) {
        let _ = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::DeviceId;

    /// A world with only the required methods.
    #[derive(Default)]
    struct Minimal {
        emitted: Vec<(Output, bool)>,
    }

    impl World for Minimal {
        fn input(&mut self, _: &InputRequest, _: Nanos) -> Bytes {
            Bytes::from_static(&[1, 0, 0, 0, 0, 0, 0, 0])
        }
        fn poll(&mut self, _: Nanos, _: &mut Vec<AsyncEvent>) {}
        fn next_deadline(&self) -> Option<Nanos> {
            None
        }
        fn emit(&mut self, output: &Output, possible_repeat: bool, _: Nanos) {
            self.emitted.push((output.clone(), possible_repeat));
        }
        fn start_io(&mut self, _: &IoRequest, _: Nanos) {
            unreachable!("no disk")
        }
        fn apply_private_write(&mut self, _: &IoRequest) {
            unreachable!("no disk")
        }
        fn read_local(&mut self, _: &IoRequest) -> Bytes {
            unreachable!("no disk")
        }
    }

    #[test]
    fn no_op_defaults_touch_nothing() {
        let mut w = Minimal::default();
        w.fence(7);
        w.go_live(10);
        w.replayed_output(&Output {
            seq: crate::OutputSeq(0),
            device: DeviceId(0),
            data: Bytes::from_static(b"x"),
        });
        w.announce(11);
        assert!(w.emitted.is_empty());
    }
}
