//! What a driver loop runs over: a clock and a log link.

use crate::log_channel::{ChannelError, LogChannel, LogReceiver};
use crate::log_codec::Frame;
use crate::node::Transmit;
use crate::record::Nanos;

/// Where the driver reads the time. A threaded runtime reads the host's monotonic
/// clock; a simulation passes its virtual time, which a plain [`Nanos`] does.
pub trait Clock {
    /// The time now.
    fn now(&self) -> Nanos;
}

/// Virtual time: the same instant for the whole turn.
impl Clock for Nanos {
    fn now(&self) -> Nanos {
        *self
    }
}

/// One end of the log link, as the driver sees it: a pipe of frames.
///
/// The primary's end sends records and receives acknowledgements; the backup's end
/// the reverse. The link keeps no protocol state of its own beyond framing: which
/// record comes next, what to resend and where the stream ends are the engine's.
pub trait Link {
    /// Hand one item to the link. On [`ChannelError::Full`] nothing was sent, and the
    /// driver offers the same item again first on a later turn.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Full`] as above; any other error means the link is broken.
    fn send(&mut self, item: &Transmit) -> Result<(), ChannelError>;

    /// The next frame that arrived, if any.
    ///
    /// # Errors
    ///
    /// A broken or corrupt link.
    fn recv(&mut self) -> Result<Option<Frame>, ChannelError>;

    /// The node takes nothing more from this link (a backup that declared its primary
    /// dead). A link holding part of a frame reports it here as
    /// [`crate::log_codec::CodecError::Truncated`], so a stream that broke off in the
    /// middle of a frame is reported, not silently dropped. The default has nothing to
    /// report.
    ///
    /// # Errors
    ///
    /// The partial frame, or the decoder's earlier failure.
    fn end_inbound(&mut self) -> Result<(), ChannelError> {
        Ok(())
    }
}

/// A primary's [`LogChannel`] as a [`Link`].
#[derive(Debug)]
pub struct PrimaryLink<C>(pub C);

impl<C: LogChannel> Link for PrimaryLink<C> {
    fn send(&mut self, item: &Transmit) -> Result<(), ChannelError> {
        match item {
            Transmit::Records(r) => self.0.send_records(r),
            // A primary never produces acknowledgements.
            Transmit::Ack(_) => Ok(()),
            Transmit::Clone(_) => Err(ChannelError::Unsupported("live-clone frames")),
        }
    }

    fn recv(&mut self) -> Result<Option<Frame>, ChannelError> {
        Ok(self.0.try_recv_ack()?.map(Frame::Ack))
    }
}

/// A backup's [`LogReceiver`] as a [`Link`].
#[derive(Debug)]
pub struct BackupLink<R>(pub R);

impl<R: LogReceiver> Link for BackupLink<R> {
    fn send(&mut self, item: &Transmit) -> Result<(), ChannelError> {
        match item {
            Transmit::Ack(a) => self.0.send_ack(*a),
            // A backup never produces records.
            Transmit::Records(_) => Ok(()),
            Transmit::Clone(_) => Err(ChannelError::Unsupported("live-clone frames")),
        }
    }

    fn recv(&mut self) -> Result<Option<Frame>, ChannelError> {
        Ok(self.0.try_recv_records()?.map(Frame::Records))
    }
}

/// No link at all: a node running alone, with no peer to send to or hear from. Every
/// send reports [`ChannelError::Disconnected`] and nothing arrives, so a driver over it
/// treats the peer as gone at once. A live machine runs alone over it until a new
/// backup connects and a live clone starts (over a real link, with a fresh driver).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLink;

impl Link for NoLink {
    fn send(&mut self, _: &Transmit) -> Result<(), ChannelError> {
        Err(ChannelError::Disconnected)
    }

    fn recv(&mut self) -> Result<Option<Frame>, ChannelError> {
        Ok(None)
    }
}
