//! The tree of one tenant, built from what was read (pure). Its parts, in this order: the
//! TenantControlPlane (Ready and phase), its DataStore, the endpoint, the control-plane
//! Deployment with its pods, the certificates, the add-ons, when the tenant was read its nodes,
//! and one part per NodePool of the tenant with its machines ([`pools`]). Each part's row shows
//! the condition Orrery keeps for it; alike pods, certificates, nodes and machines are grouped
//! by [`grouped`] unless [`Options::expand`].

use super::super::error::forbidden;
use super::fetch::{Access, Fetched, InTenant, Inside, datastore_name};
use super::row::{Item, Ready, Row, Severity, Tree, grouped};
use super::{certs, objects, pools};
use crate::api::{AddonSpec, TenantControlPlane, TenantControlPlaneStatus};
use crate::conditions::{
    CERTIFICATES_READY, CONTROL_PLANE_AVAILABLE, DATASTORE_READY, DEGRADED, READY,
    TENANT_API_READY, TENANT_BOOTSTRAPPED,
};
use crate::controlplane::build::Names;
use crate::tenant::{ADDON_LABEL, COREDNS, KONNECTIVITY_AGENT, KUBE_PROXY};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use std::time::Duration;

#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// One row per pod, certificate, node and machine instead of grouping alike ones.
    pub expand: bool,
}

pub fn tree(f: &Fetched, opts: Options, now: Timestamp) -> Tree {
    let mut parts = vec![
        datastore(f),
        endpoint(f),
        control_plane(f, opts),
        certificates(f, opts, now),
        addons(f),
    ];
    if let Inside::Read(inside) = &f.inside {
        parts.push(nodes(inside, opts));
    }
    parts.extend(node_pools(f, opts));
    Tree::with(tenant(&f.tcp), parts)
}

fn condition<'a>(tcp: &'a TenantControlPlane, type_: &str) -> Option<&'a Condition> {
    tcp.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// What a refused or failed read means for a row; `None` when the read went through.
/// `namespace` is `None` for cluster-scoped resources.
fn unread<T>(
    read: &Access<T>,
    verb: &str,
    resource: &str,
    namespace: Option<&str>,
) -> Option<String> {
    match read {
        Access::Read(_) => None,
        Access::Forbidden => Some(match namespace {
            Some(_) => forbidden(verb, resource, resource, namespace),
            None => format!("no permission to {verb} {resource}: ask for {verb} on {resource}"),
        }),
        Access::Failed(e) => Some(format!("cannot {verb} {resource}: {e}")),
    }
}

fn tenant(tcp: &TenantControlPlane) -> Row {
    let mut row = Row::from_condition(
        format!("TenantControlPlane/{}", tcp.name_any()),
        condition(tcp, READY),
    );
    let Some(status) = &tcp.status else {
        row.message = format!(
            "{}: Orrery has not reported on it yet; is the operator running?",
            tcp.spec.version
        );
        return row;
    };
    row.message = tenant_message(tcp, status, &row.message);
    if condition(tcp, DEGRADED).is_some_and(|c| c.status == "True") {
        row.severity = Some(Severity::Error);
    }
    row
}

/// "phase, version: Ready's message", with the upgrade under way and a spec not yet taken up.
fn tenant_message(
    tcp: &TenantControlPlane,
    status: &TenantControlPlaneStatus,
    ready: &str,
) -> String {
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let wanted = &tcp.spec.version;
    let version = match status.version.as_deref() {
        Some(v) if v != wanted => format!("{v} → {wanted}"),
        _ => wanted.clone(),
    };
    let mut message = format!("{phase}, {version}");
    if !ready.is_empty() {
        message.push_str(&format!(": {ready}"));
    }
    if status.observed_generation < tcp.metadata.generation {
        message.push_str("; Orrery has not taken up the latest change yet");
    }
    message
}

/// The tenant's own view (its etcd user and prefix), unless the DataStore itself is the trouble.
fn datastore(f: &Fetched) -> Tree {
    let tcp = &f.tcp;
    let name = datastore_name(tcp).map_or_else(
        || "DataStore (the default, once chosen)".into(),
        |n| format!("DataStore/{n}"),
    );
    let own = match &f.datastore {
        Access::Read(Some(ds)) => ds
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY)),
        _ => None,
    };
    let shown = match own {
        Some(c) if c.status != "True" => Some(c),
        _ => condition(tcp, DATASTORE_READY),
    };
    let mut row = Row::from_condition(name, shown);
    if let Some(note) = unread(&f.datastore, "get", "datastores", None)
        && row.message.is_empty()
    {
        row.message = note;
    }
    Tree::leaf(row)
}

fn endpoint(f: &Fetched) -> Tree {
    let tcp = &f.tcp;
    let ns = tcp.namespace().unwrap_or_default();
    let service = Names::new(tcp).workload();
    let mut row = Row::from_condition(
        format!("Endpoint - Service/{service}"),
        condition(tcp, TENANT_API_READY),
    );
    if !row.message.is_empty() {
        return Tree::leaf(row);
    }
    let endpoint = tcp.status.as_ref().and_then(|s| s.endpoint.clone());
    row.message = match (&f.service, endpoint) {
        (Access::Read(Some(svc)), Some(endpoint)) => {
            let type_ = svc.spec.as_ref().and_then(|s| s.type_.clone());
            format!(
                "{endpoint} ({})",
                type_.unwrap_or_else(|| "ClusterIP".into())
            )
        }
        (Access::Read(Some(_)), None) => "no address yet".into(),
        (Access::Read(None), _) => "not created yet".into(),
        (read, _) => unread(read, "get", "services", Some(&ns)).unwrap_or_default(),
    };
    Tree::leaf(row)
}

fn control_plane(f: &Fetched, opts: Options) -> Tree {
    let tcp = &f.tcp;
    let ns = tcp.namespace().unwrap_or_default();
    let mut row = Row::from_condition(
        format!("ControlPlane - Deployment/{}", Names::new(tcp).workload()),
        condition(tcp, CONTROL_PLANE_AVAILABLE),
    );
    match &f.deployment {
        Access::Read(Some(d)) => {
            let status = d.status.clone().unwrap_or_default();
            let (updated, want) = (status.updated_replicas.unwrap_or(0), tcp.spec.replicas);
            if updated < want {
                row.message
                    .push_str(&format!("; rolling out: {updated}/{want} updated"));
            }
        }
        Access::Read(None) if row.message.is_empty() => row.message = "not created yet".into(),
        Access::Read(None) => {}
        read => row.message = unread(read, "get", "deployments", Some(&ns)).unwrap_or_default(),
    }
    let pods = match &f.pods {
        Access::Read(pods) => grouped(pods.iter().map(objects::pod).collect(), "Pods", opts.expand),
        read => vec![Tree::leaf(Row::note(
            "Pods",
            unread(read, "list", "pods", Some(&ns)).unwrap_or_default(),
        ))],
    };
    Tree::with(row, pods)
}

fn certificates(f: &Fetched, opts: Options, now: Timestamp) -> Tree {
    let tcp = &f.tcp;
    let ns = tcp.namespace().unwrap_or_default();
    let secret = Names::new(tcp).certs();
    let mut row = Row::from_condition(
        format!("Certificates - Secret/{secret}"),
        condition(tcp, CERTIFICATES_READY),
    );
    let children = match &f.certificates {
        Access::Read(Some(s)) => {
            let data = s
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            let hours = tcp.spec.certificates.renew_before_hours.max(0) as u64;
            let (cas, leaves) = certs::items(&data, Duration::from_secs(hours * 3600), now);
            let mut rows = grouped(cas, "CAs", opts.expand);
            rows.extend(grouped(leaves, "Certificates", opts.expand));
            rows
        }
        Access::Read(None) => {
            if row.message.is_empty() {
                row.message = "not created yet".into();
            }
            Vec::new()
        }
        read => vec![Tree::leaf(Row::note(
            "Certificates",
            unread(read, "get", "secrets", Some(&ns)).unwrap_or_default(),
        ))],
    };
    Tree::with(row, children)
}

/// An add-on: its label value (also its workload's name), its name in the spec, and whether its
/// workload is a Deployment (else a DaemonSet).
struct Addon {
    label: &'static str,
    title: &'static str,
    field: &'static str,
    deployment: bool,
}

const ADDONS: [Addon; 3] = [
    Addon {
        label: COREDNS,
        title: "CoreDNS",
        field: "coreDNS",
        deployment: true,
    },
    Addon {
        label: KUBE_PROXY,
        title: "kube-proxy",
        field: "kubeProxy",
        deployment: false,
    },
    Addon {
        label: KONNECTIVITY_AGENT,
        title: "konnectivity-agent",
        field: "konnectivity",
        deployment: false,
    },
];

fn addons(f: &Fetched) -> Tree {
    let tcp = &f.tcp;
    let spec = &tcp.spec.addons;
    let mut row = Row::from_condition("Addons", condition(tcp, TENANT_BOOTSTRAPPED));
    // Why the tenant was not read is said once, here, rather than on every add-on.
    if let Inside::Skipped(why) | Inside::Unreachable(why) = &f.inside {
        let note = format!("not read from the tenant: {why}");
        row.message = if row.message.is_empty() {
            note
        } else {
            format!("{}; {note}", row.message)
        };
        row.severity = row.severity.or(Some(Severity::Info));
    }
    let specs: [&AddonSpec; 3] = [&spec.core_dns, &spec.kube_proxy, &spec.konnectivity];
    let children = ADDONS
        .iter()
        .zip(specs)
        .map(|(addon, spec)| Tree::leaf(addon_row(addon, spec.enabled, &f.inside)))
        .collect();
    Tree::with(row, children)
}

fn addon_row(addon: &Addon, enabled: bool, inside: &Inside) -> Row {
    let kind = if addon.deployment {
        "Deployment"
    } else {
        "DaemonSet"
    };
    let name = format!("{} - {kind}/{}", addon.title, addon.label);
    if !enabled {
        return Row {
            reason: "Disabled".into(),
            message: format!("switched off: spec.addons.{}.enabled is false", addon.field),
            ..Row::named(name)
        };
    }
    let Inside::Read(inside) = inside else {
        return Row {
            message: "enabled".into(),
            ..Row::named(name)
        };
    };
    let labelled = |labels: &std::collections::BTreeMap<String, String>| {
        labels.get(ADDON_LABEL).map(String::as_str) == Some(addon.label)
    };
    let found = if addon.deployment {
        inside
            .deployments
            .iter()
            .find(|d| labelled(d.labels()))
            .map(|d| objects::deployment(d, inside.nodes.is_empty()))
    } else {
        inside
            .daemon_sets
            .iter()
            .find(|d| labelled(d.labels()))
            .map(|d| objects::daemon_set(d, inside.nodes.is_empty()))
    };
    let mut row = found.unwrap_or_else(|| Row {
        ready: Some(Ready::False),
        severity: Some(Severity::Warning),
        reason: "NotFound".into(),
        message: "not in the tenant: Orrery puts it there once the tenant API answers".into(),
        ..Row::default()
    });
    row.name = name;
    row
}

/// The tenant's nodes, whatever joined them; a NodePool's part shows its own again as machines.
fn nodes(inside: &InTenant, opts: Options) -> Tree {
    let items: Vec<Item> = inside.nodes.iter().map(objects::node).collect();
    let ready = items
        .iter()
        .filter(|i| i.row.ready == Some(Ready::True))
        .count();
    let message = if items.is_empty() {
        "no node has joined yet".to_string()
    } else {
        format!("{ready}/{} Ready", items.len())
    };
    let row = Row {
        message,
        ..Row::named("Nodes")
    };
    Tree::with(row, grouped(items, "Nodes", opts.expand))
}

/// One part per NodePool whose spec.controlPlaneRef names the tenant; none when it has none.
fn node_pools(f: &Fetched, opts: Options) -> Vec<Tree> {
    let tenant = f.tcp.name_any();
    match &f.pools {
        Access::Read(all) => all
            .iter()
            .filter(|p| p.spec.control_plane_ref.name == tenant)
            .map(|p| pools::pool(p, opts.expand))
            .collect(),
        read => {
            let ns = f.tcp.namespace().unwrap_or_default();
            let why = unread(read, "list", "nodepools", Some(&ns)).unwrap_or_default();
            vec![Tree::leaf(Row::note("NodePools", why))]
        }
    }
}
