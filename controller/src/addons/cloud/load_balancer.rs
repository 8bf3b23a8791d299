//! A tenant LoadBalancer Service served by a Service of the management cluster, built purely:
//! the management Service in the tenant's namespace that selects the tenant's VM launcher pods
//! and forwards each port to the tenant Service's node port, and the address copied back.

use crate::api::LoadBalancerServiceType;
use crate::apply::{TENANT_LABEL, child_labels};
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// The finalizer every cloud controller puts on the LoadBalancer Services it serves, so the load
/// balancer goes before the Service does.
pub const FINALIZER: &str = "service.kubernetes.io/load-balancer-cleanup";
/// `app.kubernetes.io/component` of the management Services.
pub const COMPONENT: &str = "load-balancer";
/// Name the tenant Service a management Service serves.
pub const SERVICE_NAMESPACE_LABEL: &str = "orrery.dev/service-namespace";
pub const SERVICE_NAME_LABEL: &str = "orrery.dev/service-name";
/// KubeVirt's label of every VM launcher pod.
const LAUNCHER_LABEL: (&str, &str) = ("kubevirt.io", "virt-launcher");
/// ipMode the apiserver defaults an ingress IP to: traffic to it may be delivered directly.
const VIP: &str = "VIP";

/// Where and how a tenant's management Services are made.
#[derive(Clone, Debug)]
pub struct Management {
    /// The TenantControlPlane's name.
    pub tenant: String,
    /// Its namespace, where its VMs and these Services live.
    pub namespace: String,
    /// A reference to the TenantControlPlane, so the Services go with it. Not the controller
    /// reference: the TenantControlPlane controller prunes the Services it controls.
    pub owner: OwnerReference,
    pub service_type: LoadBalancerServiceType,
}

/// Whether the cloud controller serves `svc`: type LoadBalancer, no other load balancer
/// implementation asked for (`loadBalancerClass`), and not being deleted.
pub fn wants_load_balancer(svc: &Service) -> bool {
    let spec = svc.spec.as_ref();
    spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
        && spec.and_then(|s| s.load_balancer_class.as_ref()).is_none()
        && svc.metadata.deletion_timestamp.is_none()
}

/// The ports of `svc` without a node port (`allocateLoadBalancerNodePorts: false`): nothing
/// outside the tenant can reach them, so they cannot be served.
pub fn unroutable_ports(svc: &Service) -> Vec<String> {
    ports(svc)
        .iter()
        .filter(|p| p.node_port.is_none())
        .map(|p| match &p.name {
            Some(name) => format!("{name} ({})", p.port),
            None => p.port.to_string(),
        })
        .collect()
}

fn ports(svc: &Service) -> &[ServicePort] {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
}

/// The management Service's name: the tenant's and a hash of the tenant Service's namespace and
/// name, within the 63 characters of a DNS label.
pub fn name(tenant: &str, namespace: &str, service: &str) -> String {
    let hash = crate::hash::of_strings(&[namespace, service]);
    let prefix: String = tenant.chars().take(63 - 4 - 10).collect();
    format!("{}-lb-{}", prefix.trim_end_matches('-'), &hash[..10])
}

/// The label selector of all of a tenant's management Services.
pub fn selector(tenant: &str) -> String {
    child_labels(TENANT_LABEL, tenant, COMPONENT)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The tenant Service (namespace, name) a management Service serves, from its labels.
pub fn served(management: &Service) -> Option<(String, String)> {
    let labels = management.labels();
    Some((
        labels.get(SERVICE_NAMESPACE_LABEL)?.clone(),
        labels.get(SERVICE_NAME_LABEL)?.clone(),
    ))
}

/// The management Service serving tenant Service `svc`: it selects the tenant's VM launcher pods
/// and sends each port to the node port of the same tenant port (KubeVirt forwards what reaches a
/// launcher pod to its guest, where kube-proxy takes it to the Service's endpoints). Ports
/// without a node port are left out.
pub fn build(m: &Management, svc: &Service) -> Service {
    let namespace = svc.namespace().unwrap_or_default();
    let mut labels = child_labels(TENANT_LABEL, &m.tenant, COMPONENT);
    labels.insert(SERVICE_NAMESPACE_LABEL.into(), namespace.clone());
    labels.insert(SERVICE_NAME_LABEL.into(), svc.name_any());
    let selector = BTreeMap::from([
        (TENANT_LABEL.to_string(), m.tenant.clone()),
        (LAUNCHER_LABEL.0.to_string(), LAUNCHER_LABEL.1.to_string()),
    ]);
    let ports = ports(svc)
        .iter()
        .filter_map(|p| {
            Some(ServicePort {
                name: p.name.clone(),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                port: p.port,
                target_port: Some(IntOrString::Int(p.node_port?)),
                ..Default::default()
            })
        })
        .collect();
    Service {
        metadata: ObjectMeta {
            name: Some(name(&m.tenant, &namespace, &svc.name_any())),
            namespace: Some(m.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![m.owner.clone()]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some(m.service_type.as_str().into()),
            selector: Some(selector),
            ports: Some(ports),
            ..Default::default()
        }),
        status: None,
    }
}

/// Whether `current` lacks anything of `desired` that [`build`] sets: only then is it applied
/// (a converged tenant costs no writes).
pub fn differs(desired: &Service, current: &Service) -> bool {
    let (Some(d), Some(c)) = (&desired.spec, &current.spec) else {
        return true;
    };
    let port_key = |p: &ServicePort| {
        (
            p.name.clone(),
            p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            p.port,
            p.target_port.clone(),
        )
    };
    let keys = |s: &ServiceSpec| s.ports.iter().flatten().map(port_key).collect::<Vec<_>>();
    let labels = current.labels();
    let owners = current.owner_references();
    d.type_ != c.type_
        || d.selector != c.selector
        || keys(d) != keys(c)
        || desired
            .labels()
            .iter()
            .any(|(k, v)| labels.get(k) != Some(v))
        || desired
            .owner_references()
            .iter()
            .any(|o| !owners.iter().any(|c| c.uid == o.uid))
}

/// The address a tenant Service gets from its management Service, once there is one: the
/// management load balancer's, or the management Service's cluster IPs.
pub fn ingress(
    service_type: LoadBalancerServiceType,
    management: &Service,
) -> Option<Vec<LoadBalancerIngress>> {
    let found: Vec<LoadBalancerIngress> = match service_type {
        LoadBalancerServiceType::LoadBalancer => management
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|i| LoadBalancerIngress {
                ip_mode: i
                    .ip
                    .as_ref()
                    .map(|_| i.ip_mode.clone().unwrap_or(VIP.into())),
                ip: i.ip,
                hostname: i.hostname,
                ports: None,
            })
            .collect(),
        LoadBalancerServiceType::ClusterIP => cluster_ips(management)
            .into_iter()
            .map(|ip| LoadBalancerIngress {
                ip: Some(ip),
                ip_mode: Some(VIP.into()),
                ..Default::default()
            })
            .collect(),
    };
    (!found.is_empty()).then_some(found)
}

fn cluster_ips(svc: &Service) -> Vec<String> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let ips = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.clone(),
        _ => spec.cluster_ip.iter().cloned().collect(),
    };
    ips.into_iter()
        .filter(|ip| !ip.is_empty() && ip != "None")
        .collect()
}

/// Whether the tenant Service shows `wanted` already (an IP without ipMode is a VIP, as the
/// apiserver defaults it).
pub fn shows(svc: &Service, wanted: &[LoadBalancerIngress]) -> bool {
    let key = |i: &LoadBalancerIngress| {
        let mode = i.ip.as_ref().map(|_| i.ip_mode.as_deref().unwrap_or(VIP));
        (i.ip.clone(), i.hostname.clone(), mode.map(str::to_string))
    };
    let current = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    current.iter().map(key).eq(wanted.iter().map(key))
}

/// Whether the tenant Service shows any load-balancer address.
pub fn has_ingress(svc: &Service) -> bool {
    !shows(svc, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::MANAGED_BY;
    use k8s_openapi::api::core::v1::{LoadBalancerStatus, ServiceStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn management(service_type: LoadBalancerServiceType) -> Management {
        Management {
            tenant: "live".into(),
            namespace: "tenants".into(),
            owner: OwnerReference {
                api_version: "orrery.dev/v1alpha1".into(),
                kind: "TenantControlPlane".into(),
                name: "live".into(),
                uid: "tcp-uid".into(),
                ..Default::default()
            },
            service_type,
        }
    }

    fn tenant_service(yaml: &str) -> Service {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    const WEB: &str = r#"
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 31080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 1053, nodePort: 31053}
"#;

    #[test]
    fn the_management_service_forwards_each_port_to_its_node_port() {
        let m = management(LoadBalancerServiceType::ClusterIP);
        let s = build(&m, &tenant_service(WEB));
        let spec = s.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        let ports: Vec<_> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.name.as_deref().unwrap(),
                    p.protocol.as_deref().unwrap(),
                    p.port,
                    p.target_port.clone().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            vec![
                ("http", "TCP", 80, IntOrString::Int(31080)),
                ("dns", "UDP", 53, IntOrString::Int(31053)),
            ]
        );
        assert_eq!(
            spec.selector.as_ref().unwrap(),
            &BTreeMap::from([
                ("orrery.dev/tenant".to_string(), "live".to_string()),
                ("kubevirt.io".to_string(), "virt-launcher".to_string()),
            ])
        );
        assert_eq!(s.metadata.namespace.as_deref(), Some("tenants"));
        let labels = s.labels();
        assert_eq!(labels[MANAGED_BY.0], MANAGED_BY.1);
        assert_eq!(labels[TENANT_LABEL], "live");
        assert_eq!(labels[SERVICE_NAMESPACE_LABEL], "shop");
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(labels["app.kubernetes.io/component"], COMPONENT);
        let owner = &s.owner_references()[0];
        assert_eq!(owner.uid, "tcp-uid");
        assert_eq!(owner.controller, None, "not the controller reference");
        assert_eq!(served(&s), Some(("shop".into(), "web".into())));
        let lb = build(
            &management(LoadBalancerServiceType::LoadBalancer),
            &tenant_service(WEB),
        );
        assert_eq!(
            lb.spec.unwrap().type_.as_deref(),
            Some("LoadBalancer"),
            "the configured type"
        );
    }

    #[test]
    fn the_name_is_the_tenants_and_a_hash_within_a_dns_label() {
        let n = name("live", "shop", "web");
        assert!(n.starts_with("live-lb-") && n.len() == 18, "{n}");
        assert_eq!(n, name("live", "shop", "web"), "stable");
        assert_ne!(n, name("live", "shop", "web2"));
        assert_ne!(name("live", "a", "bc"), name("live", "ab", "c"));
        let long = name(&"t".repeat(63), &"n".repeat(63), &"s".repeat(63));
        assert_eq!(long.len(), 63, "{long}");
        let dashed = name(&format!("{}-x", "a".repeat(48)), "shop", "web");
        assert!(!dashed.contains("--") && dashed.len() <= 63, "{dashed}");
    }

    #[test]
    fn only_plain_load_balancer_services_are_served() {
        let web = tenant_service(WEB);
        assert!(wants_load_balancer(&web));
        let mut classed = web.clone();
        classed.spec.as_mut().unwrap().load_balancer_class = Some("example.com/lb".into());
        assert!(!wants_load_balancer(&classed));
        let mut cluster_ip = web.clone();
        cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        assert!(!wants_load_balancer(&cluster_ip));
        let mut deleting = web.clone();
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert!(!wants_load_balancer(&deleting));
    }

    #[test]
    fn ports_without_a_node_port_are_named_and_left_out() {
        let svc = tenant_service(
            r#"
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  allocateLoadBalancerNodePorts: false
  ports:
  - {name: http, port: 80}
  - {name: admin, port: 81, nodePort: 31081}
"#,
        );
        assert_eq!(unroutable_ports(&svc), vec!["http (80)"]);
        assert!(unroutable_ports(&tenant_service(WEB)).is_empty());
        let built = build(&management(LoadBalancerServiceType::ClusterIP), &svc);
        let ports = built.spec.unwrap().ports.unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, 81);
    }

    #[test]
    fn only_a_service_lacking_what_is_built_is_applied_again() {
        let m = management(LoadBalancerServiceType::ClusterIP);
        let desired = build(&m, &tenant_service(WEB));
        let mut current = desired.clone();
        // What the server adds changes nothing.
        let spec = current.spec.as_mut().unwrap();
        spec.cluster_ip = Some("10.96.7.7".into());
        spec.session_affinity = Some("None".into());
        current
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("extra".into(), "x".into());
        assert!(!differs(&desired, &current));
        let mut retyped = current.clone();
        retyped.spec.as_mut().unwrap().type_ = Some("NodePort".into());
        assert!(differs(&desired, &retyped));
        let mut ported = current.clone();
        ported.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port =
            Some(IntOrString::Int(30000));
        assert!(differs(&desired, &ported));
        let mut relabelled = current.clone();
        relabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(SERVICE_NAME_LABEL);
        assert!(differs(&desired, &relabelled));
        let mut orphan = current.clone();
        orphan.metadata.owner_references = None;
        assert!(differs(&desired, &orphan));
    }

    fn with_status(ips: &[&str], lb: &[(Option<&str>, Option<&str>)]) -> Service {
        let mut s = build(
            &management(LoadBalancerServiceType::ClusterIP),
            &tenant_service(WEB),
        );
        let spec = s.spec.as_mut().unwrap();
        spec.cluster_ip = ips.first().map(|s| s.to_string());
        spec.cluster_ips = Some(ips.iter().map(|s| s.to_string()).collect());
        s.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(
                    lb.iter()
                        .map(|(ip, host)| LoadBalancerIngress {
                            ip: ip.map(Into::into),
                            hostname: host.map(Into::into),
                            ..Default::default()
                        })
                        .collect(),
                ),
            }),
            ..Default::default()
        });
        s
    }

    fn shown(ingress: &[LoadBalancerIngress]) -> Vec<(Option<&str>, Option<&str>, Option<&str>)> {
        ingress
            .iter()
            .map(|i| (i.ip.as_deref(), i.hostname.as_deref(), i.ip_mode.as_deref()))
            .collect()
    }

    #[test]
    fn the_address_copied_back_follows_the_management_service_type() {
        use LoadBalancerServiceType::{ClusterIP, LoadBalancer};
        let pending = with_status(&["10.96.7.7"], &[]);
        let balanced = with_status(&["10.96.7.7"], &[(Some("192.0.2.10"), None)]);
        let named = with_status(&["10.96.7.7"], &[(None, Some("lb.example.com"))]);
        let dual = with_status(&["10.96.7.7", "fd00::7"], &[]);
        let headless = with_status(&["None"], &[]);
        for (what, service_type, svc, expected) in [
            (
                "cluster IP",
                ClusterIP,
                &pending,
                Some(vec![(Some("10.96.7.7"), None, Some("VIP"))]),
            ),
            (
                "cluster IPs",
                ClusterIP,
                &dual,
                Some(vec![
                    (Some("10.96.7.7"), None, Some("VIP")),
                    (Some("fd00::7"), None, Some("VIP")),
                ]),
            ),
            ("no cluster IP", ClusterIP, &headless, None),
            ("load balancer pending", LoadBalancer, &pending, None),
            (
                "load balancer IP",
                LoadBalancer,
                &balanced,
                Some(vec![(Some("192.0.2.10"), None, Some("VIP"))]),
            ),
            (
                "load balancer name",
                LoadBalancer,
                &named,
                Some(vec![(None, Some("lb.example.com"), None)]),
            ),
        ] {
            let found = ingress(service_type, svc);
            assert_eq!(found.as_deref().map(shown), expected, "{what}");
        }
    }

    #[test]
    fn an_address_shown_already_is_not_written_again() {
        let wanted = ingress(
            LoadBalancerServiceType::ClusterIP,
            &with_status(&["10.96.7.7"], &[]),
        )
        .unwrap();
        let mut svc = tenant_service(WEB);
        assert!(!shows(&svc, &wanted));
        assert!(!has_ingress(&svc));
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some("10.96.7.7".into()),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        });
        assert!(shows(&svc, &wanted), "ipMode defaults to VIP");
        assert!(has_ingress(&svc));
        let other = ingress(
            LoadBalancerServiceType::ClusterIP,
            &with_status(&["10.96.8.8"], &[]),
        )
        .unwrap();
        assert!(!shows(&svc, &other));
    }
}
