//! Kubeconfig files with embedded credentials, rendered from typed structs so that the same
//! inputs always give the same bytes (a re-apply of an unchanged Secret is then a no-op).

use serde::Serialize;

use super::PkiError;
use super::der::base64;

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: &'a str,
    clusters: [NamedCluster<'a>; 1],
    contexts: [NamedContext<'a>; 1],
    current_context: &'a str,
    users: [NamedUser<'a>; 1],
}

#[derive(Serialize)]
struct NamedCluster<'a> {
    name: &'a str,
    cluster: Cluster<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster<'a> {
    certificate_authority_data: String,
    server: &'a str,
}

#[derive(Serialize)]
struct NamedContext<'a> {
    name: &'a str,
    context: Context<'a>,
}

#[derive(Serialize)]
struct Context<'a> {
    cluster: &'a str,
    user: &'a str,
}

#[derive(Serialize)]
struct NamedUser<'a> {
    name: &'a str,
    user: User,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    client_certificate_data: String,
    client_key_data: String,
}

/// What goes into one kubeconfig.
pub(super) struct KubeconfigInput<'a> {
    pub cluster: &'a str,
    pub server: &'a str,
    pub ca_pem: &'a str,
    pub user: &'a str,
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

/// Renders a kubeconfig the way kubeadm lays it out: one cluster named after the tenant, one
/// user, one context `<user>@<cluster>` that is current.
pub(super) fn render(input: &KubeconfigInput<'_>) -> Result<String, PkiError> {
    let context = format!("{}@{}", input.user, input.cluster);
    let config = Kubeconfig {
        api_version: "v1",
        kind: "Config",
        clusters: [NamedCluster {
            name: input.cluster,
            cluster: Cluster {
                certificate_authority_data: base64(input.ca_pem.as_bytes()),
                server: input.server,
            },
        }],
        contexts: [NamedContext {
            name: &context,
            context: Context {
                cluster: input.cluster,
                user: input.user,
            },
        }],
        current_context: &context,
        users: [NamedUser {
            name: input.user,
            user: User {
                client_certificate_data: base64(input.cert_pem.as_bytes()),
                client_key_data: base64(input.key_pem.as_bytes()),
            },
        }],
    };
    serde_yaml_ng::to_string(&config).map_err(|e| PkiError::Kubeconfig {
        user: input.user.to_string(),
        reason: e.to_string(),
    })
}
