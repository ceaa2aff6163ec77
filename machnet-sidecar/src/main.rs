//! `machnet`: the sidecar binary. Parses the configuration, starts a [`Sidecar`] and stops it
//! cleanly on SIGINT or SIGTERM.

use std::process::ExitCode;

use machnet_sidecar::{init_logging, Sidecar, SidecarConfig};
use nix::sys::signal::{SigSet, Signal};

fn main() -> ExitCode {
    let cfg = match SidecarConfig::from_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("machnet: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&cfg.log_level);
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
        return ExitCode::FAILURE;
    }
    let sidecar = match Sidecar::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("machnet: {e}");
            return ExitCode::FAILURE;
        }
    };
    match signals.wait() {
        Ok(sig) => tracing::info!("received {sig}, shutting down"),
        Err(e) => tracing::error!("waiting for signals: {e}"),
    }
    sidecar.shutdown();
    ExitCode::SUCCESS
}
