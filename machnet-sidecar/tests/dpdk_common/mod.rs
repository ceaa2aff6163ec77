//! Shared setup of the DPDK tests (feature `dpdk`): EAL arguments that work without hugepages
//! and the skip policy. EAL initialises once per process, hence one test per file.

use machnet_sidecar::datapath::dpdk::Eal;

/// EAL arguments for a test process with the given virtual devices. No hugepages:
/// `--in-memory` is refused with `--no-huge` on DPDK 22.11 (it implies legacy memory), so use no
/// shared config and a private runtime directory instead.
pub(crate) fn eal_args(vdevs: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["--no-pci", "--no-huge", "-m", "256", "--no-shconf"]
        .into_iter()
        .map(String::from)
        .collect();
    args.push(format!("--file-prefix=machnet-test-{}", std::process::id()));
    args.extend(["--no-telemetry", "-l", "0"].into_iter().map(String::from));
    args.extend(vdevs.iter().map(|v| format!("--vdev={v}")));
    args
}

/// Initialises EAL with [`eal_args`]. Fails the test if EAL cannot start, unless
/// `MACHNET_SKIP_DPDK_EAL` is set (then `None`: the caller returns, the test is skipped).
pub(crate) fn init_eal(vdevs: &[&str]) -> Option<Eal> {
    match Eal::init(eal_args(vdevs)) {
        Ok(e) => Some(e),
        Err(e) if std::env::var_os("MACHNET_SKIP_DPDK_EAL").is_some() => {
            eprintln!("skipped (MACHNET_SKIP_DPDK_EAL is set): EAL cannot start here: {e}");
            None
        }
        Err(e) => panic!("EAL init: {e}"),
    }
}
