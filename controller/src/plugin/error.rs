//! What can go wrong in `kubectl orrery`, each said with what to do about it.

use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The management cluster's kubeconfig cannot be loaded.
    #[error(
        "cannot load the kubeconfig: {0}\nname it with --kubeconfig or KUBECONFIG, and the \
         context with --context"
    )]
    Config(String),

    /// No TenantControlPlane by that name; `existing` lists the namespace's tenants.
    #[error("{}", no_such_tenant(name, namespace, existing))]
    NoSuchTenant {
        name: String,
        namespace: String,
        existing: Vec<String>,
    },

    /// No NodePool by that name; `existing` lists the namespace's pools.
    #[error("{}", no_such_pool(name, namespace, existing))]
    NoSuchPool {
        name: String,
        namespace: String,
        existing: Vec<String>,
    },

    /// The cluster has no `orrery.dev` API for this kind.
    #[error(
        "this cluster has no {0} API (orrery.dev/v1alpha1): is it the management cluster where \
         Orrery is installed? Pick another with --kubeconfig or --context"
    )]
    NoApi(&'static str),

    /// RBAC refuses a request the command needs; `namespace` is `None` across namespaces.
    #[error("{}", forbidden(verb, what, resource, namespace.as_deref()))]
    Forbidden {
        verb: &'static str,
        what: String,
        resource: &'static str,
        namespace: Option<String>,
    },

    /// The tenant is not far enough along for the command; `why` is its status.
    #[error(
        "TenantControlPlane {name} in namespace {namespace} {what}: {why}\n\
         wait for it with: kubectl orrery wait {name} -n {namespace}"
    )]
    NotReady {
        name: String,
        namespace: String,
        what: String,
        why: String,
    },

    /// A change the command refuses before asking the apiserver (the apiserver would refuse it
    /// too).
    #[error("{0}")]
    Refused(String),

    /// The apiserver refused a change.
    #[error("the apiserver refused the change: {0}")]
    Rejected(String),

    /// The object (of `kind`) changed between our read and our write.
    #[error("{kind} {name} changed while this command ran; look at it again and rerun")]
    Conflict { kind: &'static str, name: String },

    /// A wait ran out of time; `why` is the object's status at that moment.
    #[error(
        "timed out after {}s waiting for {kind} {name} in namespace {namespace}: {why}",
        after.as_secs()
    )]
    Timeout {
        after: Duration,
        kind: &'static str,
        name: String,
        namespace: String,
        why: String,
    },

    /// The object was deleted while we waited for it.
    #[error("{kind} {name} in namespace {namespace} was deleted")]
    Gone {
        kind: &'static str,
        name: String,
        namespace: String,
    },

    /// Something read is not what Orrery writes (a Secret without its key, a bad kubeconfig).
    #[error("{0}")]
    Invalid(String),

    /// Any other API error.
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

fn no_such_tenant(name: &str, namespace: &str, existing: &[String]) -> String {
    let mut message = format!("no TenantControlPlane {name:?} in namespace {namespace}");
    if existing.is_empty() {
        message.push_str(
            "; it has none. Name the namespace with -n, or list every tenant with \
             kubectl orrery describe -A",
        );
    } else {
        message.push_str(&format!("; it has: {}", existing.join(", ")));
    }
    message
}

fn no_such_pool(name: &str, namespace: &str, existing: &[String]) -> String {
    let mut message = format!("no NodePool {name:?} in namespace {namespace}");
    if existing.is_empty() {
        message.push_str(
            "; it has none. Name the namespace with -n, or list every pool with \
             kubectl get nodepools -A",
        );
    } else {
        message.push_str(&format!("; it has: {}", existing.join(", ")));
    }
    message
}

/// "no permission to VERB WHAT in namespace N: ask for VERB on RESOURCE there".
pub fn forbidden(verb: &str, what: &str, resource: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!(
            "no permission to {verb} {what} in namespace {ns}: ask for {verb} on {resource} there"
        ),
        None => format!(
            "no permission to {verb} {what} across namespaces: ask for {verb} on {resource} in \
             every namespace"
        ),
    }
}

/// The HTTP status of an API error.
pub fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// [`Error::Forbidden`] for a 403 on `verb` of `resource` (`what` names the object), else the
/// error as it is.
pub fn forbidden_or(
    e: kube::Error,
    verb: &'static str,
    resource: &'static str,
    what: impl Into<String>,
    namespace: Option<&str>,
) -> Error {
    if code(&e) == Some(403) {
        Error::Forbidden {
            verb,
            what: what.into(),
            resource,
            namespace: namespace.map(Into::into),
        }
    } else {
        Error::Kube(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        let cases: Vec<(Error, &str)> = vec![
            (
                Error::NoSuchTenant {
                    name: "demo".into(),
                    namespace: "t".into(),
                    existing: vec!["a".into(), "b".into()],
                },
                "no TenantControlPlane \"demo\" in namespace t; it has: a, b",
            ),
            (
                Error::NoSuchTenant {
                    name: "demo".into(),
                    namespace: "t".into(),
                    existing: vec![],
                },
                "no TenantControlPlane \"demo\" in namespace t; it has none. Name the namespace \
                 with -n, or list every tenant with kubectl orrery describe -A",
            ),
            (
                Error::Forbidden {
                    verb: "get",
                    what: "Secret demo-admin-kubeconfig".into(),
                    resource: "secrets",
                    namespace: Some("t".into()),
                },
                "no permission to get Secret demo-admin-kubeconfig in namespace t: ask for get \
                 on secrets there",
            ),
            (
                Error::Forbidden {
                    verb: "list",
                    what: "TenantControlPlanes".into(),
                    resource: "tenantcontrolplanes",
                    namespace: None,
                },
                "no permission to list TenantControlPlanes across namespaces: ask for list on \
                 tenantcontrolplanes in every namespace",
            ),
            (
                Error::NoSuchPool {
                    name: "workers".into(),
                    namespace: "t".into(),
                    existing: vec!["gpu".into()],
                },
                "no NodePool \"workers\" in namespace t; it has: gpu",
            ),
            (
                Error::NoSuchPool {
                    name: "workers".into(),
                    namespace: "t".into(),
                    existing: vec![],
                },
                "no NodePool \"workers\" in namespace t; it has none. Name the namespace with -n, \
                 or list every pool with kubectl get nodepools -A",
            ),
            (
                Error::NoApi("NodePool"),
                "this cluster has no NodePool API (orrery.dev/v1alpha1): is it the management \
                 cluster where Orrery is installed? Pick another with --kubeconfig or --context",
            ),
            (
                Error::Timeout {
                    after: Duration::from_secs(30),
                    kind: "TenantControlPlane",
                    name: "demo".into(),
                    namespace: "t".into(),
                    why: "Provisioning".into(),
                },
                "timed out after 30s waiting for TenantControlPlane demo in namespace t: \
                 Provisioning",
            ),
        ];
        for (error, want) in cases {
            assert_eq!(error.to_string(), want);
        }
    }
}
