//! The capability probe against the host's real `/dev/kvm`.
//!
//! Without `/dev/kvm` the test prints a skip line, unless `FT_REQUIRE_KVM=1` (set by
//! `.ci/run` on machines that have KVM), which turns the absence into a failure.

mod common;

#[test]
fn probe_reports_host_capabilities() {
    if !common::kvm_or_skip("probe_reports_host_capabilities") {
        return;
    }
    let caps = match ft_kvm::probe() {
        Ok(c) => c,
        Err(e) => panic!("/dev/kvm exists but probing failed: {e}"),
    };
    eprintln!("KVM capabilities: {caps:#?}");
    assert_eq!(caps.api_version, 12);
    assert!(
        caps.user_memory,
        "KVM without user memory cannot run any guest"
    );
    assert!(caps.nr_memslots > 0);
}

#[test]
fn probe_reports_guest_debug_support_per_cpl() {
    if !common::kvm_or_skip("probe_reports_guest_debug_support_per_cpl") {
        return;
    }
    let d = match ft_kvm::midstream::probe_guest_debug() {
        Ok(d) => d,
        Err(e) => panic!("guest-debug probe failed: {e}"),
    };
    eprintln!("guest debug support: {d:#?}");
    // Mid-stream delivery needs single-step somewhere; this project's hosts (hardware
    // KVM, or kvm_pvm) offer it at CPL0 at least.
    assert!(
        d.single_step_cpl0,
        "single-step at CPL0 is expected on every host this project runs on"
    );
}
