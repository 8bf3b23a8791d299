//! The `orrery` process, one job a module: [`cli`] (the command line), [`telemetry`] (logging),
//! [`client`] (the kube client that counts its requests), [`http`] (metrics and health),
//! [`leader`] (leader election on a Lease) and [`supervisor`] (the lifecycle of the controllers).
//!
//! `orrery controller` serves `/metrics`, `/healthz` and `/readyz` (and, with
//! `--autoscaler-addr`, the cluster-autoscaler API, in every replica), waits to hold the
//! leader-election Lease (unless `--leader-election=false`), then runs every controller of
//! [`crate::CONTROLLERS`] until SIGTERM or SIGINT. On such a signal it stops the controllers
//! (still renewing the Lease while they finish), releases the Lease so that a standby replica
//! takes over at once, stops the HTTP server and exits 0. If it loses the Lease, or a controller
//! stops on its own, it exits 1 so that its Deployment restarts it.

pub mod cli;
pub mod client;
pub mod http;
pub mod leader;
pub mod supervisor;
pub mod telemetry;

use clap::Parser;
use clap::error::ErrorKind;
use cli::{Cli, Command, ControllerArgs};
use std::process::ExitCode;
use std::time::Duration;
use tracing::error;

/// The name controllers report in Events (`reportingController`).
pub const REPORTER_NAME: &str = "orrery";

/// Runs `orrery` with the process's arguments and environment.
pub fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crds => {
            print!("{}", crate::crdgen::crds_yaml());
            ExitCode::SUCCESS
        }
        Command::Controller(args) => controller_main(*args),
    }
}

fn controller_main(args: ControllerArgs) -> ExitCode {
    if let Err(e) = telemetry::init_logging(args.log_format) {
        cli::usage_error(ErrorKind::InvalidValue, e);
    }
    let namespace = match args.lease_namespace(cli::pod_namespace()) {
        Ok(ns) => ns,
        Err(e) => cli::usage_error(ErrorKind::MissingRequiredArgument, e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(supervisor::run(args, namespace));
    // Do not wait for tasks that are still running (a controller that did not stop in time).
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// A random number from std's randomly keyed hasher, enough for identity suffixes and jitter.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}
