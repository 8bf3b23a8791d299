//! The command line of `orrery`: subcommands, the flags of `orrery controller` with their
//! environment fallbacks, and the checks of their values.

use crate::context::Settings;
use clap::builder::BoolishValueParser;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;

/// Where the service account's namespace is mounted in a Pod.
pub const SERVICE_ACCOUNT_NAMESPACE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Hosted Kubernetes control planes with KubeVirt workers.
#[derive(Debug, Parser)]
#[command(name = "orrery", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
    /// Run the controllers.
    Controller(Box<ControllerArgs>),
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object a line.
    Json,
    /// Human-readable lines.
    Text,
}

/// Flags of `orrery controller`. Each can also be set through the environment variable named in
/// its help; a flag wins over its variable.
#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "ORRERY_METRICS_ADDR",
        value_name = "ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_addr: SocketAddr,

    /// Run the controllers only while holding a Lease, so that one of several replicas is active.
    #[arg(
        long,
        env = "ORRERY_LEADER_ELECTION",
        value_name = "BOOL",
        default_value = "true",
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true,
        value_parser = BoolishValueParser::new(),
    )]
    pub leader_election: bool,

    /// Namespace of the leader-election Lease. Defaults to the Pod's own namespace when running in
    /// a Pod; required when running elsewhere with leader election on.
    #[arg(long, env = "POD_NAMESPACE", value_name = "NAMESPACE", value_parser = parse_namespace)]
    pub leader_election_namespace: Option<String>,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "ORRERY_LEADER_ELECTION_NAME",
        value_name = "NAME",
        default_value = "orrery-controller",
        value_parser = parse_lease_name,
    )]
    pub leader_election_name: String,

    /// Identity of this replica in the Lease and in Events [default: the host name and a random
    /// suffix].
    #[arg(long, env = "POD_NAME", value_name = "ID", value_parser = parse_identity)]
    pub identity: Option<String>,

    /// Log format; the level is set by RUST_LOG (default `info`).
    #[arg(long, env = "ORRERY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Registry (and path prefix) of the default control-plane images.
    #[arg(
        long,
        env = "ORRERY_IMAGE_REGISTRY",
        value_name = "REGISTRY",
        default_value = "registry.k8s.io",
        value_parser = parse_image_registry,
    )]
    pub image_registry: String,

    /// Seconds after which an unchanged object is reconciled again.
    #[arg(
        long,
        env = "ORRERY_RESYNC_SECONDS",
        value_name = "SECONDS",
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(1..=86_400 * 7),
    )]
    pub resync_seconds: u64,

    /// Reach into each tenant cluster: a tenant is Ready only when its apiserver answers /readyz,
    /// and Orrery applies the tenant bootstrap (kubeadm config, bootstrap-token RBAC, cluster-info)
    /// and add-ons there. Off only where control-plane pods cannot really run (fake nodes).
    #[arg(
        long,
        env = "ORRERY_TENANT_ACCESS",
        value_name = "BOOL",
        default_value = "true",
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true,
        value_parser = BoolishValueParser::new(),
    )]
    pub tenant_access: bool,

    /// Repository of the worker containerDisk images: a NodePool without an image of its own
    /// boots `<repository>:<tenant version>`.
    #[arg(
        long,
        env = "ORRERY_WORKER_IMAGE",
        value_name = "REPOSITORY",
        default_value = crate::context::DEFAULT_WORKER_IMAGE,
        value_parser = parse_image_registry,
    )]
    pub worker_image: String,

    /// Repository of the CSI node plugin's image, which tenants with `spec.addons.csi` run on
    /// every worker as `<repository>:<this release's version>`.
    #[arg(
        long,
        env = "ORRERY_CSI_NODE_IMAGE",
        value_name = "REPOSITORY",
        default_value = crate::context::DEFAULT_CSI_NODE_IMAGE,
        value_parser = parse_image_registry,
    )]
    pub csi_node_image: String,

    /// Address on which to serve the cluster-autoscaler's externalgrpc cloud-provider API (gRPC
    /// with mutual TLS), such as 0.0.0.0:8443; not served when unset. Every replica serves it,
    /// leader or not.
    #[arg(
        long,
        env = "ORRERY_AUTOSCALER_ADDR",
        value_name = "ADDR",
        requires = "autoscaler_service"
    )]
    pub autoscaler_addr: Option<SocketAddr>,

    /// The Service in front of the operator's pods through which tenants' autoscalers reach that
    /// API, as NAME.NAMESPACE, on the port of --autoscaler-addr: its names are in the server
    /// certificate and in each tenant's cloud-config, and the API's CA and server certificate
    /// are Secrets in its namespace.
    #[arg(
        long,
        env = "ORRERY_AUTOSCALER_SERVICE",
        value_name = "NAME.NAMESPACE",
        value_parser = parse_service
    )]
    pub autoscaler_service: Option<(String, String)>,
}

impl ControllerArgs {
    /// Where the autoscaler API is served, when it is.
    pub fn autoscaler(&self) -> Option<crate::addons::autoscaler::ApiEndpoint> {
        let (addr, (service, namespace)) =
            (self.autoscaler_addr?, self.autoscaler_service.clone()?);
        Some(crate::addons::autoscaler::ApiEndpoint {
            service,
            namespace,
            port: addr.port(),
        })
    }

    /// The controllers' settings.
    pub fn settings(&self) -> Settings {
        Settings {
            image_registry: self.image_registry.clone(),
            resync: Duration::from_secs(self.resync_seconds),
            tenant_access: self.tenant_access,
            worker_image: self.worker_image.clone(),
            autoscaler: self.autoscaler(),
            csi_node_image: format!(
                "{}:{}",
                self.csi_node_image,
                crate::addons::csi::VENDOR_VERSION
            ),
        }
    }

    /// The Lease namespace: the flag, else the namespace of the Pod we run in (`pod_namespace`,
    /// read from the service account mount). `Ok(None)` when leader election is off.
    pub fn lease_namespace(&self, pod_namespace: Option<String>) -> Result<Option<String>, String> {
        if !self.leader_election {
            return Ok(None);
        }
        if let Some(ns) = &self.leader_election_namespace {
            return Ok(Some(ns.clone()));
        }
        match pod_namespace.map(|ns| ns.trim().to_owned()) {
            Some(ns) => parse_namespace(&ns)
                .map(Some)
                .map_err(|e| format!("the Pod's namespace in {SERVICE_ACCOUNT_NAMESPACE}: {e}")),
            None => Err(
                "--leader-election-namespace (env POD_NAMESPACE) is required with leader election \
                 on when not running in a Pod; set it, or pass --leader-election=false"
                    .to_owned(),
            ),
        }
    }

    /// The identity: the flag, else the host name with a random suffix (so that two processes on
    /// one host never share an identity).
    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(default_identity)
    }
}

/// The namespace of the Pod we run in, from the service account mount; `None` outside a Pod.
pub fn pod_namespace() -> Option<String> {
    std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok()
}

/// Exits with a usage error of `orrery controller` (exit code 2), as clap does for bad flags.
pub fn usage_error(kind: clap::error::ErrorKind, message: String) -> ! {
    let mut cmd = Cli::command();
    let sub = cmd
        .find_subcommand_mut("controller")
        .expect("the controller subcommand exists")
        .clone();
    sub.bin_name("orrery controller")
        .error(kind, message)
        .exit()
}

fn default_identity() -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "orrery".to_owned());
    let host: String = host.chars().take(100).collect();
    format!("{host}_{:08x}", super::random_u64() as u32)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn parse_namespace(s: &str) -> Result<String, String> {
    if is_dns_label(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a namespace name (at most 63 lowercase letters, digits and '-', starting \
             and ending with a letter or digit)"
        ))
    }
}

/// A Service as `NAME.NAMESPACE`.
fn parse_service(s: &str) -> Result<(String, String), String> {
    match s.split_once('.') {
        Some((name, namespace)) if is_dns_label(name) && is_dns_label(namespace) => {
            Ok((name.to_owned(), namespace.to_owned()))
        }
        _ => Err(format!(
            "{s:?} is not NAME.NAMESPACE of a Service, such as orrery-autoscaler.orrery-system"
        )),
    }
}

fn parse_lease_name(s: &str) -> Result<String, String> {
    if s.len() <= 253 && s.split('.').all(is_dns_label) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a valid Lease name (a DNS subdomain: lowercase letters, digits, '-' and \
             '.', at most 253 characters)"
        ))
    }
}

fn parse_identity(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".to_owned())
    } else if s.len() > 128 {
        // It is also the `reportingInstance` of Events, which holds at most 128 characters.
        Err(format!("at most 128 characters, got {}", s.len()))
    } else if s.chars().any(char::is_whitespace) {
        Err(format!("{s:?} contains whitespace"))
    } else {
        Ok(s.to_owned())
    }
}

fn parse_image_registry(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("must not be empty".to_owned())
    } else if s.contains("://") {
        Err(format!(
            "{s:?} has a scheme; give the registry host and path only, e.g. registry.k8s.io"
        ))
    } else if s.ends_with('/') || s.starts_with('/') || s.contains("//") {
        Err(format!("{s:?} has a leading, trailing or doubled '/'"))
    } else if s
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '@' || c.is_uppercase())
    {
        Err(format!(
            "{s:?} is not a registry host and path (e.g. registry.k8s.io or ghcr.io/org)"
        ))
    } else {
        Ok(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::FromArgMatches;
    use clap::error::ErrorKind;

    /// Parses like `orrery`, but ignores the environment (which the test does not control).
    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let cmd = Cli::command().mut_subcommand("controller", |c| c.mut_args(|a| a.env(None)));
        let matches =
            cmd.try_get_matches_from(std::iter::once("orrery").chain(args.iter().copied()))?;
        Cli::from_arg_matches(&matches)
    }

    fn controller(args: &[&str]) -> ControllerArgs {
        let mut all = vec!["controller"];
        all.extend_from_slice(args);
        match parse(&all)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
        {
            Command::Controller(args) => *args,
            other => panic!("{other:?}"),
        }
    }

    /// Asserts that `args` are refused with an error naming `flag`.
    fn refused(args: &[&str], flag: &str) -> clap::Error {
        let mut all = vec!["controller"];
        all.extend_from_slice(args);
        let err = parse(&all).expect_err(&format!("{args:?} accepted"));
        let text = err.to_string();
        assert!(
            text.contains(flag),
            "error for {args:?} does not name {flag}: {text}"
        );
        err
    }

    /// Asserts that `flag=value` is refused with an error naming `flag`.
    fn refused_value(flag: &str, value: &str) -> clap::Error {
        refused(&[&format!("{flag}={value}")], flag)
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn crds_subcommand() {
        assert!(matches!(parse(&["crds"]).unwrap().command, Command::Crds));
        assert!(parse(&["crds", "--metrics-addr", "1.2.3.4:1"]).is_err());
        assert!(parse(&[]).is_err(), "a subcommand is required");
    }

    #[test]
    fn controller_defaults() {
        let args = controller(&[]);
        assert_eq!(args.metrics_addr, "0.0.0.0:8080".parse().unwrap());
        assert!(args.leader_election);
        assert_eq!(args.leader_election_namespace, None);
        assert_eq!(args.leader_election_name, "orrery-controller");
        assert_eq!(args.identity, None);
        assert_eq!(args.log_format, LogFormat::Json);
        assert_eq!(args.image_registry, "registry.k8s.io");
        assert_eq!(args.resync_seconds, 300);
        let settings = args.settings();
        assert_eq!(settings.image_registry, "registry.k8s.io");
        assert_eq!(settings.resync, Duration::from_secs(300));
        assert_eq!(
            settings.autoscaler, None,
            "the autoscaler API is off by default"
        );
    }

    #[test]
    fn the_autoscaler_api_needs_its_address_and_service() {
        let args = controller(&[
            "--autoscaler-addr=0.0.0.0:8443",
            "--autoscaler-service=orrery-autoscaler.orrery-system",
        ]);
        let api = args.settings().autoscaler.expect("served");
        assert_eq!(api.address(), "orrery-autoscaler.orrery-system.svc:8443");
        assert_eq!(api.namespace, "orrery-system");
        refused(&["--autoscaler-addr=0.0.0.0:8443"], "--autoscaler-service");
        for service in ["orrery", "Orrery.ns", "a.b.c", ".ns", "svc."] {
            refused_value("--autoscaler-service", service);
        }
        refused_value("--autoscaler-addr", "8443");
        let unused = controller(&["--autoscaler-service=orrery-autoscaler.orrery-system"]);
        assert_eq!(unused.settings().autoscaler, None, "no address, not served");
    }

    #[test]
    fn controller_flags() {
        let args = controller(&[
            "--metrics-addr",
            "127.0.0.1:9090",
            "--leader-election-namespace",
            "orrery-system",
            "--leader-election-name",
            "orrery.example.com",
            "--identity",
            "orrery-5d8f-x2",
            "--log-format",
            "text",
            "--image-registry",
            "mirror.example.com:5000/k8s",
            "--resync-seconds",
            "60",
        ]);
        assert_eq!(args.metrics_addr, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(
            args.leader_election_namespace.as_deref(),
            Some("orrery-system")
        );
        assert_eq!(args.leader_election_name, "orrery.example.com");
        assert_eq!(args.identity(), "orrery-5d8f-x2");
        assert_eq!(args.log_format, LogFormat::Text);
        assert_eq!(
            args.settings().image_registry,
            "mirror.example.com:5000/k8s"
        );
        assert_eq!(args.settings().resync, Duration::from_secs(60));
        assert_eq!(
            controller(&["--metrics-addr=[::1]:8081"]).metrics_addr,
            "[::1]:8081".parse().unwrap()
        );
    }

    #[test]
    fn leader_election_switch() {
        assert!(controller(&["--leader-election"]).leader_election);
        assert!(controller(&["--leader-election=true"]).leader_election);
        assert!(!controller(&["--leader-election=false"]).leader_election);
        assert!(!controller(&["--leader-election=no"]).leader_election);
        refused(&["--leader-election=maybe"], "--leader-election");
    }

    #[test]
    fn bad_values_name_their_flag() {
        for addr in ["8080", "localhost:8080", "0.0.0.0", "0.0.0.0:99999", ""] {
            refused_value("--metrics-addr", addr);
        }
        for secs in ["0", "-1", "", "abc", "1.5", "99999999"] {
            refused_value("--resync-seconds", secs);
        }
        for ns in [
            "",
            "Orrery",
            "orrery_system",
            "-orrery",
            "a.b",
            &"a".repeat(64),
        ] {
            refused_value("--leader-election-namespace", ns);
        }
        for name in [
            "",
            "Orrery",
            "orrery..x",
            "orrery/x",
            "x-",
            &"a".repeat(254),
        ] {
            refused_value("--leader-election-name", name);
        }
        for id in ["", " ", "a b", &"a".repeat(129)] {
            refused_value("--identity", id);
        }
        for registry in [
            "",
            "https://registry.k8s.io",
            "registry.k8s.io/",
            "/x",
            "a//b",
            "Registry.io",
            "a b",
        ] {
            refused_value("--image-registry", registry);
        }
        refused_value("--log-format", "xml");
        let err = refused(&["--no-such-flag"], "--no-such-flag");
        assert_eq!(err.kind(), ErrorKind::UnknownArgument);
    }

    #[test]
    fn lease_namespace_comes_from_the_flag_or_the_pod() {
        let on = controller(&[]);
        let err = on.lease_namespace(None).unwrap_err();
        assert!(
            err.contains("--leader-election-namespace") && err.contains("POD_NAMESPACE"),
            "{err}"
        );
        assert_eq!(
            on.lease_namespace(Some("orrery-system\n".into()))
                .unwrap()
                .as_deref(),
            Some("orrery-system")
        );
        assert!(on.lease_namespace(Some("Bad_NS".into())).is_err());

        let flagged = controller(&["--leader-election-namespace", "ops"]);
        assert_eq!(
            flagged
                .lease_namespace(Some("orrery-system".into()))
                .unwrap()
                .as_deref(),
            Some("ops")
        );

        let off = controller(&["--leader-election=false"]);
        assert_eq!(off.lease_namespace(None).unwrap(), None);
    }

    #[test]
    fn default_identity_is_the_host_name_made_unique() {
        let a = controller(&[]).identity();
        let b = controller(&[]).identity();
        assert_ne!(a, b, "two processes on one host must not share an identity");
        let host = hostname::get().unwrap().into_string().unwrap();
        assert!(a.starts_with(&format!("{host}_")), "{a}");
        assert!(parse_identity(&a).is_ok(), "{a}");
    }
}
