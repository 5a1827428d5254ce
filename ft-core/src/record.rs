//! Log records: the nondeterministic events a primary ships to its backup.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ExecPoint;

/// Time as an input to the engine: nanoseconds since an arbitrary, fixed epoch.
///
/// The engine never reads a clock; runtimes pass `now` in.
pub type Nanos = u64;

/// A device of the guest machine, numbered by the backend.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct DeviceId(pub u16);

/// Identifies an asynchronous I/O the guest started; assigned deterministically by the
/// backend, so the primary and the backup give the same I/O the same id.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct IoId(pub u64);

/// The deterministic sequence number of a guest output. Both sides number outputs the
/// same way, so a sink can drop the repeats a failover may cause.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct OutputSeq(pub u64);

/// A synchronous read of nondeterministic device state (a clock register, an RNG
/// register, a status register that depends on the outside world).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRequest {
    /// The device read.
    pub device: DeviceId,
    /// The register offset inside the device.
    pub offset: u64,
    /// Access size in bytes.
    pub size: u8,
}

/// How an asynchronous I/O is treated by replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoKind {
    /// Performed by the live side only (a disk read, a timer arm); its completion is
    /// logged and replayed.
    Request,
    /// A write to storage both sides share: an output under the output rule, performed
    /// by the live side only, and re-issued (idempotently) at go-live if its completion
    /// was never logged.
    SharedWrite,
    /// A write to a disk each side has its own copy of: both sides perform it, and it is
    /// not an output.
    PrivateWrite,
    /// A read of storage the backup can read itself (a shared disk in
    /// backup-reads-disk mode, or a private copy): performed by the live side; the
    /// completion is logged without its data and the backup reads the data from its own
    /// storage on replay.
    LocalRead,
}

/// An asynchronous I/O the guest started, as the backend reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoRequest {
    /// Deterministic id.
    pub id: IoId,
    /// The device that started it.
    pub device: DeviceId,
    /// How replication treats it.
    pub kind: IoKind,
    /// A device-defined operation code (read, write, arm timer, ...).
    pub op: u32,
    /// A device-defined offset (disk byte offset, timer delay, ...).
    pub offset: u64,
    /// A device-defined length (bytes to read, ...).
    pub len: u32,
    /// Data the guest handed over (write payload), if any.
    pub data: Bytes,
}

impl IoRequest {
    /// A digest of the request, logged so the backup can check it started the same I/O.
    pub fn digest(&self) -> u64 {
        let mut h = crate::digest::StateHasher::new();
        h.write_u64(self.id.0);
        h.write_u64(u64::from(self.device.0));
        h.write_u64(self.kind as u64);
        h.write_u64(u64::from(self.op));
        h.write_u64(self.offset);
        h.write_u64(u64::from(self.len));
        h.write_bytes(&self.data);
        h.finish()
    }
}

/// A guest output: bytes that leave the machine (a packet, console text, a shared-disk
/// write).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// Deterministic sequence number.
    pub seq: OutputSeq,
    /// The device that produced it.
    pub device: DeviceId,
    /// The bytes.
    pub data: Bytes,
}

/// An output as the backend reports it, before the engine numbers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawOutput {
    /// The device that produced it.
    pub device: DeviceId,
    /// The bytes.
    pub data: Bytes,
}

/// An event that reaches the guest asynchronously; the primary picks the execution
/// point, logs it, and the backup applies it at that same point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AsyncEvent {
    /// A device raises its interrupt line.
    Interrupt {
        /// The device.
        device: DeviceId,
    },
    /// Unsolicited input, such as a network packet; the device takes it in at this point.
    DeviceInput {
        /// The device.
        device: DeviceId,
        /// The payload.
        data: Bytes,
    },
    /// An I/O the guest started has completed. Its data (a DMA payload) lands in guest
    /// memory at this point and no earlier: the bounce-buffer discipline.
    IoComplete {
        /// Which I/O.
        io: IoId,
        /// Device-defined status.
        status: u32,
        /// The DMA payload. `None` for completions without data, and for reads the backup
        /// performs from its own disk.
        data: Option<Bytes>,
    },
}

/// What a record says happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The answer to a synchronous [`InputRequest`] at this point.
    Input {
        /// The device read.
        device: DeviceId,
        /// The value, little-endian.
        data: Bytes,
    },
    /// An asynchronous event applied at this point.
    Async(AsyncEvent),
    /// The guest started an I/O at this point.
    IoStart {
        /// Its id.
        io: IoId,
        /// [`IoRequest::digest`] of the request, checked on replay.
        digest: u64,
    },
    /// The guest produced an output at this point. The bytes are not logged: the backup
    /// produces them itself, and checks them against `digest`.
    Output {
        /// The output's sequence number.
        seq: OutputSeq,
        /// Digest of the output bytes.
        digest: u64,
    },
    /// The state digest of the primary's machine at this point.
    Digest {
        /// [`crate::EventSource::digest`] at this point.
        value: u64,
    },
    /// Proof of life, and a horizon the backup may execute up to.
    Heartbeat {
        /// Every output with a sequence number below this has been released by the
        /// primary; the backup may forget them.
        released_below: OutputSeq,
    },
    /// The guest stopped with an exit code at this point.
    Halt {
        /// The guest's exit code.
        code: u64,
    },
}

/// One entry of the log: an event at an execution point, with a sequence number.
///
/// Sequence numbers start at 1 and increase by one per record, with no gaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The record's sequence number.
    pub seq: u64,
    /// Where in the execution it applies.
    pub point: ExecPoint,
    /// What happened.
    pub event: Event,
}

/// The backup's acknowledgement, which also serves as its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Ack {
    /// Every record with `seq <= received` has reached the backup (0: none yet).
    pub received: u64,
    /// Every record with `seq <= replayed` has been replayed by the backup.
    pub replayed: u64,
}
