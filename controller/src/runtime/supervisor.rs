//! The lifecycle of `orrery controller`: start the HTTP server, the client and (when asked for)
//! the cluster-autoscaler API, wait to lead, run every controller of [`crate::CONTROLLERS`] until
//! a signal, then drain and release the Lease.

use super::REPORTER_NAME;
use super::cli::ControllerArgs;
use super::client::infer_counting_client;
use super::http::{self, Health, HttpServer, probe_apiserver};
use super::leader::{LeaderElector, LeaseConfig, LeaseKeeper};
use crate::RunController;
use crate::addons::autoscaler;
use crate::context::Context;
use crate::metrics::Metrics;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use kube::runtime::events::Reporter;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How long the controllers get to finish after SIGTERM or SIGINT before the process gives up
/// waiting for them (the default `terminationGracePeriodSeconds` of a Pod is 30).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Runs `orrery controller` until a signal (exit 0), the loss of the Lease or the failure of a
/// controller (exit 1). `lease_namespace` is `None` when leader election is off.
pub async fn run(args: ControllerArgs, lease_namespace: Option<String>) -> ExitCode {
    let identity = args.identity();
    info!(
        version = env!("CARGO_PKG_VERSION"),
        %identity,
        leader_election = args.leader_election,
        metrics_addr = %args.metrics_addr,
        "starting orrery controller"
    );
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());

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
    let http = HttpServer::spawn(listener, http::router(Arc::new(registry), health.clone()));

    let client = match infer_counting_client(&metrics).await {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot set up the Kubernetes client (in-cluster config or KUBECONFIG)");
            http.stop().await;
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(probe_apiserver(client.clone(), health.clone()));
    // Served by every replica, from before it leads: the Service may send a call to any.
    let autoscaler_api = match start_autoscaler_api(&args, &client, &health, &shutdown).await {
        Ok(api) => api,
        Err(()) => {
            http.stop().await;
            return ExitCode::FAILURE;
        }
    };

    // Become the leader first, unless told not to.
    let mut keeper = None;
    if let Some(namespace) = lease_namespace {
        let config = LeaseConfig::new(namespace, args.leader_election_name.clone(), &identity);
        let elector = LeaderElector::new(client.clone(), config);
        match LeaseKeeper::acquire(elector, &shutdown).await {
            Some(acquired) => keeper = Some(acquired),
            None => {
                http.stop().await;
                return ExitCode::SUCCESS;
            }
        }
    }

    let reporter = Reporter {
        controller: REPORTER_NAME.into(),
        instance: Some(identity),
    };
    let ctx = Arc::new(Context::new(client, metrics, reporter, args.settings()));
    let controllers = crate::CONTROLLERS;
    match supervise(controllers, ctx, keeper, &health, &shutdown, SHUTDOWN_GRACE).await {
        // Another replica may lead already: exit at once.
        Outcome::LeaseLost => ExitCode::FAILURE,
        Outcome::Stopped { ok } => {
            let ok = stop_autoscaler_api(autoscaler_api, &shutdown).await && ok;
            http.stop().await;
            if ok {
                info!("stopped");
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The autoscaler API's server task, when `--autoscaler-addr` asks for one. Its port is bound
/// here, so a port in use fails the start. Should the server end before shutdown, the process
/// stops (and its Deployment restarts it).
async fn start_autoscaler_api(
    args: &ControllerArgs,
    client: &kube::Client,
    health: &Arc<Health>,
    shutdown: &CancellationToken,
) -> Result<Option<JoinHandle<crate::Result<()>>>, ()> {
    let (Some(addr), Some(api)) = (args.autoscaler_addr, args.autoscaler()) else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        error!(error = %e, "cannot listen on --autoscaler-addr {addr}");
    })?;
    let (client, health, shutdown) = (client.clone(), health.clone(), shutdown.clone());
    Ok(Some(tokio::spawn(async move {
        let served = autoscaler::server::serve(client, api, listener, shutdown.clone()).await;
        if !shutdown.is_cancelled() {
            error!(outcome = ?served, "the autoscaler API stopped before shutdown; exiting");
            health.set_failed();
            shutdown.cancel();
        }
        served
    })))
}

/// Waits for the autoscaler API to stop (a few seconds for calls under way); false if it failed.
async fn stop_autoscaler_api(
    api: Option<JoinHandle<crate::Result<()>>>,
    shutdown: &CancellationToken,
) -> bool {
    let Some(mut api) = api else {
        return true;
    };
    shutdown.cancel();
    match timeout(Duration::from_secs(5), &mut api).await {
        Ok(Ok(Ok(()))) => true,
        Ok(Ok(Err(e))) => {
            error!(error = %e, "the autoscaler API failed");
            false
        }
        Ok(Err(e)) => {
            error!(error = %e, "the autoscaler API task failed");
            false
        }
        Err(_) => {
            warn!("the autoscaler API did not stop in time");
            api.abort();
            true
        }
    }
}

/// How [`supervise`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The controllers stopped and the Lease (if any) was released; `ok` is false when one ended
    /// before shutdown, failed, or did not stop within the grace period.
    Stopped { ok: bool },
    /// The Lease was lost; the controllers were left running, neither drained nor waited for.
    LeaseLost,
}

/// Runs every one of `controllers` until `shutdown` is cancelled, one of them ends, or the Lease
/// that `keeper` renews is lost. Then gives them `grace` to finish while the Lease is still
/// renewed, and releases it. A controller that ends on its own cancels `shutdown` for the others;
/// it and the loss of the Lease mark `health` failed.
pub async fn supervise(
    controllers: &[(&'static str, RunController)],
    ctx: Arc<Context>,
    mut keeper: Option<LeaseKeeper>,
    health: &Health,
    shutdown: &CancellationToken,
    grace: Duration,
) -> Outcome {
    info!("starting controllers");
    let mut running: Vec<Running> = controllers
        .iter()
        .map(|&(name, run)| Running::spawn(name, run(ctx.clone(), shutdown.clone())))
        .collect();
    let lease_lost = async {
        match keeper.as_mut() {
            Some(keeper) => keeper.lost().await,
            None => std::future::pending().await,
        }
    };
    let drained = run_and_drain(&mut running, lease_lost, health, shutdown, grace).await;
    let ok = match drained {
        Ok(ok) => ok,
        Err(reason) => {
            health.set_failed();
            error!(%reason, "lost the leader-election Lease; exiting");
            return Outcome::LeaseLost;
        }
    };
    let ok = report(&running) && ok;
    if let Some(keeper) = keeper {
        keeper.release().await;
    }
    Outcome::Stopped { ok }
}

/// Waits for `shutdown`, the end of a controller or `lease_lost`, then for every controller to end
/// within `grace` (aborting them after it). `Err` is why the Lease was lost; `Ok(false)` means a
/// controller ended before shutdown or had to be aborted.
async fn run_and_drain(
    running: &mut [Running],
    lease_lost: impl Future<Output = String>,
    health: &Health,
    shutdown: &CancellationToken,
    grace: Duration,
) -> Result<bool, String> {
    let mut lease_lost = std::pin::pin!(lease_lost);
    let mut ok = true;
    tokio::select! {
        () = shutdown.cancelled() => {}
        reason = &mut lease_lost => return Err(reason),
        () = any_ended(running) => {}
    }
    // A controller that ended while the process was not shutting down is a failure.
    if !shutdown.is_cancelled()
        && let Some(c) = running.iter().find(|c| c.result.is_some())
    {
        health.set_failed();
        ok = false;
        error!(
            controller = c.name,
            "controller stopped before shutdown; exiting"
        );
        shutdown.cancel();
    }

    // Let the controllers finish while the Lease is still renewed.
    tokio::select! {
        reason = &mut lease_lost => return Err(reason),
        r = timeout(grace, all_ended(running)) => if r.is_err() {
            warn!("controllers did not stop within {grace:?}; aborting them");
            ok = false;
            for c in running.iter_mut() {
                c.abort().await;
            }
        },
    }
    Ok(ok)
}

/// Logs how each controller ended; false if one failed (panicked or was aborted).
fn report(running: &[Running]) -> bool {
    let mut ok = true;
    for c in running {
        match &c.result {
            Some(Ok(())) => info!(controller = c.name, "controller stopped"),
            Some(Err(e)) => {
                ok = false;
                error!(controller = c.name, error = %e, "controller task failed");
            }
            None => {}
        }
    }
    ok
}

/// A spawned controller and, once it ended, how.
struct Running {
    name: &'static str,
    handle: JoinHandle<()>,
    result: Option<Result<(), JoinError>>,
}

impl Running {
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

/// Completes when any controller has ended; never when there are none.
async fn any_ended(running: &mut [Running]) {
    let mut ended: FuturesUnordered<_> = running.iter_mut().map(Running::ended).collect();
    if ended.next().await.is_none() {
        std::future::pending::<()>().await;
    }
}

async fn all_ended(running: &mut [Running]) {
    futures::future::join_all(running.iter_mut().map(Running::ended)).await;
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT, and exits at once on the second.
fn cancel_on_signal(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let signal = termination_signal().await;
        info!(signal, "shutting down");
        shutdown.cancel();
        let signal = termination_signal().await;
        warn!(signal, "second signal: exiting at once");
        std::process::exit(1);
    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;
    use std::time::Instant;

    /// A context whose client points at a closed port: the test controllers never use it.
    fn context() -> Arc<Context> {
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let reporter = Reporter {
            controller: REPORTER_NAME.into(),
            instance: None,
        };
        Arc::new(Context::new(
            client,
            Arc::default(),
            reporter,
            Default::default(),
        ))
    }

    fn until_shutdown(_: Arc<Context>, shutdown: CancellationToken) -> BoxFuture<'static, ()> {
        Box::pin(async move { shutdown.cancelled().await })
    }

    fn ends_at_once(_: Arc<Context>, _: CancellationToken) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }

    fn ignores_shutdown(_: Arc<Context>, _: CancellationToken) -> BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }

    fn panics_on_shutdown(_: Arc<Context>, shutdown: CancellationToken) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            shutdown.cancelled().await;
            panic!("failing on shutdown, as the test asks");
        })
    }

    /// Runs `supervise` without a Lease, cancelling `shutdown` after `cancel_after` if given.
    async fn supervised(
        controllers: &[(&'static str, RunController)],
        cancel_after: Option<Duration>,
        grace: Duration,
    ) -> (Outcome, Health, CancellationToken) {
        let health = Health::default();
        let shutdown = CancellationToken::new();
        if let Some(after) = cancel_after {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                shutdown.cancel();
            });
        }
        let run = supervise(controllers, context(), None, &health, &shutdown, grace);
        let outcome = timeout(Duration::from_secs(10), run)
            .await
            .expect("supervise returned");
        (outcome, health, shutdown)
    }

    #[tokio::test]
    async fn every_controller_runs_until_shutdown() {
        let controllers: &[(&str, RunController)] = &[
            ("a", until_shutdown),
            ("b", until_shutdown),
            ("c", until_shutdown),
        ];
        let start = Instant::now();
        let (outcome, health, _) = supervised(
            controllers,
            Some(Duration::from_millis(200)),
            SHUTDOWN_GRACE,
        )
        .await;
        assert_eq!(outcome, Outcome::Stopped { ok: true });
        assert!(
            start.elapsed() >= Duration::from_millis(200),
            "stopped early"
        );
        assert!(health.is_live());
    }

    #[tokio::test]
    async fn a_controller_that_ends_early_stops_the_others_and_fails() {
        let controllers: &[(&str, RunController)] =
            &[("waits", until_shutdown), ("ends", ends_at_once)];
        let (outcome, health, shutdown) = supervised(controllers, None, SHUTDOWN_GRACE).await;
        assert_eq!(outcome, Outcome::Stopped { ok: false });
        assert!(
            shutdown.is_cancelled(),
            "the other controllers were not told to stop"
        );
        assert!(!health.is_live());
    }

    #[tokio::test]
    async fn a_controller_that_ignores_shutdown_is_aborted_after_the_grace() {
        let controllers: &[(&str, RunController)] =
            &[("stops", until_shutdown), ("stuck", ignores_shutdown)];
        let grace = Duration::from_millis(300);
        let start = Instant::now();
        let (outcome, _, _) = supervised(controllers, Some(Duration::ZERO), grace).await;
        assert_eq!(outcome, Outcome::Stopped { ok: false });
        let took = start.elapsed();
        assert!(took >= grace && took < grace * 5, "took {took:?}");
    }

    #[tokio::test]
    async fn a_controller_that_panics_fails_the_run() {
        let controllers: &[(&str, RunController)] =
            &[("stops", until_shutdown), ("panics", panics_on_shutdown)];
        let (outcome, health, _) =
            supervised(controllers, Some(Duration::from_millis(50)), SHUTDOWN_GRACE).await;
        assert_eq!(outcome, Outcome::Stopped { ok: false });
        // A failure while shutting down is no reason to restart a process that is stopping.
        assert!(health.is_live());
    }

    #[tokio::test]
    async fn no_controllers_wait_for_shutdown() {
        let start = Instant::now();
        let (outcome, _, _) =
            supervised(&[], Some(Duration::from_millis(200)), SHUTDOWN_GRACE).await;
        assert_eq!(outcome, Outcome::Stopped { ok: true });
        assert!(
            start.elapsed() >= Duration::from_millis(200),
            "stopped early"
        );
    }

    #[tokio::test]
    async fn losing_the_lease_ends_the_run_at_once() {
        // An elector that never acquired the Lease (its apiserver is unreachable) finds it lost
        // at its first renewal.
        let ctx = context();
        let config = LeaseConfig {
            retry_period: Duration::from_millis(100),
            ..LeaseConfig::new("default", "orrery-test", "me")
        };
        let keeper = LeaseKeeper::spawn(LeaderElector::new(ctx.client.clone(), config));
        let health = Health::default();
        let shutdown = CancellationToken::new();
        let controllers: &[(&str, RunController)] = &[("stuck", ignores_shutdown)];
        let run = supervise(
            controllers,
            ctx,
            Some(keeper),
            &health,
            &shutdown,
            SHUTDOWN_GRACE,
        );
        let outcome = timeout(Duration::from_secs(5), run).await.expect("ended");
        assert_eq!(outcome, Outcome::LeaseLost);
        assert!(!health.is_live());
        assert!(!shutdown.is_cancelled(), "lease loss does not drain");
    }
}
