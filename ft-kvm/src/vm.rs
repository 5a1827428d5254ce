//! One KVM VM with one vCPU and its guest memory: creation, long-mode setup, running to
//! the next exit, completing an exit, interrupt injection, and the vCPU state.
//!
//! No in-kernel irqchip is created: interrupts are injected from userspace with
//! `KVM_INTERRUPT`, and only when the last exit reported the vCPU ready for one.

use std::os::unix::io::AsRawFd;

use kvm_bindings::{
    kvm_fpu, kvm_guest_debug, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs,
    kvm_userspace_memory_region, kvm_vcpu_events, Msrs, KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP, KVM_MAX_CPUID_ENTRIES,
    KVM_MEM_LOG_DIRTY_PAGES,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::arch::x86_64::{self as arch, Segment};
use crate::exit::{self, ExitEvent};
use crate::memory::{GuestMemory, MemoryError};

/// Errors of the VM plumbing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VmError {
    /// A KVM ioctl failed.
    #[error("{op}: {errno}")]
    Kvm {
        /// Which operation.
        op: &'static str,
        /// The error.
        errno: String,
    },
    /// Guest memory.
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    /// The guest layout.
    #[error("layout: {0}")]
    Arch(#[from] arch::ArchError),
    /// An exit the machine cannot handle.
    #[error("exit: {0}")]
    Exit(#[from] exit::ExitError),
    /// `complete` was called with no exit to complete, or with the wrong data.
    #[error("no {0} exit is pending completion")]
    NothingToComplete(&'static str),
    /// A completion run did not return as `immediate_exit` promises.
    #[error("completing an exit ran the guest ({0})")]
    CompletionRan(String),
}

/// Result alias of this module.
pub type Result<T, E = VmError> = std::result::Result<T, E>;

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |e| VmError::Kvm {
        op,
        errno: e.to_string(),
    }
}

/// The first MSR of KVM's paravirtual range (`0x4b564d00`): never saved or restored.
pub const KVM_PV_MSR_FIRST: u32 = 0x4b56_4d00;
/// The last MSR of KVM's paravirtual range.
pub const KVM_PV_MSR_LAST: u32 = 0x4b56_4dff;
/// `IA32_TSC`: host time, not guest state to restore.
pub const MSR_IA32_TSC: u32 = 0x10;

/// The FPU/SSE state (KVM's `kvm_fpu`, in a serializable form).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FpuState {
    /// x87 registers.
    pub fpr: Vec<[u8; 16]>,
    /// Control word.
    pub fcw: u16,
    /// Status word.
    pub fsw: u16,
    /// Abridged tag word.
    pub ftwx: u8,
    /// Last opcode.
    pub last_opcode: u16,
    /// Last instruction pointer.
    pub last_ip: u64,
    /// Last data pointer.
    pub last_dp: u64,
    /// XMM registers.
    pub xmm: Vec<[u8; 16]>,
    /// MXCSR.
    pub mxcsr: u32,
}

impl FpuState {
    fn from_kvm(f: &kvm_fpu) -> FpuState {
        FpuState {
            fpr: f.fpr.to_vec(),
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm.to_vec(),
            mxcsr: f.mxcsr,
        }
    }

    fn to_kvm(&self) -> kvm_fpu {
        let mut f = kvm_fpu {
            fcw: self.fcw,
            fsw: self.fsw,
            ftwx: self.ftwx,
            last_opcode: self.last_opcode,
            last_ip: self.last_ip,
            last_dp: self.last_dp,
            mxcsr: self.mxcsr,
            ..Default::default()
        };
        for (d, s) in f.fpr.iter_mut().zip(&self.fpr) {
            *d = *s;
        }
        for (d, s) in f.xmm.iter_mut().zip(&self.xmm) {
            *d = *s;
        }
        f
    }
}

/// The vCPU's architectural state, as saved in snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VcpuState {
    /// General-purpose registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segment, descriptor-table and control registers.
    pub sregs: kvm_sregs,
    /// x87/SSE state.
    pub fpu: FpuState,
    /// Pending exceptions, interrupt shadow, NMI state.
    pub events: kvm_vcpu_events,
    /// Debug registers.
    pub debugregs: kvm_bindings::kvm_debugregs,
    /// Multiprocessing state.
    pub mp_state: u32,
    /// Extended control registers (absent where the host has no XSAVE).
    pub xcrs: Option<kvm_bindings::kvm_xcrs>,
    /// MSRs (index, value), without KVM's paravirtual range and the TSC.
    pub msrs: Vec<(u32, u64)>,
    /// The XSAVE area (`KVM_GET_XSAVE`, 1024 words: x87, SSE, AVX and the XSAVE header),
    /// absent where the host has no XSAVE. Loaded after the legacy FPU state, so AVX
    /// upper halves survive a snapshot.
    pub xsave: Option<Vec<u32>>,
}

fn to_kvm_segment(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present,
        dpl: s.dpl,
        db: s.db,
        s: s.s,
        l: s.l,
        g: s.g,
        avl: s.avl,
        unusable: s.unusable,
        padding: 0,
    }
}

/// What the last `KVM_RUN` left for completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    MmioRead(u8),
    PioIn(u8),
    Other,
}

/// Whether the host honoured a CPUID filter, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidFilter {
    /// RDRAND (leaf 1 ECX bit 30) and RDSEED (leaf 7 EBX bit 18) were cleared in the
    /// CPUID given to the vCPU.
    pub rdrand_hidden: bool,
}

/// A KVM VM with one vCPU and its RAM.
pub struct Vm {
    // Field order is drop order: the vCPU and VM fds go before the memory they map.
    vcpu: VcpuFd,
    vm: VmFd,
    kvm: Kvm,
    mem: GuestMemory,
    pending: Pending,
    msr_indices: Vec<u32>,
    cpuid: CpuidFilter,
    /// Guest single-step is enabled (`set_guest_debug`).
    single_step: bool,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("mem_size", &self.mem.size())
            .field("pending", &self.pending)
            .finish()
    }
}

impl Vm {
    /// Create a VM with `mem_size` bytes of RAM at guest-physical 0 and one vCPU with a
    /// filtered CPUID (RDRAND and RDSEED hidden).
    pub fn new(mem_size: usize) -> Result<Vm> {
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        // Needed by VMX for real-mode emulation; harmless elsewhere.
        let _ = vm.set_tss_address(0xfffb_d000);
        let mem = GuestMemory::new(mem_size)?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: mem.size() as u64,
            userspace_addr: mem.host_addr(),
        };
        // SAFETY: the region is a live mapping of exactly `memory_size` bytes owned by
        // `mem`, which this `Vm` keeps until after the VM fd is closed (field order).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        let vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        for e in cpuid.as_mut_slice() {
            match (e.function, e.index) {
                (1, _) => e.ecx &= !(1 << 30),
                (7, 0) => e.ebx &= !(1 << 18),
                _ => {}
            }
        }
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        let msr_indices = kvm
            .get_msr_index_list()
            .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .iter()
            .copied()
            .filter(|i| !(KVM_PV_MSR_FIRST..=KVM_PV_MSR_LAST).contains(i) && *i != MSR_IA32_TSC)
            .collect();
        Ok(Vm {
            vcpu,
            vm,
            kvm,
            mem,
            pending: Pending::None,
            msr_indices,
            cpuid: CpuidFilter {
                rdrand_hidden: true,
            },
            single_step: false,
        })
    }

    /// The CPUID filter given to the vCPU.
    pub fn cpuid_filter(&self) -> CpuidFilter {
        self.cpuid
    }

    /// Write the GDT, TSS and page tables and put the vCPU in 64-bit mode at CPL0 with
    /// `rip` and `rsp`, interrupts disabled.
    pub fn setup_long_mode(&mut self, rip: u64, rsp: u64) -> Result<()> {
        let st = arch::setup_long_mode(self.mem.as_mut_slice())?;
        let mut sregs = self.vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        sregs.cs = to_kvm_segment(&st.cs);
        let data = to_kvm_segment(&st.data);
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = to_kvm_segment(&st.tr);
        sregs.gdt.base = st.gdt.base;
        sregs.gdt.limit = st.gdt.limit;
        sregs.idt.base = st.idt.base;
        sregs.idt.limit = st.idt.limit;
        sregs.cr0 = st.cr0;
        sregs.cr3 = st.cr3;
        sregs.cr4 = st.cr4;
        sregs.efer = st.efer;
        self.vcpu
            .set_sregs(&sregs)
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        let regs = kvm_regs {
            rip,
            rsp,
            rflags: arch::RFLAGS_RESET,
            ..Default::default()
        };
        self.vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
        Ok(())
    }

    /// Turn KVM's dirty-page log of guest memory on or off (re-registering the memory
    /// slot with or without `KVM_MEM_LOG_DIRTY_PAGES`). Turning it on starts from a
    /// clean log.
    ///
    /// # Errors
    ///
    /// The ioctl's error: a host without dirty logging.
    pub fn set_dirty_logging(&mut self, on: bool) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
            guest_phys_addr: 0,
            memory_size: self.mem.size() as u64,
            userspace_addr: self.mem.host_addr(),
        };
        // SAFETY: the same live mapping as at creation, owned by `self.mem` for as long
        // as the VM fd; only the flags change.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION (dirty log)"))?;
        if on {
            self.dirty_log()?;
        }
        Ok(())
    }

    /// The pages the guest wrote since the last call (`KVM_GET_DIRTY_LOG`: one bit per
    /// 4 KiB page, page `i` bit `i % 64` of word `i / 64`), cleared. Only while dirty
    /// logging is on.
    ///
    /// # Errors
    ///
    /// The ioctl's error.
    pub fn dirty_log(&self) -> Result<Vec<u64>> {
        self.vm
            .get_dirty_log(0, self.mem.size())
            .map_err(kvm_err("KVM_GET_DIRTY_LOG"))
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// Guest memory, mutably.
    pub fn memory_mut(&mut self) -> &mut GuestMemory {
        &mut self.mem
    }

    /// The KVM system handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The VM handle.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// Enter the guest until the next exit, and classify it.
    pub fn run(&mut self) -> Result<ExitEvent> {
        let ev = match self.vcpu.run() {
            Ok(x) => exit::classify(&x)?,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                ExitEvent::Interrupted
            }
            Err(e) => return Err(kvm_err("KVM_RUN")(e)),
        };
        self.pending = match ev {
            ExitEvent::MmioRead { len, .. } => Pending::MmioRead(len),
            ExitEvent::PioIn { len, .. } => Pending::PioIn(len),
            ExitEvent::MmioWrite { .. } | ExitEvent::PioOut { .. } => Pending::Other,
            _ => Pending::None,
        };
        Ok(ev)
    }

    /// The current privilege level (CS.DPL of the vCPU's code segment).
    pub fn cpl(&self) -> Result<u8> {
        Ok(self.sregs()?.cs.dpl)
    }

    /// Whether `KVM_GET_XSAVE`/`KVM_SET_XSAVE` may be used with the fixed 4 KiB
    /// `kvm_xsave`: the host has XSAVE, and the size it needs (`KVM_CAP_XSAVE2`, 0 before
    /// Linux 5.17) fits the struct. This process never enables dynamic XSTATE features
    /// (`arch_prctl`), so the size cannot grow afterwards.
    fn xsave_fits(&self) -> bool {
        self.kvm.check_extension(kvm_ioctls::Cap::Xsave)
            && usize::try_from(self.vm.check_extension_int(kvm_ioctls::Cap::Xsave2))
                .is_ok_and(|n| n <= std::mem::size_of::<kvm_bindings::kvm_xsave>())
    }

    /// The XSAVE area as 1024 words, or None where the host has no usable XSAVE.
    pub fn xsave(&self) -> Result<Option<Vec<u32>>> {
        if !self.xsave_fits() {
            return Ok(None);
        }
        let x = self.vcpu.get_xsave().map_err(kvm_err("KVM_GET_XSAVE"))?;
        Ok(Some(x.region.to_vec()))
    }

    /// Load an XSAVE area saved by [`Vm::xsave`].
    pub fn set_xsave(&self, words: &[u32]) -> Result<()> {
        if !self.xsave_fits() {
            return Err(VmError::Kvm {
                op: "KVM_SET_XSAVE",
                errno: "the host has no XSAVE area of at most 4 KiB".into(),
            });
        }
        let mut x = kvm_bindings::kvm_xsave::default();
        if words.len() != x.region.len() {
            return Err(VmError::Kvm {
                op: "KVM_SET_XSAVE",
                errno: format!("XSAVE area of {} words, expected 1024", words.len()),
            });
        }
        x.region.copy_from_slice(words);
        // SAFETY: `xsave_fits` checked that the size KVM reads (KVM_CAP_XSAVE2, or the
        // legacy 4 KiB before it existed) is at most the size of `kvm_xsave`, which `x`
        // is, whole and initialized; no dynamic XSTATE feature is ever enabled here.
        unsafe { self.vcpu.set_xsave(&x) }.map_err(kvm_err("KVM_SET_XSAVE"))
    }

    /// Whether a read exit is waiting for its value.
    pub fn read_pending(&self) -> bool {
        matches!(self.pending, Pending::MmioRead(_) | Pending::PioIn(_))
    }

    /// Finish the instruction of the last MMIO/PIO exit without running further guest
    /// code: fill in the read `value` (ignored for writes) and re-enter with
    /// `immediate_exit`, which completes the pending operation and returns at once. After
    /// this the vCPU state is consistent (RIP past the instruction).
    pub fn complete(&mut self, value: u64) -> Result<()> {
        let bytes = value.to_le_bytes();
        match self.pending {
            Pending::None => return Ok(()),
            Pending::MmioRead(len) => {
                let run = self.vcpu.get_kvm_run();
                // SAFETY: the last exit was KVM_EXIT_MMIO (recorded in `pending`), so
                // `mmio` is the union's active field; `len` <= 8 = data's size.
                unsafe {
                    run.__bindgen_anon_1.mmio.data[..usize::from(len)]
                        .copy_from_slice(&bytes[..usize::from(len)]);
                }
            }
            Pending::PioIn(len) => {
                let run = self.vcpu.get_kvm_run();
                // SAFETY: the last exit was KVM_EXIT_IO (recorded in `pending`), so `io`
                // is the union's active field.
                let off = unsafe { run.__bindgen_anon_1.io.data_offset } as usize;
                let base = std::ptr::from_mut(run).cast::<u8>();
                // SAFETY: the kernel places the I/O data at `data_offset` inside the
                // kvm_run mapping (the same mapping `run` points into, alive as long as
                // the vCPU); `len` <= 4 bytes, the size of the one access (count 1 was
                // checked by `exit::classify`).
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(off), usize::from(len));
                }
            }
            Pending::Other => {}
        }
        self.pending = Pending::None;
        self.vcpu.set_kvm_immediate_exit(1);
        let r = self.vcpu.run().map(|x| {
            (
                matches!(x, kvm_ioctls::VcpuExit::Debug(_)),
                format!("{x:?}"),
            )
        });
        self.vcpu.set_kvm_immediate_exit(0);
        match r {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            // Single-stepping: KVM finishes the instruction and reports its step trap
            // before it looks at `immediate_exit`. The guest ran nothing further (the
            // trap follows the completed instruction); the state is just as consistent.
            Ok((true, _)) if self.single_step => Ok(()),
            Ok((_, x)) => Err(VmError::CompletionRan(x)),
            Err(e) => Err(kvm_err("KVM_RUN (completion)")(e)),
        }
    }

    /// Whether the vCPU can take an interrupt now, as the last `KVM_RUN` reported it:
    /// `ready_for_interrupt_injection` and RFLAGS.IF both set.
    pub fn ready_for_interrupt(&mut self) -> bool {
        let run = self.vcpu.get_kvm_run();
        run.ready_for_interrupt_injection != 0 && run.if_flag != 0
    }

    /// RFLAGS.IF as the last `KVM_RUN` reported it.
    pub fn if_flag(&mut self) -> bool {
        self.vcpu.get_kvm_run().if_flag != 0
    }

    /// Queue external interrupt `vector` for delivery at the next entry
    /// (`KVM_INTERRUPT`). Callers gate this on [`Vm::ready_for_interrupt`].
    pub fn inject_interrupt(&self, vector: u8) -> Result<()> {
        /// `_IOW(KVMIO, 0x86, struct kvm_interrupt)`.
        const KVM_INTERRUPT: libc::c_ulong = 0x4004_ae86;
        let irq = kvm_bindings::kvm_interrupt {
            irq: u32::from(vector),
        };
        // SAFETY: KVM_INTERRUPT on a vCPU fd reads one `struct kvm_interrupt` (4 bytes)
        // from the pointer, which points at a live local of that type.
        let ret = unsafe {
            libc::ioctl(
                self.vcpu.as_raw_fd(),
                KVM_INTERRUPT as _,
                std::ptr::from_ref(&irq),
            )
        };
        if ret != 0 {
            return Err(VmError::Kvm {
                op: "KVM_INTERRUPT",
                errno: std::io::Error::last_os_error().to_string(),
            });
        }
        Ok(())
    }

    /// General-purpose registers.
    pub fn regs(&self) -> Result<kvm_regs> {
        self.vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))
    }

    /// Set the general-purpose registers.
    pub fn set_regs(&self, regs: &kvm_regs) -> Result<()> {
        self.vcpu.set_regs(regs).map_err(kvm_err("KVM_SET_REGS"))
    }

    /// Special registers.
    pub fn sregs(&self) -> Result<kvm_sregs> {
        self.vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))
    }

    /// FPU/SSE state.
    pub fn fpu(&self) -> Result<FpuState> {
        Ok(FpuState::from_kvm(
            &self.vcpu.get_fpu().map_err(kvm_err("KVM_GET_FPU"))?,
        ))
    }

    /// Enable single-step and/or hardware breakpoint 0 at `bp` (None: disable guest
    /// debugging).
    pub fn set_guest_debug(&mut self, single_step: bool, bp: Option<u64>) -> Result<()> {
        let mut dbg = kvm_guest_debug::default();
        if single_step || bp.is_some() {
            dbg.control = KVM_GUESTDBG_ENABLE;
        }
        if single_step {
            dbg.control |= KVM_GUESTDBG_SINGLESTEP;
        }
        if let Some(addr) = bp {
            dbg.control |= KVM_GUESTDBG_USE_HW_BP;
            dbg.arch.debugreg[0] = addr;
            // DR7: L0 enabled, execute breakpoint, length 1.
            dbg.arch.debugreg[7] = 0x1;
        }
        self.vcpu
            .set_guest_debug(&dbg)
            .map_err(kvm_err("KVM_SET_GUEST_DEBUG"))?;
        self.single_step = single_step;
        Ok(())
    }

    fn read_msrs(&self) -> Result<Vec<(u32, u64)>> {
        let mut out = Vec::new();
        let mut rest: &[u32] = &self.msr_indices;
        while !rest.is_empty() {
            let entries: Vec<kvm_msr_entry> = rest
                .iter()
                .map(|i| kvm_msr_entry {
                    index: *i,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&entries).map_err(|e| VmError::Kvm {
                op: "Msrs::from_entries",
                errno: format!("{e:?}"),
            })?;
            let n = self
                .vcpu
                .get_msrs(&mut msrs)
                .map_err(kvm_err("KVM_GET_MSRS"))?;
            out.extend(msrs.as_slice()[..n].iter().map(|e| (e.index, e.data)));
            // KVM stops at the first MSR it cannot read: skip it and go on.
            rest = rest.get(n + 1..).unwrap_or(&[]);
        }
        Ok(out)
    }

    fn write_msrs(&self, msrs: &[(u32, u64)]) -> Result<()> {
        let mut rest = msrs;
        while !rest.is_empty() {
            let entries: Vec<kvm_msr_entry> = rest
                .iter()
                .map(|(i, d)| kvm_msr_entry {
                    index: *i,
                    data: *d,
                    ..Default::default()
                })
                .collect();
            let m = Msrs::from_entries(&entries).map_err(|e| VmError::Kvm {
                op: "Msrs::from_entries",
                errno: format!("{e:?}"),
            })?;
            let n = self.vcpu.set_msrs(&m).map_err(kvm_err("KVM_SET_MSRS"))?;
            // An MSR this host refuses to set is skipped, like the paravirtual ones.
            rest = rest.get(n + 1..).unwrap_or(&[]);
        }
        Ok(())
    }

    /// The whole vCPU state.
    pub fn state(&self) -> Result<VcpuState> {
        let xcrs = if self.kvm.check_extension(kvm_ioctls::Cap::Xcrs) {
            Some(self.vcpu.get_xcrs().map_err(kvm_err("KVM_GET_XCRS"))?)
        } else {
            None
        };
        Ok(VcpuState {
            regs: self.regs()?,
            sregs: self.sregs()?,
            fpu: self.fpu()?,
            events: self
                .vcpu
                .get_vcpu_events()
                .map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?,
            debugregs: self
                .vcpu
                .get_debug_regs()
                .map_err(kvm_err("KVM_GET_DEBUGREGS"))?,
            mp_state: self
                .vcpu
                .get_mp_state()
                .map_err(kvm_err("KVM_GET_MP_STATE"))?
                .mp_state,
            xcrs,
            msrs: self.read_msrs()?,
            xsave: self.xsave()?,
        })
    }

    /// Load a vCPU state (Firecracker's restore order: MSRs, regs, sregs, FPU, XCRs,
    /// debug registers, MP state, events).
    pub fn set_state(&mut self, st: &VcpuState) -> Result<()> {
        self.write_msrs(&st.msrs)?;
        self.vcpu
            .set_sregs(&st.sregs)
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        self.set_regs(&st.regs)?;
        self.vcpu
            .set_fpu(&st.fpu.to_kvm())
            .map_err(kvm_err("KVM_SET_FPU"))?;
        if let Some(x) = &st.xcrs {
            self.vcpu.set_xcrs(x).map_err(kvm_err("KVM_SET_XCRS"))?;
        }
        // After the XCRs (XCR0 decides which components the area may hold).
        if let Some(x) = &st.xsave {
            self.set_xsave(x)?;
        }
        self.vcpu
            .set_debug_regs(&st.debugregs)
            .map_err(kvm_err("KVM_SET_DEBUGREGS"))?;
        self.vcpu
            .set_mp_state(kvm_bindings::kvm_mp_state {
                mp_state: st.mp_state,
            })
            .map_err(kvm_err("KVM_SET_MP_STATE"))?;
        self.vcpu
            .set_vcpu_events(&st.events)
            .map_err(kvm_err("KVM_SET_VCPU_EVENTS"))?;
        self.pending = Pending::None;
        Ok(())
    }
}
