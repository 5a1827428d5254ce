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
