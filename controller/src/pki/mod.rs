//! Tenant PKI: CAs, service-account keys, leaf certificates and kubeconfigs, as pure functions of
//! the spec and of what the tenant's Secrets hold now.
//!
//! [`reconcile_pki`] keeps whatever is still valid byte for byte (so applying its output again
//! changes nothing and does not roll the control-plane pods), issues what is missing, and renews a
//! leaf that enters its renewal window or no longer matches the spec, its CA or its key. CAs and
//! the service-account key are never replaced once they exist: that would cut off every worker
//! and invalidate every token, so a present but unusable one is an error for a human to look at.
//! Keys are ECDSA P-256: cheap to generate (Kamaji's CPU peaks come from RSA) and accepted by
//! every Kubernetes component.

mod der;
mod kubeconfig;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::time::ASN1Time;

use kubeconfig::KubeconfigInput;

/// Lifetime of the CAs Orrery generates (kubeadm uses the same).
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of leaf certificates (kubeadm's).
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start this long before they are issued, so that a node whose clock is a little
/// behind the operator's does not reject them as not yet valid.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Keys of the CA Secrets (the `kubernetes.io/tls` layout, so a user can bring their own CA).
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
/// Keys of the service-account Secret.
pub const SA_KEY: &str = "sa.key";
pub const SA_PUB: &str = "sa.pub";
/// CA bundles in the certificates Secret.
pub const CA_CRT: &str = "ca.crt";
pub const FRONT_PROXY_CA_CRT: &str = "front-proxy-ca.crt";
pub const DATASTORE_CA_CRT: &str = "datastore-ca.crt";
/// Key of the admin kubeconfig Secret.
pub const ADMIN_KUBECONFIG: &str = "kubeconfig";
/// Keys of the component kubeconfigs Secret.
pub const CONTROLLER_MANAGER_CONF: &str = "controller-manager.conf";
pub const SCHEDULER_CONF: &str = "scheduler.conf";
pub const KONNECTIVITY_SERVER_CONF: &str = "konnectivity-server.conf";
/// Keys of the add-on kubeconfigs Secret.
pub const CLOUD_CONTROLLER_CONF: &str = "cloud-controller.conf";
pub const CLUSTER_AUTOSCALER_CONF: &str = "cluster-autoscaler.conf";
/// The tenant users of the add-ons that work on the tenant from outside it: each is bound to a
/// ClusterRole of its own in the tenant, never to cluster-admin.
pub const CLOUD_CONTROLLER_USER: &str = "orrery:cloud-controller";
pub const CLUSTER_AUTOSCALER_USER: &str = "orrery:cluster-autoscaler";

/// Leaf certificate names: `<name>.crt` / `<name>.key` in the certificates Secret.
pub const APISERVER: &str = "apiserver";
pub const APISERVER_KUBELET_CLIENT: &str = "apiserver-kubelet-client";
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";
pub const DATASTORE_CLIENT: &str = "datastore-client";
pub const ADMIN: &str = "admin";
pub const CONTROLLER_MANAGER: &str = "controller-manager";
pub const SCHEDULER: &str = "scheduler";
pub const KONNECTIVITY_SERVER: &str = "konnectivity-server";
pub const CLOUD_CONTROLLER: &str = "cloud-controller";
pub const CLUSTER_AUTOSCALER: &str = "cluster-autoscaler";

/// Every leaf, in the order they are checked and issued.
pub const LEAVES: [&str; 10] = [
    APISERVER,
    APISERVER_KUBELET_CLIENT,
    FRONT_PROXY_CLIENT,
    DATASTORE_CLIENT,
    ADMIN,
    CONTROLLER_MANAGER,
    SCHEDULER,
    KONNECTIVITY_SERVER,
    CLOUD_CONTROLLER,
    CLUSTER_AUTOSCALER,
];

/// Items of [`DesiredPki::renewed`] that are not leaves.
pub const ITEM_CA: &str = "ca";
pub const ITEM_FRONT_PROXY_CA: &str = "front-proxy-ca";
pub const ITEM_SERVICE_ACCOUNT: &str = "service-account";

/// Why the PKI could not be produced. Each message names the item and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A CA exists but cannot be used; Orrery will not replace it by itself.
    #[error("{which} is unusable: {reason}")]
    UnusableCa { which: String, reason: String },
    /// The service-account key exists but cannot be used.
    #[error(
        "service-account key is unusable: {0}; replacing it would invalidate every service-account \
         token, so Orrery does not: repair the Secret or delete it to have a new key generated"
    )]
    UnusableServiceAccountKey(String),
    /// The input cannot describe a certificate.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// Key generation or signing failed.
    #[error("issuing {what}: {reason}")]
    Issue { what: String, reason: String },
    /// A kubeconfig could not be serialised.
    #[error("kubeconfig for {user}: {reason}")]
    Kubeconfig { user: String, reason: String },
}

/// Everything about a tenant the PKI depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantPkiSpec {
    /// TenantControlPlane name: kubeconfig cluster name and part of the CA common names.
    pub tenant_name: String,
    /// Tenant cluster domain, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// Tenant service CIDR(s), comma separated for dual stack; the first address of each is the
    /// `kubernetes` Service ClusterIP and goes into the apiserver SANs.
    pub service_cidr: String,
    /// Port of the apiserver inside the pod and on the management Service.
    pub api_port: u16,
    /// DNS names of the management Service (`t1.ns1`, `t1.ns1.svc`, ...).
    pub service_dns_names: Vec<String>,
    /// ClusterIP / LoadBalancer IPs of the management Service.
    pub service_ips: Vec<IpAddr>,
    /// `host:port` that users and workers use; the host goes into the SANs.
    pub endpoint: String,
    /// Extra SANs from the user: DNS names (wildcards allowed) or IP addresses.
    pub cert_sans: Vec<String>,
    /// Lifetime of leaf certificates.
    pub validity: Duration,
    /// A leaf is renewed once it has less than this left.
    pub renew_before: Duration,
    /// Common name of the datastore client certificate (the tenant's etcd user).
    pub datastore_user: String,
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPairPem {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for KeyPairPem {
    /// Never prints the key: these values end up in logs via error contexts.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPairPem")
            .field("cert", &self.cert)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertUsage {
    Server,
    Client,
    /// Both, e.g. etcd peers.
    ServerAndClient,
}

impl CertUsage {
    fn server(self) -> bool {
        matches!(self, CertUsage::Server | CertUsage::ServerAndClient)
    }
    fn client(self) -> bool {
        matches!(self, CertUsage::Client | CertUsage::ServerAndClient)
    }
}

/// Everything that describes a leaf certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertProfile {
    pub common_name: String,
    /// Organizations; Kubernetes reads each as a group.
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub usage: CertUsage,
    pub validity: Duration,
}

impl CertProfile {
    /// A client certificate for `common_name` in `organizations`.
    pub fn client(common_name: &str, organizations: &[&str], validity: Duration) -> Self {
        CertProfile {
            common_name: common_name.to_string(),
            organizations: organizations.iter().map(|o| o.to_string()).collect(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            usage: CertUsage::Client,
            validity,
        }
    }
}

/// Current contents of the tenant's Secrets (`None` = Secret absent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CurrentPki {
    pub ca: Option<BTreeMap<String, String>>,
    pub front_proxy_ca: Option<BTreeMap<String, String>>,
    pub service_account: Option<BTreeMap<String, String>>,
    pub certs: Option<BTreeMap<String, String>>,
}

/// What the tenant's Secrets should contain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredPki {
    /// `<tcp>-ca`: tls.crt, tls.key.
    pub ca: BTreeMap<String, String>,
    /// `<tcp>-front-proxy-ca`: tls.crt, tls.key.
    pub front_proxy_ca: BTreeMap<String, String>,
    /// `<tcp>-sa`: sa.key (PKCS#8 PEM), sa.pub (SPKI PEM).
    pub service_account: BTreeMap<String, String>,
    /// `<tcp>-certs`: ca.crt, front-proxy-ca.crt, datastore-ca.crt and `<leaf>.crt` / `<leaf>.key`
    /// for every name in [`LEAVES`].
    pub certs: BTreeMap<String, String>,
    /// `<tcp>-admin-kubeconfig`: `kubeconfig`, pointing at the external endpoint.
    pub admin_kubeconfig: BTreeMap<String, String>,
    /// `<tcp>-kubeconfigs`: controller-manager.conf, scheduler.conf, konnectivity-server.conf,
    /// pointing at the apiserver inside the pod.
    pub component_kubeconfigs: BTreeMap<String, String>,
    /// `<tcp>-addon-kubeconfigs`: cloud-controller.conf (the cloud controller and the CSI
    /// driver's controllers, run by the operator) and cluster-autoscaler.conf, pointing at the
    /// external endpoint. Apart from the components', so that the control plane never mounts
    /// them.
    pub addon_kubeconfigs: BTreeMap<String, String>,
    /// (item, reason) for everything created or renewed by this call.
    pub renewed: Vec<(String, String)>,
    /// Earliest time a leaf enters its renewal window: reconcile again then.
    pub next_renewal: Option<SystemTime>,
}

/// Computes the tenant PKI from the spec and the current Secrets.
///
/// The tenant CA Secret must be written before the others by the caller: leaves signed by a CA
/// that was then lost would all be re-issued against a new one.
pub fn reconcile_pki(
    spec: &TenantPkiSpec,
    current: &CurrentPki,
    datastore_ca: &KeyPairPem,
    now: SystemTime,
) -> Result<DesiredPki, PkiError> {
    if spec.validity.is_zero() || spec.renew_before >= spec.validity {
        // Otherwise a fresh certificate would already be due and every reconcile would renew it.
        return Err(invalid(
            "certificate validity",
            format!(
                "renewBefore ({}s) must be shorter than the validity ({}s)",
                spec.renew_before.as_secs(),
                spec.validity.as_secs()
            ),
        ));
    }
    let (endpoint_host, endpoint_port) = split_host_port(&spec.endpoint)?;
    let leaves = leaf_profiles(spec, &endpoint_host)?;

    let mut renewed = Vec::new();
    let (ca_data, ca) = ensure_ca(
        ITEM_CA,
        current.ca.as_ref(),
        &format!("{}-ca", spec.tenant_name),
        now,
        &mut renewed,
    )?;
    let (front_proxy_data, front_proxy) = ensure_ca(
        ITEM_FRONT_PROXY_CA,
        current.front_proxy_ca.as_ref(),
        &format!("{}-front-proxy-ca", spec.tenant_name),
        now,
        &mut renewed,
    )?;
    let datastore = LoadedCa::load("datastore CA", &datastore_ca.cert, &datastore_ca.key, now)
        .map_err(|reason| PkiError::UnusableCa {
            which: "the DataStore CA".into(),
            reason,
        })?;
    let service_account = ensure_service_account(current.service_account.as_ref(), &mut renewed)?;

    let mut certs = BTreeMap::new();
    certs.insert(CA_CRT.to_string(), ca.cert_pem.clone());
    certs.insert(FRONT_PROXY_CA_CRT.to_string(), front_proxy.cert_pem.clone());
    certs.insert(DATASTORE_CA_CRT.to_string(), datastore.cert_pem.clone());
    let mut next_renewal: Option<SystemTime> = None;
    for (name, profile) in &leaves {
        let signer = match *name {
            FRONT_PROXY_CLIENT => &front_proxy,
            DATASTORE_CLIENT => &datastore,
            _ => &ca,
        };
        let (crt_key, key_key) = (format!("{name}.crt"), format!("{name}.key"));
        let existing = current
            .certs
            .as_ref()
            .and_then(|c| Some((c.get(&crt_key)?, c.get(&key_key)?)));
        let kept = match existing {
            None => Err("created".to_string()),
            Some((cert, key)) => {
                match check_leaf(cert, key, signer, profile, spec.renew_before, now) {
                    Verdict::Keep { not_after } => Ok((
                        KeyPairPem {
                            cert: cert.clone(),
                            key: key.clone(),
                        },
                        not_after,
                    )),
                    Verdict::Renew(reason) => Err(reason),
                }
            }
        };
        let (pair, not_after) = match kept {
            Ok(kept) => kept,
            Err(reason) => {
                renewed.push((name.to_string(), reason));
                signer.issue(name, profile, now)?
            }
        };
        // A leaf cut short by its CA's expiry gains nothing from renewal; waking up for it would
        // only spin.
        if not_after < signer.not_after {
            let due = not_after
                .checked_sub(spec.renew_before)
                .unwrap_or(UNIX_EPOCH);
            next_renewal = Some(next_renewal.map_or(due, |t| t.min(due)));
        }
        certs.insert(crt_key, pair.cert);
        certs.insert(key_key, pair.key);
    }

    let external = format!(
        "https://{}:{}",
        bracket(&endpoint_host),
        endpoint_port.unwrap_or(spec.api_port)
    );
    let local = format!("https://127.0.0.1:{}", spec.api_port);
    let kubeconfig = |leaf: &str, user: &str, server: &str| {
        kubeconfig::render(&KubeconfigInput {
            cluster: &spec.tenant_name,
            server,
            ca_pem: &ca.cert_pem,
            user,
            cert_pem: &certs[&format!("{leaf}.crt")],
            key_pem: &certs[&format!("{leaf}.key")],
        })
    };
    let admin_kubeconfig = BTreeMap::from([(
        ADMIN_KUBECONFIG.to_string(),
        kubeconfig(ADMIN, "kubernetes-admin", &external)?,
    )]);
    let component_kubeconfigs = BTreeMap::from([
        (
            CONTROLLER_MANAGER_CONF.to_string(),
            kubeconfig(CONTROLLER_MANAGER, "system:kube-controller-manager", &local)?,
        ),
        (
            SCHEDULER_CONF.to_string(),
            kubeconfig(SCHEDULER, "system:kube-scheduler", &local)?,
        ),
        (
            KONNECTIVITY_SERVER_CONF.to_string(),
            kubeconfig(KONNECTIVITY_SERVER, "system:konnectivity-server", &local)?,
        ),
    ]);
    let addon_kubeconfigs = BTreeMap::from([
        (
            CLOUD_CONTROLLER_CONF.to_string(),
            kubeconfig(CLOUD_CONTROLLER, CLOUD_CONTROLLER_USER, &external)?,
        ),
        (
            CLUSTER_AUTOSCALER_CONF.to_string(),
            kubeconfig(CLUSTER_AUTOSCALER, CLUSTER_AUTOSCALER_USER, &external)?,
        ),
    ]);

    Ok(DesiredPki {
        ca: ca_data,
        front_proxy_ca: front_proxy_data,
        service_account,
        certs,
        admin_kubeconfig,
        component_kubeconfigs,
        addon_kubeconfigs,
        renewed,
        next_renewal,
    })
}

/// A new self-signed CA with an ECDSA P-256 key, valid from now for `validity`.
pub fn generate_ca(common_name: &str, validity: Duration) -> Result<KeyPairPem, PkiError> {
    generate_ca_at(common_name, validity, SystemTime::now())
}

/// Issues a leaf certificate for `profile`, signed by `ca`, with a fresh ECDSA P-256 key. The
/// lifetime is cut at the CA's own expiry, since a certificate cannot outlive its issuer.
pub fn issue(
    ca: &KeyPairPem,
    profile: &CertProfile,
    now: SystemTime,
) -> Result<KeyPairPem, PkiError> {
    let loaded =
        LoadedCa::load("CA", &ca.cert, &ca.key, now).map_err(|reason| PkiError::UnusableCa {
            which: "the issuing CA".into(),
            reason,
        })?;
    Ok(loaded.issue(&profile.common_name, profile, now)?.0)
}

/// Whether `pair` is a certificate for `profile`, signed by `ca`, whose key matches and which
/// has more than a third of `profile.validity` left (renewing at two thirds of the lifetime, as
/// cert-manager does by default). For callers that keep no renewal window of their own.
pub fn is_valid_for(
    pair: &KeyPairPem,
    ca: &KeyPairPem,
    profile: &CertProfile,
    now: SystemTime,
) -> bool {
    let Ok(loaded) = LoadedCa::load("CA", &ca.cert, &ca.key, now) else {
        return false;
    };
    matches!(
        check_leaf(
            &pair.cert,
            &pair.key,
            &loaded,
            profile,
            profile.validity / 3,
            now
        ),
        Verdict::Keep { .. }
    )
}

/// Keeps an existing key pair while [`is_valid_for`] says so, otherwise issues a new one.
pub fn keep_or_issue(
    existing: Option<KeyPairPem>,
    ca: &KeyPairPem,
    profile: &CertProfile,
    now: SystemTime,
) -> Result<KeyPairPem, PkiError> {
    if let Some(kp) = existing
        && is_valid_for(&kp, ca, profile, now)
    {
        return Ok(kp);
    }
    issue(ca, profile, now)
}

fn generate_ca_at(
    common_name: &str,
    validity: Duration,
    now: SystemTime,
) -> Result<KeyPairPem, PkiError> {
    let failed = |e: rcgen::Error| PkiError::Issue {
        what: common_name.to_string(),
        reason: e.to_string(),
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = to_offset(now.checked_sub(CLOCK_SKEW).unwrap_or(now));
    params.not_after = to_offset(now + validity);
    let cert = params.self_signed(&key).map_err(failed)?;
    Ok(KeyPairPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A CA ready to sign, with what is needed to check that a leaf came from it.
struct LoadedCa {
    /// Exactly the text it came in, for the CA bundles.
    cert_pem: String,
    der: Vec<u8>,
    /// Subject bytes: a leaf's issuer must equal them for openssl / Go to build the chain.
    subject: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    not_after: SystemTime,
}

impl LoadedCa {
    /// Loads and checks a CA; the error is the reason it is unusable.
    fn load(which: &str, cert_pem: &str, key_pem: &str, now: SystemTime) -> Result<Self, String> {
        let der = der::first_block(cert_pem, "CERTIFICATE")
            .map_err(|e| format!("{which} certificate: {e}"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("{which} certificate does not parse: {e}"))?;
        match cert.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            _ => {
                return Err(format!(
                    "{which} certificate is not a CA (no basicConstraints CA:TRUE)"
                ));
            }
        }
        if let Ok(Some(ku)) = cert.key_usage()
            && !ku.value.key_cert_sign()
        {
            return Err(format!(
                "{which} certificate may not sign certificates (no keyCertSign)"
            ));
        }
        let not_after = to_system(cert.validity().not_after);
        if not_after <= now {
            return Err(format!(
                "{which} certificate expired at {}",
                rfc3339(not_after)
            ));
        }
        let key = der::parse_private_key(key_pem).map_err(|e| format!("{which} key: {e}"))?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(format!("{which} key does not belong to its certificate"));
        }
        let subject = cert.subject().as_raw().to_vec();
        let issuer = match Issuer::from_ca_cert_der(&der.clone().into(), key) {
            Ok(issuer) => issuer,
            Err(_) => {
                // rcgen cannot model this subject (multi-valued RDN, exotic string type): sign
                // under an empty name and put the real subject bytes in afterwards.
                let key =
                    der::parse_private_key(key_pem).map_err(|e| format!("{which} key: {e}"))?;
                let mut params = CertificateParams::default();
                if let Some(ski) =
                    cert.iter_extensions()
                        .find_map(|ext| match ext.parsed_extension() {
                            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                                Some(id.0.to_vec())
                            }
                            _ => None,
                        })
                {
                    params.key_identifier_method = KeyIdMethod::PreSpecified(ski);
                }
                Issuer::new(params, key)
            }
        };
        Ok(LoadedCa {
            cert_pem: cert_pem.to_string(),
            der,
            subject,
            issuer,
            not_after,
        })
    }

    /// Whether `leaf` names this CA as issuer and carries its valid signature.
    fn signed(&self, leaf: &X509Certificate<'_>) -> bool {
        let Ok((_, ca)) = x509_parser::parse_x509_certificate(&self.der) else {
            return false;
        };
        leaf.issuer().as_raw() == self.subject.as_slice()
            && leaf.verify_signature(Some(ca.public_key())).is_ok()
    }

    /// Issues a leaf; returns it with its expiry.
    fn issue(
        &self,
        what: &str,
        profile: &CertProfile,
        now: SystemTime,
    ) -> Result<(KeyPairPem, SystemTime), PkiError> {
        let failed = |reason: String| PkiError::Issue {
            what: what.to_string(),
            reason,
        };
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| failed(e.to_string()))?;
        let mut params = CertificateParams::default();
        if let Some(org) = profile.organizations.first() {
            params
                .distinguished_name
                .push(DnType::OrganizationName, org.as_str());
        }
        params
            .distinguished_name
            .push(DnType::CommonName, profile.common_name.as_str());
        for dns in &profile.dns_names {
            let name = dns
                .as_str()
                .try_into()
                .map_err(|_| invalid("DNS SAN", format!("{dns:?} is not an ASCII host name")))?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        params.subject_alt_names.extend(
            profile
                .ip_addresses
                .iter()
                .map(|ip| SanType::IpAddress(*ip)),
        );
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if profile.usage.server() {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if profile.usage.client() {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;
        let not_after = truncate(now + profile.validity).min(self.not_after);
        params.not_before = to_offset(now.checked_sub(CLOCK_SKEW).unwrap_or(now));
        params.not_after = to_offset(not_after);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| failed(e.to_string()))?;

        let exact_issuer = {
            let (_, parsed) = x509_parser::parse_x509_certificate(cert.der())
                .map_err(|e| failed(e.to_string()))?;
            parsed.issuer().as_raw() == self.subject.as_slice()
        };
        let several_orgs = profile.organizations.len() > 1;
        let cert_pem = if exact_issuer && !several_orgs {
            cert.pem()
        } else {
            let subject =
                several_orgs.then(|| der::name(&profile.common_name, &profile.organizations));
            let issuer = (!exact_issuer).then_some(self.subject.as_slice());
            let fixed =
                der::rewrite_names(cert.der(), issuer, subject.as_deref(), self.issuer.key())
                    .map_err(failed)?;
            der::to_pem("CERTIFICATE", &fixed)
        };
        Ok((
            KeyPairPem {
                cert: cert_pem,
                key: key.serialize_pem(),
            },
            not_after,
        ))
    }
}

/// Loads an existing CA Secret, or generates a CA when there is none.
fn ensure_ca(
    item: &str,
    current: Option<&BTreeMap<String, String>>,
    common_name: &str,
    now: SystemTime,
    renewed: &mut Vec<(String, String)>,
) -> Result<(BTreeMap<String, String>, LoadedCa), PkiError> {
    let which = if item == ITEM_CA {
        "tenant CA"
    } else {
        "front-proxy CA"
    };
    let unusable = |reason: String| PkiError::UnusableCa {
        which: format!("the {which}"),
        reason: format!(
            "{reason}; a CA is never replaced automatically (every worker trusts it): repair its \
             Secret ({TLS_CRT}, {TLS_KEY}) or delete the Secret to have a new CA generated"
        ),
    };
    let (cert, key) = match current {
        Some(data) => {
            let cert = data
                .get(TLS_CRT)
                .ok_or_else(|| unusable(format!("{TLS_CRT} is missing")))?;
            let key = data
                .get(TLS_KEY)
                .ok_or_else(|| unusable(format!("{TLS_KEY} is missing")))?;
            (cert.clone(), key.clone())
        }
        None => {
            let pair = generate_ca_at(common_name, CA_VALIDITY, now)?;
            renewed.push((item.to_string(), "created".to_string()));
            (pair.cert, pair.key)
        }
    };
    let loaded = LoadedCa::load(which, &cert, &key, now).map_err(unusable)?;
    let data = BTreeMap::from([(TLS_CRT.to_string(), cert), (TLS_KEY.to_string(), key)]);
    Ok((data, loaded))
}

/// Loads the service-account key pair, or generates one when the Secret is absent. A missing or
/// stale `sa.pub` is derived again from `sa.key`: that changes nothing for existing tokens.
fn ensure_service_account(
    current: Option<&BTreeMap<String, String>>,
    renewed: &mut Vec<(String, String)>,
) -> Result<BTreeMap<String, String>, PkiError> {
    let Some(data) = current else {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| PkiError::Issue {
            what: ITEM_SERVICE_ACCOUNT.into(),
            reason: e.to_string(),
        })?;
        renewed.push((ITEM_SERVICE_ACCOUNT.to_string(), "created".to_string()));
        return Ok(BTreeMap::from([
            (SA_KEY.to_string(), key.serialize_pem()),
            (SA_PUB.to_string(), key.public_key_pem()),
        ]));
    };
    let key_pem = data
        .get(SA_KEY)
        .ok_or_else(|| PkiError::UnusableServiceAccountKey(format!("{SA_KEY} is missing")))?;
    let key = der::parse_private_key(key_pem).map_err(PkiError::UnusableServiceAccountKey)?;
    let spki = key.subject_public_key_info();
    let public = match data.get(SA_PUB) {
        Some(p) if der::first_block(p, "PUBLIC KEY").is_ok_and(|d| d == spki) => p.clone(),
        found => {
            let why = if found.is_some() {
                "did not match"
            } else {
                "was missing, derived from"
            };
            renewed.push((
                ITEM_SERVICE_ACCOUNT.to_string(),
                format!("{SA_PUB} {why} {SA_KEY}"),
            ));
            key.public_key_pem()
        }
    };
    Ok(BTreeMap::from([
        (SA_KEY.to_string(), key_pem.clone()),
        (SA_PUB.to_string(), public),
    ]))
}

enum Verdict {
    Keep { not_after: SystemTime },
    Renew(String),
}

/// Decides whether an existing leaf can stay, and if not, says why (the reason is logged).
fn check_leaf(
    cert_pem: &str,
    key_pem: &str,
    ca: &LoadedCa,
    profile: &CertProfile,
    renew_before: Duration,
    now: SystemTime,
) -> Verdict {
    let renew = |why: &str| Verdict::Renew(why.to_string());
    let Ok(der) = der::first_block(cert_pem, "CERTIFICATE") else {
        return renew("certificate is not PEM");
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return renew("certificate does not parse");
    };
    let Ok(key) = der::parse_private_key(key_pem) else {
        return renew("private key does not parse");
    };
    if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
        return renew("private key does not match the certificate");
    }
    if !ca.signed(&cert) {
        return renew("not signed by the current CA");
    }
    let subject = cert.subject();
    let common_names: Vec<&str> = subject
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .collect();
    let mut orgs: Vec<&str> = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
        .collect();
    let mut want_orgs: Vec<&str> = profile.organizations.iter().map(String::as_str).collect();
    orgs.sort_unstable();
    want_orgs.sort_unstable();
    if common_names != [profile.common_name.as_str()] || orgs != want_orgs {
        return renew("subject changed");
    }
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(raw) => match ip_from_bytes(raw) {
                    Some(ip) => ips.push(ip),
                    None => return renew("SANs changed"),
                },
                _ => return renew("SANs changed"),
            }
        }
    }
    let mut want_dns: Vec<String> = profile
        .dns_names
        .iter()
        .map(|d| d.to_ascii_lowercase())
        .collect();
    let mut want_ips = profile.ip_addresses.clone();
    for list in [&mut dns, &mut want_dns] {
        list.sort_unstable();
        list.dedup();
    }
    for list in [&mut ips, &mut want_ips] {
        list.sort_unstable();
        list.dedup();
    }
    if dns != want_dns || ips != want_ips {
        return renew("SANs changed");
    }
    let (server, client) = match cert.extended_key_usage() {
        Ok(Some(eku)) => (eku.value.server_auth, eku.value.client_auth),
        _ => (false, false),
    };
    if (server, client) != (profile.usage.server(), profile.usage.client()) {
        return renew("extended key usage changed");
    }
    if let Ok(Some(ku)) = cert.key_usage()
        && !ku.value.digital_signature()
    {
        return renew("key usage lacks digitalSignature");
    }
    let not_before = to_system(cert.validity().not_before);
    if not_before > now + CLOCK_SKEW {
        return Verdict::Renew(format!("not valid before {}", rfc3339(not_before)));
    }
    let not_after = to_system(cert.validity().not_after);
    if not_after <= now {
        return Verdict::Renew(format!("expired at {}", rfc3339(not_after)));
    }
    // Renewing a leaf already cut at its CA's expiry would give the very same end date.
    if now + renew_before >= not_after && not_after < ca.not_after {
        return Verdict::Renew(format!(
            "expires at {}, inside the renewal window",
            rfc3339(not_after)
        ));
    }
    Verdict::Keep { not_after }
}

/// The profile of every leaf of a tenant, in [`LEAVES`] order.
fn leaf_profiles(
    spec: &TenantPkiSpec,
    endpoint_host: &str,
) -> Result<Vec<(&'static str, CertProfile)>, PkiError> {
    let validity = spec.validity;
    let client = |cn: &str, orgs: &[&str]| CertProfile::client(cn, orgs, validity);
    let (dns_names, ip_addresses) = apiserver_sans(spec, endpoint_host)?;
    if spec.datastore_user.is_empty() {
        return Err(invalid("datastore user", "must not be empty".into()));
    }
    Ok(vec![
        (
            APISERVER,
            CertProfile {
                common_name: "kube-apiserver".into(),
                organizations: Vec::new(),
                dns_names,
                ip_addresses,
                usage: CertUsage::Server,
                validity,
            },
        ),
        (
            APISERVER_KUBELET_CLIENT,
            client("kube-apiserver-kubelet-client", &["system:masters"]),
        ),
        (FRONT_PROXY_CLIENT, client("front-proxy-client", &[])),
        (DATASTORE_CLIENT, client(&spec.datastore_user, &[])),
        (ADMIN, client("kubernetes-admin", &["system:masters"])),
        (
            CONTROLLER_MANAGER,
            client("system:kube-controller-manager", &[]),
        ),
        (SCHEDULER, client("system:kube-scheduler", &[])),
        (
            KONNECTIVITY_SERVER,
            client("system:konnectivity-server", &[]),
        ),
        (CLOUD_CONTROLLER, client(CLOUD_CONTROLLER_USER, &[])),
        (CLUSTER_AUTOSCALER, client(CLUSTER_AUTOSCALER_USER, &[])),
    ])
}

/// Every name a client may use to reach the tenant apiserver: in-cluster (`kubernetes...` and
/// the service ClusterIP), inside the pod (localhost), through the management Service, through
/// the endpoint, and whatever the user added.
fn apiserver_sans(
    spec: &TenantPkiSpec,
    endpoint_host: &str,
) -> Result<(Vec<String>, Vec<IpAddr>), PkiError> {
    let mut dns: Vec<String> = Vec::new();
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut add = |value: &str, field: &str| -> Result<(), PkiError> {
        let value = value.trim();
        if let Ok(ip) = value.parse::<IpAddr>() {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
            return Ok(());
        }
        if !is_dns_san(value) {
            return Err(invalid(
                field,
                format!("{value:?} is neither an IP address nor a DNS name"),
            ));
        }
        let value = value.to_ascii_lowercase();
        if !dns.contains(&value) {
            dns.push(value);
        }
        Ok(())
    };
    let domain = spec.cluster_domain.trim_end_matches('.');
    if domain.is_empty() {
        return Err(invalid("cluster domain", "must not be empty".into()));
    }
    for name in ["kubernetes", "kubernetes.default", "kubernetes.default.svc"] {
        add(name, "SAN")?;
    }
    add(
        &format!("kubernetes.default.svc.{domain}"),
        "cluster domain",
    )?;
    add("localhost", "SAN")?;
    for ip in first_service_ips(&spec.service_cidr)? {
        add(&ip.to_string(), "service CIDR")?;
    }
    add("127.0.0.1", "SAN")?;
    for name in &spec.service_dns_names {
        add(name, "service DNS name")?;
    }
    for ip in &spec.service_ips {
        add(&ip.to_string(), "service IP")?;
    }
    add(endpoint_host, "endpoint")?;
    for san in &spec.cert_sans {
        add(san, "certSANs")?;
    }
    Ok((dns, ips))
}

/// A host name as a SAN: ASCII labels of letters, digits, `-` and `_`, optionally a leading
/// `*.` wildcard label.
fn is_dns_san(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// First address of each CIDR (comma separated for dual stack): the `kubernetes` Service IP.
fn first_service_ips(cidrs: &str) -> Result<Vec<IpAddr>, PkiError> {
    cidrs
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|cidr| {
            let net: ipnet::IpNet = cidr
                .parse()
                .map_err(|e| invalid("service CIDR", format!("{cidr:?}: {e}")))?;
            let first = match net.network() {
                IpAddr::V4(n) => u32::from(n)
                    .checked_add(1)
                    .map(|v| IpAddr::from(std::net::Ipv4Addr::from(v))),
                IpAddr::V6(n) => u128::from(n)
                    .checked_add(1)
                    .map(|v| IpAddr::from(std::net::Ipv6Addr::from(v))),
            };
            first.filter(|ip| net.contains(ip)).ok_or_else(|| {
                invalid(
                    "service CIDR",
                    format!("{cidr:?} has no address for the kubernetes Service"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|ips| {
            if ips.is_empty() {
                Err(invalid("service CIDR", "must not be empty".into()))
            } else {
                Ok(ips)
            }
        })
}

/// Splits `host:port`, `[v6]:port`, a bare host or a bare IPv6 address.
fn split_host_port(endpoint: &str) -> Result<(String, Option<u16>), PkiError> {
    let endpoint = endpoint.trim();
    let bad = |why: &str| invalid("endpoint", format!("{endpoint:?}: {why}"));
    let (host, port) = if let Some(rest) = endpoint.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("expected ':' after ']'"))?,
                ),
            ),
        }
    } else if endpoint.matches(':').count() == 1 {
        let (host, port) = endpoint.split_once(':').unwrap_or((endpoint, ""));
        (host, Some(port))
    } else {
        (endpoint, None)
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = port
        .map(|p| p.parse::<u16>().map_err(|_| bad("port is not a number")))
        .transpose()?;
    Ok((host.to_string(), port))
}

/// A host as it appears in a URL: IPv6 addresses in brackets.
fn bracket(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host.to_string(),
    }
}

fn ip_from_bytes(raw: &[u8]) -> Option<IpAddr> {
    match raw.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(raw).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(raw).ok()?)),
        _ => None,
    }
}

fn invalid(field: &str, reason: String) -> PkiError {
    PkiError::Invalid {
        field: field.to_string(),
        reason,
    }
}

/// Whole seconds: X.509 times have no fraction, and comparisons must agree with what is written.
fn truncate(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

fn to_offset(t: SystemTime) -> OffsetDateTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn to_system(t: ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t).map_or_else(|_| format!("{t:?}"), |ts| ts.to_string())
}
