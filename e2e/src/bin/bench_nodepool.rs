//! Benchmark of the NodePool controller on the kwok ground: how long one pool of 50 (or any
//! number of) replicas takes from creation until every machine's VirtualMachine, user-data
//! Secret and bootstrap token exist, with the controller's reconciles and API requests; and the
//! memory of the process that runs the controller, before and after 100 (or N) tenants with one
//! pool each. Prints figures; asserts nothing.
//!
//!   cargo build --release -p orrery-e2e --bin bench_nodepool
//!   target/release/bench_nodepool [REPLICAS [TENANTS]]      # default: 50 100
//!
//! Needs a running ground without KubeVirt (`e2e/ground up`, not `--live`). Nothing there runs a
//! tenant apiserver or KubeVirt, so the benchmark stands them in: each TenantControlPlane's status
//! is written by the benchmark (no TenantControlPlane controller runs) and names the ground's own
//! apiserver and admin kubeconfig, so the bootstrap tokens land in the ground's kube-system; the
//! KubeVirt CRDs are stand-ins that keep any field, so VMs stay objects and nothing boots. The
//! controller runs in this process (`orrery::nodepool::run`, fed the tenants by a reflector as the
//! TenantControlPlane controller would), so its reconciles and requests are read from its metrics
//! directly and its memory is this process's RSS. RUST_LOG (default `orrery=warn`) shows its log.

use anyhow::{Context as _, Result, bail};
use futures::stream::{BoxStream, SelectAll};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use orrery::api::NodePool;
use orrery::context::{Context, Settings};
use orrery::metrics::{self, Metrics};
use orrery::nodepool::build::POOL_LABEL;
use orrery::nodepool::kubevirt::VirtualMachine;
use orrery_e2e::bench::{Memory, feed_tenants, log_to_stderr, stand_in_tenant};
use orrery_e2e::{
    Ground, eventually, has_real_kubevirt, install_crds, install_kubevirt_stand_ins,
    remove_kubevirt_stand_ins, unique_name,
};
use prometheus_client::registry::Registry;
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The label the controller puts on a bootstrap token naming its pool's namespace.
const POOL_NAMESPACE_LABEL: &str = "orrery.dev/pool-namespace";
/// How long after the last machine appeared the memory is read: past the controller's 10 s
/// requeue of pools whose machines have not joined, so a steady round is included.
const SETTLE: Duration = Duration::from_secs(15);

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| -> Result<usize> {
        args.get(i).map_or(Ok(default), |s| {
            s.parse().context("REPLICAS and TENANTS are numbers")
        })
    };
    let (replicas, tenants) = (number(0, 50)?, number(1, 100)?);
    log_to_stderr();

    let ground = Ground::get()?;
    ground.ensure_running()?;
    install_crds(&ground);
    if has_real_kubevirt(&ground) {
        bail!(
            "KubeVirt's own CRDs are installed: this benchmark is for the kwok tier (e2e/ground up without --live)"
        );
    }
    install_kubevirt_stand_ins(&ground);
    let stand_ins = true;
    let bench = Bench::start(ground).await?;
    // Memory first, from a heap no earlier round has grown.
    let memory = bench.round("mem", |ns| bench.memory(ns, tenants)).await;
    let scale = match memory {
        Ok(()) => bench.round("scale", |ns| bench.scale(ns, replicas)).await,
        Err(e) => Err(e),
    };
    bench.stop();
    if stand_ins {
        remove_kubevirt_stand_ins(&bench.ground);
    }
    scale
}

/// The NodePool controller running in this process, and what the benchmark reads of it.
struct Bench {
    ground: Ground,
    /// The ground's admin client for the benchmark's own calls, not counted in the metrics.
    client: Client,
    ctx: Arc<Context>,
    metrics: Arc<Metrics>,
    registry: Registry,
    shutdown: CancellationToken,
    controller: tokio::task::JoinHandle<()>,
}

impl Bench {
    async fn start(ground: Ground) -> Result<Self> {
        let client = ground.client().await?;
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let kubeconfig = kube::config::Kubeconfig::read_from(ground.kubeconfig())?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        let counted = orrery::runtime::client::counting_client(config, &metrics)?;
        let reporter = Reporter {
            controller: "orrery".into(),
            instance: Some("bench".into()),
        };
        let ctx = Arc::new(Context::new(
            counted,
            metrics.clone(),
            reporter,
            Settings::default(),
        ));
        let shutdown = CancellationToken::new();
        let controller = tokio::spawn(run_controller(ctx.clone(), shutdown.clone()));
        ctx.stores.tenants_listed().await?;
        Ok(Self {
            ground,
            client,
            ctx,
            metrics,
            registry,
            shutdown,
            controller,
        })
    }

    fn stop(&self) {
        self.shutdown.cancel();
        self.controller.abort();
    }

    /// Runs `body` in a new namespace that admits KubeVirt's pods, then deletes the namespace's
    /// pools (their finalizer clears their tokens from kube-system) and the namespace.
    async fn round<F, Fut>(&self, purpose: &str, body: F) -> Result<()>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let ns = unique_name(&format!("bench-np-{purpose}"));
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {
            "name": ns,
            "labels": {"orrery.dev/e2e": "true", "pod-security.kubernetes.io/enforce": "privileged"}
        }}))?;
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &namespace)
            .await?;
        let result = body(ns.clone()).await;
        let cleaned = self.clean_up(&ns).await;
        result.and(cleaned)
    }

    /// Figure 1: one pool of `replicas` from creation until all its machines' objects exist.
    async fn scale(&self, ns: String, replicas: usize) -> Result<()> {
        self.stand_in_tenants(&ns, 1).await?;
        let mut machines = Machines::watch(&self.client, &ns);
        machines.listed().await?;
        let before = self.snapshot();
        let start = Instant::now();
        create_pool(&self.client, &ns, 0, replicas).await?;
        let times = machines
            .until(replicas, start, Duration::from_secs(120))
            .await?;
        let done = self.snapshot();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let settled = self.snapshot();
        println!("\n0 → {replicas} VMs: one NodePool with replicas {replicas}, created at once");
        println!("  {}", times.describe());
        println!(
            "  NodePool reconciles: {} until then, {} with the 3 s after; failed: {}",
            done.reconciles - before.reconciles,
            settled.reconciles - before.reconciles,
            settled.errors_since(&before),
        );
        println!(
            "  management API requests until then: {}",
            done.requests_since(&before)
        );
        let pool = Api::<NodePool>::namespaced(self.client.clone(), &ns)
            .get("p0")
            .await?;
        println!("  the pool's status 3 s later: {}", describe_status(&pool));
        Ok(())
    }

    /// Figure 2: the process's memory before and after `tenants` tenants with one pool each.
    async fn memory(&self, ns: String, tenants: usize) -> Result<()> {
        // The controller's watches list (nothing yet) and settle first.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = Memory::now()?;
        self.stand_in_tenants(&ns, tenants).await?;
        let mut machines = Machines::watch(&self.client, &ns);
        machines.listed().await?;
        let reconciles = self.snapshot();
        let start = Instant::now();
        for i in 0..tenants {
            create_pool(&self.client, &ns, i, 1).await?;
        }
        let times = machines
            .until(tenants, start, Duration::from_secs(300))
            .await?;
        let done = self.snapshot();
        tokio::time::sleep(SETTLE).await;
        let after = Memory::now()?;
        let settled = self.snapshot();
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!(
            "\n{tenants} tenants × 1 pool (replicas 1), pools created one after another: {}",
            times.describe()
        );
        println!(
            "  memory of this process (the NodePool controller, the tenants' reflector and the \
             benchmark's own watches), {} s after the last machine appeared:",
            SETTLE.as_secs()
        );
        println!(
            "  RSS (VmRSS) {:.1} MiB before the tenants → {:.1} MiB after: +{:.1} MiB \
             ({:.0} KiB per tenant and pool); peak (VmHWM) {:.1} MiB",
            mib(before.rss_kib),
            mib(after.rss_kib),
            mib(after.rss_kib.saturating_sub(before.rss_kib)),
            after.rss_kib.saturating_sub(before.rss_kib) as f64 / tenants as f64,
            mib(after.hwm_kib),
        );
        println!(
            "  NodePool reconciles: {} until all exist, {} by the memory reading; failed: {}",
            done.reconciles - reconciles.reconciles,
            settled.reconciles - reconciles.reconciles,
            settled.errors_since(&reconciles),
        );
        Ok(())
    }

    /// Tenants `t0`… in `ns` as the NodePool controller needs them: each a TenantControlPlane
    /// whose status names the ground's apiserver, and an admin kubeconfig Secret; waits until the
    /// controller's store has them all.
    async fn stand_in_tenants(&self, ns: &str, n: usize) -> Result<()> {
        let kubeconfig = std::fs::read_to_string(self.ground.kubeconfig())?;
        let api_url = self.ground.var("ORRERY_GROUND_API");
        let endpoint = api_url.trim_start_matches("https://");
        for i in 0..n {
            stand_in_tenant(
                &self.client,
                ns,
                &format!("t{i}"),
                &kubeconfig,
                endpoint,
                &json!({}),
            )
            .await?;
        }
        let store = self.ctx.stores.tenants.clone();
        eventually(
            "the stand-in tenants in the store",
            Duration::from_secs(60),
            || {
                let store = store.clone();
                async move {
                    (0..n)
                        .all(|i| {
                            store
                                .get(&ObjectRef::new(&format!("t{i}")).within(ns))
                                .is_some_and(|t| t.status.is_some())
                        })
                        .then_some(())
                }
            },
        )
        .await
    }

    /// Deletes the pools of `ns` and waits until their finalizer has run, then the namespace.
    async fn clean_up(&self, ns: &str) -> Result<()> {
        let before = self.snapshot();
        let start = Instant::now();
        let pools = Api::<NodePool>::namespaced(self.client.clone(), ns);
        pools
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        eventually(
            "the pools gone (their finalizer ran)",
            Duration::from_secs(300),
            || async {
                pools
                    .list_metadata(&ListParams::default())
                    .await
                    .ok()?
                    .items
                    .is_empty()
                    .then_some(())
            },
        )
        .await?;
        let gone = start.elapsed();
        let tokens = Api::<Secret>::namespaced(self.client.clone(), "kube-system")
            .list_metadata(&ListParams::default().labels(&format!("{POOL_NAMESPACE_LABEL}={ns}")))
            .await?;
        if !tokens.items.is_empty() {
            println!(
                "  ! {} bootstrap tokens of {ns} left in kube-system after the pools went",
                tokens.items.len()
            );
        }
        orrery_e2e::delete_namespace(&self.client, ns).await?;
        let namespaces = Api::<Namespace>::all(self.client.clone());
        eventually("the namespace gone", Duration::from_secs(300), || async {
            namespaces.get_opt(ns).await.ok()?.is_none().then_some(())
        })
        .await?;
        let after = self.snapshot();
        println!(
            "  clean-up: the pools gone {:.2} s after their deletion; NodePool reconciles until \
             the namespace was gone: {}, failed: {}",
            gone.as_secs_f64(),
            after.reconciles - before.reconciles,
            after.errors_since(&before),
        );
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        let errors = metrics::encode(&self.registry)
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(
                    "orrery_reconcile_errors_total{controller=\"nodepool\",error=\"",
                )?;
                let (category, count) = rest.split_once("\"} ")?;
                Some((category.to_string(), count.trim().parse().ok()?))
            })
            .collect();
        let requests = self
            .metrics
            .kube_requests()
            .into_iter()
            .map(|(r, n)| ((r.verb.to_string(), r.resource), n))
            .fold(BTreeMap::new(), |mut m, (k, n)| {
                *m.entry(k).or_insert(0) += n;
                m
            });
        Snapshot {
            reconciles: self.metrics.reconciles("nodepool"),
            errors,
            requests,
        }
    }
}

/// The NodePool controller as `orrery controller` runs it, its tenants store fed by a reflector
/// of its own (the TenantControlPlane controller, which feeds it there, would rewrite the
/// stand-in statuses).
async fn run_controller(ctx: Arc<Context>, shutdown: CancellationToken) {
    tokio::select! {
        () = feed_tenants(ctx.clone()) => {}
        () = orrery::nodepool::run(ctx, shutdown) => {}
    }
}

/// A pool's replica counts and Ready condition, in one line.
fn describe_status(pool: &NodePool) -> String {
    let Some(st) = &pool.status else {
        return "none".into();
    };
    let ready = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map_or_else(
            || "no Ready condition".to_string(),
            |c| format!("Ready={} {}: {}", c.status, c.reason, c.message),
        );
    format!(
        "replicas {}, ready {}, machines listed {}; {ready}",
        st.replicas,
        st.ready_replicas,
        st.machines.len()
    )
}

/// Creates the NodePool `p<i>` of tenant `t<i>` in `ns`.
async fn create_pool(client: &Client, ns: &str, i: usize, replicas: usize) -> Result<()> {
    let pool: NodePool = serde_json::from_value(json!({
        "apiVersion": "orrery.dev/v1alpha1", "kind": "NodePool",
        "metadata": {"name": format!("p{i}"), "namespace": ns},
        "spec": {"controlPlaneRef": {"name": format!("t{i}")}, "replicas": replicas}
    }))?;
    Api::<NodePool>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pool)
        .await?;
    Ok(())
}

/// The counters of the controller at one moment.
struct Snapshot {
    reconciles: u64,
    /// Failed reconciles by error category.
    errors: BTreeMap<String, u64>,
    /// Requests of the controller's management-cluster client by verb and resource.
    requests: BTreeMap<(String, String), u64>,
}

impl Snapshot {
    fn errors_since(&self, before: &Snapshot) -> String {
        let failed: Vec<String> = self
            .errors
            .iter()
            .filter_map(|(category, n)| {
                let d = n - before.errors.get(category).copied().unwrap_or(0);
                (d > 0).then(|| format!("{d} {category}"))
            })
            .collect();
        if failed.is_empty() {
            "none".into()
        } else {
            failed.join(", ")
        }
    }

    /// The requests since `before`: the total, then each verb and resource.
    fn requests_since(&self, before: &Snapshot) -> String {
        let deltas: Vec<(String, u64)> = self
            .requests
            .iter()
            .filter_map(|((verb, resource), n)| {
                let key = (verb.clone(), resource.clone());
                let d = n - before.requests.get(&key).copied().unwrap_or(0);
                (d > 0).then(|| (format!("{verb} {resource}"), d))
            })
            .collect();
        let total: u64 = deltas.iter().map(|(_, d)| d).sum();
        let each: Vec<String> = deltas.iter().map(|(k, d)| format!("{k} {d}")).collect();
        format!("{total} ({})", each.join(", "))
    }
}

/// The three objects every machine has, in the order [`Machines`] counts them.
const PARTS: [&str; 3] = ["VirtualMachines", "user-data Secrets", "bootstrap tokens"];

/// What a watch saw.
enum Seen {
    /// A new list starts (after a lost watch): what was present is listed again.
    Relist,
    Listed,
    Present(String),
    Gone(String),
}

/// The names of the objects of kind `K` matching `labels`, as a metadata watch sees them.
fn seen<K>(api: Api<PartialObjectMeta<K>>, labels: &str) -> BoxStream<'static, Result<Seen>>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher(api, watcher::Config::default().labels(labels))
        .default_backoff()
        .map_ok(|event| match event {
            watcher::Event::Init => Seen::Relist,
            watcher::Event::InitDone => Seen::Listed,
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) => Seen::Present(o.name_any()),
            watcher::Event::Delete(o) => Seen::Gone(o.name_any()),
        })
        .map_err(anyhow::Error::from)
        .boxed()
}

/// The machines' objects of one namespace, counted as watches see them come and go: VMs and
/// user-data Secrets in the namespace, bootstrap tokens in kube-system (the stand-in tenant's).
struct Machines {
    events: SelectAll<BoxStream<'static, (usize, Result<Seen>)>>,
    present: [HashSet<String>; 3],
    listed: usize,
}

/// When each of [`PARTS`] reached the count waited for.
struct Times([Duration; 3]);

impl Times {
    fn describe(&self) -> String {
        let each: Vec<String> = PARTS
            .iter()
            .zip(self.0)
            .map(|(part, t)| format!("{part} {:.2} s", t.as_secs_f64()))
            .collect();
        let all = self.0.iter().max().copied().unwrap_or_default();
        format!(
            "all exist after {:.2} s ({})",
            all.as_secs_f64(),
            each.join(", ")
        )
    }
}

impl Machines {
    fn watch(client: &Client, ns: &str) -> Self {
        let streams = [
            seen(
                Api::<PartialObjectMeta<VirtualMachine>>::namespaced(client.clone(), ns),
                POOL_LABEL,
            ),
            seen(
                Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), ns),
                POOL_LABEL,
            ),
            seen(
                Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), "kube-system"),
                &format!("{POOL_LABEL},{POOL_NAMESPACE_LABEL}={ns}"),
            ),
        ];
        let events = futures::stream::select_all(
            streams
                .into_iter()
                .enumerate()
                .map(|(i, s)| s.map(move |e| (i, e)).boxed()),
        );
        Self {
            events,
            present: Default::default(),
            listed: 0,
        }
    }

    /// Takes the next event into account.
    async fn next(&mut self) -> Result<()> {
        let (part, seen) = self.events.next().await.context("the watches ended")?;
        match seen? {
            Seen::Relist => self.present[part].clear(),
            Seen::Listed => self.listed += 1,
            Seen::Present(name) => {
                self.present[part].insert(name);
            }
            Seen::Gone(name) => {
                self.present[part].remove(&name);
            }
        }
        Ok(())
    }

    /// Waits until every watch has listed, so that nothing created from now on is missed.
    async fn listed(&mut self) -> Result<()> {
        while self.listed < PARTS.len() {
            self.next().await?;
        }
        Ok(())
    }

    /// Waits until `n` of each part exist, and says when each got there, from `start`.
    async fn until(&mut self, n: usize, start: Instant, timeout: Duration) -> Result<Times> {
        let mut reached: [Option<Duration>; 3] = [None; 3];
        let deadline = tokio::time::Instant::from_std(start + timeout);
        while reached.iter().any(Option::is_none) {
            let Ok(next) = tokio::time::timeout_at(deadline, self.next()).await else {
                let counts: Vec<String> = PARTS
                    .iter()
                    .zip(&self.present)
                    .map(|(p, s)| format!("{} {p}", s.len()))
                    .collect();
                bail!("after {timeout:?} only {} of {n} exist", counts.join(", "));
            };
            next?;
            for (part, at) in reached.iter_mut().enumerate() {
                if at.is_none() && self.present[part].len() >= n {
                    *at = Some(start.elapsed());
                }
            }
        }
        Ok(Times(reached.map(Option::unwrap_or_default)))
    }
}
