//! The command line of `kubectl orrery`: kubectl's own flags for the management cluster, then
//! one subcommand per verb. A new verb (`sleep`, `wake`) is one variant of [`Command`] with its
//! own argument struct.

use super::upgrade::Version;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Orrery's tenant clusters from kubectl: their state at a glance, their kubeconfig, and day-2
/// changes (a version, a NodePool's size) that wait until Orrery has carried them out.
#[derive(Parser, Debug)]
#[command(name = "kubectl-orrery", bin_name = "kubectl orrery", version)]
pub struct Cli {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How to reach the management cluster, as kubectl takes it.
#[derive(Args, Debug, Clone, Default)]
pub struct ClientArgs {
    /// Kubeconfig of the management cluster [default: $KUBECONFIG, then ~/.kube/config].
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Context of the kubeconfig to use [default: its current context].
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace of the tenant or NodePool [default: the context's namespace].
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print something of a tenant.
    #[command(subcommand)]
    Get(Get),
    /// Show tenants as a tree: the control plane with its conditions, DataStore, pods,
    /// certificates, add-ons, nodes and NodePools with their machines, one line each.
    Describe(DescribeArgs),
    /// Wait until a tenant is Ready with its current spec rolled out, printing its progress.
    Wait(WaitArgs),
    /// Set a tenant's Kubernetes version (spec.version) and wait until it runs it.
    Upgrade(UpgradeArgs),
    /// Set a NodePool's number of nodes (spec.replicas) and wait until that many are Ready and
    /// up to date.
    Scale(ScaleArgs),
}

#[derive(Subcommand, Debug)]
pub enum Get {
    /// Print the tenant's admin kubeconfig, ready to write to a file.
    Kubeconfig(KubeconfigArgs),
}

#[derive(Args, Debug)]
pub struct KubeconfigArgs {
    /// Name of the TenantControlPlane.
    pub tenant: String,
    /// Point the kubeconfig at this URL instead of the tenant's endpoint (a port-forward, a load
    /// balancer). Its host must be in the serving certificate: add it to spec.network.certSANs.
    #[arg(long, value_name = "URL", value_parser = parse_server)]
    pub server: Option<String>,
}

#[derive(Args, Debug)]
pub struct DescribeArgs {
    /// Name of the TenantControlPlane [default: every tenant of the namespace].
    pub tenant: Option<String>,
    /// Every tenant of every namespace.
    #[arg(short = 'A', long, conflicts_with = "tenant")]
    pub all_namespaces: bool,
    /// One line for each pod, certificate, node and NodePool machine instead of one for alike
    /// ones.
    #[arg(long)]
    pub expand: bool,
    /// Do not connect to the tenant's apiserver: add-ons are shown from the spec only, and nodes
    /// not at all.
    #[arg(long)]
    pub no_tenant: bool,
    /// Print the tree as data instead of a table.
    #[arg(short = 'o', long, value_enum, value_name = "FORMAT")]
    pub output: Option<Output>,
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    /// Name of the TenantControlPlane.
    pub tenant: String,
    /// What to wait for: `ready` is the Ready condition with the latest spec seen by Orrery and
    /// its version rolled out.
    #[arg(long = "for", value_enum, default_value_t = WaitFor::Ready)]
    pub wait_for: WaitFor,
    #[command(flatten)]
    pub timeout: Timeout,
    /// Print the TenantControlPlane when done instead of a line.
    #[arg(short = 'o', long, value_enum, value_name = "FORMAT")]
    pub output: Option<Output>,
}

#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// Name of the TenantControlPlane.
    pub tenant: String,
    /// The Kubernetes version to run, one minor above the current one at most.
    #[arg(long, value_name = "vX.Y.Z", value_parser = parse_version)]
    pub to: Version,
    /// Set the version and return, without waiting for the rollout.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub timeout: Timeout,
    /// Print the TenantControlPlane when done instead of a line.
    #[arg(short = 'o', long, value_enum, value_name = "FORMAT")]
    pub output: Option<Output>,
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// The NodePool, as np/NAME or nodepool/NAME.
    #[arg(value_name = "np/NAME", value_parser = parse_pool)]
    pub pool: String,
    /// How many nodes the pool should have: 0 or more, and within spec.autoscaling when the
    /// pool has it.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_replicas)]
    pub replicas: i32,
    /// Set the number and return, without waiting for the nodes.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub timeout: Timeout,
    /// Print the NodePool when done instead of a line.
    #[arg(short = 'o', long, value_enum, value_name = "FORMAT")]
    pub output: Option<Output>,
}

/// How long a verb waits.
#[derive(Args, Debug, Clone, Copy)]
pub struct Timeout {
    /// How long to wait, such as 90s, 10m or 1h30m.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitFor {
    Ready,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Json,
    Yaml,
}

fn parse_server(s: &str) -> Result<String, String> {
    let uri: http::Uri = s
        .parse()
        .map_err(|e| format!("not a URL ({e}); for example https://127.0.0.1:6443"))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        return Err("must be an https URL with a host, for example https://127.0.0.1:6443".into());
    }
    Ok(s.trim_end_matches('/').to_string())
}

/// Checks what needs no cluster: the form and the supported range.
fn parse_version(s: &str) -> Result<Version, String> {
    let version = Version::parse(s)?;
    version.check_supported()?;
    Ok(version)
}

/// A NodePool as kubectl names one: `np/NAME`, `nodepool/NAME`, `nodepools.orrery.dev/NAME`.
fn parse_pool(s: &str) -> Result<String, String> {
    let usage = "name the pool as np/NAME or nodepool/NAME";
    let Some((kind, name)) = s.split_once('/') else {
        return Err(format!("{s:?}: {usage}"));
    };
    let kind = kind.strip_suffix(".orrery.dev").unwrap_or(kind);
    if !["np", "nodepool", "nodepools"].contains(&kind.to_lowercase().as_str()) {
        return Err(format!("{s:?}: scale works on NodePools only; {usage}"));
    }
    if name.is_empty() || name.contains('/') {
        return Err(format!("{s:?}: {usage}"));
    }
    Ok(name.to_string())
}

/// A number of nodes, refusing what admission refuses without reading the pool.
fn parse_replicas(s: &str) -> Result<i32, String> {
    let n: i32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of nodes such as 3"))?;
    super::scale::check_replicas(n)?;
    Ok(n)
}

/// A duration as kubectl takes it (`90s`, `10m`, `1h30m`); a bare number is seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(seconds) = s.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let parsed: jiff::SignedDuration = s
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 90s, 10m or 1h30m"))?;
    Duration::try_from(parsed).map_err(|_| format!("{s:?} is negative"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kubectl-orrery").chain(args.iter().copied()))
    }

    #[test]
    fn flags_go_before_or_after_the_verb() {
        let cli = parse(&["describe", "demo", "-n", "t", "--context", "c", "--expand"]).unwrap();
        assert_eq!(cli.client.namespace.as_deref(), Some("t"));
        assert_eq!(cli.client.context.as_deref(), Some("c"));
        let Command::Describe(args) = cli.command else {
            panic!("describe")
        };
        assert_eq!(args.tenant.as_deref(), Some("demo"));
        assert!(args.expand);
        let cli = parse(&["--kubeconfig", "/k", "get", "kubeconfig", "demo"]).unwrap();
        assert_eq!(cli.client.kubeconfig, Some(PathBuf::from("/k")));
    }

    #[test]
    fn all_namespaces_excludes_a_name() {
        assert!(parse(&["describe", "-A"]).is_ok());
        assert!(parse(&["describe", "demo", "-A"]).is_err());
    }

    #[test]
    fn durations() {
        let cases = [
            ("90", Some(90)),
            ("90s", Some(90)),
            ("10m", Some(600)),
            ("1h30m", Some(5400)),
            ("soon", None),
            ("-5s", None),
        ];
        for (text, want) in cases {
            assert_eq!(
                parse_duration(text).ok().map(|d| d.as_secs()),
                want,
                "{text}"
            );
        }
    }

    #[test]
    fn server_must_be_https_with_a_host() {
        assert_eq!(
            parse_server("https://127.0.0.1:6443/").as_deref(),
            Ok("https://127.0.0.1:6443")
        );
        assert!(parse_server("http://127.0.0.1:6443").is_err());
        assert!(parse_server("127.0.0.1:6443").is_err());
    }

    #[test]
    fn upgrade_refuses_bad_versions_without_a_cluster() {
        let err = parse(&["upgrade", "demo", "--to", "1.34.4"]).unwrap_err();
        assert!(err.to_string().contains("vMAJOR.MINOR.PATCH"), "{err}");
        let err = parse(&["upgrade", "demo", "--to", "v1.40.0"]).unwrap_err();
        let range = crate::api::supported_range();
        assert!(
            err.to_string()
                .contains(&format!("outside the supported range {range}")),
            "{err}"
        );
        assert!(parse(&["upgrade", "demo", "--to", "v1.35.1"]).is_ok());
    }

    #[test]
    fn scale_names_a_pool_and_a_number() {
        let cli = parse(&[
            "scale",
            "np/workers",
            "--replicas=3",
            "-n",
            "t",
            "--no-wait",
        ])
        .unwrap();
        assert_eq!(cli.client.namespace.as_deref(), Some("t"));
        let Command::Scale(args) = cli.command else {
            panic!("scale")
        };
        assert_eq!((args.pool.as_str(), args.replicas), ("workers", 3));
        assert!(args.no_wait);
        assert_eq!(args.timeout.timeout.as_secs(), 600);
        // (argument, the pool's name or the words of the refusal)
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("np/workers", Ok("workers")),
            ("nodepool/workers", Ok("workers")),
            ("nodepools/workers", Ok("workers")),
            ("NodePool/workers", Ok("workers")),
            ("nodepools.orrery.dev/workers", Ok("workers")),
            ("workers", Err("name the pool as np/NAME or nodepool/NAME")),
            ("np/", Err("name the pool as np/NAME")),
            ("np/a/b", Err("name the pool as np/NAME")),
            ("deployment/workers", Err("scale works on NodePools only")),
            ("tcp/demo", Err("scale works on NodePools only")),
        ];
        for (arg, want) in cases {
            match (parse_pool(arg), want) {
                (Ok(name), Ok(want)) => assert_eq!(&name, want, "{arg}"),
                (Err(err), Err(words)) => assert!(err.contains(words), "{arg}: {err}"),
                (got, _) => panic!("{arg}: {got:?}"),
            }
        }
    }

    #[test]
    fn scale_refuses_bad_numbers_without_a_cluster() {
        for args in [
            &["scale", "np/w", "--replicas=-1"][..],
            &["scale", "np/w", "--replicas", "-1"],
        ] {
            let err = parse(args).unwrap_err();
            assert!(
                err.to_string().contains("spec.replicas must be 0 or more"),
                "{args:?}: {err}"
            );
        }
        let err = parse(&["scale", "np/w", "--replicas=three"]).unwrap_err();
        assert!(
            err.to_string().contains("is not a number of nodes"),
            "{err}"
        );
        assert!(parse(&["scale", "np/w"]).is_err(), "--replicas is required");
        assert!(parse(&["scale", "np/w", "--replicas=0"]).is_ok());
    }
}
