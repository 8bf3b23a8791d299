//! The `orrery` process: command line, logging, the metrics and health server, leader election,
//! and the lifecycle of the controllers.
//!
//! `orrery controller` runs the controllers: it serves `/metrics`, `/healthz` and `/readyz`, waits
//! to hold the leader-election Lease (unless `--leader-election=false`), then runs
//! [`crate::reconcile::run`] and [`crate::datastore::run`] until SIGTERM or SIGINT. On such a
//! signal it stops the controllers (still renewing the Lease while they finish), releases the
//! Lease so that a standby replica takes over at once, stops the HTTP server and exits 0. If it
//! loses the Lease, or a controller stops on its own, it exits 1 so that its Deployment restarts
//! it.
//!
//! # Leader election
//!
//! [`LeaderElector`] is a small elector on a `coordination.k8s.io/v1` Lease with the semantics of
//! client-go's `leaderelection` package (lease duration 15 s, renew deadline 10 s, retry period
//! 2 s). Every write is a read-modify-write guarded by the Lease's `resourceVersion`, so of two
//! candidates writing the same observed Lease, exactly one wins; a Lease held by another identity
//! counts as expired only once its record has not changed for its `leaseDurationSeconds` as
//! measured on this process's monotonic clock (no comparison of clocks across machines).
//!
//! It is written here rather than taken from a crate because none fits kube 5 and these timings:
//! `kube-leader-election` 0.44 depends on kube 4 (a second kube in the tree) and `kubert` 0.25 on
//! kube 1.1; `kube-lease-manager` 0.13 does use kube 5, but (1) a standby only looks at the Lease
//! again when the holder's last renewal expires, so a released Lease is taken over up to a lease
//! duration later instead of within the retry period, (2) a leader whose renewals fail keeps
//! reporting leadership while it backs off for up to 30 s, with no renew deadline, so it can
//! overlap with its successor, and (3) renewals and take-overs of expired Leases are unguarded
//! strategic-merge patches.

use crate::context::{Context, Settings};
use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::builder::BoolishValueParser;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tracing::{debug, error, info, warn};

/// The name controllers report in Events (`reportingController`).
pub const REPORTER_NAME: &str = "orrery";

/// How long the controllers get to finish after SIGTERM or SIGINT before the process gives up
/// waiting for them (the default `terminationGracePeriodSeconds` of a Pod is 30).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Where the service account's namespace is mounted in a Pod.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

// ---------------------------------------------------------------------------------------------
// Command line

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
    Controller(ControllerArgs),
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
}

impl ControllerArgs {
    /// The controllers' settings.
    pub fn settings(&self) -> Settings {
        Settings {
            image_registry: self.image_registry.clone(),
            resync: Duration::from_secs(self.resync_seconds),
            tenant_access: self.tenant_access,
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

fn default_identity() -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "orrery".to_owned());
    let host: String = host.chars().take(100).collect();
    format!("{host}_{:08x}", random_u64() as u32)
}

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

// ---------------------------------------------------------------------------------------------
// Entry point

/// Runs `orrery` with the process's arguments and environment.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => {
            print!("{}", crate::crdgen::crds_yaml());
            ExitCode::SUCCESS
        }
        Command::Controller(args) => controller_main(args),
    }
}

fn usage_error(kind: clap::error::ErrorKind, message: String) -> ! {
    let mut cmd = Cli::command();
    let sub = cmd
        .find_subcommand_mut("controller")
        .expect("the controller subcommand exists")
        .clone();
    sub.bin_name("orrery controller")
        .error(kind, message)
        .exit()
}

fn controller_main(args: ControllerArgs) -> ExitCode {
    if let Err(e) = init_logging(args.log_format) {
        usage_error(clap::error::ErrorKind::InvalidValue, e);
    }
    let pod_namespace = std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok();
    let namespace = match args.lease_namespace(pod_namespace) {
        Ok(ns) => ns,
        Err(e) => usage_error(clap::error::ErrorKind::MissingRequiredArgument, e),
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
    let code = runtime.block_on(run_controller(args, namespace));
    // Do not wait for tasks that are still running (a controller that did not stop in time).
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// Sets the global tracing subscriber: `format` lines, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::filter::LevelFilter;
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env()
        .map_err(|e| format!("invalid RUST_LOG: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Controller lifecycle

/// Liveness and readiness of the process, as `/healthz` and `/readyz` report them.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    failed: AtomicBool,
}

impl Health {
    /// The kube client has reached the apiserver.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// A controller task, or leadership, was lost: the process is no longer live.
    pub fn set_failed(&self) {
        self.failed.store(true, Ordering::Release);
    }

    pub fn is_live(&self) -> bool {
        !self.failed.load(Ordering::Acquire)
    }
}

/// A shutdown request every holder can wait for.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Triggers [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger { tx }, Shutdown { rx })
    }

    /// Completes once shutdown was triggered (or the trigger was dropped).
    pub fn wait(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.rx.clone();
        async move {
            let _ = rx.wait_for(|&stop| stop).await;
        }
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

/// Completes on the first SIGTERM or SIGINT, and names it.
async fn termination_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the process");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

async fn run_controller(args: ControllerArgs, lease_namespace: Option<String>) -> ExitCode {
    let identity = args.identity();
    info!(
        version = env!("CARGO_PKG_VERSION"),
        %identity,
        leader_election = args.leader_election,
        metrics_addr = %args.metrics_addr,
        "starting orrery controller"
    );

    let (trigger, shutdown) = Shutdown::new();
    let trigger = Arc::new(trigger);
    {
        let trigger = trigger.clone();
        tokio::spawn(async move {
            let signal = termination_signal().await;
            info!(signal, "shutting down");
            trigger.trigger();
            let signal = termination_signal().await;
            warn!(signal, "second signal: exiting at once");
            std::process::exit(1);
        });
    }

    let health = Arc::new(Health::default());
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));

    let listener = match tokio::net::TcpListener::bind(args.metrics_addr).await {
        Ok(l) => l,
        Err(e) => {
            error!(error = %e, "cannot listen on --metrics-addr {}", args.metrics_addr);
            return ExitCode::FAILURE;
        }
    };
    let http = HttpServer::spawn(listener, http_router(Arc::new(registry), health.clone()));

    let client = match Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot set up the Kubernetes client (in-cluster config or KUBECONFIG)");
            http.stop().await;
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(probe_apiserver(client.clone(), health.clone()));

    // Become the leader first, unless told not to.
    let mut keeper = None;
    if let Some(namespace) = lease_namespace {
        let config = LeaseConfig::new(
            namespace,
            args.leader_election_name.clone(),
            identity.clone(),
        );
        let mut elector = LeaderElector::new(client.clone(), config);
        tokio::select! {
            () = elector.acquire() => {}
            () = shutdown.wait() => {
                // An attempt cut short may still have taken the Lease: give it back if so.
                if let Err(e) = timeout(Duration::from_secs(5), elector.release()).await {
                    warn!(error = %e, "cannot release the leader-election Lease");
                }
                http.stop().await;
                return ExitCode::SUCCESS;
            }
        }
        keeper = Some(LeaseKeeper::spawn(elector));
    }

    let reporter = Reporter {
        controller: REPORTER_NAME.into(),
        instance: Some(identity),
    };
    let ctx = Arc::new(Context::new(client, metrics, reporter, args.settings()));
    info!("starting controllers");
    let token = tokio_util::sync::CancellationToken::new();
    {
        let (token, stop) = (token.clone(), shutdown.wait());
        tokio::spawn(async move {
            stop.await;
            token.cancel();
        });
    }
    let mut controllers = [
        Controller::spawn(
            "tenantcontrolplane",
            crate::controlplane::run(ctx.clone(), token.clone()),
        ),
        Controller::spawn("datastore", crate::datastore::run(ctx, token)),
    ];

    let mut ok = true;
    {
        let mut lease_lost = std::pin::pin!(async {
            match keeper.as_mut() {
                Some(keeper) => keeper.lost().await,
                None => std::future::pending().await,
            }
        });
        let lost = |reason: String| {
            // Another replica may lead already: stop at once, without draining or releasing.
            health.set_failed();
            error!(%reason, "lost the leader-election Lease; exiting");
            ExitCode::FAILURE
        };

        // Run until a signal, the loss of the Lease, or the end of a controller.
        let [a, b] = &mut controllers;
        tokio::select! {
            () = shutdown.wait() => {}
            reason = &mut lease_lost => return lost(reason),
            () = a.ended() => {}
            () = b.ended() => {}
        }
        // A controller that ended while the process was not shutting down is a failure.
        if let Some(c) = controllers
            .iter()
            .find(|c| c.result.is_some() && !shutdown.is_triggered())
        {
            health.set_failed();
            ok = false;
            error!(
                controller = c.name,
                "controller stopped before shutdown; exiting"
            );
            trigger.trigger();
        }

        // Let the controllers finish while the Lease is still renewed.
        let [a, b] = &mut controllers;
        let drain = async { tokio::join!(a.ended(), b.ended()) };
        tokio::select! {
            reason = &mut lease_lost => return lost(reason),
            r = timeout(SHUTDOWN_GRACE, drain) => if r.is_err() {
                warn!("controllers did not stop within {SHUTDOWN_GRACE:?}; aborting them");
                ok = false;
                for c in &mut controllers {
                    c.abort().await;
                }
            },
        }
    }
    for c in &controllers {
        match &c.result {
            Some(Ok(())) => info!(controller = c.name, "controller stopped"),
            Some(Err(e)) => {
                ok = false;
                error!(controller = c.name, error = %e, "controller task failed");
            }
            None => {}
        }
    }

    if let Some(keeper) = keeper {
        keeper.release().await;
    }
    http.stop().await;
    if ok {
        info!("stopped");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A spawned controller and, once it ended, how.
struct Controller {
    name: &'static str,
    handle: JoinHandle<()>,
    result: Option<Result<(), tokio::task::JoinError>>,
}

impl Controller {
    fn spawn(name: &'static str, run: impl Future<Output = ()> + Send + 'static) -> Self {
        Self {
            name,
            handle: tokio::spawn(run),
            result: None,
        }
    }

    /// Completes when the task has ended (at once if it already has).
    async fn ended(&mut self) {
        if self.result.is_none() {
            self.result = Some((&mut self.handle).await);
        }
    }

    async fn abort(&mut self) {
        if self.result.is_none() {
            self.handle.abort();
            self.ended().await;
        }
    }
}

/// The metrics and health server, running until stopped.
struct HttpServer {
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl HttpServer {
    fn spawn(listener: tokio::net::TcpListener, router: Router) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .into_future(),
        );
        Self { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        match timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "metrics server failed"),
            Ok(Err(e)) => warn!(error = %e, "metrics server task failed"),
            Err(_) => warn!("metrics server did not stop in time"),
        }
    }
}

/// Sets `health` ready once the apiserver answered; tries every 2 s until then.
async fn probe_apiserver(client: Client, health: Arc<Health>) {
    loop {
        match timeout(Duration::from_secs(10), client.apiserver_version()).await {
            Ok(Ok(info)) => {
                info!(version = %info.git_version, "reached the apiserver");
                health.set_ready();
                return;
            }
            Ok(Err(e)) => warn!(error = %e, "cannot reach the apiserver yet"),
            Err(_) => warn!("cannot reach the apiserver yet: timed out"),
        }
        sleep(Duration::from_secs(2)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP: metrics and health

#[derive(Clone)]
struct HttpState {
    registry: Arc<Registry>,
    health: Arc<Health>,
}

/// The routes of the metrics and health server: `/metrics`, `/healthz`, `/readyz`.
pub fn http_router(registry: Arc<Registry>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(serve_healthz))
        .route("/readyz", get(serve_readyz))
        .with_state(HttpState { registry, health })
}

async fn serve_metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::encode(&state.registry),
    )
}

async fn serve_healthz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.health.is_live() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "controllers stopped\n")
    }
}

async fn serve_readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.health.is_ready() && state.health.is_live() {
        (StatusCode::OK, "ok\n")
    } else if !state.health.is_live() {
        (StatusCode::SERVICE_UNAVAILABLE, "controllers stopped\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "apiserver not reached yet\n",
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Leader election

/// Where the Lease is, who we are, and the timings of the election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a holder's record stays valid after it was last seen to change; written to the
    /// Lease as `leaseDurationSeconds` (whole seconds, at least 1).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up leadership. Less than
    /// `lease_duration`, so that it stops before a standby may take over.
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby tries to acquire.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Lease duration 15 s, renew deadline 10 s, retry period 2 s (client-go's defaults).
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn lease_duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// What one acquire-or-renew attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the Lease (acquired or renewed it).
    Leading,
    /// Another identity holds a valid Lease.
    HeldBy(String),
    /// Someone else wrote the Lease between our read and our write; try again.
    Conflict,
}

/// A leader elector on one `coordination.k8s.io/v1` Lease (see the module docs).
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The last Lease record we saw, and when we first saw it.
    observed: Option<(LeaseSpec, Instant)>,
    /// When the last successful acquire-or-renew attempt started.
    last_success: Option<Instant>,
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        assert!(
            config.renew_deadline < config.lease_duration,
            "the renew deadline must be shorter than the lease duration"
        );
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            last_success: None,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    fn observe(&mut self, spec: &LeaseSpec, now: Instant) {
        if self.observed.as_ref().is_none_or(|(seen, _)| seen != spec) {
            self.observed = Some((spec.clone(), now));
        }
    }

    /// Whether the observed record is past its duration on our clock.
    fn observed_expired(&self, now: Instant) -> bool {
        match &self.observed {
            None => true,
            Some((spec, at)) => {
                let secs = spec.lease_duration_seconds.unwrap_or(0).max(0) as u64;
                now >= *at + Duration::from_secs(secs)
            }
        }
    }

    /// One attempt to acquire the Lease, or to renew it if we hold it. Never overwrites a valid
    /// Lease of another identity; every write is guarded by the `resourceVersion` it read.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let started = Instant::now();
        let now = MicroTime(Timestamp::now());
        let identity = self.config.identity.clone();
        let duration = self.config.lease_duration_seconds();

        let Some(lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(identity),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => Ok(self.succeeded(created, started)),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };

        let old = lease.spec.clone().unwrap_or_default();
        self.observe(&old, Instant::now());
        let holder = old.holder_identity.clone().unwrap_or_default();
        let ours = holder == identity;
        if !holder.is_empty() && !ours && !self.observed_expired(Instant::now()) {
            self.last_success = None;
            return Ok(Attempt::HeldBy(holder));
        }

        let spec = LeaseSpec {
            holder_identity: Some(identity),
            lease_duration_seconds: Some(duration),
            acquire_time: if ours {
                old.acquire_time.clone().or_else(|| Some(now.clone()))
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: if ours {
                old.lease_transitions
            } else {
                Some(old.lease_transitions.unwrap_or(0).saturating_add(1))
            },
            ..old
        };
        // `replace` sends the resourceVersion we read: the apiserver refuses it if the Lease
        // changed since.
        let updated = Lease {
            spec: Some(spec),
            ..lease
        };
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &updated)
            .await
        {
            Ok(written) => Ok(self.succeeded(written, started)),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    fn succeeded(&mut self, written: Lease, started: Instant) -> Attempt {
        self.observe(&written.spec.unwrap_or_default(), Instant::now());
        self.last_success = Some(started);
        Attempt::Leading
    }

    /// Waits until this elector holds the Lease, trying every retry period.
    pub async fn acquire(&mut self) {
        info!(
            lease = %self.config.name,
            namespace = %self.config.namespace,
            identity = %self.config.identity,
            "waiting to acquire the leader-election Lease"
        );
        let mut last_holder = None;
        loop {
            match timeout(self.config.renew_deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Leading)) => {
                    info!(lease = %self.config.name, identity = %self.config.identity, "acquired the leader-election Lease");
                    return;
                }
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    if last_holder.as_ref() != Some(&holder) {
                        info!(%holder, "the leader-election Lease is held by another replica");
                        last_holder = Some(holder);
                    }
                }
                Ok(Ok(Attempt::Conflict)) => debug!("conflict acquiring the leader-election Lease"),
                Ok(Err(e)) => warn!(error = %e, "cannot acquire the leader-election Lease"),
                Err(_) => warn!("cannot acquire the leader-election Lease: timed out"),
            }
            sleep(jittered(self.config.retry_period)).await;
        }
    }

    /// Keeps renewing the Lease every retry period, and returns why leadership was lost: the
    /// Lease was found held by another identity, or no renewal succeeded within the renew
    /// deadline. Call it only after [`acquire`](Self::acquire) returned.
    pub async fn keep_leading(&mut self) -> String {
        loop {
            sleep(self.config.retry_period).await;
            loop {
                let Some(last) = self.last_success else {
                    return "not holding the Lease".to_owned();
                };
                let deadline = last + self.config.renew_deadline;
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return format!(
                        "no renewal succeeded within {:?}",
                        self.config.renew_deadline
                    );
                }
                match timeout(remaining, self.try_acquire_or_renew()).await {
                    Ok(Ok(Attempt::Leading)) => break,
                    Ok(Ok(Attempt::HeldBy(holder))) => {
                        return format!("the Lease is held by {holder}");
                    }
                    Ok(Ok(Attempt::Conflict)) => {
                        debug!("conflict renewing the leader-election Lease")
                    }
                    Ok(Err(e)) => warn!(error = %e, "cannot renew the leader-election Lease"),
                    Err(_) => {
                        return format!(
                            "no renewal succeeded within {:?}",
                            self.config.renew_deadline
                        );
                    }
                }
                let remaining = deadline.saturating_duration_since(Instant::now());
                sleep(
                    self.config
                        .retry_period
                        .min(remaining)
                        .min(Duration::from_millis(500)),
                )
                .await;
            }
        }
    }

    /// Gives the Lease up if we hold it, so that a standby takes over within its retry period.
    /// Returns whether it released anything.
    pub async fn release(&mut self) -> Result<bool, kube::Error> {
        self.last_success = None;
        for _ in 0..3 {
            let Some(lease) = self.api.get_opt(&self.config.name).await? else {
                return Ok(false);
            };
            let old = lease.spec.clone().unwrap_or_default();
            if old.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(false);
            }
            let now = MicroTime(Timestamp::now());
            let spec = LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                ..old
            };
            let updated = Lease {
                spec: Some(spec),
                ..lease
            };
            match self
                .api
                .replace(&self.config.name, &PostParams::default(), &updated)
                .await
            {
                Ok(_) => {
                    self.observed = None;
                    info!(lease = %self.config.name, "released the leader-election Lease");
                    return Ok(true);
                }
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }
}

/// `period` plus up to 20 % more, so that standbys do not poll in lockstep.
fn jittered(period: Duration) -> Duration {
    let fraction = (random_u64() % 1000) as f64 / 5000.0;
    period.mul_f64(1.0 + fraction)
}

/// Runs [`LeaderElector::keep_leading`] in a task, and releases the Lease when told to.
pub struct LeaseKeeper {
    release: oneshot::Sender<()>,
    lost: oneshot::Receiver<String>,
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    /// Starts renewing the Lease that `elector` holds.
    pub fn spawn(mut elector: LeaderElector) -> Self {
        let (release, released) = oneshot::channel::<()>();
        let (lost_tx, lost) = oneshot::channel::<String>();
        let task = tokio::spawn(async move {
            tokio::select! {
                reason = elector.keep_leading() => {
                    let _ = lost_tx.send(reason);
                }
                _ = released => match timeout(Duration::from_secs(5), elector.release()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => warn!(error = %e, "cannot release the leader-election Lease"),
                    Err(_) => warn!("cannot release the leader-election Lease: timed out"),
                },
            }
        });
        Self {
            release,
            lost,
            task,
        }
    }

    /// Completes when leadership was lost, with the reason. Await it at most once to completion.
    pub async fn lost(&mut self) -> String {
        match (&mut self.lost).await {
            Ok(reason) => reason,
            Err(_) => "the leader-election task ended".to_owned(),
        }
    }

    /// Stops renewing and releases the Lease (if still held).
    pub async fn release(self) {
        let _ = self.release.send(());
        if let Err(e) = self.task.await {
            warn!(error = %e, "the leader-election task failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::FromArgMatches;
    use clap::error::ErrorKind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
            Command::Controller(args) => args,
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

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(2));
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_millis(2400),
                "{d:?}"
            );
        }
    }

    #[test]
    fn lease_config_defaults_are_client_go_s() {
        let c = LeaseConfig::new("ns", "name", "me");
        assert_eq!(c.lease_duration, Duration::from_secs(15));
        assert_eq!(c.renew_deadline, Duration::from_secs(10));
        assert_eq!(c.retry_period, Duration::from_secs(2));
        assert_eq!(c.lease_duration_seconds(), 15);
    }

    #[tokio::test]
    async fn shutdown_fires_on_trigger_or_drop() {
        let (trigger, shutdown) = Shutdown::new();
        let waiter = tokio::spawn(shutdown.wait());
        sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        assert!(!shutdown.is_triggered());
        trigger.trigger();
        timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(shutdown.is_triggered());
        // A waiter created after the trigger completes at once.
        timeout(Duration::from_secs(1), shutdown.wait())
            .await
            .unwrap();

        let (trigger, shutdown) = Shutdown::new();
        drop(trigger);
        timeout(Duration::from_secs(1), shutdown.wait())
            .await
            .unwrap();
    }

    async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_owned(), body.to_owned())
    }

    #[tokio::test]
    async fn http_serves_metrics_health_and_readiness() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let health = Arc::new(Health::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = HttpServer::spawn(listener, http_router(Arc::new(registry), health.clone()));

        drop(metrics.reconcile_started("tenantcontrolplane"));
        let (status, head, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        assert!(
            body.contains("orrery_reconcile_total{controller=\"tenantcontrolplane\"} 1"),
            "{body}"
        );

        assert_eq!(http_get(addr, "/healthz").await.0, 200);
        assert_eq!(
            http_get(addr, "/readyz").await.0,
            503,
            "not ready before the apiserver was reached"
        );
        health.set_ready();
        assert_eq!(http_get(addr, "/readyz").await.0, 200);
        health.set_failed();
        assert_eq!(http_get(addr, "/healthz").await.0, 503);
        assert_eq!(http_get(addr, "/readyz").await.0, 503);
        assert_eq!(http_get(addr, "/nope").await.0, 404);

        timeout(Duration::from_secs(5), server.stop())
            .await
            .unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "still listening after stop"
        );
    }
}
