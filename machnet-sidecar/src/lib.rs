//! The machnet sidecar: engines, datapaths, shared-memory channels and the control socket.
//!
//! The binary (`machnet`) is a thin wrapper around [`Sidecar`]; the library does the work so that
//! other programs (tests, language bindings) can embed a sidecar.
//!
//! - [`config`]: command line and configuration file.
//! - [`keys`]: key files and peer keys for encryption in transit.
//! - [`datapath`]: packet I/O (kernel UDP, in-memory, loss injection).
//! - [`netstack`]: Ethernet/ARP/IPv4/UDP/ICMP for datapaths that see raw frames (DPDK).
//! - [`shm`]: creating a channel's shared memory and eventfds.
//! - [`engine`]: one thread per engine driving a `machnet_core::Engine`.
//! - [`control`]: the control socket server.
//! - [`stats`]: per-engine counters.
//! - [`stat`]: `machnet stat`, the statistics snapshot asked for over the control socket.
//! - [`ratelog`]: rate-limited logging for lines peers can trigger.
//! - [`memory`]: returning freed memory to the operating system.
//! - [`metrics`]: the opt-in Prometheus endpoint.
//! - [`Sidecar`]: starts and stops all of it.
#![warn(missing_docs)]

pub mod clock;
pub mod config;
pub mod control;
pub mod datapath;
pub mod engine;
pub mod keys;
pub mod memory;
pub mod metrics;
pub mod netstack;
pub mod ratelog;
pub mod shm;
mod sidecar;
pub mod stat;
pub mod stats;
pub mod testing;

pub use config::SidecarConfig;
pub use sidecar::{init_logging, kernel_datapaths, Sidecar, StartError};

/// The `machnet` command line: parses `args` (the first item is the program name, as in
/// `std::env::args_os`), starts a [`Sidecar`] and runs it until SIGINT or SIGTERM, then shuts it
/// down. Returns the process exit status: 0 after a clean stop (and after `--help`/`--version`),
/// 1 if the sidecar could not start, 2 for bad flags or configuration. The subcommands
/// (`keygen`, `pubkey`, `stat`) run instead of the sidecar and return 0, or 1 on error.
///
/// This is the whole `machnet` binary; it is public so that other programs can embed the same
/// command (the Python package's `python -m machnet sidecar`). It blocks SIGINT and SIGTERM in
/// the calling thread (threads it starts inherit that) and makes a panic abort the process, so
/// that applications see a crashed sidecar hang up rather than a half-working one: call it from a
/// process dedicated to the sidecar.
pub fn run_cli<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::Parser;
    use nix::sys::signal::{SigSet, Signal};

    let cli = match config::Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    if let Some(command) = &cli.command {
        return run_key_command(command);
    }
    let cfg = match SidecarConfig::from_cli(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("machnet: {e}");
            return 2;
        }
    };
    init_logging(&cfg.log_level, cfg.log_format);
    memory::tune_allocator();
    // A broken engine must not leave apps hanging: crash, so their control sockets hang up.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    // Block the stop signals in every thread (threads inherit the mask); wait for them here.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if let Err(e) = signals.thread_block() {
        eprintln!("machnet: cannot block signals: {e}");
        return 1;
    }
    raise_nofile_limit();
    let sidecar = match Sidecar::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("machnet: {e}");
            return 1;
        }
    };
    match signals.wait() {
        Ok(sig) => tracing::info!("received {sig}, shutting down"),
        Err(e) => tracing::error!("waiting for signals: {e}"),
    }
    sidecar.shutdown();
    0
}

/// Runs a subcommand: `machnet keygen` or `machnet pubkey` print the public key in base64 on
/// standard output (never the private key); `machnet stat` prints a running sidecar's
/// statistics. Returns the exit status: 0, or 1 with a message on error.
fn run_key_command(command: &config::Command) -> u8 {
    let key = match command {
        config::Command::Keygen { out } => keys::write_new_key(out),
        config::Command::Pubkey { path } => keys::read_private_key(path),
        config::Command::Stat {
            control_socket,
            config,
            json,
            max_flows,
            max_channels,
        } => {
            let socket = match config::stat_socket(control_socket.as_deref(), config.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("machnet stat: {e}");
                    return 1;
                }
            };
            let req = stat::client::StatRequest {
                socket,
                max_flows: *max_flows,
                max_channels: *max_channels,
            };
            return stat::client::run(&req, *json);
        }
    };
    match key {
        Ok(key) => {
            println!("{}", keys::encode_key(&key.public()));
            0
        }
        Err(e) => {
            eprintln!("machnet: {e}");
            1
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (each channel holds three descriptors and
/// each control connection one; distributions start services with a soft limit of 1,024) and
/// logs the result.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the descriptor limit"),
            Err(e) => tracing::warn!(soft, hard, "cannot raise the descriptor limit: {e}"),
        },
        Ok((soft, _)) => tracing::info!(limit = soft, "descriptor limit"),
        Err(e) => tracing::warn!("cannot read the descriptor limit: {e}"),
    }
}

/// 64 random bits from the operating system (for engine seeds and unseeded loss injection).
pub fn random_seed() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_ne_bytes(b);
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}
