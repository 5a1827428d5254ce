//! # ft-core
//!
//! The backend-agnostic heart of ft: fault tolerance for virtual machines by
//! deterministic replay, in the style of VMware FT.
//!
//! A primary machine records every nondeterministic event (device input, DMA data,
//! interrupts at exact execution points, time, randomness) and streams the records to
//! a backup, which replays them and stays an identical copy. When the primary dies the
//! backup goes live, and no output is lost or contradicted.
//!
//! This crate is sans-I/O: it holds no thread, socket or clock. Its pieces:
//!
//! * [`ExecPoint`]: a backend-defined, totally ordered position in an execution;
//! * [`Record`] and [`log_codec`]: the log and its framed, checksummed wire format;
//! * [`EventSource`]: the trait a backend (ft-sim, ft-kvm, your VMM) implements;
//! * [`World`]: the host half of the devices, where inputs come from and outputs go;
//! * [`LogChannel`] / [`LogReceiver`]: the transport's interface;
//! * [`OutputGate`], [`FailureDetector`], [`LagMonitor`]: the mechanisms;
//! * [`Arbiter`]: the split-brain tie-breaker, with [`InProcessArbiter`];
//! * [`Node`]: the engine, one side of a pair, driven by a runtime that passes time in;
//! * [`live_clone`]: a new backup made from a running machine, by iterative pre-copy;
//! * [`driver`]: the one loop every runtime turns around a [`Node`].
//!
//! ```
//! use ft_core::{log_codec, Event, ExecPoint, Record};
//! // Encode two records into one frame and decode them back.
//! let recs = vec![
//!     Record { seq: 1, point: ExecPoint::at(10), event: Event::Digest { value: 7 } },
//!     Record { seq: 2, point: ExecPoint::at(25), event: Event::Halt { code: 0 } },
//! ];
//! let mut wire = Vec::new();
//! log_codec::encode_records(&recs, &mut wire).unwrap();
//! assert_eq!(log_codec::decode_frame(&wire).unwrap(), log_codec::Frame::Records(recs));
//! // Garbage is a typed error, never a panic.
//! assert!(log_codec::decode_frame(b"not a frame at all").is_err());
//! ```

pub mod arbiter;
pub mod device_set;
pub mod digest;
pub mod driver;
pub mod event_source;
pub mod exec_point;
pub mod failure_detector;
pub mod flow_control;
mod go_live;
pub mod live_clone;
pub mod log_channel;
pub mod log_codec;
mod log_end;
pub mod node;
mod notice_display;
pub mod output_gate;
mod phase_change;
mod phase_state;
pub mod record;
mod recorder;
mod replayer;
pub mod resend_queue;
pub mod snapshot_frame;
pub mod world;

/// The byte buffer of inputs, outputs and DMA payloads, re-exported so an embedder
/// needs no direct `bytes` dependency of a matching version.
pub use bytes::Bytes;

pub use arbiter::{
    Arbiter, ArbiterError, CloneOffer, Decision, InProcessArbiter, Membership, NodeId, PairId,
    Purpose, Reservation,
};
pub use event_source::{EventSource, MemoryLayout, SourceError, SourceResult, Stop};
pub use exec_point::ExecPoint;
pub use failure_detector::{FailureDetector, Heartbeat};
pub use flow_control::{LagMonitor, Throttle};
pub use live_clone::{CloneConfig, CloneError, CloneFrame, CloneMsg};
pub use log_channel::{ChannelError, LogChannel, LogReceiver};
pub use node::{
    Blocked, Command, Config, EngineError, HaltReason, Node, Notice, Phase, Role, Stats,
    StepOutcome, Transmit,
};
pub use output_gate::OutputGate;
pub use record::{
    Ack, AsyncEvent, DeviceId, Event, InputRequest, IoId, IoKind, IoRequest, Nanos, Output,
    OutputSeq, RawOutput, Record,
};
pub use world::World;
