//! RBAC pieces of the tenant bootstrap and add-ons: subjects, rules, roles and their bindings.

use super::meta;
use k8s_openapi::api::rbac::v1::{
    ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

pub(super) fn group(name: &str) -> Subject {
    Subject {
        kind: "Group".into(),
        name: name.into(),
        api_group: Some(RBAC_GROUP.into()),
        namespace: None,
    }
}

pub(super) fn user(name: &str) -> Subject {
    Subject {
        kind: "User".into(),
        name: name.into(),
        api_group: Some(RBAC_GROUP.into()),
        namespace: None,
    }
}

pub(super) fn service_account_subject(name: &str, namespace: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some(namespace.into()),
        api_group: None,
    }
}

pub(super) fn cluster_role_binding(
    name: &str,
    role: &str,
    subjects: Vec<Subject>,
) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(name, None),
        role_ref: RoleRef {
            api_group: RBAC_GROUP.into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(subjects),
    }
}

/// A rule on `resources` of `groups`, limited to `names` when there are any.
pub(super) fn rule(
    groups: &[&str],
    resources: &[&str],
    names: &[&str],
    verbs: &[&str],
) -> PolicyRule {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        resource_names: (!names.is_empty()).then(|| strings(names)),
        verbs: strings(verbs),
        ..Default::default()
    }
}

/// A Role and the RoleBinding, of the same name, that grants it to `subjects`.
pub(super) fn role_with_binding(
    name: &str,
    namespace: &str,
    rules: Vec<PolicyRule>,
    subjects: Vec<Subject>,
) -> (Role, RoleBinding) {
    (
        Role {
            metadata: meta(name, Some(namespace)),
            rules: Some(rules),
        },
        RoleBinding {
            metadata: meta(name, Some(namespace)),
            role_ref: RoleRef {
                api_group: RBAC_GROUP.into(),
                kind: "Role".into(),
                name: name.into(),
            },
            subjects: Some(subjects),
        },
    )
}
