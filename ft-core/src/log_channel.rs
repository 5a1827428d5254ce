//! The log channel between a primary and its backup, as the engine's runtimes see it.
//!
//! The primary's end sends batches of records and receives acknowledgements; the
//! backup's end receives records and sends acknowledgements. Implementations (in
//! memory, TCP, fault-injecting) live in `ft-transport`.

use crate::log_codec::CodecError;
use crate::record::{Ack, Record};

/// Errors of log channels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The channel's buffer is full; try again later. Nothing was sent.
    #[error("log channel full")]
    Full,
    /// The peer is gone (closed, or the connection broke).
    #[error("log channel disconnected")]
    Disconnected,
    /// Bytes arrived that are not a valid frame: the stream cannot be trusted.
    #[error("corrupt log stream: {0}")]
    Corrupt(#[from] CodecError),
    /// Anything else the transport reports.
    #[error("log channel I/O error: {0}")]
    Io(String),
    /// The channel does not carry this kind of frame.
    #[error("this log channel does not carry {0}")]
    Unsupported(&'static str),
}

/// Result alias of this module.
pub type Result<T, E = ChannelError> = std::result::Result<T, E>;

/// The primary's end of the log channel.
pub trait LogChannel {
    /// Send a batch of consecutive records. On [`ChannelError::Full`] nothing was sent
    /// and the caller keeps the batch.
    fn send_records(&mut self, records: &[Record]) -> Result<()>;

    /// The next acknowledgement, if one has arrived.
    fn try_recv_ack(&mut self) -> Result<Option<Ack>>;
}

/// The backup's end of the log channel.
pub trait LogReceiver {
    /// The next batch of records, if one has arrived.
    fn try_recv_records(&mut self) -> Result<Option<Vec<Record>>>;

    /// Send an acknowledgement (also the backup's heartbeat).
    fn send_ack(&mut self, ack: Ack) -> Result<()>;
}
