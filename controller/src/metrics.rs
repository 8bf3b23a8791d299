//! Prometheus metrics of the controllers, served by `orrery controller` on `/metrics`.
//!
//! | metric | labels | meaning |
//! | --- | --- | --- |
//! | `orrery_reconcile_total` | `controller` | reconciliations started |
//! | `orrery_reconcile_errors_total` | `controller`, `error` | reconciliations that failed, by error category (e.g. [`crate::Error::category`]) |
//! | `orrery_reconcile_duration_seconds` | `controller` | how long reconciliations took, failed ones included |
//! | `orrery_kube_requests_total` | `verb`, `resource`, `code` | requests of the operator's kube client (see [`crate::runtime::client`]): `verb` as the apiserver names it (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`), `resource` the plural with any subresource (`tenantcontrolplanes/status`), `code` the HTTP status or `error` when no response came |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Upper bounds of the duration histogram: 1 ms, 2 ms, 4 ms, … 65.5 s (17 buckets), which covers
/// a no-op reconciliation as well as one that waits on a slow apiserver or etcd.
fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 17)
}

fn new_duration_histogram() -> Histogram {
    Histogram::new(duration_buckets())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: &'static str,
    error: &'static str,
}

/// The labels of one series of `orrery_kube_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct KubeRequest {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete` or `deletecollection`; the
    /// lowercase HTTP method for paths that name no resource (`/version`).
    pub verb: &'static str,
    /// The plural resource with any subresource (`secrets`, `tenantcontrolplanes/status`), or the
    /// path when it names no resource.
    pub resource: String,
    /// The HTTP status code, or `error` when no response came (transport error, timeout).
    pub code: String,
}

/// The controllers' metrics. [`Metrics::new`] registers them in a registry; [`Default`] makes an
/// unregistered set (for tests, or a process that exports nothing).
#[derive(Clone, Debug)]
pub struct Metrics {
    reconciles: Family<ControllerLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    durations: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    kube_requests: Family<KubeRequest, Counter>,
    /// Every label set `kube_requests` has, since a family cannot list its series.
    kube_request_series: Arc<Mutex<BTreeSet<KubeRequest>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            errors: Family::default(),
            durations: Family::new_with_constructor(new_duration_histogram),
            kube_requests: Family::default(),
            kube_request_series: Arc::default(),
        }
    }
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        // A counter's name gets its `_total` suffix from the encoder.
        registry.register(
            "orrery_reconcile",
            "Reconciliations started, by controller",
            metrics.reconciles.clone(),
        );
        registry.register(
            "orrery_reconcile_errors",
            "Reconciliations that failed, by controller and kind of error",
            metrics.errors.clone(),
        );
        registry.register_with_unit(
            "orrery_reconcile_duration",
            "Duration of reconciliations, by controller",
            Unit::Seconds,
            metrics.durations.clone(),
        );
        registry.register(
            "orrery_kube_requests",
            "Requests of the operator's Kubernetes client, by verb, resource and status code",
            metrics.kube_requests.clone(),
        );
        metrics
    }

    /// Counts a reconciliation of `controller` and starts timing it: the duration is recorded
    /// when the returned value is dropped, so keep it alive for the whole reconciliation.
    #[must_use = "the duration is recorded when the measurer is dropped"]
    pub fn reconcile_started(&self, controller: &'static str) -> ReconcileMeasurer {
        self.reconciles
            .get_or_create(&ControllerLabels { controller })
            .inc();
        ReconcileMeasurer {
            durations: self.durations.clone(),
            controller,
            start: Instant::now(),
        }
    }

    /// Counts a failed reconciliation of `controller`, labelled with the failure's category.
    pub fn reconcile_failed(&self, controller: &'static str, category: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller,
                error: category,
            })
            .inc();
    }

    /// How many reconciliations of `controller` were started.
    pub fn reconciles(&self, controller: &'static str) -> u64 {
        self.reconciles
            .get(&ControllerLabels { controller })
            .map_or(0, |c| c.get())
    }

    /// How many reconciliations of `controller` failed with an error of category `category`.
    pub fn reconcile_errors(&self, controller: &'static str, category: &'static str) -> u64 {
        self.errors
            .get(&ErrorLabels {
                controller,
                error: category,
            })
            .map_or(0, |c| c.get())
    }

    /// Counts one request of the kube client.
    pub fn kube_request(&self, request: KubeRequest) {
        self.kube_requests.get_or_create(&request).inc();
        self.kube_request_series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(request);
    }

    /// Every series of `orrery_kube_requests_total` with its count, sorted by verb, resource and
    /// code (for tests and benchmarks that count API calls).
    pub fn kube_requests(&self) -> Vec<(KubeRequest, u64)> {
        let series = self
            .kube_request_series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        series
            .into_iter()
            .map(|labels| {
                let count = self.kube_requests.get(&labels).map_or(0, |c| c.get());
                (labels, count)
            })
            .collect()
    }
}

/// Times one reconciliation; records its duration in `orrery_reconcile_duration_seconds` when
/// dropped.
#[derive(Debug)]
pub struct ReconcileMeasurer {
    durations: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    controller: &'static str,
    start: Instant,
}

impl Drop for ReconcileMeasurer {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed().as_secs_f64();
        self.durations
            .get_or_create(&ControllerLabels {
                controller: self.controller,
            })
            .observe(elapsed);
    }
}

/// Encodes `registry` in the OpenMetrics text format (what `/metrics` serves).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    fn registered() -> (Registry, Metrics) {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        (registry, metrics)
    }

    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn counts_reconciles_per_controller() {
        let (registry, metrics) = registered();
        for _ in 0..3 {
            let _m = metrics.reconcile_started("tenantcontrolplane");
        }
        drop(metrics.reconcile_started("datastore"));

        assert_eq!(metrics.reconciles("tenantcontrolplane"), 3);
        assert_eq!(metrics.reconciles("datastore"), 1);
        assert_eq!(metrics.reconciles("other"), 0);

        let text = encode(&registry);
        assert!(has_line(&text, "# TYPE orrery_reconcile counter"), "{text}");
        assert!(
            has_line(
                &text,
                r#"orrery_reconcile_total{controller="tenantcontrolplane"} 3"#
            ),
            "{text}"
        );
        assert!(
            has_line(&text, r#"orrery_reconcile_total{controller="datastore"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn counts_errors_by_kind() {
        let (registry, metrics) = registered();
        let invalid = crate::Error::Invalid {
            field: "spec.version".into(),
            reason: "bad".into(),
        };
        let missing = crate::Error::NotFound {
            what: "Secret",
            name: "ca".into(),
        };
        metrics.reconcile_failed("tenantcontrolplane", invalid.category());
        metrics.reconcile_failed("tenantcontrolplane", invalid.category());
        metrics.reconcile_failed("datastore", missing.category());

        assert_eq!(
            metrics.reconcile_errors("tenantcontrolplane", "InvalidSpec"),
            2
        );
        assert_eq!(metrics.reconcile_errors("datastore", "NotFound"), 1);
        assert_eq!(metrics.reconcile_errors("datastore", "InvalidSpec"), 0);

        let text = encode(&registry);
        assert!(
            has_line(&text, "# TYPE orrery_reconcile_errors counter"),
            "{text}"
        );
        assert!(
            has_line(
                &text,
                r#"orrery_reconcile_errors_total{controller="tenantcontrolplane",error="InvalidSpec"} 2"#
            ),
            "{text}"
        );
        assert!(
            has_line(
                &text,
                r#"orrery_reconcile_errors_total{controller="datastore",error="NotFound"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn records_duration_when_the_measurer_is_dropped() {
        let (registry, metrics) = registered();
        let measurer = metrics.reconcile_started("datastore");
        let text = encode(&registry);
        assert!(
            !text.contains("orrery_reconcile_duration_seconds_count{"),
            "recorded before the drop:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
        drop(measurer);

        let text = encode(&registry);
        assert!(
            has_line(&text, "# TYPE orrery_reconcile_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            has_line(&text, "# UNIT orrery_reconcile_duration_seconds seconds"),
            "{text}"
        );
        assert!(
            has_line(
                &text,
                r#"orrery_reconcile_duration_seconds_count{controller="datastore"} 1"#
            ),
            "{text}"
        );
        // 5 ms or more: not in the 1, 2 and 4 ms buckets; in the last finite one and in +Inf.
        // (No upper bound on a busy machine's sleep: the 64 ms bucket is not asserted.)
        let bucket = |le: &str| {
            format!(
                r#"orrery_reconcile_duration_seconds_bucket{{le="{le}",controller="datastore"}}"#
            )
        };
        for (le, count) in [("0.001", 0), ("0.004", 0), ("65.536", 1), ("+Inf", 1)] {
            let line = format!("{} {count}", bucket(le));
            assert!(has_line(&text, &line), "missing {line:?} in\n{text}");
        }
        let sum_line = text
            .lines()
            .find(|l| l.starts_with("orrery_reconcile_duration_seconds_sum{"))
            .expect("a _sum line");
        let sum: f64 = sum_line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((0.005..60.0).contains(&sum), "{sum_line}");
    }

    #[test]
    fn buckets_span_a_millisecond_to_a_minute() {
        let buckets: Vec<f64> = duration_buckets().collect();
        assert_eq!(buckets.first(), Some(&0.001));
        assert!(*buckets.last().unwrap() >= 60.0, "{buckets:?}");
        assert!(buckets.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn counts_kube_requests_by_verb_resource_and_code() {
        let (registry, metrics) = registered();
        let request = |verb, resource: &str, code: &str| KubeRequest {
            verb,
            resource: resource.into(),
            code: code.into(),
        };
        assert_eq!(metrics.kube_requests(), vec![]);
        metrics.kube_request(request("patch", "tenantcontrolplanes/status", "200"));
        metrics.kube_request(request("watch", "deployments", "error"));
        metrics.kube_request(request("patch", "tenantcontrolplanes/status", "200"));
        metrics.kube_request(request("get", "secrets", "404"));

        assert_eq!(
            metrics.kube_requests(),
            vec![
                (request("get", "secrets", "404"), 1),
                (request("patch", "tenantcontrolplanes/status", "200"), 2),
                (request("watch", "deployments", "error"), 1),
            ]
        );
        let text = encode(&registry);
        assert!(
            has_line(&text, "# TYPE orrery_kube_requests counter"),
            "{text}"
        );
        for line in [
            r#"orrery_kube_requests_total{verb="patch",resource="tenantcontrolplanes/status",code="200"} 2"#,
            r#"orrery_kube_requests_total{verb="get",resource="secrets",code="404"} 1"#,
            r#"orrery_kube_requests_total{verb="watch",resource="deployments",code="error"} 1"#,
        ] {
            assert!(has_line(&text, line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn default_metrics_work_unregistered() {
        let metrics = Metrics::default();
        drop(metrics.reconcile_started("x"));
        assert_eq!(metrics.reconciles("x"), 1);
    }
}
