//! Pod-spec pieces every builder shares: the Pod Security `restricted` settings and environment
//! variables from the downward API.

use k8s_openapi::api::core::v1::{
    Capabilities, EnvVar, EnvVarSource, ObjectFieldSelector, PodSecurityContext, SeccompProfile,
    SecurityContext,
};

/// The unprivileged user Orrery's pods run as.
pub const NON_ROOT_USER: i64 = 65532;

fn runtime_default() -> Option<SeccompProfile> {
    Some(SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    })
}

/// A container that satisfies Pod Security `restricted`, with a read-only root filesystem.
pub fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(NON_ROOT_USER),
        run_as_group: Some(NON_ROOT_USER),
        seccomp_profile: runtime_default(),
        ..Default::default()
    }
}

/// The pod-level half of `restricted`; mounted volumes are group-readable through fsGroup.
pub fn restricted_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NON_ROOT_USER),
        run_as_group: Some(NON_ROOT_USER),
        fs_group: Some(NON_ROOT_USER),
        seccomp_profile: runtime_default(),
        ..Default::default()
    }
}

/// An environment variable set from a field of the pod, such as `status.podIP`.
pub fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
