//! # ft-transport
//!
//! Log channels and a runtime for [`ft_core`]'s sans-I/O engine:
//!
//! * [`frame`]: the frame level ([`FrameLink`]) and the log channel ends built on any
//!   frame link ([`PrimaryEnd`]: [`ft_core::LogChannel`], [`BackupEnd`]:
//!   [`ft_core::LogReceiver`]), which encode and decode with [`ft_core::log_codec`] and
//!   count traffic;
//! * [`memory`]: an in-memory frame link over bounded crossbeam channels, and
//!   [`memory::pair`];
//! * [`fault`]: a seeded, deterministic fault injector ([`FaultyLink`]) that sits
//!   between a channel end and its link;
//! * [`runtime`]: [`run`] (and [`run_primary`], [`run_backup`] over plain log
//!   channels), which drive one [`ft_core::Node`] with a real clock on the calling
//!   thread.
//!
//! ```
//! use ft_core::{Ack, Event, ExecPoint, LogChannel, LogReceiver, Record};
//! let (mut primary, mut backup) = ft_transport::memory::pair(16);
//! let batch = vec![Record { seq: 1, point: ExecPoint::at(5), event: Event::Digest { value: 1 } }];
//! primary.send_records(&batch).unwrap();
//! assert_eq!(backup.try_recv_records().unwrap(), Some(batch));
//! backup.send_ack(Ack { received: 1, replayed: 0 }).unwrap();
//! assert_eq!(primary.try_recv_ack().unwrap(), Some(Ack { received: 1, replayed: 0 }));
//! assert!(primary.bytes_sent() > 0);
//! ```

pub mod arbiter;
pub mod fault;
pub mod frame;
pub mod memory;
pub mod runtime;
pub mod tcp;

pub use fault::{Delay, Direction, FaultHandle, FaultPlan, FaultStats, Faults, FaultyLink};
pub use frame::{BackupEnd, FrameLink, PrimaryEnd, Traffic};
pub use memory::{link_pair, pair, MemoryBackupEnd, MemoryLink, MemoryPrimaryEnd};
pub use runtime::{
    nanos_since, run, run_backup, run_primary, Control, Exit, RunReport, RuntimeConfig,
    RuntimeError,
};
