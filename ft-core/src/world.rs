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
/// [`World::input`], [`World::poll`], [`World::next_deadline`] and [`World::emit`]
/// are required: every machine reads, waits and writes. The rest have defaults:
///
/// * [`World::go_live`], [`World::announce`], [`World::fence`] and
///   [`World::replayed_output`] do nothing, which loses nothing;
/// * [`World::start_io`], [`World::apply_private_write`] and [`World::read_local`]
///   panic, naming the method and the request: a machine without asynchronous I/O
///   (no disk) never causes a call, and a machine that does must not have its I/O
///   dropped in silence.
///
/// A world for a disk-less machine whose outputs go to a channel:
///
/// ```
/// use ft_core::{AsyncEvent, Bytes, InputRequest, Nanos, Output, World};
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
    ///
    /// # Panics
    ///
    /// The default panics, naming this method and the request: it is there for a
    /// world whose machine issues no asynchronous I/O (no disk, no timer driven
    /// through I/O), and an I/O that reached it would otherwise be dropped, a lost
    /// write or a completion the guest waits for forever. A world whose machine
    /// starts I/O must override it.
    fn start_io(&mut self, req: &IoRequest, now: Nanos) {
        let _ = now;
        unsupported("start_io", req)
    }

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
    ///
    /// # Panics
    ///
    /// The default panics, naming this method and the request: a world without a
    /// private disk has no copy to write, and dropping the write would leave the
    /// backup's disk behind the primary's. A world whose machine issues private-disk
    /// writes must override it.
    fn apply_private_write(&mut self, req: &IoRequest) {
        unsupported("apply_private_write", req)
    }

    /// The replaying side reads the data of a [`crate::IoKind::LocalRead`] from its own
    /// storage. Called only when the log holds the completion of such a read (the
    /// primary logs those without their data).
    ///
    /// # Panics
    ///
    /// The default panics, naming this method and the request: a world without local
    /// storage has no data to give, and any bytes made up here would diverge from
    /// what the primary read. A world whose machine issues local reads must override
    /// it.
    fn read_local(&mut self, req: &IoRequest) -> Bytes {
        unsupported("read_local", req)
    }

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

/// The defaults of the I/O methods: a loud refusal, never a silent drop.
#[cold]
#[track_caller]
fn unsupported(method: &str, req: &IoRequest) -> ! {
    // A contract violation by the embedder (its machine issues I/O its world does not
    // carry out); it has no return value to report an error through, and going on
    // would lose the I/O.
    panic!(
        "World::{method} is not implemented by this world, but the machine issued I/O {} \
         ({:?}, device {}, op {}, offset {:#x}, {} bytes): override World::{method}",
        req.id.0, req.kind, req.device.0, req.op, req.offset, req.len
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{DeviceId, IoId, IoKind};

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
    }

    fn request(kind: IoKind) -> IoRequest {
        IoRequest {
            id: IoId(42),
            device: DeviceId(4),
            kind,
            op: 2,
            offset: 0x200,
            len: 512,
            data: Bytes::from_static(b"sector"),
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

    #[test]
    #[should_panic(
        expected = "World::start_io is not implemented by this world, but the machine issued I/O 42"
    )]
    fn default_start_io_refuses_loudly() {
        Minimal::default().start_io(&request(IoKind::SharedWrite), 0);
    }

    #[test]
    #[should_panic(
        expected = "World::apply_private_write is not implemented by this world, but the machine issued I/O 42 (PrivateWrite"
    )]
    fn default_apply_private_write_refuses_loudly() {
        Minimal::default().apply_private_write(&request(IoKind::PrivateWrite));
    }

    #[test]
    #[should_panic(
        expected = "World::read_local is not implemented by this world, but the machine issued I/O 42 (LocalRead, device 4, op 2, offset 0x200, 512 bytes)"
    )]
    fn default_read_local_refuses_loudly() {
        let _ = Minimal::default().read_local(&request(IoKind::LocalRead));
    }
}
