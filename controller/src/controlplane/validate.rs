//! Pure checks before anything is built: a spec that cannot work, a DataStore that cannot be
//! used, and key material whose loss Orrery must not paper over.

use super::build::Names;
use super::dereference::Read;
use crate::api::TenantControlPlane;
use crate::conditions::{CERTIFICATES_READY, DATASTORE_READY};
use crate::stop::Blocked;
use kube::Resource;

/// Set to "true" on a TenantControlPlane to let Orrery make a new CA, front-proxy CA or
/// service-account key after the old one's Secret was lost.
pub const ALLOW_NEW_AUTHORITIES_ANNOTATION: &str = "orrery.dev/allow-new-authorities";

/// The DataStore named by the spec must be the one in use, and not going away.
pub fn datastore(tcp: &TenantControlPlane, read: &Read) -> Result<(), Blocked> {
    let status = tcp.status.clone().unwrap_or_default();
    if let (Some(spec), Some(recorded)) = (
        &tcp.spec.data_store,
        status
            .data_store
            .as_ref()
            .filter(|_| status.endpoint.is_some()),
    ) && spec != recorded
    {
        return Err(Blocked::until_changed(
            DATASTORE_READY,
            "DataStoreMigrationUnsupported",
            format!(
                "spec.dataStore {spec} differs from the DataStore in use, {recorded}; moving tenants between DataStores is not supported"
            ),
        ));
    }
    if read.datastore_object.meta().deletion_timestamp.is_some() {
        return Err(Blocked::waiting(
            DATASTORE_READY,
            "DataStoreDeleting",
            format!("DataStore {} is being deleted", read.datastore),
        ));
    }
    Ok(())
}

/// A CA, front-proxy CA or service-account key whose Secret is gone after Orrery issued the
/// tenant's certificates is not replaced silently: every kubeconfig, node and service-account
/// token trusting the old one would break. The user restores the Secret, or allows new ones.
pub fn authorities(tcp: &TenantControlPlane, read: &Read) -> Result<(), Blocked> {
    let allowed = tcp
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(ALLOW_NEW_AUTHORITIES_ANNOTATION))
        .is_some_and(|v| v == "true");
    // The leaf certificates exist only once the authorities did.
    if allowed || read.pki.certs.is_none() {
        return Ok(());
    }
    let names = Names::new(tcp);
    let lost: Vec<String> = [
        (read.pki.ca.is_none(), names.ca()),
        (read.pki.front_proxy_ca.is_none(), names.front_proxy_ca()),
        (read.pki.service_account.is_none(), names.service_account()),
    ]
    .into_iter()
    .filter_map(|(missing, name)| missing.then_some(name))
    .collect();
    if lost.is_empty() {
        return Ok(());
    }
    Err(Blocked::until_changed(
        CERTIFICATES_READY,
        "AuthorityMissing",
        format!(
            "Secret {} was deleted after the tenant's certificates were issued; Orrery does not make a new one, because every client, node and token that trusts the old one would stop working. Restore it from a backup, or annotate the TenantControlPlane {ALLOW_NEW_AUTHORITIES_ANNOTATION}=true to issue new ones (then hand out new kubeconfigs and rejoin the nodes)",
            lost.join(", ")
        ),
    ))
}

/// A spec that cannot work or that takes over what Orrery owns: the admission rules of
/// `crate::api` once more, for objects admitted before those rules existed, and what CEL cannot
/// say (an IPv4 broadcast address as the DNS Service IP). Resource quantities are left to the
/// apiserver, which refuses a Deployment whose requests exceed its limits.
pub fn spec(tcp: &TenantControlPlane) -> Result<(), Blocked> {
    spec_rules::check(&tcp.spec)
        .map_err(|message| Blocked::until_changed(crate::conditions::READY, "InvalidSpec", message))
}

/// The checks behind `spec`; each error is "<field> <reason>".
mod spec_rules {
    use crate::api::{
        API_SERVER_FLAGS, CONTROL_PLANE_POD_PORTS, CONTROLLER_MANAGER_FLAGS, ComponentFlags,
        ComponentSpec, KONNECTIVITY_SERVER_FLAGS, NODE_RANGE_FLAGS, NetworkSpec, SCHEDULER_FLAGS,
        TenantControlPlaneSpec,
    };
    use ipnet::IpNet;
    use std::net::IpAddr;

    pub(super) fn check(spec: &TenantControlPlaneSpec) -> Result<(), String> {
        let cp = &spec.control_plane;
        for (component, flags) in [
            (&cp.api_server, &API_SERVER_FLAGS),
            (&cp.controller_manager, &CONTROLLER_MANAGER_FLAGS),
            (&cp.scheduler, &SCHEDULER_FLAGS),
            (&cp.konnectivity_server, &KONNECTIVITY_SERVER_FLAGS),
        ] {
            extra_args(component, flags)?;
            image(flags.path, component.image.as_deref())?;
        }
        let addons = &spec.addons;
        image("spec.addons.coreDNS", addons.core_dns.image.as_deref())?;
        image("spec.addons.kubeProxy", addons.kube_proxy.image.as_deref())?;
        image(
            "spec.addons.konnectivity",
            addons.konnectivity.image.as_deref(),
        )?;
        network(spec)
    }

    fn extra_args(component: &ComponentSpec, flags: &ComponentFlags) -> Result<(), String> {
        let path = flags.path;
        if let Some(flag) = component
            .extra_args
            .keys()
            .find(|k| flags.reserved.contains(&k.as_str()))
        {
            return Err(format!(
                "{path}.extraArgs may not set {flag}: Orrery owns that setting"
            ));
        }
        for listed in flags.listed {
            let Some(value) = component.extra_args.get(listed.flag) else {
                continue;
            };
            if value.split(',').any(|e| e.trim() == listed.entry) != listed.kept {
                let verb = if listed.kept { "must" } else { "must not" };
                return Err(format!(
                    "{path}.extraArgs.{} {verb} list {}: Orrery relies on it",
                    listed.flag, listed.entry
                ));
            }
        }
        Ok(())
    }

    fn image(path: &str, image: Option<&str>) -> Result<(), String> {
        match image {
            Some(reference) if !is_image_reference(reference) => Err(format!(
                "{path}.image {reference:?} is not an image reference [registry[:port]/]path[:tag][@sha256:<64 hex digits>] with lower-case path components"
            )),
            _ => Ok(()),
        }
    }

    /// The grammar of `crate::api::IMAGE_PATTERN`, without a regex engine.
    pub(super) fn is_image_reference(reference: &str) -> bool {
        let (named, digest) = match reference.split_once('@') {
            Some((named, digest)) => (named, Some(digest)),
            None => (reference, None),
        };
        let digest_ok = digest.is_none_or(|d| {
            d.strip_prefix("sha256:").is_some_and(|hex| {
                hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            })
        });
        // A tag follows the last ':' after the last '/'; a ':' before a '/' starts a port.
        let slash = named.rfind('/');
        let (name, tag) = match named.rfind(':') {
            Some(colon) if slash.is_none_or(|s| colon > s) => {
                (&named[..colon], Some(&named[colon + 1..]))
            }
            _ => (named, None),
        };
        let tag_ok = tag.is_none_or(|t| {
            let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
            (1..=128).contains(&t.len())
                && word(t.as_bytes()[0])
                && t.bytes().all(|b| word(b) || b == b'.' || b == b'-')
        });
        let parts: Vec<&str> = name.split('/').collect();
        let path_ok = |parts: &[&str]| parts.iter().all(|p| path_component(p));
        let name_ok =
            path_ok(&parts) || (parts.len() > 1 && registry(parts[0]) && path_ok(&parts[1..]));
        digest_ok && tag_ok && name_ok
    }

    /// Lower-case letters and digits, separated by one '.', one or two '_', or dashes.
    fn path_component(part: &str) -> bool {
        let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        part.starts_with(alnum)
            && part.ends_with(alnum)
            && part
                .split(alnum)
                .filter(|sep| !sep.is_empty())
                .all(|sep| matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-'))
    }

    /// A host name (letters of either case, digits, inner dashes) with an optional port.
    fn registry(part: &str) -> bool {
        let (host, port) = match part.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (part, None),
        };
        let label = |l: &str| {
            l.starts_with(|c: char| c.is_ascii_alphanumeric())
                && l.ends_with(|c: char| c.is_ascii_alphanumeric())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        host.split('.').all(label)
            && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    }

    fn network(spec: &TenantControlPlaneSpec) -> Result<(), String> {
        let net = &spec.network;
        if CONTROL_PLANE_POD_PORTS.contains(&net.port) {
            return Err(format!(
                "spec.network.port {} is taken by another container of the control-plane pod",
                net.port
            ));
        }
        let service = cidr("spec.network.serviceCIDR", &net.service_cidr)?;
        let pods = cidr("spec.network.podCIDR", &net.pod_cidr)?;
        if is_v4(&service) != is_v4(&pods) {
            return Err("spec.network.serviceCIDR and spec.network.podCIDR must be of one IP family: both IPv4 or both IPv6".into());
        }
        if service.contains(&pods.network()) || pods.contains(&service.network()) {
            return Err(
                "spec.network.serviceCIDR and spec.network.podCIDR must not overlap".into(),
            );
        }
        service_range(&service)?;
        pod_range(spec, &pods)?;
        dns_service_ip(net, &service)?;
        match net
            .cert_sans
            .iter()
            .find(|san| san.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()))
        {
            Some(san) => Err(format!(
                "spec.network.certSANs must not contain the unspecified address {san}: no client reaches the apiserver there"
            )),
            None => Ok(()),
        }
    }

    fn cidr(field: &str, text: &str) -> Result<IpNet, String> {
        text.parse()
            .map_err(|_| format!("{field} {text:?} is not a CIDR such as 10.96.0.0/16"))
    }

    fn is_v4(net: &IpNet) -> bool {
        matches!(net, IpNet::V4(_))
    }

    fn host_bits(net: &IpNet) -> u8 {
        net.max_prefix_len() - net.prefix_len()
    }

    fn service_range(service: &IpNet) -> Result<(), String> {
        if host_bits(service) < 4 {
            return Err("spec.network.serviceCIDR must hold at least 16 addresses (a /28 for IPv4, a /124 for IPv6): the network address, the kubernetes Service, the DNS Service (by default the tenth address) and the tenant's own Services".into());
        }
        Ok(())
    }

    fn pod_range(spec: &TenantControlPlaneSpec, pods: &IpNet) -> Result<(), String> {
        let kcm_args = &spec.control_plane.controller_manager.extra_args;
        if NODE_RANGE_FLAGS.iter().any(|f| kcm_args.contains_key(*f)) {
            return Ok(());
        }
        let prefix = pods.prefix_len();
        let fits = if is_v4(pods) {
            prefix <= 24
        } else {
            (48..=64).contains(&prefix)
        };
        if fits {
            Ok(())
        } else {
            Err("spec.network.podCIDR must be a /24 or larger for IPv4, a /48 to /64 for IPv6: kube-controller-manager gives each node a /24 or a /64 of it".into())
        }
    }

    fn dns_service_ip(net: &NetworkSpec, service: &IpNet) -> Result<(), String> {
        let Some(text) = &net.dns_service_ip else {
            return Ok(());
        };
        let ip: IpAddr = text
            .parse()
            .map_err(|_| format!("spec.network.dnsServiceIP {text:?} must be an IP address"))?;
        if ip.is_ipv4() != is_v4(service) {
            return Err(
                "spec.network.dnsServiceIP must be of the IP family of spec.network.serviceCIDR"
                    .into(),
            );
        }
        if !service.contains(&ip) {
            return Err(
                "spec.network.dnsServiceIP must lie inside spec.network.serviceCIDR".into(),
            );
        }
        let offset = match (ip, service.network()) {
            (IpAddr::V4(a), IpAddr::V4(n)) => u128::from(u32::from(a) - u32::from(n)),
            (IpAddr::V6(a), IpAddr::V6(n)) => u128::from(a) - u128::from(n),
            _ => unreachable!("families compared above"),
        };
        if offset <= 1 {
            return Err("spec.network.dnsServiceIP must not be the network address of spec.network.serviceCIDR nor its first address, which the kubernetes Service takes".into());
        }
        if ip.is_ipv4() && ip == service.broadcast() {
            return Err("spec.network.dnsServiceIP must not be the broadcast address of spec.network.serviceCIDR: Kubernetes hands out no IPv4 Service address there".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod spec_tests {
    use super::spec;
    use super::spec_rules::is_image_reference;
    use crate::api::{
        API_SERVER_FLAGS, CONTROL_PLANE_POD_PORTS, CONTROLLER_MANAGER_FLAGS, ComponentFlags,
        KONNECTIVITY_SERVER_FLAGS, SCHEDULER_FLAGS, TenantControlPlane, TenantControlPlaneSpec,
    };
    use crate::controlplane::build::{DeploymentInputs, deployment, images};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use serde::Deserialize as _;
    use std::collections::{BTreeMap, BTreeSet};

    fn tenant(yaml: &str) -> TenantControlPlane {
        let spec: TenantControlPlaneSpec = serde_yaml_ng::from_str(yaml).unwrap();
        let mut tcp = TenantControlPlane::new("t1", spec);
        tcp.metadata.namespace = Some("ns1".into());
        tcp.metadata.uid = Some("uid-1".into());
        tcp
    }

    /// The TenantControlPlanes of an example manifest.
    fn example(manifest: &str) -> Vec<TenantControlPlane> {
        serde_yaml_ng::Deserializer::from_str(manifest)
            .map(|doc| serde_yaml_ng::Value::deserialize(doc).unwrap())
            .filter(|doc| doc["kind"] == "TenantControlPlane")
            .map(|doc| serde_yaml_ng::from_value(doc).unwrap())
            .collect()
    }

    #[test]
    fn examples_are_valid_specs() {
        let tenants: Vec<_> = [
            include_str!("../../../examples/tenant-minimal.yaml"),
            include_str!("../../../examples/tenant-ha.yaml"),
        ]
        .into_iter()
        .flat_map(example)
        .collect();
        assert_eq!(tenants.len(), 2);
        for t in &tenants {
            assert_eq!(spec(t), Ok(()), "{:?}", t.metadata.name);
        }
    }

    #[test]
    fn spec_table() {
        let digest = "a".repeat(64);
        let good = [
            "version: v1.34.4".to_string(),
            "version: v1.34.4\ncontrolPlane:\n  apiServer:\n    extraArgs:\n      v: \"4\"\n      enable-admission-plugins: NodeRestriction,AlwaysPullImages\n      kubelet-preferred-address-types: InternalIP\n  controllerManager:\n    extraArgs:\n      controllers: \"*,bootstrapsigner,tokencleaner,-ttl\"\n      allocate-node-cidrs: \"false\"\n".into(),
            format!("version: v1.34.4\ncontrolPlane:\n  scheduler:\n    image: registry.example:5000/k8s/kube-scheduler:v1.34.4@sha256:{digest}\naddons:\n  coreDNS:\n    image: coredns/coredns:1.12.1\n"),
            "version: v1.34.4\nnetwork:\n  serviceCIDR: fd00:10:96::/108\n  podCIDR: fd00:10:244::/56\n  dnsServiceIP: fd00:10:96::a\n  certSANs: [\"::1\", api.example.com]\n".into(),
            "version: v1.34.4\nnetwork:\n  serviceCIDR: 10.96.0.0/28\n  dnsServiceIP: 10.96.0.14\n".into(),
            // A service range of over 2^20 addresses (allowed from v1.34 on).
            "version: v1.34.4\nnetwork:\n  serviceCIDR: 10.0.0.0/11\n  podCIDR: 10.244.0.0/16\n".into(),
            // A smaller node range makes a small pod range work.
            "version: v1.34.4\nnetwork:\n  podCIDR: 10.244.0.0/26\ncontrolPlane:\n  controllerManager:\n    extraArgs:\n      node-cidr-mask-size: \"28\"\n".into(),
        ];
        for yaml in &good {
            assert_eq!(spec(&tenant(yaml)), Ok(()), "{yaml}");
        }
        let bad: Vec<(&str, String, &str)> = vec![
            ("apiserver etcd-servers", "controlPlane:\n  apiServer:\n    extraArgs:\n      etcd-servers: https://elsewhere:2379\n".into(), "spec.controlPlane.apiServer.extraArgs may not set etcd-servers"),
            ("apiserver authorization-mode", "controlPlane:\n  apiServer:\n    extraArgs:\n      authorization-mode: RBAC\n".into(), "spec.controlPlane.apiServer.extraArgs may not set authorization-mode"),
            ("kcm signing key", "controlPlane:\n  controllerManager:\n    extraArgs:\n      cluster-signing-key-file: /k\n".into(), "spec.controlPlane.controllerManager.extraArgs may not set cluster-signing-key-file"),
            ("scheduler kubeconfig", "controlPlane:\n  scheduler:\n    extraArgs:\n      kubeconfig: /k\n".into(), "spec.controlPlane.scheduler.extraArgs may not set kubeconfig"),
            ("konnectivity uds", "controlPlane:\n  konnectivityServer:\n    extraArgs:\n      uds-name: /tmp/s\n".into(), "spec.controlPlane.konnectivityServer.extraArgs may not set uds-name"),
            ("NodeRestriction dropped", "controlPlane:\n  apiServer:\n    extraArgs:\n      enable-admission-plugins: AlwaysPullImages\n".into(), "spec.controlPlane.apiServer.extraArgs.enable-admission-plugins must list NodeRestriction"),
            ("NodeRestriction disabled", "controlPlane:\n  apiServer:\n    extraArgs:\n      disable-admission-plugins: NodeRestriction\n".into(), "spec.controlPlane.apiServer.extraArgs.disable-admission-plugins must not list NodeRestriction"),
            ("bootstrapsigner dropped", "controlPlane:\n  controllerManager:\n    extraArgs:\n      controllers: \"*,tokencleaner\"\n".into(), "spec.controlPlane.controllerManager.extraArgs.controllers must list bootstrapsigner"),
            ("apiserver image with a space", "controlPlane:\n  apiServer:\n    image: my apiserver:1\n".into(), "spec.controlPlane.apiServer.image"),
            ("kcm image trailing slash", "controlPlane:\n  controllerManager:\n    image: registry.example/kcm/\n".into(), "spec.controlPlane.controllerManager.image"),
            ("kube-proxy image upper case", "addons:\n  kubeProxy:\n    image: registry.example/Kube-Proxy:v1\n".into(), "spec.addons.kubeProxy.image"),
            ("konnectivity image short digest", "addons:\n  konnectivity:\n    image: agent@sha256:abc\n".into(), "spec.addons.konnectivity.image"),
            ("port taken", "network:\n  port: 10259\n".into(), "spec.network.port 10259 is taken"),
            ("service CIDR not a CIDR", "network:\n  serviceCIDR: banana\n".into(), "spec.network.serviceCIDR \"banana\" is not a CIDR"),
            ("families mixed", "network:\n  podCIDR: fd00:10:244::/56\n".into(), "spec.network.serviceCIDR and spec.network.podCIDR must be of one IP family"),
            ("ranges overlap", "network:\n  podCIDR: 10.96.128.0/17\n".into(), "must not overlap"),
            ("service range /29", "network:\n  serviceCIDR: 10.96.0.0/29\n".into(), "spec.network.serviceCIDR must hold at least 16 addresses"),
            ("service range /32", "network:\n  serviceCIDR: 10.96.0.1/32\n".into(), "spec.network.serviceCIDR must hold at least 16 addresses"),
            ("pod range smaller than a node's", "network:\n  podCIDR: 10.244.0.0/25\n".into(), "spec.network.podCIDR must be a /24 or larger"),
            ("IPv6 pod range too large", "network:\n  serviceCIDR: fd00:10:96::/108\n  podCIDR: fd00::/32\n".into(), "spec.network.podCIDR must be a /24 or larger for IPv4, a /48 to /64 for IPv6"),
            ("DNS IP not an IP", "network:\n  dnsServiceIP: dns\n".into(), "spec.network.dnsServiceIP \"dns\" must be an IP address"),
            ("DNS IP of the other family", "network:\n  dnsServiceIP: fd00::a\n".into(), "spec.network.dnsServiceIP must be of the IP family"),
            ("DNS IP outside", "network:\n  dnsServiceIP: 10.97.0.10\n".into(), "spec.network.dnsServiceIP must lie inside"),
            ("DNS IP is the network address", "network:\n  dnsServiceIP: 10.96.0.0\n".into(), "spec.network.dnsServiceIP must not be the network address"),
            ("DNS IP is the kubernetes Service's", "network:\n  dnsServiceIP: 10.96.0.1\n".into(), "nor its first address"),
            ("IPv6 DNS IP is the kubernetes Service's", "network:\n  serviceCIDR: fd00:10:96::/108\n  podCIDR: fd00:10:244::/56\n  dnsServiceIP: fd00:10:96::1\n".into(), "nor its first address"),
            ("DNS IP is the broadcast address", "network:\n  dnsServiceIP: 10.96.255.255\n".into(), "spec.network.dnsServiceIP must not be the broadcast address"),
            ("certSAN 0.0.0.0", "network:\n  certSANs: [api.example.com, 0.0.0.0]\n".into(), "spec.network.certSANs must not contain the unspecified address 0.0.0.0"),
            ("certSAN ::", "network:\n  certSANs: [\"::\"]\n".into(), "spec.network.certSANs must not contain the unspecified address ::"),
        ];
        for (case, rest, expected) in bad {
            let yaml = if rest.starts_with("version:") {
                rest
            } else {
                format!("version: v1.34.4\n{rest}")
            };
            let blocked = spec(&tenant(&yaml)).expect_err(case);
            assert_eq!(blocked.condition, crate::conditions::READY, "{case}");
            assert_eq!(blocked.reason, "InvalidSpec", "{case}");
            assert_eq!(blocked.retry, None, "{case}");
            assert!(
                blocked.message.contains(expected),
                "{case}: {:?} does not contain {expected:?}",
                blocked.message
            );
        }
    }

    #[test]
    fn image_references() {
        let digest = "0123456789abcdef".repeat(4);
        let valid = [
            "nginx".to_string(),
            "registry.k8s.io/kube-apiserver:v1.34.4".into(),
            "localhost:5000/a/b:c".into(),
            "Registry.Example.com:443/x/y_z__w---v:T.1-x".into(),
            format!("ghcr.io/a/b@sha256:{digest}"),
            format!("a:1@sha256:{digest}"),
            "a.b.c/d".into(),
        ];
        let invalid = [
            "".to_string(),
            "a b".into(),
            "/a".into(),
            "a/".into(),
            "a:".into(),
            ":a".into(),
            "a//b".into(),
            "a@sha256:abc".into(),
            format!("a@sha512:{digest}"),
            format!("a@sha256:{}", digest.to_uppercase()),
            "a:b:c".into(),
            "a/b:".into(),
            "a..b".into(),
            "a/.b".into(),
            "-a/b".into(),
            "a:1/b/c:d/e".into(),
            "ghcr.io/Upper/x".into(),
            "a___b".into(),
            "host:port/a".into(),
            format!("a:{}", "t".repeat(129)),
            "a:-tag".into(),
        ];
        for r in &valid {
            assert!(is_image_reference(r), "{r:?} should be valid");
        }
        for r in &invalid {
            assert!(!is_image_reference(r), "{r:?} should be invalid");
        }
    }

    fn default_deployment() -> (TenantControlPlane, k8s_openapi::api::apps::v1::Deployment) {
        let t = tenant("version: v1.34.4");
        let inputs = DeploymentInputs {
            images: images(&t, &crate::context::Settings::default()),
            datastore_endpoints: vec!["https://etcd-0:2379".into()],
            etcd_prefix: "/orrery/ns1/t1".into(),
            advertise_address: Some("10.96.0.20".into()),
            config_hashes: BTreeMap::new(),
        };
        let d = deployment(&t, &inputs);
        (t, d)
    }

    fn flags_of(container: &str) -> &'static ComponentFlags {
        match container {
            "kube-apiserver" => &API_SERVER_FLAGS,
            "kube-controller-manager" => &CONTROLLER_MANAGER_FLAGS,
            "kube-scheduler" => &SCHEDULER_FLAGS,
            "konnectivity-server" => &KONNECTIVITY_SERVER_FLAGS,
            other => panic!("no flag table for container {other}"),
        }
    }

    /// Every flag Orrery puts on a container is either reserved or meant to be tuned, so a new
    /// flag in the Deployment cannot slip past the admission rules unnoticed.
    #[test]
    fn every_flag_orrery_sets_is_reserved_or_tunable() {
        let (_, d) = default_deployment();
        let pod = d.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.containers.len(), 4);
        for c in &pod.containers {
            let table = flags_of(&c.name);
            let set: BTreeSet<&str> = c
                .args
                .as_deref()
                .unwrap_or_default()
                .iter()
                .filter_map(|a| a.strip_prefix("--"))
                .map(|a| a.split_once('=').map_or(a, |(name, _)| name))
                .collect();
            assert!(!set.is_empty(), "{}", c.name);
            for flag in &set {
                assert!(
                    table.reserved.contains(flag) || table.tunable.contains(flag),
                    "{}: --{flag} is neither reserved nor tunable in {}",
                    c.name,
                    table.path
                );
            }
            for flag in table.tunable {
                assert!(set.contains(flag), "{}: tunable {flag} is not set", c.name);
                assert!(!table.reserved.contains(flag), "{}: {flag} twice", c.name);
            }
            for listed in table.listed {
                assert!(!table.reserved.contains(&listed.flag), "{}", listed.flag);
            }
        }
    }

    /// The ports the pod's other containers listen on are exactly the ones the apiserver's
    /// port may not take.
    #[test]
    fn pod_ports_match_the_deployment() {
        let (t, d) = default_deployment();
        let pod = d.spec.unwrap().template.spec.unwrap();
        let mut used = BTreeSet::new();
        for c in &pod.containers {
            for p in c.ports.iter().flatten() {
                used.insert(p.container_port);
            }
            for probe in [&c.startup_probe, &c.liveness_probe, &c.readiness_probe] {
                if let Some(IntOrString::Int(port)) = probe
                    .as_ref()
                    .and_then(|p| p.http_get.as_ref())
                    .map(|h| h.port.clone())
                {
                    used.insert(port);
                }
            }
            for arg in c.args.iter().flatten() {
                if let Some((name, value)) = arg.split_once('=')
                    && name.ends_with("-port")
                {
                    used.insert(value.parse().unwrap());
                }
            }
        }
        used.remove(&t.spec.network.port);
        used.remove(&0);
        let listed: BTreeSet<i32> = CONTROL_PLANE_POD_PORTS.iter().copied().collect();
        assert_eq!(used, listed);
    }
}
