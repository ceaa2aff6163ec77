//! Channel contexts and sidecar handles as handles the application cannot break.
//!
//! The `void *channel_ctx` an application gets from `machnet_attach` (and the `void *sidecar`
//! from `machnet_open`) is never dereferenced: it is a key into a registry of live objects. Keys are addresses inside a reserved,
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

use machnet_client::Machnet;

use crate::chan::Ctx;
use crate::error::{Error, Result};

/// Size of the reserved address range (no memory is committed).
const REGION: usize = 64 << 20;
/// Distance between two handles.
const STRIDE: usize = 64;

/// What a handle stands for.
#[derive(Clone)]
enum Entry {
    Channel(Arc<Ctx>),
    Sidecar(Machnet),
}

struct Registry {
    base: usize,
    next: usize,
    live: HashMap<usize, Entry>,
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
    insert_entry(Entry::Channel(ctx))
}

/// Registers a sidecar attachment (`machnet_open`) and returns its handle.
pub(crate) fn insert_sidecar(m: Machnet) -> Result<*mut c_void> {
    insert_entry(Entry::Sidecar(m))
}

fn insert_entry(entry: Entry) -> Result<*mut c_void> {
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
        return Err(Error::new(libc::EMFILE, "too many live handles"));
    }
    loop {
        // Slot 0 is skipped so that no handle equals the region's start.
        reg.next = reg.next % (slots - 1) + 1;
        let key = reg.base + reg.next * STRIDE;
        if let std::collections::hash_map::Entry::Vacant(v) = reg.live.entry(key) {
            v.insert(entry);
            return Ok(key as *mut c_void);
        }
    }
}

fn lookup(handle: *const c_void, what: &str) -> Result<Entry> {
    if handle.is_null() {
        return Err(Error::new(libc::EINVAL, format!("{what} is NULL")));
    }
    let r = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    r.as_ref()
        .and_then(|r| r.live.get(&(handle as usize)).cloned())
        .ok_or_else(|| not_live(handle, what))
}

fn not_live(handle: *const c_void, what: &str) -> Error {
    let why = if what == "sidecar handle" {
        "closed, or never opened"
    } else {
        "detached, or never attached"
    };
    Error::new(
        libc::EBADF,
        format!("{handle:p} is not a live {what} ({why})"),
    )
}

/// The live channel behind `handle`.
pub(crate) fn get(handle: *const c_void) -> Result<Arc<Ctx>> {
    match lookup(handle, "channel context")? {
        Entry::Channel(c) => Ok(c),
        Entry::Sidecar(_) => Err(not_live(handle, "channel context")),
    }
}

/// The live sidecar attachment behind `handle`.
pub(crate) fn get_sidecar(handle: *const c_void) -> Result<Machnet> {
    match lookup(handle, "sidecar handle")? {
        Entry::Sidecar(m) => Ok(m),
        Entry::Channel(_) => Err(not_live(handle, "sidecar handle")),
    }
}

/// Unregisters channel `handle`; returns its channel.
pub(crate) fn remove(handle: *const c_void) -> Result<Arc<Ctx>> {
    get(handle)?; // the same errors as every other call
    match remove_if(handle, |e| matches!(e, Entry::Channel(_)))? {
        Entry::Channel(c) => Ok(c),
        Entry::Sidecar(_) => Err(not_live(handle, "channel context")),
    }
}

/// Unregisters sidecar `handle`.
pub(crate) fn remove_sidecar(handle: *const c_void) -> Result<Machnet> {
    get_sidecar(handle)?;
    match remove_if(handle, |e| matches!(e, Entry::Sidecar(_)))? {
        Entry::Sidecar(m) => Ok(m),
        Entry::Channel(_) => Err(not_live(handle, "sidecar handle")),
    }
}

/// Removes the entry behind `handle` if it is of the kind `want` accepts (checked under the
/// write lock: another thread may have closed it, and the slot been reused, since the caller
/// looked).
fn remove_if(handle: *const c_void, want: impl Fn(&Entry) -> bool) -> Result<Entry> {
    let mut r = REGISTRY.write().unwrap_or_else(|p| p.into_inner());
    let live = r.as_mut().map(|r| &mut r.live);
    match live {
        Some(live) if live.get(&(handle as usize)).is_some_and(&want) => {
            Ok(live.remove(&(handle as usize)).expect("checked present"))
        }
        _ => Err(Error::new(libc::EBADF, "handle closed concurrently")),
    }
}
