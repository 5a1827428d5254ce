//! # ft-sim
//!
//! A pure-software RISC-V machine (RV64IMAC + Zicsr + Zicntr; machine, supervisor and user mode) whose
//! execution is exact and instruction-counted, so that any asynchronous event can be
//! placed at any instruction. It is the backend ft uses to property-test replay
//! equivalence, and the machine the `failover` demo protects.
//!
//! * [`cpu`], [`rvc`], [`memory`]: the hart (with the C extension's expansion) and its RAM (at `0x8000_0000`, as spike and QEMU
//!   `virt` place it);
//! * [`devices`]: console UART, timer, wall clock, RNG, block device with DMA, network
//!   device — each a source of nondeterminism that goes through the log;
//! * [`machine`]: all of it behind [`ft_core::EventSource`];
//! * [`world`]: the host half of the devices, a seeded stand-in for the real world;
//! * [`disk`]: the disk image, in memory or in a file processes share, with fencing
//!   tokens enforced where writes land;
//! * [`loader`], [`asm`], [`guests`], [`htif`]: how programs get in (ELF with HTIF `tohost`,
//!   raw images, and an assembler for generated programs);
//! * [`cluster`]: a deterministic simulation of a whole protected pair;
//! * [`redundancy`]: a protected VM through a chain of failures, each followed by a
//!   live clone to a new backup.

pub mod asm;
pub mod cluster;
pub mod cpu;
pub mod devices;
pub mod disk;
pub mod guests;
pub mod htif;
pub mod loader;
pub mod machine;
pub mod memory;
pub mod progen;
pub mod redundancy;
pub mod rvc;
pub mod world;

pub use cluster::{PairConfig, PairSim, Side};
pub use disk::{Disk, DiskError};
pub use machine::{DiskMode, Machine, MachineConfig};
pub use redundancy::{ChainError, ChainSim};
pub use world::{Network, OutputSink, SimWorld, SimWorldConfig};
