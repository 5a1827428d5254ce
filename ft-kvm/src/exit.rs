//! VM exits as the machine sees them: a pure mapping from KVM's [`VcpuExit`] to an owned
//! [`ExitEvent`], with every exit the backend does not handle turned into a typed error.
//!
//! Kept apart from the run loop so that it is unit-tested without `/dev/kvm`.

use kvm_ioctls::VcpuExit;
use thiserror::Error;

/// Errors of exit classification: exits that end the VM or that the backend never
/// expects.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExitError {
    /// `KVM_EXIT_INTERNAL_ERROR` (on this host, for example, a software breakpoint).
    #[error("KVM internal error exit")]
    InternalError,
    /// `KVM_EXIT_FAIL_ENTRY`: the vCPU state is not enterable.
    #[error("VM entry failed (hardware reason {reason:#x})")]
    FailEntry {
        /// Hardware entry-failure reason.
        reason: u64,
    },
    /// A string I/O instruction or a repeated port access, which the devices do not
    /// implement.
    #[error("port access of {len} bytes to port {port:#x} is not supported")]
    BadPortAccess {
        /// Port.
        port: u16,
        /// Bytes.
        len: usize,
    },
    /// An MMIO access wider than 8 bytes.
    #[error("MMIO access of {len} bytes at {addr:#x} is not supported")]
    BadMmioAccess {
        /// Address.
        addr: u64,
        /// Bytes.
        len: usize,
    },
    /// Any exit the backend does not handle, by name.
    #[error("unexpected VM exit: {0}")]
    Unexpected(String),
}

/// Result alias of this module.
pub type Result<T, E = ExitError> = std::result::Result<T, E>;

/// What an exit means to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitEvent {
    /// The guest read `len` bytes of MMIO at `addr`: deterministic.
    MmioRead {
        /// Guest-physical address.
        addr: u64,
        /// Bytes (1, 2, 4 or 8).
        len: u8,
    },
    /// The guest wrote `value` (`len` bytes, little-endian) to MMIO at `addr`:
    /// deterministic.
    MmioWrite {
        /// Guest-physical address.
        addr: u64,
        /// Bytes.
        len: u8,
        /// The value written, zero-extended.
        value: u64,
    },
    /// `in` from `port`: deterministic.
    PioIn {
        /// Port.
        port: u16,
        /// Bytes.
        len: u8,
    },
    /// `out` to `port`: deterministic.
    PioOut {
        /// Port.
        port: u16,
        /// Bytes.
        len: u8,
        /// The value written, zero-extended.
        value: u64,
    },
    /// `hlt`: deterministic.
    Hlt,
    /// Triple fault.
    Shutdown,
    /// A signal or `immediate_exit` interrupted `KVM_RUN`: not caused by the guest.
    Interrupted,
    /// The interrupt window opened (`request_interrupt_window`): not a deterministic
    /// point.
    IrqWindowOpen,
    /// A debug exit (single-step or hardware breakpoint).
    Debug {
        /// The guest RIP.
        pc: u64,
        /// DR6.
        dr6: u64,
        /// The exception vector (1 for #DB).
        exception: u32,
    },
}

impl ExitEvent {
    /// Whether the guest caused this exit at a point that depends only on its own
    /// execution (MMIO, PIO, HLT): the landmarks of deterministic-exit delivery.
    pub fn is_deterministic(&self) -> bool {
        matches!(
            self,
            ExitEvent::MmioRead { .. }
                | ExitEvent::MmioWrite { .. }
                | ExitEvent::PioIn { .. }
                | ExitEvent::PioOut { .. }
                | ExitEvent::Hlt
        )
    }
}

fn le_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

/// Map a KVM exit to an [`ExitEvent`], or a typed error for exits the machine does not
/// handle. Pure: it only looks at the exit.
pub fn classify(exit: &VcpuExit<'_>) -> Result<ExitEvent> {
    match exit {
        VcpuExit::MmioRead(addr, data) => match data.len() {
            1 | 2 | 4 | 8 => Ok(ExitEvent::MmioRead {
                addr: *addr,
                len: data.len() as u8,
            }),
            len => Err(ExitError::BadMmioAccess { addr: *addr, len }),
        },
        VcpuExit::MmioWrite(addr, data) => match data.len() {
            1 | 2 | 4 | 8 => Ok(ExitEvent::MmioWrite {
                addr: *addr,
                len: data.len() as u8,
                value: le_value(data),
            }),
            len => Err(ExitError::BadMmioAccess { addr: *addr, len }),
        },
        VcpuExit::IoIn(port, data) => match data.len() {
            1 | 2 | 4 => Ok(ExitEvent::PioIn {
                port: *port,
                len: data.len() as u8,
            }),
            len => Err(ExitError::BadPortAccess { port: *port, len }),
        },
        VcpuExit::IoOut(port, data) => match data.len() {
            1 | 2 | 4 => Ok(ExitEvent::PioOut {
                port: *port,
                len: data.len() as u8,
                value: le_value(data),
            }),
            len => Err(ExitError::BadPortAccess { port: *port, len }),
        },
        VcpuExit::Hlt => Ok(ExitEvent::Hlt),
        VcpuExit::Shutdown => Ok(ExitEvent::Shutdown),
        VcpuExit::Intr => Ok(ExitEvent::Interrupted),
        VcpuExit::IrqWindowOpen => Ok(ExitEvent::IrqWindowOpen),
        VcpuExit::Debug(d) => Ok(ExitEvent::Debug {
            pc: d.pc,
            dr6: d.dr6,
            exception: d.exception,
        }),
        VcpuExit::InternalError => Err(ExitError::InternalError),
        VcpuExit::FailEntry(reason, _) => Err(ExitError::FailEntry { reason: *reason }),
        VcpuExit::Unsupported(r) => Err(ExitError::Unexpected(format!("exit reason {r}"))),
        other => Err(ExitError::Unexpected(format!("{other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_debug_exit_arch;

    #[test]
    fn device_exits_are_deterministic_events() {
        let mut buf = [0u8; 4];
        let e = classify(&VcpuExit::MmioRead(0x3000_1000, &mut buf)).ok();
        assert_eq!(
            e,
            Some(ExitEvent::MmioRead {
                addr: 0x3000_1000,
                len: 4
            })
        );
        let w = classify(&VcpuExit::MmioWrite(0x3000_0000, &[0x41])).ok();
        assert_eq!(
            w,
            Some(ExitEvent::MmioWrite {
                addr: 0x3000_0000,
                len: 1,
                value: 0x41
            })
        );
        let o = classify(&VcpuExit::IoOut(0xf4, &[7, 0, 0, 0])).ok();
        assert_eq!(
            o,
            Some(ExitEvent::PioOut {
                port: 0xf4,
                len: 4,
                value: 7
            })
        );
        let mut ib = [0u8; 1];
        assert!(classify(&VcpuExit::IoIn(0x3f8, &mut ib)).is_ok());
        for ev in [e, w, o, Some(ExitEvent::Hlt)].into_iter().flatten() {
            assert!(ev.is_deterministic());
        }
    }

    #[test]
    fn asynchronous_exits_are_not_landmarks() {
        for x in [VcpuExit::Intr, VcpuExit::IrqWindowOpen] {
            let e = classify(&x).ok();
            assert!(e.is_some_and(|e| !e.is_deterministic()));
        }
        let d = kvm_debug_exit_arch {
            exception: 1,
            pad: 0,
            pc: 0x1234,
            dr6: 0xffff_0ff1,
            dr7: 0,
        };
        assert_eq!(
            classify(&VcpuExit::Debug(d)).ok(),
            Some(ExitEvent::Debug {
                pc: 0x1234,
                dr6: 0xffff_0ff1,
                exception: 1
            })
        );
    }

    #[test]
    fn unknown_and_failing_exits_are_typed_errors() {
        assert_eq!(
            classify(&VcpuExit::InternalError),
            Err(ExitError::InternalError)
        );
        assert_eq!(
            classify(&VcpuExit::FailEntry(0x21, 0)),
            Err(ExitError::FailEntry { reason: 0x21 })
        );
        assert!(matches!(
            classify(&VcpuExit::Unsupported(999)),
            Err(ExitError::Unexpected(_))
        ));
        assert!(matches!(
            classify(&VcpuExit::Unknown),
            Err(ExitError::Unexpected(_))
        ));
        assert!(matches!(
            classify(&VcpuExit::MmioWrite(0, &[0; 16])),
            Err(ExitError::BadMmioAccess { .. })
        ));
        assert!(matches!(
            classify(&VcpuExit::IoOut(1, &[0; 8])),
            Err(ExitError::BadPortAccess { .. })
        ));
    }
}
