//! The bad-input table: every rule of the CRDs, checked against the real apiserver of the test
//! ground. Each bad object must be refused with a message that names the field.

use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use orrery::api::{DataStore, TenantControlPlane};
use orrery_e2e::{Ground, install_crds, unique_name};
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
            json!({"version": "v1.31.9"}),
            "spec.version is outside the supported range",
        ),
        (
            "version too new",
            json!({"version": "v1.35.0"}),
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
    assert!(cases.len() >= 20);
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
async fn immutable_fields_and_version_skew_are_refused_on_update() {
    let s = setup().await;
    let api = tcp_api(&s.client, &s.ns);
    let name = "updates";
    api.create(
        &PostParams::default(),
        &tcp(name, json!({"version": "v1.33.4", "dataStore": "ds-a"})),
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
            json!({"version": "v1.32.9"}),
            "spec.version may not be downgraded",
        ),
        (
            "patch downgrade",
            json!({"version": "v1.33.3"}),
            "spec.version may not be downgraded",
        ),
    ];
    for (case, spec, expected) in cases {
        assert_refused(case, patch(spec).await, expected);
    }
    // Allowed: a patch upgrade and a one-minor upgrade.
    patch(json!({"version": "v1.33.9"}))
        .await
        .expect("patch upgrade is allowed");
    patch(json!({"version": "v1.34.0"}))
        .await
        .expect("one-minor upgrade is allowed");
    patch(json!({"replicas": 3}))
        .await
        .expect("replicas are mutable");

    // Skipping a minor: start from v1.32.
    api.create(
        &PostParams::default(),
        &tcp("skip", json!({"version": "v1.32.1"})),
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
            &Patch::Merge(json!({"spec": {"version": "v1.34.0"}})),
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
