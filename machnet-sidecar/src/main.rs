//! `machnet`: the sidecar binary. Parses the configuration, starts a [`Sidecar`] and stops it
//! cleanly on SIGINT or SIGTERM; all of it is [`machnet_sidecar::run_cli`].
//!
//! [`Sidecar`]: machnet_sidecar::Sidecar

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(machnet_sidecar::run_cli(std::env::args_os()))
}
