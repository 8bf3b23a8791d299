//! What the add-ons that work on the tenant from outside it may do there. Each has a user of its
//! own (a client certificate of the tenant's CA, [`crate::pki`]) bound to a ClusterRole that
//! names every resource and verb it uses: the cloud controller and the CSI driver's controllers
//! (run by the operator) share `orrery:cloud-controller`, and the cluster-autoscaler (a pod in
//! the management cluster) is `orrery:cluster-autoscaler`. Neither is ever cluster-admin.

use super::rbac::{cluster_role_binding, rule, user};
use super::{TenantObjects, meta};
use crate::pki::{CLOUD_CONTROLLER_USER, CLUSTER_AUTOSCALER_USER};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};

const READ: [&str; 3] = ["get", "list", "watch"];

/// Events, as kube's recorder publishes them (events.k8s.io) and as older clients do.
fn events() -> PolicyRule {
    rule(
        &["", "events.k8s.io"],
        &["events"],
        &[],
        &["create", "patch"],
    )
}

/// The rules of the cloud controller (`cloud`) and of the CSI driver's controllers (`csi`).
pub(super) fn cloud_rules(cloud: bool, csi: bool) -> Vec<PolicyRule> {
    let mut rules = vec![events()];
    if cloud {
        // Nodes: initialised (provider ID, labels, taint, addresses), deleted with their VM.
        rules.push(rule(
            &[""],
            &["nodes"],
            &[],
            &[&READ[..], &["patch", "delete"]].concat(),
        ));
        rules.push(rule(&[""], &["nodes/status"], &[], &["patch"]));
        // LoadBalancer Services: their finalizer and their address.
        rules.push(rule(
            &[""],
            &["services"],
            &[],
            &[&READ[..], &["patch"]].concat(),
        ));
        rules.push(rule(&[""], &["services/status"], &[], &["patch"]));
    }
    if csi {
        // The provisioner's, attacher's and resizer's work.
        rules.push(rule(&[""], &["persistentvolumeclaims"], &[], &READ));
        rules.push(rule(
            &[""],
            &["persistentvolumeclaims/status"],
            &[],
            &["patch"],
        ));
        rules.push(rule(
            &[""],
            &["persistentvolumes"],
            &[],
            &[&READ[..], &["create", "patch", "delete"]].concat(),
        ));
        rules.push(rule(&["storage.k8s.io"], &["storageclasses"], &[], &READ));
        rules.push(rule(
            &["storage.k8s.io"],
            &["volumeattachments"],
            &[],
            &[&READ[..], &["patch"]].concat(),
        ));
        rules.push(rule(
            &["storage.k8s.io"],
            &["volumeattachments/status"],
            &[],
            &["patch"],
        ));
    }
    rules
}

/// The rules of the cluster-autoscaler: it reads what decides where pods fit, taints and drains
/// the nodes it removes (by eviction), and keeps its status ConfigMap and its lease.
pub(super) fn autoscaler_rules() -> Vec<PolicyRule> {
    vec![
        events(),
        rule(
            &[""],
            &["nodes"],
            &[],
            &[&READ[..], &["update", "patch"]].concat(),
        ),
        rule(
            &[""],
            &[
                "pods",
                "services",
                "namespaces",
                "replicationcontrollers",
                "persistentvolumeclaims",
                "persistentvolumes",
            ],
            &[],
            &READ,
        ),
        rule(&[""], &["pods/eviction"], &[], &["create"]),
        rule(&[""], &["pods/status"], &[], &["update", "patch"]),
        rule(
            &["apps"],
            &["daemonsets", "replicasets", "statefulsets"],
            &[],
            &READ,
        ),
        rule(&["batch"], &["jobs", "cronjobs"], &[], &READ),
        rule(&["policy"], &["poddisruptionbudgets"], &[], &READ),
        rule(
            &["storage.k8s.io"],
            &[
                "storageclasses",
                "csinodes",
                "csidrivers",
                "csistoragecapacities",
                "volumeattachments",
            ],
            &[],
            &READ,
        ),
        rule(
            &["resource.k8s.io"],
            &["resourceclaims", "resourceslices", "deviceclasses"],
            &[],
            &READ,
        ),
        // Its status ConfigMap and its leader lease: created once, then only its own.
        rule(&[""], &["configmaps"], &[], &["create", "list", "watch"]),
        rule(
            &[""],
            &["configmaps"],
            &["cluster-autoscaler-status"],
            &["get", "update", "patch", "delete"],
        ),
        rule(&["coordination.k8s.io"], &["leases"], &[], &["create"]),
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["cluster-autoscaler"],
            &["get", "update", "patch"],
        ),
    ]
}

/// The ClusterRole `user` gets, with `rules`, and its binding (both named like the user).
pub(super) fn objects(o: &mut TenantObjects, user_name: &str, rules: Vec<PolicyRule>) {
    o.cluster_roles.push(ClusterRole {
        metadata: meta(user_name, None),
        rules: Some(rules),
        ..Default::default()
    });
    o.cluster_role_bindings.push(cluster_role_binding(
        user_name,
        user_name,
        vec![user(user_name)],
    ));
}

/// The cloud controller's and the CSI driver's part (when either is on).
pub(super) fn cloud(o: &mut TenantObjects, cloud: bool, csi: bool) {
    objects(o, CLOUD_CONTROLLER_USER, cloud_rules(cloud, csi));
}

/// The cluster-autoscaler's part.
pub(super) fn autoscaler(o: &mut TenantObjects) {
    objects(o, CLUSTER_AUTOSCALER_USER, autoscaler_rules());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_add_on_gets_only_what_it_uses_and_never_a_wildcard() {
        let mut o = TenantObjects::default();
        cloud(&mut o, true, false);
        autoscaler(&mut o);
        let cloud_only = &o.cluster_roles[0];
        let resources: Vec<&str> = cloud_only
            .rules
            .iter()
            .flatten()
            .flat_map(|r| r.resources.iter().flatten().map(String::as_str))
            .collect();
        assert!(resources.contains(&"nodes") && resources.contains(&"services/status"));
        assert!(
            !resources.contains(&"persistentvolumes"),
            "the CSI driver's rules come only with it"
        );
        for role in &o.cluster_roles {
            for r in role.rules.iter().flatten() {
                for field in [&r.verbs, r.resources.as_ref().unwrap()] {
                    assert!(!field.iter().any(|v| v == "*"), "{role:?}");
                }
            }
        }
        let binding = &o.cluster_role_bindings[1];
        assert_eq!(binding.role_ref.name, CLUSTER_AUTOSCALER_USER);
        let subject = &binding.subjects.as_ref().unwrap()[0];
        assert_eq!(
            (subject.kind.as_str(), subject.name.as_str()),
            ("User", CLUSTER_AUTOSCALER_USER)
        );
    }
}
