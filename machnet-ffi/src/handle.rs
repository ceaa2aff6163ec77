//! Channel contexts as handles the application cannot break.
//!
//! The `void *channel_ctx` an application gets from `machnet_attach` is never dereferenced: it
//! is a key into a registry of live channels. Keys are addresses inside a reserved,
//! inaccessible (`PROT_NONE`) region of address space, handed out in order and never reused
//! while live, so
//! * a stale context (used after `machnet_detach`) or a garbage pointer is reported as `EBADF`
//!   instead of corrupting memory,
//! * a program that dereferences one crashes at once instead of scribbling,
//! * a context is a real pointer value, which garbage collectors (Go) accept.
//!
//! Each live channel is an `Arc<Ctx>`: an operation clones the `Arc` out of the registry and
//! works on it without holding the registry lock, so `machnet_detach` from one thread cannot pull
//! a channel from under an operation running in another.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, RwLock};

use crate::chan::Ctx;
use crate::error::{Error, Result};

/// Size of the reserved address range (no memory is committed).
const REGION: usize = 64 << 20;
/// Distance between two handles.
const STRIDE: usize = 64;

struct Registry {
    base: usize,
    next: usize,
    live: HashMap<usize, Arc<Ctx>>,
}

static REGISTRY: RwLock<Option<Registry>> = RwLock::new(None);
/// Serialises registrations (the read path only takes `REGISTRY`'s read lock).
static REGISTER: Mutex<()> = Mutex::new(());

fn reserve() -> Result<usize> {
    // SAFETY: an anonymous PROT_NONE mapping: no memory is accessible or committed.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            REGION,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        let e = std::io::Error::last_os_error();
        return Err(Error::new(
            e.raw_os_error().unwrap_or(libc::ENOMEM),
            format!("cannot reserve address space for channel handles: {e}"),
        ));
    }
    Ok(p as usize)
}

/// Registers `ctx` and returns its handle.
pub(crate) fn insert(ctx: Arc<Ctx>) -> Result<*mut c_void> {
    let _one = REGISTER.lock().unwrap_or_else(|p| p.into_inner());
    let base = {
        let r = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
        r.as_ref().map(|r| r.base)
    };
    let base = match base {
        Some(b) => b,
        None => reserve()?,
    };
    let mut guard = REGISTRY.write().unwrap_or_else(|p| p.into_inner());
    let reg = guard.get_or_insert_with(|| Registry {
        base,
        next: 0,
        live: HashMap::new(),
    });
    let slots = REGION / STRIDE;
    if reg.live.len() >= slots {
        return Err(Error::new(libc::EMFILE, "too many live channel contexts"));
    }
    loop {
        // Slot 0 is skipped so that no handle equals the region's start.
        reg.next = reg.next % (slots - 1) + 1;
        let key = reg.base + reg.next * STRIDE;
        if let std::collections::hash_map::Entry::Vacant(v) = reg.live.entry(key) {
            v.insert(ctx);
            return Ok(key as *mut c_void);
        }
    }
}

/// The live channel behind `handle`.
pub(crate) fn get(handle: *const c_void) -> Result<Arc<Ctx>> {
    if handle.is_null() {
        return Err(Error::new(libc::EINVAL, "channel context is NULL"));
    }
    let r = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    r.as_ref()
        .and_then(|r| r.live.get(&(handle as usize)).cloned())
        .ok_or_else(|| {
            Error::new(
                libc::EBADF,
                format!("{handle:p} is not a live channel context (detached, or never attached)"),
            )
        })
}

/// Unregisters `handle`; returns its channel.
pub(crate) fn remove(handle: *const c_void) -> Result<Arc<Ctx>> {
    get(handle)?; // the same errors as every other call
    let mut r = REGISTRY.write().unwrap_or_else(|p| p.into_inner());
    r.as_mut()
        .and_then(|r| r.live.remove(&(handle as usize)))
        .ok_or_else(|| Error::new(libc::EBADF, "channel context detached concurrently"))
}
