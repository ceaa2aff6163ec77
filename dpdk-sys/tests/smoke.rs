//! The bindings link and run (no EAL needed), or the crate explains why it has none.

#[cfg(dpdk_unavailable)]
#[test]
fn bindings_link_or_explain() {
    const { assert!(!dpdk_sys::AVAILABLE) };
    let reason = dpdk_sys::unavailable_reason().expect("a reason");
    eprintln!(
        "skipped: no DPDK bindings ({reason}); {}",
        dpdk_sys::HOW_TO_ENABLE
    );
}

#[cfg(not(dpdk_unavailable))]
#[test]
fn bindings_link_or_explain() {
    const { assert!(dpdk_sys::AVAILABLE) };
    assert!(dpdk_sys::unavailable_reason().is_none());
    // SAFETY: rte_version returns a static string; it needs no initialisation.
    let v = unsafe { std::ffi::CStr::from_ptr(dpdk_sys::rte_version()) };
    let v = v.to_string_lossy();
    eprintln!("{v}");
    assert!(v.starts_with("DPDK "), "{v}");
    // The C helpers link too: rte_errno round-trips on this thread.
    // SAFETY: plain thread-local accesses.
    unsafe {
        dpdk_sys::rte_sys_set_errno(7);
        assert_eq!(dpdk_sys::rte_sys_errno(), 7);
    }
}
