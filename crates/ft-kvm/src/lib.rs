//! # ft-kvm
//!
//! The ft backend for real x86-64 guests on Linux KVM (see the crate README section in
//! `DESIGN.md` and [`machine`] for the landmark design).

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod exit;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod machine;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod memory;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod vm;

pub mod arch;
pub mod devices;
pub mod guest;
pub mod pair;
pub mod probe;

pub use probe::{probe, Capabilities, ProbeError};
