//! The tree of a tenant from fixtures of what `fetch` reads: which rows, in which order, with
//! which readiness.

use super::fetch::{Access, Fetched, InTenant, Inside};
use super::render::{self, Described};
use super::row::{Ready, Severity, Tree};
use super::tree::{Options, tree};
use crate::api::NodePool;
use crate::pki::{self, CertProfile};
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

fn ready_conditions() -> Vec<Value> {
    vec![
        cond("CertificatesReady", "True", "Issued", "certificates valid"),
        cond(
            "DataStoreReady",
            "True",
            "TenantProvisioned",
            "etcd user t:demo limited to its prefix",
        ),
        cond(
            "ControlPlaneAvailable",
            "True",
            "Available",
            "2/2 control-plane replicas available",
        ),
        cond(
            "TenantAPIReady",
            "True",
            "Answering",
            "the tenant apiserver answers /readyz at 10.96.0.7:6443",
        ),
        cond(
            "TenantBootstrapped",
            "True",
            "Applied",
            "31 bootstrap and add-on objects in place",
        ),
        cond(
            "Degraded",
            "False",
            "NoErrors",
            "the last reconcile had no errors",
        ),
        cond(
            "Ready",
            "True",
            "Ready",
            "the tenant control plane is available",
        ),
    ]
}

fn tenant(status: Value) -> crate::api::TenantControlPlane {
    let mut tcp = json!({
        "apiVersion": "orrery.dev/v1alpha1", "kind": "TenantControlPlane",
        "metadata": {"name": "demo", "namespace": "t", "generation": 1},
        "spec": {"version": "v1.34.4", "replicas": 2, "dataStore": "shared"},
    });
    if !status.is_null() {
        tcp["status"] = status;
    }
    from(tcp)
}

fn ready_status() -> Value {
    json!({
        "observedGeneration": 1, "phase": "Ready", "version": "v1.34.4",
        "endpoint": "10.96.0.7:6443", "dataStore": "shared",
        "kubeconfigSecretRef": {"name": "demo-admin-kubeconfig", "key": "kubeconfig"},
        "conditions": ready_conditions(),
    })
}

fn pod(name: &str, ready: bool) -> k8s_openapi::api::core::v1::Pod {
    from(json!({
        "metadata": {"name": name, "namespace": "t"},
        "status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" },
             "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ]}
    }))
}

fn certs_secret() -> Secret {
    let ca = pki::generate_ca("demo-ca", Duration::from_secs(3650 * 86400)).unwrap();
    let leaf = |cn: &str| {
        let profile = CertProfile::client(cn, &[], Duration::from_secs(365 * 86400));
        pki::issue(&ca, &profile, SystemTime::now()).unwrap().cert
    };
    let data = [
        ("ca.crt", ca.cert.clone()),
        ("front-proxy-ca.crt", ca.cert.clone()),
        ("datastore-ca.crt", ca.cert.clone()),
        ("admin.crt", leaf("kubernetes-admin")),
        ("apiserver.crt", leaf("kube-apiserver")),
        ("admin.key", "not a certificate".into()),
    ];
    Secret {
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}

fn inside_with_addons() -> InTenant {
    let labelled = |name: &str| json!({"name": name, "namespace": "kube-system", "labels": {"orrery.dev/addon": name}});
    InTenant {
        deployments: vec![from(json!({
            "metadata": labelled("coredns"),
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"readyReplicas": 0, "conditions": [
                {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))],
        daemon_sets: ["kube-proxy", "konnectivity-agent"]
            .iter()
            .map(|n| {
                from(json!({
                    "metadata": labelled(n),
                    "spec": {"selector": {}, "template": {}},
                    "status": {"currentNumberScheduled": 0, "desiredNumberScheduled": 0,
                               "numberMisscheduled": 0, "numberReady": 0}
                }))
            })
            .collect(),
        nodes: Vec::new(),
    }
}

fn ready_tenant() -> Fetched {
    Fetched {
        tcp: tenant(ready_status()),
        datastore: Access::Read(None),
        deployment: Access::Read(Some(from(json!({
            "metadata": {"name": "demo", "namespace": "t"},
            "spec": {"selector": {}, "template": {}},
            "status": {"replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}
        })))),
        service: Access::Read(Some(from(json!({
            "metadata": {"name": "demo", "namespace": "t"}, "spec": {"type": "ClusterIP"}
        })))),
        pods: Access::Read(vec![pod("demo-a", true), pod("demo-b", true)]),
        certificates: Access::Read(Some(certs_secret())),
        pools: Access::Read(Vec::new()),
        inside: Inside::Read(inside_with_addons()),
    }
}

/// (depth, name, READY, REASON) of every row, depth first.
fn flat(tree: &Tree) -> Vec<(usize, String, Option<Ready>, String)> {
    fn walk(t: &Tree, depth: usize, out: &mut Vec<(usize, String, Option<Ready>, String)>) {
        out.push((depth, t.row.name.clone(), t.row.ready, t.row.reason.clone()));
        t.children.iter().for_each(|c| walk(c, depth + 1, out));
    }
    let mut out = Vec::new();
    walk(tree, 0, &mut out);
    out
}

fn names(tree: &Tree) -> Vec<(usize, String)> {
    flat(tree).into_iter().map(|(d, n, _, _)| (d, n)).collect()
}

fn find<'a>(tree: &'a Tree, name: &str) -> &'a Tree {
    fn search<'a>(t: &'a Tree, name: &str) -> Option<&'a Tree> {
        if t.row.name == name {
            return Some(t);
        }
        t.children.iter().find_map(|c| search(c, name))
    }
    search(tree, name).unwrap_or_else(|| panic!("no row {name} in {:#?}", names(tree)))
}

fn owned(rows: &[(usize, &str)]) -> Vec<(usize, String)> {
    rows.iter().map(|(d, n)| (*d, n.to_string())).collect()
}

#[test]
fn a_ready_tenant_reads_top_to_bottom() {
    let t = tree(&ready_tenant(), Options::default(), Timestamp::now());
    assert_eq!(
        names(&t),
        owned(&[
            (0, "TenantControlPlane/demo"),
            (1, "DataStore/shared"),
            (1, "Endpoint - Service/demo"),
            (1, "ControlPlane - Deployment/demo"),
            (2, "2 Pods..."),
            (1, "Certificates - Secret/demo-certs"),
            (2, "3 CAs..."),
            (2, "2 Certificates..."),
            (1, "Addons"),
            (2, "CoreDNS - Deployment/coredns"),
            (2, "kube-proxy - DaemonSet/kube-proxy"),
            (2, "konnectivity-agent - DaemonSet/konnectivity-agent"),
            (1, "Nodes"),
        ])
    );
    assert_eq!(t.row.ready, Some(Ready::True));
    assert_eq!(
        t.row.message,
        "Ready, v1.34.4: the tenant control plane is available"
    );
    assert_eq!(find(&t, "2 Pods...").row.message, "See demo-a, demo-b");
    let leaves = &find(&t, "2 Certificates...").row;
    assert!(leaves.message.starts_with("expires "), "{}", leaves.message);
    assert!(
        leaves.message.ends_with(": admin, apiserver"),
        "{}",
        leaves.message
    );
    // No nodes: CoreDNS cannot run, which is expected, not a fault.
    let coredns = &find(&t, "CoreDNS - Deployment/coredns").row;
    assert_eq!(
        (coredns.ready, coredns.severity, coredns.reason.as_str()),
        (Some(Ready::False), Some(Severity::Info), "NoNodes")
    );
    assert_eq!(
        coredns.message,
        "0/2 replicas ready: the tenant has no nodes yet"
    );
    let proxy = &find(&t, "kube-proxy - DaemonSet/kube-proxy").row;
    assert_eq!(proxy.ready, Some(Ready::True));
    assert_eq!(find(&t, "Nodes").row.message, "no node has joined yet");
}

#[test]
fn expand_shows_each_pod_and_certificate() {
    let t = tree(&ready_tenant(), Options { expand: true }, Timestamp::now());
    let rows = names(&t);
    for name in [
        "Pod/demo-a",
        "Pod/demo-b",
        "CA/ca",
        "CA/front-proxy-ca",
        "CA/datastore-ca",
        "Certificate/admin",
        "Certificate/apiserver",
    ] {
        assert!(rows.contains(&(2, name.to_string())), "{name} in {rows:?}");
    }
}

#[test]
fn a_tenant_orrery_has_not_seen_yet() {
    let f = Fetched {
        tcp: tenant(Value::Null),
        datastore: Access::Read(None),
        deployment: Access::Read(None),
        service: Access::Read(None),
        pods: Access::Read(Vec::new()),
        certificates: Access::Read(None),
        pools: Access::Read(Vec::new()),
        inside: Inside::Skipped("the tenant has no kubeconfig yet".into()),
    };
    let t = tree(&f, Options::default(), Timestamp::now());
    assert_eq!(
        names(&t),
        owned(&[
            (0, "TenantControlPlane/demo"),
            (1, "DataStore/shared"),
            (1, "Endpoint - Service/demo"),
            (1, "ControlPlane - Deployment/demo"),
            (1, "Certificates - Secret/demo-certs"),
            (1, "Addons"),
            (2, "CoreDNS - Deployment/coredns"),
            (2, "kube-proxy - DaemonSet/kube-proxy"),
            (2, "konnectivity-agent - DaemonSet/konnectivity-agent"),
        ])
    );
    assert_eq!(t.row.ready, None);
    assert_eq!(
        t.row.message,
        "v1.34.4: Orrery has not reported on it yet; is the operator running?"
    );
    assert_eq!(
        find(&t, "Endpoint - Service/demo").row.message,
        "not created yet"
    );
    let addons = &find(&t, "Addons").row;
    assert_eq!(
        (addons.severity, addons.message.as_str()),
        (
            Some(Severity::Info),
            "not read from the tenant: the tenant has no kubeconfig yet"
        )
    );
    assert_eq!(
        find(&t, "CoreDNS - Deployment/coredns").row.message,
        "enabled"
    );
}

#[test]
fn refused_reads_say_what_to_ask_for() {
    let f = Fetched {
        pods: Access::Forbidden,
        certificates: Access::Forbidden,
        inside: Inside::Unreachable("no permission to get Secret demo-admin-kubeconfig".into()),
        ..ready_tenant()
    };
    let t = tree(&f, Options::default(), Timestamp::now());
    let certs = find(&t, "Certificates - Secret/demo-certs");
    assert_eq!(
        certs.row.ready,
        Some(Ready::True),
        "the condition still shows"
    );
    assert_eq!(
        certs.children[0].row.message,
        "no permission to get secrets in namespace t: ask for get on secrets there"
    );
    let pods = find(&t, "ControlPlane - Deployment/demo");
    assert_eq!(
        pods.children[0].row.message,
        "no permission to list pods in namespace t: ask for list on pods there"
    );
    assert!(
        names(&t).iter().all(|(_, n)| n != "Nodes"),
        "no nodes row without the tenant"
    );
}

#[test]
fn a_failing_upgrade_shows_where_it_stands() {
    let mut status = ready_status();
    status["phase"] = json!("Upgrading");
    status["version"] = json!("v1.33.2");
    status["conditions"] = json!([
        cond("Degraded", "True", "KubeApi", "reconcile failed: boom"),
        cond(
            "Ready",
            "False",
            "ReconcileFailed",
            "reconcile failed: boom"
        ),
        cond(
            "ControlPlaneAvailable",
            "True",
            "Available",
            "2/2 control-plane replicas available"
        ),
    ]);
    let mut crashing = pod("demo-c", false);
    crashing.status.as_mut().unwrap().container_statuses = Some(vec![from(json!({
        "name": "kube-apiserver", "image": "i", "imageID": "", "ready": false, "restartCount": 4,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}}
    }))]);
    let f = Fetched {
        tcp: tenant(status),
        deployment: Access::Read(Some(from(json!({
            "metadata": {"name": "demo", "namespace": "t"},
            "spec": {"selector": {}, "template": {}},
            "status": {"replicas": 3, "updatedReplicas": 1, "availableReplicas": 2}
        })))),
        pods: Access::Read(vec![pod("demo-a", true), pod("demo-b", true), crashing]),
        ..ready_tenant()
    };
    let t = tree(&f, Options::default(), Timestamp::now());
    assert_eq!(
        (t.row.ready, t.row.severity, t.row.reason.as_str()),
        (Some(Ready::False), Some(Severity::Error), "ReconcileFailed")
    );
    assert_eq!(
        t.row.message,
        "Upgrading, v1.33.2 → v1.34.4: reconcile failed: boom"
    );
    let cp = find(&t, "ControlPlane - Deployment/demo");
    assert_eq!(
        cp.row.message,
        "2/2 control-plane replicas available; rolling out: 1/2 updated"
    );
    let rows: Vec<_> = flat(cp).into_iter().skip(1).collect();
    assert_eq!(
        rows,
        vec![
            (1, "2 Pods...".to_string(), Some(Ready::True), String::new()),
            (
                1,
                "Pod/demo-c".to_string(),
                Some(Ready::False),
                "CrashLoopBackOff".to_string()
            ),
        ]
    );
    assert_eq!(
        find(&t, "Pod/demo-c").row.message,
        "kube-apiserver: back-off 40s; restarted 4 times"
    );
}

#[test]
fn addons_switched_off_or_missing() {
    let mut f = ready_tenant();
    f.tcp.spec.addons.core_dns.enabled = false;
    if let Inside::Read(inside) = &mut f.inside {
        inside
            .daemon_sets
            .retain(|d| d.metadata.name.as_deref() != Some("kube-proxy"));
        inside.nodes = vec![from(json!({
            "metadata": {"name": "w1"},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))];
    }
    let t = tree(&f, Options::default(), Timestamp::now());
    let coredns = &find(&t, "CoreDNS - Deployment/coredns").row;
    assert_eq!((coredns.ready, coredns.reason.as_str()), (None, "Disabled"));
    assert_eq!(
        coredns.message,
        "switched off: spec.addons.coreDNS.enabled is false"
    );
    let proxy = &find(&t, "kube-proxy - DaemonSet/kube-proxy").row;
    assert_eq!(
        (proxy.ready, proxy.reason.as_str()),
        (Some(Ready::False), "NotFound")
    );
    let agent = &find(&t, "konnectivity-agent - DaemonSet/konnectivity-agent").row;
    assert_eq!(agent.message, "0/0 nodes ready");
    let nodes = find(&t, "Nodes");
    assert_eq!(nodes.row.message, "1/1 Ready");
    assert_eq!(nodes.children[0].row.name, "Node/w1");
}

#[test]
fn a_running_pod_not_ready_yet_says_so() {
    let mut starting = pod("demo-d", false);
    let ready = &mut starting
        .status
        .as_mut()
        .unwrap()
        .conditions
        .as_mut()
        .unwrap()[0];
    ready.reason = Some("ContainersNotReady".into());
    ready.message = Some("containers with unready status: [kube-apiserver]".into());
    let f = Fetched {
        pods: Access::Read(vec![starting]),
        ..ready_tenant()
    };
    let t = tree(&f, Options::default(), Timestamp::now());
    let row = &find(&t, "Pod/demo-d").row;
    assert_eq!(
        (row.ready, row.severity, row.reason.as_str()),
        (
            Some(Ready::False),
            Some(Severity::Warning),
            "ContainersNotReady"
        )
    );
    assert_eq!(
        row.message,
        "containers with unready status: [kube-apiserver]"
    );
}

fn machine(name: &str, phase: &str, joined: bool, message: Option<&str>) -> Value {
    let mut m = json!({"name": name, "phase": phase, "version": "v1.34.4", "templateHash": "h1",
                       "since": "2026-01-01T00:00:00Z"});
    if joined {
        m["node"] = json!(name);
    }
    if let Some(message) = message {
        m["message"] = json!(message);
    }
    m
}

fn node_pool(name: &str, tenant: &str, status: Value) -> NodePool {
    let mut pool = json!({
        "apiVersion": "orrery.dev/v1alpha1", "kind": "NodePool",
        "metadata": {"name": name, "namespace": "t", "generation": 2},
        "spec": {"controlPlaneRef": {"name": tenant}, "replicas": 4},
    });
    if !status.is_null() {
        pool["status"] = status;
    }
    from(pool)
}

/// Four machines: two Ready, one Joining, one NotReady.
fn workers() -> NodePool {
    node_pool(
        "workers",
        "demo",
        json!({
            "observedGeneration": 2, "replicas": 4, "readyReplicas": 2, "updatedReplicas": 4,
            "availableReplicas": 2, "version": "v1.34.4",
            "machines": [
                machine("workers-a", "Ready", true, None),
                machine("workers-b", "Joining", false,
                        Some("the VM runs; its node has not joined yet")),
                machine("workers-c", "NotReady", true, Some("the node is not Ready")),
                machine("workers-d", "Ready", true, None),
            ],
            "conditions": [
                cond("Ready", "False", "NodesNotReady", "2/4 nodes Ready and up to date"),
                cond("Progressing", "True", "Joining",
                     "4 machines, 4 up to date, 0 being removed; 4 wanted"),
                cond("Degraded", "True", "NodesNotReady", "NotReady: workers-c"),
            ],
        }),
    )
}

fn with_pools(pools: Vec<NodePool>) -> Fetched {
    Fetched {
        pools: Access::Read(pools),
        ..ready_tenant()
    }
}

#[test]
fn a_pool_shows_its_machines_grouped() {
    // A pool of another tenant in the namespace is not this tenant's.
    let other = node_pool("gpu", "other", Value::Null);
    let t = tree(
        &with_pools(vec![workers(), other]),
        Options::default(),
        Timestamp::now(),
    );
    let parts: Vec<String> = t.children.iter().map(|c| c.row.name.clone()).collect();
    assert_eq!(parts.last().map(String::as_str), Some("NodePool/workers"));
    assert_eq!(
        parts.iter().filter(|n| n.starts_with("NodePool/")).count(),
        1
    );
    assert_eq!(
        parts[parts.len() - 2],
        "Nodes",
        "the tenant's nodes stay as they are"
    );
    let pool = find(&t, "NodePool/workers");
    assert_eq!(
        flat(pool),
        vec![
            (
                0,
                "NodePool/workers".into(),
                Some(Ready::False),
                "NodesNotReady".into()
            ),
            (1, "2 Machines...".into(), Some(Ready::True), String::new()),
            (
                1,
                "Machine/workers-b".into(),
                Some(Ready::Unknown),
                "Joining".into()
            ),
            (
                1,
                "Machine/workers-c → Node/workers-c".into(),
                Some(Ready::False),
                "NotReady".into()
            ),
        ]
    );
    assert_eq!(pool.row.message, "2/4 ready, 4 up to date, v1.34.4");
    assert_eq!(pool.row.severity, Some(Severity::Warning));
    assert_eq!(pool.children[0].row.message, "See workers-a, workers-d");
    let joining = &pool.children[1].row;
    assert_eq!(joining.severity, Some(Severity::Info));
    assert_eq!(joining.message, "the VM runs; its node has not joined yet");
    let sick = &pool.children[2].row;
    assert_eq!(sick.severity, Some(Severity::Warning));
    assert_eq!(sick.message, "the node is not Ready");
    assert_eq!(
        sick.since,
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-01T00:00:00Z".parse().unwrap()
        ))
    );
}

#[test]
fn expand_shows_each_machine() {
    let t = tree(
        &with_pools(vec![workers()]),
        Options { expand: true },
        Timestamp::now(),
    );
    let machines: Vec<String> = find(&t, "NodePool/workers")
        .children
        .iter()
        .map(|c| c.row.name.clone())
        .collect();
    assert_eq!(
        machines,
        [
            "Machine/workers-a → Node/workers-a",
            "Machine/workers-b",
            "Machine/workers-c → Node/workers-c",
            "Machine/workers-d → Node/workers-d",
        ]
    );
}

#[test]
fn a_refused_list_of_pools_says_what_to_ask_for() {
    let f = Fetched {
        pools: Access::Forbidden,
        ..ready_tenant()
    };
    let t = tree(&f, Options::default(), Timestamp::now());
    let row = &t.children.last().unwrap().row;
    assert_eq!(row.name, "NodePools");
    assert_eq!(row.severity, Some(Severity::Info));
    assert_eq!(
        row.message,
        "no permission to list nodepools in namespace t: ask for list on nodepools there"
    );
    // No pools: no part at all.
    let t = tree(&ready_tenant(), Options::default(), Timestamp::now());
    assert!(names(&t).iter().all(|(_, n)| !n.starts_with("NodePool")));
}

#[test]
fn pools_that_are_held_up_say_why() {
    let blocked = node_pool(
        "blocked",
        "demo",
        json!({
            "observedGeneration": 1, "replicas": 0, "readyReplicas": 0, "updatedReplicas": 0,
            "availableReplicas": 0,
            "conditions": [
                cond("Ready", "False", "WaitingForControlPlane", "tenant demo is not Ready"),
                cond("Degraded", "True", "WaitingForControlPlane", "tenant demo is not Ready"),
            ],
        }),
    );
    let failing = node_pool(
        "failing",
        "demo",
        json!({
            "observedGeneration": 2, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2,
            "availableReplicas": 2, "version": "v1.34.4",
            "machines": [
                machine("failing-a", "Provisioning", false, Some("the VM is Starting")),
                machine("failing-b", "Deleting", true, Some("scaled down")),
            ],
            "conditions": [
                cond("Ready", "True", "NodesReady", "2/2 nodes Ready and up to date"),
                cond("Degraded", "True", "KubeApi", "reconcile failed: boom"),
            ],
        }),
    );
    let scaling = node_pool(
        "scaling",
        "demo",
        json!({
            "observedGeneration": 2, "replicas": 2, "readyReplicas": 1, "updatedReplicas": 2,
            "availableReplicas": 1, "version": "v1.34.4",
            "machines": [
                machine("scaling-a", "Ready", true, None),
                machine("scaling-b", "Provisioning", false, Some("the VM is Starting")),
            ],
            "conditions": [
                cond("Ready", "False", "NodesNotReady", "1/4 nodes Ready and up to date"),
                cond("Degraded", "False", "AsExpected", "no node is NotReady"),
            ],
        }),
    );
    let unseen = node_pool("unseen", "demo", Value::Null);
    let t = tree(
        &with_pools(vec![blocked, failing, scaling, unseen]),
        Options::default(),
        Timestamp::now(),
    );
    // (name, READY, SEVERITY, REASON, MESSAGE)
    let cases = [
        (
            "NodePool/blocked",
            Some(Ready::False),
            Some(Severity::Info),
            "WaitingForControlPlane",
            "0/4 ready, 0 up to date: tenant demo is not Ready; Orrery has not taken up the \
             latest change yet",
        ),
        (
            "NodePool/failing",
            Some(Ready::True),
            Some(Severity::Error),
            "",
            "2/4 ready, 2 up to date, v1.34.4; reconcile failed: boom",
        ),
        // Nodes coming up, none NotReady: on the way, not a fault.
        (
            "NodePool/scaling",
            Some(Ready::False),
            Some(Severity::Info),
            "NodesNotReady",
            "1/4 ready, 2 up to date, v1.34.4",
        ),
        (
            "Machine/failing-a",
            Some(Ready::Unknown),
            Some(Severity::Info),
            "Provisioning",
            "the VM is Starting",
        ),
        (
            "Machine/failing-b → Node/failing-b",
            Some(Ready::False),
            Some(Severity::Info),
            "Deleting",
            "scaled down",
        ),
        (
            "NodePool/unseen",
            None,
            None,
            "",
            "4 wanted: Orrery has not reported on it yet; is the operator running?",
        ),
    ];
    for (name, ready, severity, reason, message) in cases {
        let row = &find(&t, name).row;
        assert_eq!(
            (
                row.ready,
                row.severity,
                row.reason.as_str(),
                row.message.as_str()
            ),
            (ready, severity, reason, message),
            "{name}"
        );
    }
}

#[test]
fn pools_are_in_the_data_and_the_table() {
    let now: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
    let mut t = tree(&with_pools(vec![workers()]), Options::default(), now);
    let described = Described {
        namespace: None,
        tree: t.clone(),
    };
    let data = serde_json::to_value(&described).unwrap();
    let pool = data["children"].as_array().unwrap().last().unwrap();
    assert_eq!(pool["name"], "NodePool/workers");
    assert_eq!(pool["ready"], "False");
    assert_eq!(pool["message"], "2/4 ready, 4 up to date, v1.34.4");
    assert_eq!(
        pool["children"][2]["name"],
        "Machine/workers-c → Node/workers-c"
    );
    assert_eq!(pool["children"][2]["severity"], "Warning");
    assert_eq!(pool["children"][2]["since"], "2026-01-01T00:00:00Z");

    // The table, with the tenant's other parts left out.
    t.children.retain(|c| c.row.name.starts_with("NodePool/"));
    let table = render::table(
        &[Described {
            namespace: None,
            tree: t,
        }],
        now,
        false,
    );
    let want = "\
NAME                                    READY    SEVERITY  REASON         SINCE  MESSAGE
TenantControlPlane/demo                 True                              5m     Ready, v1.34.4: the tenant control plane is available
└─NodePool/workers                      False    Warning   NodesNotReady  5m     2/4 ready, 4 up to date, v1.34.4
  ├─2 Machines...                       True                              5m     See workers-a, workers-d
  ├─Machine/workers-b                   Unknown  Info      Joining        5m     the VM runs; its node has not joined yet
  └─Machine/workers-c → Node/workers-c  False    Warning   NotReady       5m     the node is not Ready
";
    assert_eq!(table, want);
}
