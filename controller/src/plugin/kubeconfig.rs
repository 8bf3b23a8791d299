//! `kubectl orrery get kubeconfig TENANT`: the admin kubeconfig from the Secret the tenant's
//! status names, optionally pointed at another URL.

use super::cli::{ClientArgs, KubeconfigArgs};
use super::connect::{self, Management};
use super::error::{Error, Result, code, forbidden_or};
use super::wait;
use crate::api::TenantControlPlane;
use crate::conditions::{self, READY};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::config::Kubeconfig;

pub async fn run(client: &ClientArgs, args: KubeconfigArgs) -> Result<()> {
    let m = connect::connect(client).await?;
    let tcp = connect::tenant(&m, &args.tenant).await?;
    let mut text = read(&m, &tcp).await?;
    if let Some(server) = &args.server {
        text = with_server(&text, server).map_err(Error::Invalid)?;
    }
    let ready = tcp
        .status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, READY));
    if !ready {
        eprintln!(
            "warning: {} is not Ready yet: {}",
            tcp.name_any(),
            wait::summary(&tcp)
        );
    }
    print!("{text}");
    Ok(())
}

/// The admin kubeconfig of `tcp`, as text.
pub async fn read(m: &Management, tcp: &TenantControlPlane) -> Result<String> {
    let name = tcp.name_any();
    let not_yet = |what: &str| Error::NotReady {
        name: name.clone(),
        namespace: m.namespace.clone(),
        what: what.into(),
        why: wait::summary(tcp),
    };
    let Some(secret_ref) = tcp
        .status
        .as_ref()
        .and_then(|s| s.kubeconfig_secret_ref.clone())
    else {
        return Err(not_yet("has no kubeconfig yet"));
    };
    let secret = Api::<Secret>::namespaced(m.client.clone(), &m.namespace)
        .get(&secret_ref.name)
        .await
        .map_err(|e| match code(&e) {
            Some(404) => not_yet(&format!("has no Secret {} yet", secret_ref.name)),
            _ => forbidden_or(
                e,
                "get",
                "secrets",
                format!("Secret {}", secret_ref.name),
                Some(&m.namespace),
            ),
        })?;
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(&secret_ref.key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "Secret {} has no text under key {:?}",
                secret_ref.name, secret_ref.key
            ))
        })
}

/// `kubeconfig` with every cluster's server set to `server`.
pub fn with_server(kubeconfig: &str, server: &str) -> Result<String, String> {
    let mut config = Kubeconfig::from_yaml(kubeconfig)
        .map_err(|e| format!("the admin kubeconfig does not parse: {e}"))?;
    for cluster in config
        .clusters
        .iter_mut()
        .filter_map(|c| c.cluster.as_mut())
    {
        cluster.server = Some(server.to_string());
    }
    serde_yaml_ng::to_string(&config).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = "\
apiVersion: v1
kind: Config
clusters:
- name: demo
  cluster:
    server: https://10.96.0.7:6443
    certificate-authority-data: Q0E=
contexts:
- name: kubernetes-admin@demo
  context:
    cluster: demo
    user: kubernetes-admin
current-context: kubernetes-admin@demo
users:
- name: kubernetes-admin
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
";

    #[test]
    fn server_is_rewritten_and_the_rest_kept() {
        let out = with_server(KUBECONFIG, "https://127.0.0.1:16443").unwrap();
        let before = Kubeconfig::from_yaml(KUBECONFIG).unwrap();
        let after = Kubeconfig::from_yaml(&out).unwrap();
        let cluster = after.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:16443"));
        assert_eq!(
            cluster.certificate_authority_data,
            before.clusters[0]
                .cluster
                .as_ref()
                .unwrap()
                .certificate_authority_data
        );
        assert_eq!(after.current_context, before.current_context);
        let user = after.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(user.client_certificate_data.as_deref(), Some("Q0VSVA=="));
        assert!(user.client_key_data.is_some());
    }

    #[test]
    fn a_broken_kubeconfig_is_reported() {
        let err = with_server("clusters: 5", "https://x:1").unwrap_err();
        assert!(err.contains("does not parse"), "{err}");
    }
}
