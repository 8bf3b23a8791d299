//! The bad-input table: every rule of the CRDs, checked against the real apiserver of the test
//! ground. Each bad object must be refused with a message that names the field.

use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use orrery::api::{DataStore, NodePool, SUPPORTED_MINORS, TenantControlPlane};
use orrery_e2e::{Ground, install_crds, repo_root, unique_name};
use serde::Deserialize;
use serde_json::{Value, json};

fn tcp_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::erase::<TenantControlPlane>(&()),
    )
}

fn ds_api(client: &Client) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &ApiResource::erase::<DataStore>(&()))
}

fn np_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<NodePool>(&()))
}

fn tcp(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "orrery.dev/v1alpha1", "kind": "TenantControlPlane",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

fn datastore(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "orrery.dev/v1alpha1", "kind": "DataStore",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

fn nodepool(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "orrery.dev/v1alpha1", "kind": "NodePool",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

/// The objects of kind `kind` in an example manifest under `examples/`.
fn example_objects(file: &str, kind: &str) -> Vec<DynamicObject> {
    let path = repo_root().join("examples").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| doc["kind"] == kind)
        .map(|doc| serde_json::from_value(doc).unwrap())
        .collect()
}

/// A tenant spec of the current version with the fields of `spec`.
fn with_version(mut spec: Value) -> Value {
    spec["version"] = json!("v1.34.4");
    spec
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..Default::default()
    }
}

/// Asserts that `result` is a 422 whose message contains `expected`.
fn assert_refused<T: std::fmt::Debug>(case: &str, result: Result<T, kube::Error>, expected: &str) {
    match result {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{case}: expected 422 Invalid, got {e:?}");
            assert!(
                e.message.contains(expected),
                "{case}: message {:?} does not contain {expected:?}",
                e.message
            );
        }
        other => panic!("{case}: expected refusal containing {expected:?}, got {other:?}"),
    }
}

struct Setup {
    client: Client,
    ns: String,
}

async fn setup() -> Setup {
    let ground = Ground::get().expect("test ground");
    install_crds(&ground);
    let ns = unique_name("admission");
    ground.kubectl(&["create", "namespace", &ns]);
    Setup {
        client: ground.client().await.unwrap(),
        ns,
    }
}

/// `setup`, and the NodePool CRD established too.
async fn setup_nodepools() -> Setup {
    let s = setup().await;
    Ground::get().unwrap().kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/nodepools.orrery.dev",
    ]);
    s
}

async fn teardown(s: &Setup) {
    let ground = Ground::get().unwrap();
    ground.kubectl(&["delete", "namespace", &s.ns, "--wait=false"]);
}

#[tokio::test]
async fn bad_tenant_specs_are_refused_on_create() {
    let s = setup().await;
    let api = tcp_api(&s.client, &s.ns);
    let ok = json!({"version": "v1.34.4"});
    api.create(&dry_run(), &tcp("good", ok))
        .await
        .expect("a minimal tenant is valid");
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "version without v",
            json!({"version": "1.34.4"}),
            "spec.version must have the form vMAJOR.MINOR.PATCH",
        ),
        (
            "version without patch",
            json!({"version": "v1.34"}),
            "spec.version must have the form",
        ),
        (
            "version with suffix",
            json!({"version": "v1.34.4-rc.1"}),
            "spec.version must have the form",
        ),
        (
            "version too old",
            json!({"version": format!("v1.{}.9", SUPPORTED_MINORS.start() - 1)}),
            "spec.version is outside the supported range",
        ),
        (
            "version too new",
            json!({"version": format!("v1.{}.0", SUPPORTED_MINORS.end() + 1)}),
            "spec.version is outside the supported range",
        ),
        (
            "major 2",
            json!({"version": "v2.0.0"}),
            "spec.version is outside the supported range",
        ),
        (
            "no version",
            json!({"replicas": 1}),
            "spec.version: Required value",
        ),
        (
            "zero replicas",
            json!({"version": "v1.34.4", "replicas": 0}),
            "spec.replicas",
        ),
        (
            "ten replicas",
            json!({"version": "v1.34.4", "replicas": 10}),
            "spec.replicas",
        ),
        (
            "port 0",
            json!({"version": "v1.34.4", "network": {"port": 0}}),
            "spec.network.port",
        ),
        (
            "port 65536",
            json!({"version": "v1.34.4", "network": {"port": 65536}}),
            "spec.network.port",
        ),
        (
            "konnectivity port 70000",
            json!({"version": "v1.34.4", "network": {"konnectivityPort": 70000}}),
            "spec.network.konnectivityPort",
        ),
        (
            "service CIDR prefix 33",
            json!({"version": "v1.34.4", "network": {"serviceCIDR": "10.96.0.0/33"}}),
            "spec.network.serviceCIDR must be a CIDR",
        ),
        (
            "service CIDR not a CIDR",
            json!({"version": "v1.34.4", "network": {"serviceCIDR": "banana"}}),
            "spec.network.serviceCIDR must be a CIDR",
        ),
        (
            "pod CIDR not a CIDR",
            json!({"version": "v1.34.4", "network": {"podCIDR": "10.244.0.0"}}),
            "spec.network.podCIDR must be a CIDR",
        ),
        (
            "pod CIDR inside service CIDR",
            json!({"version": "v1.34.4", "network": {"serviceCIDR": "10.96.0.0/16", "podCIDR": "10.96.128.0/17"}}),
            "spec.network.serviceCIDR and spec.network.podCIDR must not overlap",
        ),
        (
            "service CIDR inside pod CIDR",
            json!({"version": "v1.34.4", "network": {"serviceCIDR": "10.96.0.0/16", "podCIDR": "10.0.0.0/8"}}),
            "must not overlap",
        ),
        (
            "DNS IP outside service CIDR",
            json!({"version": "v1.34.4", "network": {"dnsServiceIP": "10.97.0.10"}}),
            "spec.network.dnsServiceIP must lie inside spec.network.serviceCIDR",
        ),
        (
            "DNS IP not an IP",
            json!({"version": "v1.34.4", "network": {"dnsServiceIP": "dns.local"}}),
            "spec.network.dnsServiceIP must be an IP address",
        ),
        (
            "certSAN with underscore",
            json!({"version": "v1.34.4", "network": {"certSANs": ["ok.example.com", "bad_name.example.com"]}}),
            "each entry of spec.network.certSANs must be a DNS name",
        ),
        (
            "certSAN upper case",
            json!({"version": "v1.34.4", "network": {"certSANs": ["API.Example.com"]}}),
            "spec.network.certSANs",
        ),
        (
            "certSAN with a port",
            json!({"version": "v1.34.4", "network": {"certSANs": ["10.0.0.1:6443"]}}),
            "spec.network.certSANs",
        ),
        (
            "unknown service type",
            json!({"version": "v1.34.4", "network": {"serviceType": "Ingress"}}),
            "spec.network.serviceType",
        ),
        (
            "bad cluster domain",
            json!({"version": "v1.34.4", "network": {"clusterDomain": "-cluster.local"}}),
            "spec.network.clusterDomain must be a DNS domain",
        ),
        (
            "renewal window longer than validity",
            json!({"version": "v1.34.4", "certificates": {"validityHours": 24, "renewBeforeHours": 48}}),
            "spec.certificates.renewBeforeHours must be less than spec.certificates.validityHours",
        ),
        (
            "extra arg with dashes",
            json!({"version": "v1.34.4", "controlPlane": {"apiServer": {"extraArgs": {"--v": "4"}}}}),
            "extraArgs keys must be flag names without leading dashes",
        ),
        (
            "empty dataStore name",
            json!({"version": "v1.34.4", "dataStore": ""}),
            "spec.dataStore",
        ),
    ];
    let with = with_version;
    let digest = "a".repeat(64);
    let cases: Vec<(&str, Value, &str)> = cases
        .into_iter()
        .chain([
            // Flags Orrery sets, and entries of tunable flags it relies on.
            (
                "apiserver etcd-servers",
                with(json!({"controlPlane": {"apiServer": {"extraArgs": {"v": "2", "etcd-servers": "https://elsewhere:2379"}}}})),
                "spec.controlPlane.apiServer.extraArgs may not set etcd-servers",
            ),
            (
                "apiserver service-account-issuer",
                with(json!({"controlPlane": {"apiServer": {"extraArgs": {"service-account-issuer": "https://x"}}}})),
                "spec.controlPlane.apiServer.extraArgs may not set service-account-issuer",
            ),
            (
                "apiserver etcd-servers-overrides",
                with(json!({"controlPlane": {"apiServer": {"extraArgs": {"etcd-servers-overrides": "/events#https://x:2379"}}}})),
                "spec.controlPlane.apiServer.extraArgs may not set etcd-servers-overrides",
            ),
            (
                "controller-manager signing key",
                with(json!({"controlPlane": {"controllerManager": {"extraArgs": {"cluster-signing-key-file": "/k"}}}})),
                "spec.controlPlane.controllerManager.extraArgs may not set cluster-signing-key-file",
            ),
            (
                "scheduler kubeconfig",
                with(json!({"controlPlane": {"scheduler": {"extraArgs": {"authentication-kubeconfig": "/k"}}}})),
                "spec.controlPlane.scheduler.extraArgs may not set authentication-kubeconfig",
            ),
            (
                "konnectivity-server socket",
                with(json!({"controlPlane": {"konnectivityServer": {"extraArgs": {"uds-name": "/tmp/s"}}}})),
                "spec.controlPlane.konnectivityServer.extraArgs may not set uds-name",
            ),
            (
                "admission plugins without NodeRestriction",
                with(json!({"controlPlane": {"apiServer": {"extraArgs": {"enable-admission-plugins": "AlwaysPullImages"}}}})),
                "spec.controlPlane.apiServer.extraArgs: enable-admission-plugins must list NodeRestriction",
            ),
            (
                "NodeRestriction disabled",
                with(json!({"controlPlane": {"apiServer": {"extraArgs": {"disable-admission-plugins": "DefaultStorageClass,NodeRestriction"}}}})),
                "disable-admission-plugins must not list NodeRestriction",
            ),
            (
                "controllers without bootstrapsigner",
                with(json!({"controlPlane": {"controllerManager": {"extraArgs": {"controllers": "*,tokencleaner"}}}})),
                "spec.controlPlane.controllerManager.extraArgs: controllers must list bootstrapsigner",
            ),
            // Resources.
            (
                "apiserver cpu request above limit",
                with(json!({"controlPlane": {"apiServer": {"resources": {"requests": {"cpu": 2}, "limits": {"cpu": "1500m"}}}}})),
                "spec.controlPlane.apiServer.resources.requests.cpu must not exceed spec.controlPlane.apiServer.resources.limits.cpu",
            ),
            (
                "controller-manager memory request above limit",
                with(json!({"controlPlane": {"controllerManager": {"resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "512Mi"}}}}})),
                "spec.controlPlane.controllerManager.resources.requests.memory must not exceed",
            ),
            (
                "scheduler request above limit",
                with(json!({"controlPlane": {"scheduler": {"resources": {"requests": {"cpu": "200m", "memory": "2G"}, "limits": {"cpu": "1", "memory": "1Gi"}}}}})),
                "spec.controlPlane.scheduler.resources.requests.memory must not exceed",
            ),
            (
                "konnectivity-server request above limit",
                with(json!({"controlPlane": {"konnectivityServer": {"resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}}}})),
                "spec.controlPlane.konnectivityServer.resources.requests.memory must not exceed",
            ),
            (
                "resource not a quantity",
                with(json!({"controlPlane": {"apiServer": {"resources": {"limits": {"memory": "lots"}}}}})),
                "spec.controlPlane.apiServer.resources: requests and limits must be non-negative quantities",
            ),
            (
                "negative request",
                with(json!({"controlPlane": {"scheduler": {"resources": {"requests": {"cpu": "-1"}}}}})),
                "spec.controlPlane.scheduler.resources: requests and limits must be non-negative quantities",
            ),
            // Addresses and their families.
            (
                "DNS IP is the network address",
                with(json!({"network": {"dnsServiceIP": "10.96.0.0"}})),
                "spec.network.dnsServiceIP must not be the network address of spec.network.serviceCIDR nor its first address",
            ),
            (
                "DNS IP is the kubernetes Service's",
                with(json!({"network": {"dnsServiceIP": "10.96.0.1"}})),
                "spec.network.dnsServiceIP must not be the network address",
            ),
            (
                "IPv6 DNS IP is the kubernetes Service's",
                with(json!({"network": {"serviceCIDR": "fd00:10:96::/108", "podCIDR": "fd00:10:244::/56", "dnsServiceIP": "fd00:10:96::1"}})),
                "spec.network.dnsServiceIP must not be the network address",
            ),
            (
                "certSAN 0.0.0.0",
                with(json!({"network": {"certSANs": ["api.example.com", "0.0.0.0"]}})),
                "spec.network.certSANs must not contain an unspecified address",
            ),
            (
                "certSAN ::",
                with(json!({"network": {"certSANs": ["::"]}})),
                "spec.network.certSANs must not contain an unspecified address",
            ),
            (
                "service CIDR /29",
                with(json!({"network": {"serviceCIDR": "10.96.0.0/29"}})),
                "spec.network.serviceCIDR must hold at least 16 addresses",
            ),
            (
                "service CIDR /32",
                with(json!({"network": {"serviceCIDR": "10.96.0.1/32"}})),
                "spec.network.serviceCIDR must hold at least 16 addresses",
            ),
            (
                "IPv6 service CIDR /125",
                with(json!({"network": {"serviceCIDR": "fd00:10:96::/125", "podCIDR": "fd00:10:244::/56"}})),
                "spec.network.serviceCIDR must hold at least 16 addresses",
            ),
            (
                "pod CIDR smaller than a node's range",
                with(json!({"network": {"podCIDR": "10.244.0.0/25"}})),
                "spec.network.podCIDR must be a /24 or larger for IPv4",
            ),
            (
                "IPv6 pod CIDR of more than 2^16 node ranges",
                with(json!({"network": {"serviceCIDR": "fd00:10:96::/108", "podCIDR": "fd00::/32"}})),
                "spec.network.podCIDR must be a /24 or larger for IPv4, a /48 to /64 for IPv6",
            ),
            (
                "IPv4 services, IPv6 pods",
                with(json!({"network": {"podCIDR": "fd00:10:244::/56"}})),
                "spec.network.serviceCIDR and spec.network.podCIDR must be of one IP family",
            ),
            (
                "IPv6 DNS IP in an IPv4 service CIDR",
                with(json!({"network": {"dnsServiceIP": "fd00::a"}})),
                "spec.network.dnsServiceIP must be of the IP family of spec.network.serviceCIDR",
            ),
            (
                "apiserver port taken by the scheduler",
                with(json!({"network": {"port": 10259}})),
                "spec.network.port must not be 8132, 8133, 8134, 10257, 10259",
            ),
            // Image references.
            (
                "apiserver image with a space",
                with(json!({"controlPlane": {"apiServer": {"image": "my apiserver:1"}}})),
                "spec.controlPlane.apiServer.image must be an image reference",
            ),
            (
                "controller-manager image with a trailing slash",
                with(json!({"controlPlane": {"controllerManager": {"image": "registry.example/kcm/"}}})),
                "spec.controlPlane.controllerManager.image must be an image reference",
            ),
            (
                "scheduler image with a leading colon",
                with(json!({"controlPlane": {"scheduler": {"image": ":v1.34.4"}}})),
                "spec.controlPlane.scheduler.image must be an image reference",
            ),
            (
                "konnectivity-server image with upper-case path",
                with(json!({"controlPlane": {"konnectivityServer": {"image": "registry.example/Proxy-Server:v1"}}})),
                "spec.controlPlane.konnectivityServer.image must be an image reference",
            ),
            (
                "CoreDNS image with two tags",
                with(json!({"addons": {"coreDNS": {"image": "coredns/coredns:1.12:1"}}})),
                "spec.addons.coreDNS.image must be an image reference",
            ),
            (
                "kube-proxy image with a short digest",
                with(json!({"addons": {"kubeProxy": {"image": "kube-proxy@sha256:abc"}}})),
                "spec.addons.kubeProxy.image must be an image reference",
            ),
            (
                "konnectivity-agent image with a sha512 digest",
                with(json!({"addons": {"konnectivity": {"image": format!("agent@sha512:{digest}")}}})),
                "spec.addons.konnectivity.image must be an image reference",
            ),
            (
                "cluster-autoscaler image with a space",
                with(json!({"addons": {"clusterAutoscaler": {"enabled": true, "image": "cluster autoscaler"}}})),
                "spec.addons.clusterAutoscaler.image must be an image reference",
            ),
            (
                "CSI node image with upper case",
                with(json!({"addons": {"csi": {"enabled": true, "nodeImage": "Orrery/CSI-Node:1"}}})),
                "spec.addons.csi.nodeImage must be an image reference",
            ),
            (
                "CSI storage class that is not a name",
                with(json!({"addons": {"csi": {"enabled": true, "storageClassName": "Fast Disks"}}})),
                "spec.addons.csi.storageClassName must be a StorageClass name",
            ),
        ])
        .collect();
    assert!(cases.len() >= 60);
    for (case, spec, expected) in cases {
        assert_refused(
            case,
            api.create(&dry_run(), &tcp("bad", spec)).await,
            expected,
        );
    }
    teardown(&s).await;
}

#[tokio::test]
async fn good_tenant_specs_and_the_examples_are_accepted() {
    let s = setup().await;
    let api = tcp_api(&s.client, &s.ns);
    let digest = "0123456789abcdef".repeat(4);
    let good: Vec<(&str, Value)> = vec![
        ("minimal", json!({"version": "v1.34.4"})),
        (
            "tunable flags",
            json!({"version": "v1.34.4", "controlPlane": {
                "apiServer": {"extraArgs": {"v": "4", "enable-admission-plugins": "NodeRestriction,AlwaysPullImages", "kubelet-preferred-address-types": "InternalIP"}},
                "controllerManager": {"extraArgs": {"controllers": "*,bootstrapsigner,tokencleaner,-ttl", "allocate-node-cidrs": "false"}},
                "scheduler": {"extraArgs": {"v": "2"}},
                "konnectivityServer": {"extraArgs": {"keepalive-time": "1m"}}
            }}),
        ),
        (
            "requests equal to limits in other units",
            json!({"version": "v1.34.4", "controlPlane": {
                "apiServer": {"resources": {"requests": {"cpu": 1, "memory": "1Gi"}, "limits": {"cpu": "1000m", "memory": "1024Mi"}}},
                "scheduler": {"resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "64Mi"}}}
            }}),
        ),
        (
            "images with registries, ports, tags and digests",
            json!({"version": "v1.34.4",
                "controlPlane": {
                    "apiServer": {"image": "registry.example:5000/k8s/kube-apiserver:v1.34.4"},
                    "scheduler": {"image": format!("registry.k8s.io/kube-scheduler:v1.34.4@sha256:{digest}")},
                    "konnectivityServer": {"image": "localhost:5000/proxy_server__x--y"}
                },
                "addons": {"coreDNS": {"image": "coredns/coredns:1.12.1"}, "kubeProxy": {"image": format!("kube-proxy@sha256:{digest}")},
                           "clusterAutoscaler": {"enabled": true, "image": "registry.k8s.io/autoscaling/cluster-autoscaler:v1.34.5"},
                           "csi": {"enabled": true, "storageClassName": "local-block.example", "nodeImage": "orrery.dev/csi-node:0.1.0"}}
            }),
        ),
        (
            "IPv6",
            json!({"version": "v1.34.4", "network": {"serviceCIDR": "fd00:10:96::/108", "podCIDR": "fd00:10:244::/56", "dnsServiceIP": "fd00:10:96::a", "certSANs": ["::1"]}}),
        ),
        (
            "smallest service range, DNS at its end",
            json!({"version": "v1.34.4", "network": {"serviceCIDR": "10.96.0.0/28", "dnsServiceIP": "10.96.0.14"}}),
        ),
        (
            "service range over 2^20 addresses from v1.34",
            json!({"version": "v1.34.4", "network": {"serviceCIDR": "10.0.0.0/11", "podCIDR": "10.244.0.0/16"}}),
        ),
        (
            "small pod range with smaller node ranges",
            json!({"version": "v1.34.4", "network": {"podCIDR": "10.244.0.0/26"}, "controlPlane": {"controllerManager": {"extraArgs": {"node-cidr-mask-size": "28"}}}}),
        ),
    ];
    for (case, spec) in good {
        api.create(&dry_run(), &tcp("good", spec))
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
    }
    let examples: Vec<_> = ["tenant-minimal.yaml", "tenant-ha.yaml"]
        .into_iter()
        .flat_map(|f| example_objects(f, "TenantControlPlane"))
        .collect();
    assert_eq!(examples.len(), 2);
    for mut example in examples {
        let name = example.metadata.name.clone();
        example.metadata.namespace = Some(s.ns.clone());
        api.create(&dry_run(), &example)
            .await
            .unwrap_or_else(|e| panic!("example {name:?}: {e}"));
    }
    teardown(&s).await;
}

#[tokio::test]
async fn immutable_fields_and_version_skew_are_refused_on_update() {
    let s = setup().await;
    let api = tcp_api(&s.client, &s.ns);
    let name = "updates";
    api.create(
        &PostParams::default(),
        &tcp(name, json!({"version": "v1.35.4", "dataStore": "ds-a"})),
    )
    .await
    .unwrap();
    let patch = |spec: Value| {
        let api = api.clone();
        async move {
            api.patch(
                name,
                &PatchParams {
                    dry_run: true,
                    ..Default::default()
                },
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
        }
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "service CIDR change",
            json!({"network": {"serviceCIDR": "10.100.0.0/16"}}),
            "spec.network.serviceCIDR is immutable",
        ),
        (
            "pod CIDR change",
            json!({"network": {"podCIDR": "10.200.0.0/16"}}),
            "spec.network.podCIDR is immutable",
        ),
        (
            "cluster domain change",
            json!({"network": {"clusterDomain": "tenant.local"}}),
            "spec.network.clusterDomain is immutable",
        ),
        (
            "dataStore change",
            json!({"dataStore": "ds-b"}),
            "spec.dataStore is immutable",
        ),
        (
            "dataStore removal",
            json!({"dataStore": null}),
            "spec.dataStore is immutable",
        ),
        (
            "minor downgrade",
            json!({"version": "v1.34.9"}),
            "spec.version may not be downgraded",
        ),
        (
            "patch downgrade",
            json!({"version": "v1.35.3"}),
            "spec.version may not be downgraded",
        ),
    ];
    for (case, spec, expected) in cases {
        assert_refused(case, patch(spec).await, expected);
    }
    // Allowed: a patch upgrade and a one-minor upgrade.
    patch(json!({"version": "v1.35.9"}))
        .await
        .expect("patch upgrade is allowed");
    patch(json!({"version": "v1.36.0"}))
        .await
        .expect("one-minor upgrade is allowed");
    patch(json!({"replicas": 3}))
        .await
        .expect("replicas are mutable");

    // Skipping a minor: start from v1.34.
    api.create(
        &PostParams::default(),
        &tcp("skip", json!({"version": "v1.34.1"})),
    )
    .await
    .unwrap();
    let skip = api
        .patch(
            "skip",
            &PatchParams {
                dry_run: true,
                ..Default::default()
            },
            &Patch::Merge(json!({"spec": {"version": "v1.36.0"}})),
        )
        .await;
    assert_refused(
        "minor skipped",
        skip,
        "spec.version may not skip a minor version",
    );
    for n in [name, "skip"] {
        api.delete(n, &DeleteParams::default()).await.unwrap();
    }
    teardown(&s).await;
}

#[tokio::test]
async fn bad_datastores_are_refused() {
    let s = setup().await;
    let api = ds_api(&s.client);
    let ext = json!({
        "endpoints": ["https://127.0.0.1:2379"],
        "certificateAuthority": {
            "certificate": {"name": "ca", "namespace": "ns", "key": "tls.crt"},
            "privateKey": {"name": "ca", "namespace": "ns", "key": "tls.key"}
        },
        "rootClientCertificate": {
            "certificate": {"name": "root", "namespace": "ns", "key": "tls.crt"},
            "privateKey": {"name": "root", "namespace": "ns", "key": "tls.key"}
        }
    });
    let name = unique_name("ds");
    api.create(
        &dry_run(),
        &datastore(&name, json!({"external": ext.clone()})),
    )
    .await
    .expect("valid external");
    api.create(
        &dry_run(),
        &datastore(&name, json!({"managed": {"namespace": "etcd"}})),
    )
    .await
    .expect("valid managed");
    api.create(
        &dry_run(),
        &datastore(
            &name,
            json!({"managed": {"namespace": "etcd", "image": "registry.k8s.io/etcd:3.6.4-0",
                "resources": {"requests": {"cpu": "200m", "memory": "512Mi"}, "limits": {"cpu": 1, "memory": "2Gi"}}}}),
        ),
    )
    .await
    .expect("valid managed with image and resources");
    for file in ["datastore-managed.yaml", "datastore-external.yaml"] {
        for example in example_objects(file, "DataStore") {
            api.create(&dry_run(), &example)
                .await
                .unwrap_or_else(|e| panic!("example {file}: {e}"));
        }
    }
    let mut http = ext.clone();
    http["endpoints"] = json!(["http://127.0.0.1:2379"]);
    let mut no_port = ext.clone();
    no_port["endpoints"] = json!(["https://etcd.example"]);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "both kinds",
            json!({"managed": {"namespace": "etcd"}, "external": ext.clone()}),
            "exactly one of spec.managed and spec.external",
        ),
        (
            "neither kind",
            json!({}),
            "exactly one of spec.managed and spec.external",
        ),
        (
            "plain http endpoint",
            json!({"external": http}),
            "each entry of spec.external.endpoints must be an https URL",
        ),
        (
            "endpoint without port",
            json!({"external": no_port}),
            "spec.external.endpoints",
        ),
        (
            "two etcd members",
            json!({"managed": {"namespace": "etcd", "replicas": 2}}),
            "spec.managed.replicas must be 1, 3 or 5",
        ),
        (
            "managed without namespace",
            json!({"managed": {"replicas": 3}}),
            "spec.managed.namespace",
        ),
        (
            "etcd image with a space",
            json!({"managed": {"namespace": "etcd", "image": "registry.k8s.io/etcd:3.6.4 -0"}}),
            "spec.managed.image must be an image reference",
        ),
        (
            "etcd memory request above limit",
            json!({"managed": {"namespace": "etcd", "resources": {"requests": {"memory": "3Gi"}, "limits": {"memory": "2Gi"}}}}),
            "spec.managed.resources.requests.memory must not exceed spec.managed.resources.limits.memory",
        ),
        (
            "etcd limit not a quantity",
            json!({"managed": {"namespace": "etcd", "resources": {"limits": {"cpu": "two"}}}}),
            "spec.managed.resources: requests and limits must be non-negative quantities",
        ),
    ];
    for (case, spec, expected) in cases {
        assert_refused(
            case,
            api.create(&dry_run(), &datastore(&name, spec)).await,
            expected,
        );
    }
    // Switching kind is refused on update.
    api.create(
        &PostParams::default(),
        &datastore(&name, json!({"managed": {"namespace": "etcd"}})),
    )
    .await
    .unwrap();
    let switch = api
        .replace(&name, &dry_run(), &{
            let mut obj = api.get(&name).await.unwrap();
            obj.data["spec"] = json!({"external": ext});
            obj
        })
        .await;
    assert_refused(
        "switch kind",
        switch,
        "a DataStore cannot switch between spec.managed and spec.external",
    );
    // The DataStore controller is not running in this test binary, so no finalizer holds it.
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    teardown(&s).await;
}

/// A pool spec for the tenant `demo` with the fields of `spec`.
fn with_ref(mut spec: Value) -> Value {
    spec["controlPlaneRef"] = json!({"name": "demo"});
    spec
}

#[tokio::test]
async fn bad_nodepools_are_refused_on_create() {
    let s = setup_nodepools().await;
    let api = np_api(&s.client, &s.ns);
    let with = with_ref;
    let template = |t: Value| with(json!({"template": t}));
    let rolling = |r: Value| with(json!({"strategy": {"rollingUpdate": r}}));
    let ed25519 =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb8ODkmQ4a4kXgcH0zVhmgdYzqQNYq8OPMx2MZKC4Qk";
    let cases: Vec<(&str, Value, &str)> = vec![
        // The tenant.
        (
            "no controlPlaneRef",
            json!({"replicas": 1}),
            "spec.controlPlaneRef: Required value",
        ),
        (
            "controlPlaneRef upper case",
            json!({"controlPlaneRef": {"name": "Demo"}}),
            "spec.controlPlaneRef.name must be the name of a TenantControlPlane",
        ),
        (
            "controlPlaneRef empty",
            json!({"controlPlaneRef": {"name": ""}}),
            "spec.controlPlaneRef.name",
        ),
        (
            "negative replicas",
            with(json!({"replicas": -1})),
            "spec.replicas",
        ),
        // The VM.
        (
            "zero cores",
            template(json!({"cores": 0})),
            "spec.template.cores",
        ),
        (
            "memory not a quantity",
            template(json!({"memory": "lots"})),
            "spec.template.memory must be a quantity of at least 512Mi",
        ),
        (
            "memory below 512Mi",
            template(json!({"memory": "256Mi"})),
            "spec.template.memory must be a quantity of at least 512Mi",
        ),
        (
            "memory in bytes below 512Mi",
            template(json!({"memory": 536870911})),
            "spec.template.memory must be a quantity of at least 512Mi",
        ),
        (
            "negative memory",
            template(json!({"memory": "-2Gi"})),
            "spec.template.memory must be a quantity of at least 512Mi",
        ),
        (
            "empty image",
            template(json!({"rootDisk": {"image": ""}})),
            "spec.template.rootDisk.image",
        ),
        (
            "image with a space",
            template(json!({"rootDisk": {"image": "registry.example/worker image:v1"}})),
            "spec.template.rootDisk.image must be an image reference",
        ),
        (
            "root volume of size 0",
            template(json!({"rootDisk": {"persistentVolume": {"size": "0"}}})),
            "spec.template.rootDisk.persistentVolume.size must be a quantity above zero",
        ),
        (
            "root volume without size",
            template(json!({"rootDisk": {"persistentVolume": {"storageClassName": "fast"}}})),
            "spec.template.rootDisk.persistentVolume.size: Required value",
        ),
        (
            "extra disk name upper case",
            template(json!({"extraDisks": [{"name": "Data", "size": "1Gi"}]})),
            "spec.template.extraDisks[].name must be a DNS label",
        ),
        (
            "extra disk named root",
            template(json!({"extraDisks": [{"name": "root", "size": "1Gi"}]})),
            "spec.template.extraDisks[].name must not be root or cloudinit",
        ),
        (
            "extra disk of size 0",
            template(json!({"extraDisks": [{"name": "data", "size": "0Gi"}]})),
            "spec.template.extraDisks[].size must be a quantity above zero",
        ),
        (
            "extra disk size not a quantity",
            template(json!({"extraDisks": [{"name": "data", "size": "big"}]})),
            "spec.template.extraDisks[].size must be a quantity above zero",
        ),
        (
            "two extra disks of one name",
            template(
                json!({"extraDisks": [{"name": "data", "size": "1Gi"}, {"name": "data", "size": "2Gi"}]}),
            ),
            "spec.template.extraDisks[1]: Duplicate value",
        ),
        // The Node.
        (
            "label key with a space",
            template(json!({"nodeLabels": {"pool name": "a"}})),
            "spec.template.nodeLabels keys must be label keys",
        ),
        (
            "label key name over 63 characters",
            template(json!({"nodeLabels": {"example.com/".to_string() + &"a".repeat(64): "a"}})),
            "spec.template.nodeLabels keys must be label keys",
        ),
        (
            "node-role label",
            template(json!({"nodeLabels": {"env": "dev", "node-role.kubernetes.io/worker": ""}})),
            "spec.template.nodeLabels may not set node-role.kubernetes.io/worker",
        ),
        (
            "orrery.dev label",
            template(json!({"nodeLabels": {"orrery.dev/pool": "x"}})),
            "spec.template.nodeLabels may not set orrery.dev/pool",
        ),
        (
            "label under a subdomain of orrery.dev",
            template(json!({"nodeLabels": {"pools.orrery.dev/x": "y"}})),
            "spec.template.nodeLabels may not set pools.orrery.dev/x",
        ),
        (
            "label value starting with a dash",
            template(json!({"nodeLabels": {"env": "-dev"}})),
            "spec.template.nodeLabels values must be label values",
        ),
        (
            "taint of an unknown effect",
            template(json!({"taints": [{"key": "dedicated", "effect": "Sometimes"}]})),
            "spec.template.taints[0].effect: Unsupported value",
        ),
        (
            "taint key with a space",
            template(json!({"taints": [{"key": "dedicated to", "effect": "NoSchedule"}]})),
            "spec.template.taints[].key must be a label key",
        ),
        (
            "taint value with a slash",
            template(
                json!({"taints": [{"key": "dedicated", "value": "a/b", "effect": "NoSchedule"}]}),
            ),
            "spec.template.taints[].value must be a label value",
        ),
        (
            "two taints of one key and effect",
            template(json!({"taints": [
                {"key": "dedicated", "value": "a", "effect": "NoSchedule"},
                {"key": "dedicated", "value": "b", "effect": "NoSchedule"}
            ]})),
            "spec.template.taints[1]: Duplicate value",
        ),
        (
            "SSH key that is not one",
            template(json!({"sshAuthorizedKeys": ["hunter2"]})),
            "each entry of spec.template.sshAuthorizedKeys must be one OpenSSH public key",
        ),
        (
            "SSH key without its key",
            template(json!({"sshAuthorizedKeys": ["ssh-ed25519"]})),
            "each entry of spec.template.sshAuthorizedKeys must be one OpenSSH public key",
        ),
        (
            "SSH key of an unknown type",
            template(json!({"sshAuthorizedKeys": ["ssh-foo AAAAB3NzaC1yc2E user@host"]})),
            "each entry of spec.template.sshAuthorizedKeys must be one OpenSSH public key",
        ),
        (
            "SSH key with a second line",
            template(
                json!({"sshAuthorizedKeys": [format!("{ed25519} me\nssh-rsa AAAAB3NzaC1yc2E intruder")]}),
            ),
            "each entry of spec.template.sshAuthorizedKeys must be one OpenSSH public key",
        ),
        (
            "SSH key with options",
            template(json!({"sshAuthorizedKeys": [format!("command=\"/bin/sh\" {ed25519}")]})),
            "each entry of spec.template.sshAuthorizedKeys must be one OpenSSH public key",
        ),
        (
            "kubelet flag with dashes",
            template(json!({"kubeletExtraArgs": {"--max-pods": "50"}})),
            "spec.template.kubeletExtraArgs keys must be flag names without leading dashes",
        ),
        (
            "kubelet provider-id",
            template(json!({"kubeletExtraArgs": {"v": "2", "provider-id": "kubevirt://other"}})),
            "spec.template.kubeletExtraArgs may not set provider-id",
        ),
        (
            "kubelet node-labels",
            template(json!({"kubeletExtraArgs": {"node-labels": "a=b"}})),
            "spec.template.kubeletExtraArgs may not set node-labels",
        ),
        // The rollout.
        (
            "strategy Recreate",
            with(json!({"strategy": {"type": "Recreate"}})),
            "spec.strategy.type: Unsupported value",
        ),
        (
            "surge and unavailability both 0",
            rolling(json!({"maxSurge": 0, "maxUnavailable": 0})),
            "spec.strategy.rollingUpdate.maxSurge and spec.strategy.rollingUpdate.maxUnavailable must not both be 0",
        ),
        (
            "surge 0% and unavailability 0",
            rolling(json!({"maxSurge": "0%", "maxUnavailable": 0})),
            "must not both be 0",
        ),
        (
            "surge 00% with the default unavailability 0",
            rolling(json!({"maxSurge": "00%"})),
            "must not both be 0",
        ),
        (
            "surge a number in a string",
            rolling(json!({"maxSurge": "2"})),
            "spec.strategy.rollingUpdate.maxSurge must be a number of nodes (0 or more) or a percentage",
        ),
        (
            "surge a fractional percentage",
            rolling(json!({"maxSurge": "12.5%"})),
            "spec.strategy.rollingUpdate.maxSurge must be a number of nodes",
        ),
        (
            "negative unavailability",
            rolling(json!({"maxUnavailable": -1})),
            "spec.strategy.rollingUpdate.maxUnavailable must be a number of nodes",
        ),
        // The autoscaler's bounds.
        (
            "min above max",
            with(json!({"replicas": 3, "autoscaling": {"minReplicas": 4, "maxReplicas": 2}})),
            "spec.autoscaling.minReplicas must not exceed spec.autoscaling.maxReplicas",
        ),
        (
            "replicas above max",
            with(json!({"replicas": 5, "autoscaling": {"minReplicas": 1, "maxReplicas": 3}})),
            "spec.replicas must lie between spec.autoscaling.minReplicas and spec.autoscaling.maxReplicas",
        ),
        (
            "replicas below min",
            with(json!({"replicas": 0, "autoscaling": {"minReplicas": 1, "maxReplicas": 3}})),
            "spec.replicas must lie between",
        ),
        (
            "max 0",
            with(json!({"replicas": 0, "autoscaling": {"minReplicas": 0, "maxReplicas": 0}})),
            "spec.autoscaling.maxReplicas",
        ),
        (
            "negative min",
            with(json!({"autoscaling": {"minReplicas": -1, "maxReplicas": 3}})),
            "spec.autoscaling.minReplicas",
        ),
        (
            "autoscaling without max",
            with(json!({"autoscaling": {"minReplicas": 1}})),
            "spec.autoscaling.maxReplicas: Required value",
        ),
        // Timeouts.
        (
            "startup timeout without unit",
            with(json!({"nodeStartupTimeout": "600"})),
            "spec.nodeStartupTimeout must be a duration in whole h, m, s or ms",
        ),
        (
            "startup timeout fractional",
            with(json!({"nodeStartupTimeout": "1.5h"})),
            "spec.nodeStartupTimeout must be a duration",
        ),
        (
            "startup timeout in days",
            with(json!({"nodeStartupTimeout": "1d"})),
            "spec.nodeStartupTimeout must be a duration",
        ),
        (
            "unhealthy timeout 0s",
            with(json!({"unhealthyTimeout": "0s"})),
            "spec.unhealthyTimeout must be longer than 0s",
        ),
        (
            "unhealthy timeout negative",
            with(json!({"unhealthyTimeout": "-5m"})),
            "spec.unhealthyTimeout must be a duration",
        ),
        (
            "drain timeout in words",
            with(json!({"drainTimeout": "5 minutes"})),
            "spec.drainTimeout must be a duration",
        ),
        (
            "drain timeout 0m0s",
            with(json!({"drainTimeout": "0m0s"})),
            "spec.drainTimeout must be longer than 0s",
        ),
    ];
    for (case, spec, expected) in cases {
        assert_refused(
            case,
            api.create(&dry_run(), &nodepool("bad", spec)).await,
            expected,
        );
    }
    teardown(&s).await;
}

#[tokio::test]
async fn good_nodepools_and_the_example_are_accepted() {
    let s = setup_nodepools().await;
    let api = np_api(&s.client, &s.ns);
    let digest = "0123456789abcdef".repeat(4);
    let good: Vec<(&str, Value)> = vec![
        ("minimal", with_ref(json!({}))),
        ("no nodes", with_ref(json!({"replicas": 0}))),
        (
            "every field",
            with_ref(json!({
                "replicas": 2,
                "template": {
                    "cores": 2,
                    "memory": "4Gi",
                    "rootDisk": {
                        "image": format!("registry.example:5000/orrery/worker:v1.34.4@sha256:{digest}"),
                        "persistentVolume": {"size": "20Gi", "storageClassName": "fast"}
                    },
                    "extraDisks": [{"name": "data", "size": "10Gi"}, {"name": "scratch-1", "size": 1073741824i64, "storageClassName": "local"}],
                    "nodeLabels": {"env": "dev", "example.com/pool": "workers", "empty": "", "node.kubernetes.io/exclude-from-external-load-balancers": "true"},
                    "taints": [
                        {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                        {"key": "dedicated", "value": "gpu", "effect": "NoExecute"},
                        {"key": "example.com/spot", "effect": "PreferNoSchedule"}
                    ],
                    "sshAuthorizedKeys": [
                        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb8ODkmQ4a4kXgcH0zVhmgdYzqQNYq8OPMx2MZKC4Qk admin@example.com",
                        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7+/x==",
                        "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY= ops",
                        "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t key on a token"
                    ],
                    "kubeletExtraArgs": {"max-pods": "50", "v": "2"},
                    "placement": {
                        "nodeSelector": {"kubevirt.io/schedulable": "true"},
                        "tolerations": [{"key": "orrery.dev/live", "operator": "Exists", "effect": "NoSchedule"}]
                    }
                },
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "0%"}},
                "autoscaling": {"minReplicas": 1, "maxReplicas": 5},
                "nodeStartupTimeout": "1h30m",
                "unhealthyTimeout": "90s",
                "drainTimeout": "2m500ms"
            })),
        ),
        (
            "memory of exactly 512Mi, in bytes",
            with_ref(json!({"template": {"memory": 536870912}})),
        ),
        (
            "surge 0 with unavailability 1",
            with_ref(json!({"strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}})),
        ),
        (
            "replicas at the autoscaler's bounds",
            with_ref(json!({"replicas": 0, "autoscaling": {"minReplicas": 0, "maxReplicas": 1}})),
        ),
    ];
    for (case, spec) in good {
        api.create(&dry_run(), &nodepool("good", spec))
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
    }
    let examples = example_objects("nodepool.yaml", "NodePool");
    assert_eq!(examples.len(), 1);
    for mut example in examples {
        example.metadata.namespace = Some(s.ns.clone());
        api.create(&dry_run(), &example)
            .await
            .unwrap_or_else(|e| panic!("example nodepool.yaml: {e}"));
    }
    teardown(&s).await;
}

#[tokio::test]
async fn nodepool_reference_is_immutable_and_scale_keeps_the_bounds() {
    let s = setup_nodepools().await;
    let api = np_api(&s.client, &s.ns);
    let name = "scaled";
    api.create(
        &PostParams::default(),
        &nodepool(
            name,
            with_ref(json!({"replicas": 2, "autoscaling": {"minReplicas": 1, "maxReplicas": 3}})),
        ),
    )
    .await
    .unwrap();
    let dry = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    let patch = |spec: Value| Patch::Merge(json!({"spec": spec}));
    assert_refused(
        "controlPlaneRef change",
        api.patch(
            name,
            &dry,
            &patch(json!({"controlPlaneRef": {"name": "other"}})),
        )
        .await,
        "spec.controlPlaneRef is immutable",
    );
    api.patch(
        name,
        &dry,
        &patch(
            json!({"template": {"cores": 2}, "strategy": {"rollingUpdate": {"maxSurge": "50%"}}}),
        ),
    )
    .await
    .expect("the template and the strategy may change");
    // The scale subresource goes through the same rules, so the autoscaler's bounds hold there.
    let scale = |replicas: i32| Patch::Merge(json!({"spec": {"replicas": replicas}}));
    assert_refused(
        "scale above the autoscaler's max",
        api.patch_scale(name, &dry, &scale(4)).await,
        "spec.replicas must lie between spec.autoscaling.minReplicas and spec.autoscaling.maxReplicas",
    );
    let scaled = api
        .patch_scale(name, &PatchParams::default(), &scale(3))
        .await
        .expect("scale within the bounds");
    assert_eq!(scaled.spec.and_then(|s| s.replicas), Some(3));
    let pool = api.get(name).await.unwrap();
    assert_eq!(pool.data["spec"]["replicas"], json!(3));
    api.delete(name, &DeleteParams::default()).await.unwrap();
    teardown(&s).await;
}
