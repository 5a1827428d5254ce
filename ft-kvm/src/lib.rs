//! # ft-kvm
//!
//! The ft backend for real x86-64 guests on Linux KVM, built on the rust-vmm crates
//! (`kvm-ioctls`, `kvm-bindings`): the same engine that protects ft-sim machines
//! records, replays and fails over KVM VMs.
//!
//! * [`probe`](mod@probe): what the host's KVM offers, asked, never assumed;
//! * [`arch::x86_64`]: GDT, TSS, identity page tables and control registers for 64-bit
//!   mode from the first instruction (Firecracker's layout);
//! * [`memory`]: the guest's RAM, one documented `mmap`;
//! * [`vm`]: one VM and vCPU: run to the next exit, complete it, inject interrupts
//!   from userspace (no in-kernel irqchip), save and load the vCPU state;
//! * [`exit`]: the pure, unit-tested mapping of KVM exits to events and typed errors;
//! * [`devices`]: console, clock, RNG, timer, block device with DMA, network, interrupt
//!   status and exit, on MMIO (ids and op codes compatible with `ft_sim::SimWorld`);
//! * [`guest`]: a tiny CPL0 kernel and CPL3 workloads built with iced-x86, including
//!   random ones for property tests;
//! * [`machine`]: [`machine::KvmMachine`], the [`ft_core::EventSource`] with
//!   deterministic-exit delivery, and the argument why it is exact;
//! * [`midstream`]: exact mid-stream delivery by single-step landmarks where the host
//!   can debug the guest, the probe that finds out at which CPLs it can, and the
//!   argument why it is exact;
//! * [`pair`]: an in-process pair on virtual time for tests, demos and benchmarks.
//!
//! The VM modules exist on Linux/x86-64 only; the layout, devices and guest builders
//! build everywhere.

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod exit;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod machine;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod memory;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod midstream;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod vm;

pub mod arch;
pub mod devices;
pub mod guest;
pub mod pair;
pub mod probe;

pub use probe::{probe, Capabilities, ProbeError};
