//! The DPDK Environment Abstraction Layer: initialised once per process, cleaned up when the last
//! handle (ports and mempools hold one) is dropped.

use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use dpdk_sys as sys;

/// Why a DPDK call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpdkError {
    /// `rte_eal_init` already ran in this process (it can run only once, even after cleanup).
    #[error(
        "the DPDK EAL is already initialised in this process (rte_eal_init runs once per process)"
    )]
    AlreadyInitialized,
    /// `rte_eal_init` failed.
    #[error("rte_eal_init failed: {message} (rte_errno {code})")]
    EalInit {
        /// `rte_errno`.
        code: i32,
        /// `rte_strerror(code)`.
        message: String,
    },
    /// No port has this name (or index).
    #[error("no DPDK port named {0:?} (ports: {1})")]
    NoSuchPort(String, String),
    /// A DPDK call returned an error.
    #[error("{call} failed: {message} (error {code})")]
    Call {
        /// The DPDK function.
        call: &'static str,
        /// The (positive) errno value.
        code: i32,
        /// `rte_strerror(code)`.
        message: String,
    },
    /// An argument we were given cannot be passed to DPDK.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The port cannot do what was asked.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl DpdkError {
    /// An error from a DPDK call returning `-errno` (or `-1` with `rte_errno` set).
    pub(crate) fn call(call: &'static str, ret: i32) -> Self {
        let code = if ret == -1 { rte_errno().max(1) } else { -ret };
        DpdkError::Call {
            call,
            code,
            message: strerror(code),
        }
    }

    /// An error from a DPDK call that reports through `rte_errno` only (e.g. a NULL return).
    pub(crate) fn errno(call: &'static str) -> Self {
        let code = rte_errno();
        DpdkError::Call {
            call,
            code,
            message: strerror(code),
        }
    }
}

/// Maps a DPDK return code (negative: error) to a result.
pub(crate) fn check(call: &'static str, ret: i32) -> Result<i32, DpdkError> {
    if ret < 0 {
        Err(DpdkError::call(call, ret))
    } else {
        Ok(ret)
    }
}

/// The calling thread's `rte_errno`.
pub fn rte_errno() -> i32 {
    // SAFETY: reads a thread-local integer; valid on any thread, EAL initialised or not.
    unsafe { sys::rte_sys_errno() }
}

/// `rte_strerror(code)`: DPDK's text for an errno or `rte_errno` value.
pub fn strerror(code: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static string or to a thread-local buffer that
    // stays valid until the next call on this thread; we copy it out at once.
    unsafe {
        let p = sys::rte_strerror(code);
        if p.is_null() {
            format!("error {code}")
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// The DPDK version string (e.g. "DPDK 22.11.11"); needs no initialisation.
pub fn version() -> String {
    // SAFETY: rte_version returns a pointer to a static NUL-terminated string.
    unsafe {
        let p = sys::rte_version();
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// 0: never initialised; 1: initialising; 2: initialised; 3: initialisation failed for good or
/// cleaned up (DPDK cannot initialise twice in one process).
static STATE: AtomicU8 = AtomicU8::new(0);
/// Set when a mempool could not be freed because mbufs were still out: EAL memory must then stay
/// mapped, so `rte_eal_cleanup` is skipped.
pub(crate) static KEEP_MEMORY: AtomicBool = AtomicBool::new(false);

/// The initialised EAL. Cheap to clone; `rte_eal_cleanup` runs when the last clone (including the
/// ones held by ports and mempools) is dropped.
#[derive(Clone, Debug)]
pub struct Eal {
    _inner: Arc<EalInner>,
}

#[derive(Debug)]
struct EalInner;

impl Drop for EalInner {
    fn drop(&mut self) {
        if KEEP_MEMORY.load(Ordering::Acquire) {
            tracing::warn!("mbufs still in use: skipping rte_eal_cleanup (memory stays mapped)");
            return;
        }
        // SAFETY: EAL is initialised; the function returns a pointer to a static
        // NUL-terminated buffer, copied at once.
        let runtime_dir = unsafe {
            let p = sys::rte_eal_get_runtime_dir();
            (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
        };
        // SAFETY: every port and mempool holds an `Eal`, so none is alive any more; mbufs keep
        // their pool alive via KEEP_MEMORY (checked above). EAL was initialised (we exist).
        let ret = unsafe { sys::rte_eal_cleanup() };
        if ret < 0 {
            tracing::warn!("{}", DpdkError::call("rte_eal_cleanup", ret));
        }
        // EAL leaves its runtime directory (/var/run/dpdk/<file-prefix>) behind; remove it if
        // empty (no shared config: --no-shconf or --in-memory).
        if let Some(dir) = runtime_dir.filter(|d| !d.is_empty()) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl Eal {
    /// Initialises the EAL with these arguments (without the program name), e.g. without
    /// hugepages `["--no-pci", "--no-huge", "-m", "256", "--no-shconf",
    /// "--file-prefix=machnet1", "--vdev=net_ring0"]` (DPDK 22.11 refuses `--in-memory` together
    /// with `--no-huge`: "Option --legacy-mem is not compatible with --in-memory"), or with
    /// hugepages `["--no-pci", "--in-memory", ...]`.
    ///
    /// Works once per process: a second call (even after the first `Eal` was dropped) is
    /// [`DpdkError::AlreadyInitialized`]. A failure to parse the arguments may be retried.
    pub fn init<I, S>(args: I) -> Result<Eal, DpdkError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut owned = vec![CString::new("machnet").expect("no NUL")];
        for a in args {
            let a = a.as_ref();
            owned.push(CString::new(a).map_err(|_| {
                DpdkError::InvalidArgument(format!("EAL argument {a:?} contains NUL"))
            })?);
        }
        let argc = i32::try_from(owned.len())
            .map_err(|_| DpdkError::InvalidArgument("too many EAL arguments".into()))?;
        if STATE
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(DpdkError::AlreadyInitialized);
        }
        // EAL may keep pointers into argv (and permutes it): leak it, once per process.
        let owned: &'static [CString] = Vec::leak(owned);
        let argv: &'static mut [*mut c_char] = Vec::leak(
            owned
                .iter()
                .map(|s| s.as_ptr().cast_mut())
                .collect::<Vec<_>>(),
        );
        // SAFETY: argv holds argc valid NUL-terminated strings that live for the rest of the
        // process; STATE guarantees no concurrent or repeated successful call.
        let ret = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        if ret < 0 {
            let code = rte_errno();
            // EAL resets its own once-flag after an argument error (EINVAL) only.
            let retry = code == libc_einval();
            STATE.store(if retry { 0 } else { 3 }, Ordering::Release);
            return Err(DpdkError::EalInit {
                code,
                message: strerror(code),
            });
        }
        STATE.store(2, Ordering::Release);
        Ok(Eal {
            _inner: Arc::new(EalInner),
        })
    }

    /// Number of usable Ethernet ports.
    pub fn port_count(&self) -> u16 {
        // SAFETY: EAL is initialised (self exists).
        unsafe { sys::rte_eth_dev_count_avail() }
    }

    /// The ids of the usable ports.
    pub fn port_ids(&self) -> Vec<u16> {
        let mut ids = Vec::new();
        let max = u16::try_from(sys::RTE_MAX_ETHPORTS).unwrap_or(u16::MAX);
        // SAFETY: EAL is initialised; rte_eth_find_next returns RTE_MAX_ETHPORTS past the end.
        let mut id = unsafe { sys::rte_eth_find_next(0) };
        while id < max {
            ids.push(id);
            // SAFETY: as above.
            id = unsafe { sys::rte_eth_find_next(id + 1) };
        }
        ids
    }

    /// A port's name (e.g. "net_ring0", "0000:00:04.0").
    pub fn port_name(&self, port: u16) -> Result<String, DpdkError> {
        let mut buf = [0 as c_char; sys::RTE_ETH_NAME_MAX_LEN as usize];
        // SAFETY: buf has RTE_ETH_NAME_MAX_LEN bytes, the size the function writes at most.
        check("rte_eth_dev_get_name_by_port", unsafe {
            sys::rte_eth_dev_get_name_by_port(port, buf.as_mut_ptr())
        })?;
        // SAFETY: on success buf holds a NUL-terminated string (it was zeroed, too).
        Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }

    /// Finds a port by name, or by index when `name` is a number.
    pub fn find_port(&self, name: &str) -> Result<u16, DpdkError> {
        let ids = self.port_ids();
        let names = || {
            let list: Vec<String> = ids
                .iter()
                .map(|&i| format!("{i}:{}", self.port_name(i).unwrap_or_default()))
                .collect();
            if list.is_empty() {
                "none".to_string()
            } else {
                list.join(", ")
            }
        };
        if let Ok(index) = name.parse::<u16>() {
            return if ids.contains(&index) {
                Ok(index)
            } else {
                Err(DpdkError::NoSuchPort(name.into(), names()))
            };
        }
        let c = CString::new(name)
            .map_err(|_| DpdkError::InvalidArgument(format!("port name {name:?} contains NUL")))?;
        let mut id = 0u16;
        // SAFETY: c is NUL-terminated; id is a valid out-pointer.
        let ret = unsafe { sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
        if ret < 0 {
            return Err(DpdkError::NoSuchPort(name.into(), names()));
        }
        Ok(id)
    }
}

/// EINVAL (DPDK uses the libc values).
const fn libc_einval() -> i32 {
    22
}
