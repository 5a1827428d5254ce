//! The frame level of a log channel, and the log channel ends built on it.
//!
//! A [`FrameLink`] moves whole encoded frames (as [`Bytes`]) both ways, with message
//! boundaries preserved. [`PrimaryEnd`] and [`BackupEnd`] turn any frame link into the
//! engine's [`LogChannel`] and [`LogReceiver`]: they encode with
//! [`ft_core::log_codec`], decode every frame they receive with its checks, and count
//! the bytes and frames they send. Both are also the driver's [`Link`], which carries
//! live-clone messages as well, both ways. A fault injector
//! ([`crate::fault::FaultyLink`]) sits between an end and its link.

use bytes::Bytes;
use ft_core::driver::Link;
use ft_core::log_codec::{self, CodecError, Frame};
use ft_core::{Ack, ChannelError, LogChannel, LogReceiver, Record, Transmit};

/// Result alias of this module (its errors are the engine's [`ChannelError`]).
pub type Result<T, E = ChannelError> = std::result::Result<T, E>;

/// A bidirectional, message-oriented link that carries encoded frames.
///
/// Implementations never split or merge frames: what one side sends with
/// [`FrameLink::try_send_frame`] arrives whole from the other side's
/// [`FrameLink::try_recv_frame`] (or not at all, or corrupted, if the link is faulty).
pub trait FrameLink {
    /// Send one frame without blocking. On [`ChannelError::Full`] nothing was sent (the
    /// caller keeps a clone of the frame, which is cheap); on
    /// [`ChannelError::Disconnected`] the peer is gone.
    fn try_send_frame(&mut self, frame: Bytes) -> Result<()>;

    /// The next frame that has arrived, if any, without blocking.
    /// [`ChannelError::Disconnected`] once the peer is gone and nothing is left.
    fn try_recv_frame(&mut self) -> Result<Option<Bytes>>;
}

impl<L: FrameLink + ?Sized> FrameLink for Box<L> {
    fn try_send_frame(&mut self, frame: Bytes) -> Result<()> {
        (**self).try_send_frame(frame)
    }
    fn try_recv_frame(&mut self) -> Result<Option<Bytes>> {
        (**self).try_recv_frame()
    }
}

/// Traffic counters of one channel end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes of frames handed to the link (headers included).
    pub bytes_sent: u64,
    /// Frames handed to the link.
    pub frames_sent: u64,
    /// Bytes of frames received from the link.
    pub bytes_received: u64,
    /// Frames received from the link.
    pub frames_received: u64,
}

/// Shared receive path of both ends: decode one frame, and stay failed after the first
/// bad one (a stream that delivered garbage cannot be trusted again).
#[derive(Debug, Default)]
struct Inbound {
    failed: Option<CodecError>,
}

impl Inbound {
    fn next<L: FrameLink>(&mut self, link: &mut L, traffic: &mut Traffic) -> Result<Option<Frame>> {
        if let Some(e) = &self.failed {
            return Err(ChannelError::Corrupt(CodecError::Poisoned(Box::new(
                e.clone(),
            ))));
        }
        let Some(bytes) = link.try_recv_frame()? else {
            return Ok(None);
        };
        traffic.frames_received += 1;
        traffic.bytes_received += bytes.len() as u64;
        match log_codec::decode_frame(&bytes) {
            Ok(frame) => Ok(Some(frame)),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn fail(&mut self, e: CodecError) -> ChannelError {
        self.failed = Some(e.clone());
        ChannelError::Corrupt(e)
    }
}

fn send<L: FrameLink>(link: &mut L, buf: Vec<u8>, traffic: &mut Traffic) -> Result<()> {
    let len = buf.len() as u64;
    link.try_send_frame(Bytes::from(buf))?;
    traffic.frames_sent += 1;
    traffic.bytes_sent += len;
    Ok(())
}

/// The constructor and accessors both channel ends share.
macro_rules! end_accessors {
    ($end:ident, $what:literal) => {
        impl<L: FrameLink> $end<L> {
            /// Wrap `link`.
            pub fn new(link: L) -> $end<L> {
                $end {
                    link,
                    inbound: Inbound::default(),
                    traffic: Traffic::default(),
                }
            }

            #[doc = concat!("Bytes of ", $what, " frames sent so far (headers included).")]
            pub fn bytes_sent(&self) -> u64 {
                self.traffic.bytes_sent
            }

            #[doc = concat!("Frames of ", $what, "s sent so far.")]
            pub fn frames_sent(&self) -> u64 {
                self.traffic.frames_sent
            }

            /// All traffic counters.
            pub fn traffic(&self) -> Traffic {
                self.traffic
            }

            /// The link.
            pub fn link(&self) -> &L {
                &self.link
            }

            /// The link, mutably.
            pub fn link_mut(&mut self) -> &mut L {
                &mut self.link
            }

            /// Unwrap the link.
            pub fn into_link(self) -> L {
                self.link
            }
        }
    };
}

/// The primary's end of a log channel over a [`FrameLink`]: sends record frames,
/// receives ack frames.
#[derive(Debug)]
pub struct PrimaryEnd<L> {
    link: L,
    inbound: Inbound,
    traffic: Traffic,
}

end_accessors!(PrimaryEnd, "record");

impl<L: FrameLink> LogChannel for PrimaryEnd<L> {
    /// Encode `records` as one frame and send it. An empty batch sends nothing. A batch
    /// the codec refuses (not consecutive, points going backwards) is
    /// [`ChannelError::Corrupt`] and nothing is sent.
    fn send_records(&mut self, records: &[Record]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        log_codec::encode_records(records, &mut buf)?;
        send(&mut self.link, buf, &mut self.traffic)
    }

    /// The next ack. A frame that does not decode, or a records frame, is
    /// [`ChannelError::Corrupt`], and so is every later call.
    fn try_recv_ack(&mut self) -> Result<Option<Ack>> {
        match self.inbound.next(&mut self.link, &mut self.traffic)? {
            None => Ok(None),
            Some(Frame::Ack(ack)) => Ok(Some(ack)),
            Some(Frame::Records(_)) => Err(self.inbound.fail(CodecError::Payload(
                "records frame received on the ack direction".into(),
            ))),
            Some(Frame::Clone(_)) => Err(self.inbound.fail(CodecError::Payload(
                "live-clone frame received on a log channel that does not carry them".into(),
            ))),
        }
    }
}

/// The backup's end of a log channel over a [`FrameLink`]: receives record frames,
/// sends ack frames.
#[derive(Debug)]
pub struct BackupEnd<L> {
    link: L,
    inbound: Inbound,
    traffic: Traffic,
}

end_accessors!(BackupEnd, "ack");

impl<L: FrameLink> LogReceiver for BackupEnd<L> {
    /// The next batch. A frame that does not decode, or an ack frame, is
    /// [`ChannelError::Corrupt`], and so is every later call.
    fn try_recv_records(&mut self) -> Result<Option<Vec<Record>>> {
        match self.inbound.next(&mut self.link, &mut self.traffic)? {
            None => Ok(None),
            Some(Frame::Records(records)) => Ok(Some(records)),
            Some(Frame::Ack(_)) => Err(self.inbound.fail(CodecError::Payload(
                "ack frame received on the records direction".into(),
            ))),
            Some(Frame::Clone(_)) => Err(self.inbound.fail(CodecError::Payload(
                "live-clone frame received on a log channel that does not carry them".into(),
            ))),
        }
    }

    fn send_ack(&mut self, ack: Ack) -> Result<()> {
        let mut buf = Vec::new();
        log_codec::encode_ack(&ack, &mut buf)?;
        send(&mut self.link, buf, &mut self.traffic)
    }
}

/// Send a live-clone message on `link`.
fn send_clone<L: FrameLink>(
    link: &mut L,
    msg: &ft_core::CloneFrame,
    traffic: &mut Traffic,
) -> Result<()> {
    let mut buf = Vec::new();
    log_codec::encode_clone(msg, &mut buf)?;
    send(link, buf, traffic)
}

/// The next frame for the driver: anything but the kind this end only ever sends
/// (`refused`, named `what`), which poisons the stream.
fn recv_for_driver<L: FrameLink>(
    inbound: &mut Inbound,
    link: &mut L,
    traffic: &mut Traffic,
    refused: fn(&Frame) -> bool,
    what: &str,
) -> Result<Option<Frame>> {
    match inbound.next(link, traffic)? {
        Some(f) if refused(&f) => Err(inbound.fail(CodecError::Payload(what.into()))),
        other => Ok(other),
    }
}

/// The primary's end as the driver's link: records out, acknowledgements in, and the
/// messages of a live clone both ways (the primary is the clone's sender).
impl<L: FrameLink> Link for PrimaryEnd<L> {
    fn send(&mut self, item: &Transmit) -> Result<()> {
        match item {
            Transmit::Records(r) => self.send_records(r),
            // A primary never produces acknowledgements.
            Transmit::Ack(_) => Ok(()),
            Transmit::Clone(c) => send_clone(&mut self.link, c, &mut self.traffic),
        }
    }

    /// The next acknowledgement or clone message. A records frame is
    /// [`ChannelError::Corrupt`], and so is every later call.
    fn recv(&mut self) -> Result<Option<Frame>> {
        recv_for_driver(
            &mut self.inbound,
            &mut self.link,
            &mut self.traffic,
            |f| matches!(f, Frame::Records(_)),
            "records frame received on the ack direction",
        )
    }
}

/// The backup's end as the driver's link: records in, acknowledgements out, and the
/// messages of a live clone both ways (a backup being filled by a clone receives it).
impl<L: FrameLink> Link for BackupEnd<L> {
    fn send(&mut self, item: &Transmit) -> Result<()> {
        match item {
            Transmit::Ack(a) => self.send_ack(*a),
            // A backup never produces records.
            Transmit::Records(_) => Ok(()),
            Transmit::Clone(c) => send_clone(&mut self.link, c, &mut self.traffic),
        }
    }

    /// The next records or clone message. An ack frame is [`ChannelError::Corrupt`],
    /// and so is every later call.
    fn recv(&mut self) -> Result<Option<Frame>> {
        recv_for_driver(
            &mut self.inbound,
            &mut self.link,
            &mut self.traffic,
            |f| matches!(f, Frame::Ack(_)),
            "ack frame received on the records direction",
        )
    }
}
