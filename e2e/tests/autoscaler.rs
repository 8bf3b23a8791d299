//! Orrery's cluster-autoscaler API against the real apiserver of the test ground. The API server
//! and the `cluster-autoscaler` add-on controller run in this process; NodePools are real
//! objects; their machines are VirtualMachines made by hand (KubeVirt's own CRD on the live
//! ground, a stand-in CRD elsewhere; they are Halted, nothing boots), and no NodePool controller
//! runs, so what changes is what the API changed.
//!
//! Two tenants share a namespace. Each gets its autoscaler Secret and Deployment from the add-on;
//! a client set up from a tenant's Secret as the upstream autoscaler sets itself up drives the
//! calls in the order the autoscaler makes them, and the replicas and delete annotations are read
//! back from the apiserver. A tenant's client is refused the other's groups; a client without a
//! certificate, or with one from another CA, is refused at the handshake.

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::Reporter;
use kube::{Client, ResourceExt};
use orrery::addons::autoscaler::{self, ApiEndpoint};
use orrery::api::{NodePool, TenantControlPlane};
use orrery::context::{Context, Settings};
use orrery::nodepool::build::{DELETE_ANNOTATION, POOL_LABEL};
use orrery::nodepool::kubevirt::VirtualMachine;
use orrery::pki::{self, CertProfile};
use orrery_e2e::autoscaler::proto::instance_status::InstanceState;
use orrery_e2e::autoscaler::proto::kubernetes::Node;
use orrery_e2e::autoscaler::proto::*;
use orrery_e2e::autoscaler::{self as client_side, CloudConfig};
use orrery_e2e::{
    Ground, create_namespace, eventually, has_real_kubevirt, install_crds,
    install_kubevirt_stand_ins, remove_kubevirt_stand_ins,
};
use prost::Message;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

const WAIT: Duration = Duration::from_secs(60);

/// Deletes what the test made, also when it fails.
struct Cleanup {
    ground: Ground,
    namespaces: Vec<String>,
    stand_ins: bool,
    shutdown: CancellationToken,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for ns in &self.namespaces {
            let _ = self
                .ground
                .run("kubectl", &["delete", "namespace", ns, "--wait=false"]);
        }
        if self.stand_ins {
            remove_kubevirt_stand_ins(&self.ground);
        }
    }
}

/// A TenantControlPlane standing for a running tenant: its status (written here, no tenant
/// controller runs) names an admin kubeconfig Secret, and its add-on kubeconfigs Secret holds
/// the autoscaler's, which is all the add-on needs.
async fn stand_in_tenant(client: &Client, ns: &str, name: &str) -> Result<()> {
    let kubeconfig = format!("apiVersion: v1\nkind: Config\n# {name}\n");
    for (secret, key) in [
        (format!("{name}-admin-kubeconfig"), "kubeconfig"),
        (
            format!("{name}-addon-kubeconfigs"),
            "cluster-autoscaler.conf",
        ),
    ] {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": secret, "namespace": ns},
            "stringData": {key: kubeconfig}
        }))?;
        Api::<Secret>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &secret)
            .await?;
    }
    let tcp: TenantControlPlane = serde_json::from_value(json!({
        "apiVersion": "orrery.dev/v1alpha1", "kind": "TenantControlPlane",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"version": "v1.34.4", "addons": {"clusterAutoscaler": {"enabled": true}}}
    }))?;
    let api = Api::<TenantControlPlane>::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &tcp).await?;
    let status = json!({"status": {
        "version": "v1.34.4",
        "kubeconfigSecretRef": {"name": format!("{name}-admin-kubeconfig"), "key": "kubeconfig"}
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// NodePool `name` of tenant `tenant` with `replicas` within `min..=max` (no bounds: None).
async fn pool(
    client: &Client,
    ns: &str,
    name: &str,
    tenant: &str,
    replicas: i32,
    bounds: Option<(i32, i32)>,
) -> Result<()> {
    let mut spec = json!({
        "controlPlaneRef": {"name": tenant},
        "replicas": replicas,
        "template": {"cores": 2, "memory": "4Gi", "nodeLabels": {"example.com/pool": name},
                     "taints": [{"key": "example.com/dedicated", "value": name, "effect": "NoSchedule"}]}
    });
    if let Some((min, max)) = bounds {
        spec["autoscaling"] = json!({"minReplicas": min, "maxReplicas": max});
    }
    let pool: NodePool = serde_json::from_value(json!({
        "apiVersion": "orrery.dev/v1alpha1", "kind": "NodePool",
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    }))?;
    Api::<NodePool>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pool)
        .await?;
    Ok(())
}

/// A machine of `pool`: a Halted VirtualMachine labelled as Orrery labels its own, valid for
/// KubeVirt's admission too.
async fn machine(client: &Client, ns: &str, pool: &str, name: &str) -> Result<()> {
    let vm: VirtualMachine = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"app.kubernetes.io/managed-by": "orrery", POOL_LABEL: pool}},
        "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {
            "devices": {}, "memory": {"guest": "64Mi"}
        }}}}
    }))?;
    Api::<VirtualMachine>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &vm)
        .await?;
    Ok(())
}

/// Writes a pool's status as its controller would: one machine per (name, phase).
async fn machines_status(
    client: &Client,
    ns: &str,
    pool: &str,
    machines: &[(&str, &str)],
) -> Result<()> {
    let machines: Vec<_> = machines
        .iter()
        .map(|(name, phase)| {
            json!({"name": name, "phase": phase, "version": "v1.34.4",
                                   "templateHash": "h", "since": "2026-01-01T00:00:00Z"})
        })
        .collect();
    let status = json!({"status": {"replicas": machines.len(), "machines": machines}});
    Api::<NodePool>::namespaced(client.clone(), ns)
        .patch_status(pool, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

async fn replicas(client: &Client, ns: &str, pool: &str) -> Result<i32> {
    Ok(Api::<NodePool>::namespaced(client.clone(), ns)
        .get(pool)
        .await?
        .spec
        .replicas)
}

async fn marked(client: &Client, ns: &str, vm: &str) -> Result<bool> {
    let vm = Api::<VirtualMachine>::namespaced(client.clone(), ns)
        .get(vm)
        .await?;
    Ok(vm.annotations().contains_key(DELETE_ANNOTATION))
}

fn node(name: &str) -> ExternalGrpcNode {
    ExternalGrpcNode {
        provider_id: format!("kubevirt://{name}"),
        name: name.into(),
        ..Default::default()
    }
}

/// Asserts a call failed with `code`, and returns its message.
fn refused<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
) -> String {
    match result {
        Err(status) => {
            assert_eq!(status.code(), code, "{}", status.message());
            status.message().to_string()
        }
        Ok(response) => panic!("expected {code:?}, got {response:?}"),
    }
}

/// Runs the API server and the add-on controller in this process until `shutdown`.
async fn start_orrery(
    client: &Client,
    operator_ns: &str,
    shutdown: &CancellationToken,
) -> Result<ApiEndpoint> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = ApiEndpoint {
        service: "orrery-autoscaler".into(),
        namespace: operator_ns.into(),
        port: listener.local_addr()?.port(),
    };
    tokio::spawn(autoscaler::server::serve(
        client.clone(),
        api.clone(),
        listener,
        shutdown.clone(),
    ));
    let settings = Settings {
        autoscaler: Some(api.clone()),
        ..Settings::default()
    };
    let reporter = Reporter {
        controller: "orrery".into(),
        instance: Some("e2e-autoscaler".into()),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::default(),
        reporter,
        settings,
    ));
    tokio::spawn(autoscaler::run(ctx, shutdown.clone()));
    Ok(api)
}

/// The client of `tenant`, from its Secret once the add-on made it, dialling this process.
async fn tenant_client(
    client: &Client,
    ns: &str,
    tenant: &str,
    api: &ApiEndpoint,
) -> Result<client_side::Client> {
    let config = eventually(
        &format!("the autoscaler Secret of {tenant}"),
        WAIT,
        || async { CloudConfig::read(client, ns, tenant).await.ok() },
    )
    .await?;
    ensure!(
        config.address == api.address(),
        "cloud-config address {}",
        config.address
    );
    config
        .connect(Some(&format!("127.0.0.1:{}", api.port)))
        .await
}

/// The tenants, their pools and machines, the API and add-on in this process, and each tenant's
/// client.
struct Scene {
    client: Client,
    ns: String,
    operator_ns: String,
    api: ApiEndpoint,
    alpha: client_side::Client,
    beta: client_side::Client,
    /// alpha's group of two machines (1 to 4), and its group at zero (0 to 3).
    workers: String,
    zero: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn the_autoscaler_api_scales_a_tenants_own_pools() -> Result<()> {
    let ground = Ground::get()?;
    install_crds(&ground);
    let stand_ins = !has_real_kubevirt(&ground);
    if stand_ins {
        install_kubevirt_stand_ins(&ground);
    }
    let client = ground.client().await?;
    let operator_ns = create_namespace(&client, "asc-operator").await?;
    let ns = create_namespace(&client, "asc").await?;
    let shutdown = CancellationToken::new();
    let _cleanup = Cleanup {
        ground: ground.clone(),
        namespaces: vec![operator_ns.clone(), ns.clone()],
        stand_ins,
        shutdown: shutdown.clone(),
    };
    let s = scene(client, ns, operator_ns, &shutdown).await?;
    check_deployment(&s.client, &s.ns).await?;
    the_autoscaler_loop(&s).await?;
    scale_from_zero(&s).await?;
    scale_down(&s).await?;
    other_tenants_are_out_of_reach(&s).await?;
    check_strangers_refused(&s.client, &s.ns, &s.api).await?;
    switch_off(&s).await
}

/// Two tenants in `ns`, alpha with three pools (two autoscaled) and beta with one, machines as
/// a pool controller would have made them, then Orrery and the tenants' clients.
async fn scene(
    client: Client,
    ns: String,
    operator_ns: String,
    shutdown: &CancellationToken,
) -> Result<Scene> {
    for tenant in ["alpha", "beta"] {
        stand_in_tenant(&client, &ns, tenant).await?;
    }
    pool(&client, &ns, "alpha-workers", "alpha", 2, Some((1, 4))).await?;
    pool(&client, &ns, "alpha-zero", "alpha", 0, Some((0, 3))).await?;
    pool(&client, &ns, "alpha-fixed", "alpha", 1, None).await?;
    pool(&client, &ns, "beta-workers", "beta", 1, Some((1, 2))).await?;
    for (p, vm) in [
        ("alpha-workers", "alpha-workers-aaaaa"),
        ("alpha-workers", "alpha-workers-bbbbb"),
        ("beta-workers", "beta-workers-ccccc"),
    ] {
        machine(&client, &ns, p, vm).await?;
    }
    machines_status(
        &client,
        &ns,
        "alpha-workers",
        &[
            ("alpha-workers-aaaaa", "Ready"),
            ("alpha-workers-bbbbb", "Provisioning"),
        ],
    )
    .await?;

    let api = start_orrery(&client, &operator_ns, shutdown).await?;
    Ok(Scene {
        alpha: tenant_client(&client, &ns, "alpha", &api).await?,
        beta: tenant_client(&client, &ns, "beta", &api).await?,
        workers: format!("{ns}/alpha-workers"),
        zero: format!("{ns}/alpha-zero"),
        client,
        ns,
        operator_ns,
        api,
    })
}

/// The autoscaler's loop: Refresh, NodeGroups, the group of every node, then each group.
async fn the_autoscaler_loop(s: &Scene) -> Result<()> {
    let (ns, mut alpha) = (&s.ns, s.alpha.clone());
    // The first calls may come before the operator's watches have listed everything.
    eventually("the API to answer", WAIT, || {
        let mut alpha = alpha.clone();
        async move { alpha.refresh(RefreshRequest {}).await.ok() }
    })
    .await?;
    let groups = eventually("alpha's node groups", WAIT, || {
        let mut alpha = alpha.clone();
        async move {
            let groups = alpha
                .node_groups(NodeGroupsRequest {})
                .await
                .ok()?
                .into_inner();
            (groups.node_groups.len() == 2).then_some(groups.node_groups)
        }
    })
    .await?;
    let ids: Vec<(String, i32, i32)> = groups
        .iter()
        .map(|g| (g.id.clone(), g.min_size, g.max_size))
        .collect();
    let (workers, zero) = (format!("{ns}/alpha-workers"), format!("{ns}/alpha-zero"));
    assert_eq!(
        ids,
        [(workers.clone(), 1, 4), (zero.clone(), 0, 3)],
        "only alpha's autoscaled pools"
    );

    let found = eventually("the group of alpha's machine", WAIT, || async {
        group_of(&alpha, node("alpha-workers-aaaaa"))
            .await
            .ok()
            .filter(|id| !id.is_empty())
    })
    .await?;
    assert_eq!(found, workers);
    assert_eq!(
        group_of(&alpha, node("beta-workers-ccccc")).await?,
        "",
        "beta's node is in no group of alpha's"
    );
    assert_eq!(group_of(&alpha, node("no-such-vm")).await?, "");

    assert_eq!(target_size(&alpha, workers.clone()).await?, 2);
    let states = instance_states(&mut alpha, &workers).await?;
    assert_eq!(
        states,
        [
            (
                "kubevirt://alpha-workers-aaaaa".to_string(),
                InstanceState::InstanceRunning
            ),
            (
                "kubevirt://alpha-workers-bbbbb".to_string(),
                InstanceState::InstanceCreating
            ),
        ]
    );

    Ok(())
}

/// Scale from zero: the template of the empty group, then two nodes more, and back by one.
async fn scale_from_zero(s: &Scene) -> Result<()> {
    let (client, ns, zero) = (&s.client, &s.ns, &s.zero);
    let mut alpha = s.alpha.clone();
    let template = alpha
        .node_group_template_node_info(NodeGroupTemplateNodeInfoRequest { id: zero.clone() })
        .await?
        .into_inner();
    let from_bytes = Node::decode(template.node_bytes.as_slice())?;
    #[allow(deprecated)]
    let embedded = template
        .node_info
        .clone()
        .context("the embedded Node for older autoscalers")?;
    assert_eq!(from_bytes, embedded, "both fields carry the same Node");
    let labels = from_bytes.metadata.clone().unwrap_or_default().labels;
    assert_eq!(labels["node.kubernetes.io/instance-type"], "2c-4Gi");
    assert_eq!(labels["example.com/pool"], "alpha-zero");
    assert_eq!(labels[POOL_LABEL], "alpha-zero");
    let status = from_bytes.status.clone().unwrap_or_default();
    assert_eq!(status.capacity["memory"].string, "4Gi");
    assert_eq!(status.allocatable["pods"].string, "110");
    assert_eq!(
        from_bytes.spec.clone().unwrap_or_default().taints[0].effect,
        "NoSchedule"
    );

    alpha
        .node_group_increase_size(NodeGroupIncreaseSizeRequest {
            id: zero.clone(),
            delta: 2,
        })
        .await?;
    assert_eq!(
        replicas(client, ns, "alpha-zero").await?,
        2,
        "the scale subresource was set"
    );
    assert_eq!(
        target_size(&alpha, zero.clone()).await?,
        2,
        "the next read shows it"
    );
    let message = refused(
        alpha
            .node_group_increase_size(NodeGroupIncreaseSizeRequest {
                id: zero.clone(),
                delta: 2,
            })
            .await,
        Code::OutOfRange,
    );
    assert!(message.contains("maximum 3"), "{message}");
    assert_eq!(replicas(client, ns, "alpha-zero").await?, 2);
    alpha
        .node_group_decrease_target_size(NodeGroupDecreaseTargetSizeRequest {
            id: zero.clone(),
            delta: -1,
        })
        .await?;
    assert_eq!(
        replicas(client, ns, "alpha-zero").await?,
        1,
        "capacity never created may go"
    );

    Ok(())
}

/// Scale down: exactly the named node goes, in one call with the lower replicas.
async fn scale_down(s: &Scene) -> Result<()> {
    let (client, ns, workers) = (&s.client, &s.ns, &s.workers);
    let mut alpha = s.alpha.clone();
    let delete = |id: &str, names: &[&str]| NodeGroupDeleteNodesRequest {
        id: id.into(),
        nodes: names.iter().map(|n| node(n)).collect(),
    };
    alpha
        .node_group_delete_nodes(delete(workers, &["alpha-workers-aaaaa"]))
        .await?;
    assert!(
        marked(client, ns, "alpha-workers-aaaaa").await?,
        "the named machine is marked"
    );
    assert!(
        !marked(client, ns, "alpha-workers-bbbbb").await?,
        "and no other"
    );
    assert_eq!(replicas(client, ns, "alpha-workers").await?, 1);
    alpha
        .node_group_delete_nodes(delete(workers, &["alpha-workers-aaaaa"]))
        .await?;
    assert_eq!(
        replicas(client, ns, "alpha-workers").await?,
        1,
        "asking again changes nothing"
    );
    let states = instance_states(&mut alpha, workers).await?;
    assert_eq!(states[0].1, InstanceState::InstanceDeleting);
    let message = refused(
        alpha
            .node_group_delete_nodes(delete(workers, &["alpha-workers-bbbbb"]))
            .await,
        Code::OutOfRange,
    );
    assert!(message.contains("minimum 1"), "{message}");
    assert!(
        !marked(client, ns, "alpha-workers-bbbbb").await?,
        "nothing marked when refused"
    );
    refused(
        alpha
            .node_group_delete_nodes(delete(workers, &["beta-workers-ccccc"]))
            .await,
        Code::InvalidArgument,
    );
    refused(
        alpha
            .node_group_decrease_target_size(NodeGroupDecreaseTargetSizeRequest {
                id: workers.clone(),
                delta: -1,
            })
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(
        replicas(client, ns, "alpha-workers").await?,
        1,
        "an existing machine stays"
    );

    Ok(())
}

/// Another tenant's groups are out of reach, in its namespace or another; what Orrery does not
/// offer is Unimplemented, which the autoscaler accepts.
async fn other_tenants_are_out_of_reach(s: &Scene) -> Result<()> {
    let (client, ns, operator_ns, workers) = (&s.client, &s.ns, &s.operator_ns, &s.workers);
    let (mut alpha, mut beta) = (s.alpha.clone(), s.beta.clone());
    let theirs = format!("{ns}/beta-workers");
    refused(
        target_size(&alpha, theirs.clone())
            .await
            .map(tonic::Response::new),
        Code::PermissionDenied,
    );
    refused(
        alpha
            .node_group_increase_size(NodeGroupIncreaseSizeRequest {
                id: theirs.clone(),
                delta: 1,
            })
            .await,
        Code::PermissionDenied,
    );
    refused(
        target_size(&alpha, format!("{operator_ns}/alpha-workers"))
            .await
            .map(tonic::Response::new),
        Code::PermissionDenied,
    );
    refused(
        target_size(&alpha, format!("{ns}/alpha-fixed"))
            .await
            .map(tonic::Response::new),
        Code::NotFound,
    );
    assert_eq!(replicas(client, ns, "beta-workers").await?, 1);
    let beta_groups = beta
        .node_groups(NodeGroupsRequest {})
        .await?
        .into_inner()
        .node_groups;
    assert_eq!(
        beta_groups
            .iter()
            .map(|g| g.id.as_str())
            .collect::<Vec<_>>(),
        [theirs.as_str()]
    );

    refused(
        alpha.gpu_label(GpuLabelRequest {}).await,
        Code::Unimplemented,
    );
    refused(
        alpha
            .get_available_gpu_types(GetAvailableGpuTypesRequest {})
            .await,
        Code::Unimplemented,
    );
    refused(
        alpha
            .pricing_node_price(PricingNodePriceRequest::default())
            .await,
        Code::Unimplemented,
    );
    refused(
        alpha
            .node_group_get_options(NodeGroupAutoscalingOptionsRequest {
                id: workers.clone(),
                defaults: None,
            })
            .await,
        Code::Unimplemented,
    );
    alpha.cleanup(CleanupRequest {}).await?;

    Ok(())
}

/// Switched off, the tenant's autoscaler goes, and the other tenant's stays.
async fn switch_off(s: &Scene) -> Result<()> {
    let (client, ns) = (&s.client, &s.ns);
    Api::<TenantControlPlane>::namespaced(client.clone(), ns)
        .patch(
            "alpha",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"addons": {"clusterAutoscaler": {"enabled": false}}}})),
        )
        .await?;
    eventually("alpha's autoscaler to be removed", WAIT, || async {
        let d = Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt("alpha-cluster-autoscaler")
            .await
            .ok()?;
        let s = Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt("alpha-cluster-autoscaler")
            .await
            .ok()?;
        (d.is_none() && s.is_none()).then_some(())
    })
    .await?;
    let beta_still = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt("beta-cluster-autoscaler")
        .await?;
    assert!(beta_still.is_some(), "beta's autoscaler stays");
    Ok(())
}

/// The id of the group of `n` (empty: none), as `c` is told.
async fn group_of(c: &client_side::Client, n: ExternalGrpcNode) -> Result<String, tonic::Status> {
    let request = NodeGroupForNodeRequest { node: Some(n) };
    let response = c.clone().node_group_for_node(request).await?;
    Ok(response.into_inner().node_group.unwrap_or_default().id)
}

/// The target size of group `id`, as `c` is told.
async fn target_size(c: &client_side::Client, id: String) -> Result<i32, tonic::Status> {
    let response = c
        .clone()
        .node_group_target_size(NodeGroupTargetSizeRequest { id })
        .await?;
    Ok(response.into_inner().target_size)
}

/// The instances of group `id`: (id, state).
async fn instance_states(
    c: &mut client_side::Client,
    id: &str,
) -> Result<Vec<(String, InstanceState)>> {
    let instances = c
        .node_group_nodes(NodeGroupNodesRequest { id: id.into() })
        .await?
        .into_inner()
        .instances;
    Ok(instances
        .into_iter()
        .map(|i| {
            let state = i.status.unwrap_or_default().instance_state();
            (i.id, state)
        })
        .collect())
}

/// The Deployment the add-on made for alpha: the upstream image of its minor, the
/// externalgrpc provider with the mounted cloud-config, Pod Security restricted.
async fn check_deployment(client: &Client, ns: &str) -> Result<()> {
    // Applied just after the Secret the client waited for.
    let d = eventually("alpha's autoscaler Deployment", WAIT, || async {
        Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt("alpha-cluster-autoscaler")
            .await
            .ok()
            .flatten()
    })
    .await?;
    let d = serde_json::to_value(&d)?;
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["image"],
        "registry.k8s.io/autoscaling/cluster-autoscaler:v1.34.5"
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"--cloud-provider=externalgrpc"), "{args:?}");
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        d["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
    assert_eq!(d["metadata"]["ownerReferences"][0]["name"], "alpha");
    Ok(())
}

/// No certificate, or one for the same tenant from another CA: no call gets through.
async fn check_strangers_refused(client: &Client, ns: &str, api: &ApiEndpoint) -> Result<()> {
    let config = CloudConfig::read(client, ns, "alpha").await?;
    let dial = format!("127.0.0.1:{}", api.port);
    let other_ca = pki::generate_ca("not the API's CA", Duration::from_secs(3600))?;
    let profile = CertProfile::client(&format!("{ns}/alpha"), &[], Duration::from_secs(600));
    let forged = pki::issue(&other_ca, &profile, SystemTime::now())?;
    let base = || {
        ClientTlsConfig::new()
            .domain_name(config.host().unwrap())
            .ca_certificate(Certificate::from_pem(&config.ca))
    };
    for (what, tls) in [
        ("without a client certificate", base()),
        (
            "with a certificate of another CA",
            base().identity(Identity::from_pem(&forged.cert, &forged.key)),
        ),
    ] {
        let got = match client_side::connect(&dial, tls).await {
            Err(_) => None,
            Ok(mut c) => c.refresh(RefreshRequest {}).await.ok(),
        };
        assert!(got.is_none(), "a client {what} got an answer");
    }
    Ok(())
}
