//! # ft-kvm
//!
//! The ft backend for real x86-64 guests on Linux KVM, built on the rust-vmm crates.
//!
//! **Status:** only the capability probe exists so far. The VM plumbing, the vCPU run
//! loop, the devices and the [`EventSource`](https://docs.rs/ft-core) implementation
//! are the subject of the ft-kvm issue. The probe is the first piece because every
//! later decision (exact mid-stream interrupt delivery by guest debugging, or
//! deterministic-exit delivery) is chosen by capability, never assumed.

pub mod probe;

pub use probe::{probe, Capabilities, ProbeError};
