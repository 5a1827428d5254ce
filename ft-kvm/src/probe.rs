//! Capability probing: what this host's KVM can do, asked, never assumed.

/// Errors of probing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// `/dev/kvm` could not be opened (absent, or no permission).
    #[error("cannot open /dev/kvm: {0}")]
    NoKvm(String),
    /// The host is not Linux on x86-64.
    #[error("KVM backend needs Linux on x86-64")]
    Unsupported,
    /// The KVM API version is not the stable one (12).
    #[error("KVM API version {0}, expected 12")]
    ApiVersion(i32),
}

/// Result alias of this module.
pub type Result<T, E = ProbeError> = std::result::Result<T, E>;

/// What the host's KVM offers that ft cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// `KVM_GET_API_VERSION`.
    pub api_version: i32,
    /// `KVM_CAP_SET_GUEST_DEBUG`: single-step and hardware breakpoints (needed for exact
    /// mid-stream interrupt delivery). Whether they work at every CPL must still be
    /// tested by running a guest: a software-nested host may honour them at CPL0 only.
    pub guest_debug: bool,
    /// `KVM_CAP_IRQCHIP`: an in-kernel interrupt controller (ft injects from userspace
    /// and does not need it).
    pub irqchip: bool,
    /// `KVM_CAP_USER_MEMORY`.
    pub user_memory: bool,
    /// `KVM_CAP_SYNC_MMU`.
    pub sync_mmu: bool,
    /// `KVM_CAP_TSC_CONTROL`: the guest TSC rate can be set.
    pub tsc_control: bool,
    /// `KVM_CAP_EXT_CPUID`: `KVM_SET_CPUID2` exists (whether the host honours a
    /// filtered CPUID must be tested by running a guest).
    pub ext_cpuid: bool,
    /// `KVM_CAP_ADJUST_CLOCK`.
    pub adjust_clock: bool,
    /// Number of vCPUs recommended.
    pub nr_vcpus: usize,
    /// Largest number of memory slots.
    pub nr_memslots: usize,
}

/// Probe `/dev/kvm`.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub fn probe() -> Result<Capabilities> {
    use kvm_ioctls::{Cap, Kvm};
    let kvm = Kvm::new().map_err(|e| ProbeError::NoKvm(e.to_string()))?;
    let api_version = kvm.get_api_version();
    if api_version != 12 {
        return Err(ProbeError::ApiVersion(api_version));
    }
    Ok(Capabilities {
        api_version,
        guest_debug: kvm.check_extension(Cap::SetGuestDebug),
        irqchip: kvm.check_extension(Cap::Irqchip),
        user_memory: kvm.check_extension(Cap::UserMemory),
        sync_mmu: kvm.check_extension(Cap::SyncMmu),
        tsc_control: kvm.check_extension(Cap::TscControl),
        ext_cpuid: kvm.check_extension(Cap::ExtCpuid),
        adjust_clock: kvm.check_extension(Cap::AdjustClock),
        nr_vcpus: kvm.get_nr_vcpus(),
        nr_memslots: kvm.get_nr_memslots(),
    })
}

/// Probe `/dev/kvm` (unsupported host).
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub fn probe() -> Result<Capabilities> {
    Err(ProbeError::Unsupported)
}
