//! `orrery-csi-node`: the node plugin of the CSI driver `csi.orrery.dev`, run by a DaemonSet on
//! every tenant worker (see [`orrery::addons::csi::node`]). It serves CSI Identity and Node to
//! the kubelet, registers itself with the kubelet, and stops on SIGTERM or SIGINT.

use clap::Parser;
use clap::builder::NonEmptyStringValueParser;
use orrery::addons::csi::node::registration::RegistrationOptions;
use orrery::addons::csi::node::{self, NodeOptions};
use orrery::runtime::cli::LogFormat;
use orrery::runtime::telemetry;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing::{error, info, warn};

/// The CSI node plugin of csi.orrery.dev.
#[derive(Debug, Parser)]
#[command(name = "orrery-csi-node", version)]
struct Args {
    /// The socket to serve CSI Identity and Node on.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/lib/kubelet/plugins/csi.orrery.dev/csi.sock"
    )]
    csi_socket: PathBuf,

    /// The CSI socket's path as the kubelet sees it, on the host [default: --csi-socket].
    #[arg(long, value_name = "PATH")]
    kubelet_csi_socket: Option<PathBuf>,

    /// The socket the kubelet's plugin watcher finds the driver by.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/lib/kubelet/plugins_registry/csi.orrery.dev-reg.sock"
    )]
    registration_socket: PathBuf,

    /// Do not register with a kubelet (conformance tests run the plugin alone).
    #[arg(long)]
    no_registration: bool,

    /// Where disks are linked by serial.
    #[arg(long, value_name = "DIR", default_value = node::DEFAULT_DEVICE_DIR)]
    device_dir: PathBuf,

    /// This node's id: the Node's name.
    #[arg(long, env = "NODE_NAME", value_name = "NAME", value_parser = NonEmptyStringValueParser::new())]
    node_id: String,

    /// How many volumes this node takes; 0 for no limit of the driver's own.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    max_volumes: i64,

    /// Work in the host's mount namespace (that of PID 1; the pod needs `hostPID` and
    /// privileges): sockets, mounts, devices and the filesystem tools (mkfs, blkid, resize2fs)
    /// are then the worker's own, so the image holds nothing but this binary.
    #[arg(long)]
    host_mount_namespace: bool,

    /// Log format; the level is set by RUST_LOG (default `info`).
    #[arg(long, env = "ORRERY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
}

impl Args {
    fn registration(&self) -> Option<RegistrationOptions> {
        (!self.no_registration).then(|| RegistrationOptions {
            socket: self.registration_socket.clone(),
            endpoint: self
                .kubelet_csi_socket
                .clone()
                .unwrap_or_else(|| self.csi_socket.clone()),
        })
    }

    fn node_options(&self) -> NodeOptions {
        NodeOptions {
            device_dir: self.device_dir.clone(),
            max_volumes: self.max_volumes,
            ..NodeOptions::new(self.node_id.clone())
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = telemetry::init_logging(args.log_format) {
        eprintln!("orrery-csi-node: {e}");
        return ExitCode::from(2);
    }
    // Only a process with one thread may change its mount namespace: before the runtime starts.
    if args.host_mount_namespace
        && let Err(e) = enter_host_mount_namespace()
    {
        error!(error = %e, "cannot enter the host's mount namespace (needs hostPID and privileges)");
        return ExitCode::FAILURE;
    }
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
    let result = runtime.block_on(node::serve(
        &args.csi_socket,
        args.registration(),
        args.node_options(),
        shutdown_on_signal(),
    ));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "the CSI node plugin stopped");
            ExitCode::FAILURE
        }
    }
}

/// Moves this process into PID 1's mount namespace.
fn enter_host_mount_namespace() -> std::io::Result<()> {
    let ns = std::fs::File::open("/proc/1/ns/mnt")?;
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&ns),
        Some(rustix::thread::LinkNameSpaceType::Mount),
    )?;
    // The working directory still points into the old namespace's tree.
    std::env::set_current_dir("/")?;
    info!("working in the host's mount namespace");
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT; a second one exits at once (a call that hangs on a
/// dead disk must not keep the pod from stopping).
async fn shutdown_on_signal() {
    let signal = termination_signal().await;
    info!(signal, "shutting down");
    tokio::spawn(async {
        let signal = termination_signal().await;
        warn!(signal, "second signal: exiting at once");
        std::process::exit(1);
    });
}

async fn termination_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        },
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the plugin");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("orrery-csi-node").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_register_the_csi_socket_itself() {
        let args = parse(&["--node-id", "worker-1"]).unwrap();
        let reg = args.registration().unwrap();
        assert_eq!(
            reg.endpoint,
            PathBuf::from("/var/lib/kubelet/plugins/csi.orrery.dev/csi.sock")
        );
        assert_eq!(
            reg.socket,
            PathBuf::from("/var/lib/kubelet/plugins_registry/csi.orrery.dev-reg.sock")
        );
        let opts = args.node_options();
        assert_eq!(opts.node_id, "worker-1");
        assert_eq!(opts.device_dir, PathBuf::from("/dev/disk/by-id"));
        assert_eq!(opts.max_volumes, 0);
    }

    #[test]
    fn flags_override_and_registration_can_be_off() {
        let args = parse(&[
            "--node-id=n",
            "--csi-socket=/plugin/csi.sock",
            "--kubelet-csi-socket=/host/csi.sock",
            "--max-volumes=16",
            "--device-dir=/tmp/by-id",
        ])
        .unwrap();
        assert_eq!(
            args.registration().unwrap().endpoint,
            PathBuf::from("/host/csi.sock")
        );
        assert_eq!(args.node_options().max_volumes, 16);
        assert!(
            parse(&["--node-id=n", "--no-registration"])
                .unwrap()
                .registration()
                .is_none()
        );
        assert!(parse(&["--node-id="]).is_err(), "an empty node id");
        assert!(parse(&["--node-id=n", "--max-volumes=-1"]).is_err());
    }
}
