//! Who calls the autoscaler API: the tenant named by the common name of the client certificate
//! Orrery issued for its autoscaler, `<namespace>/<name>` of the TenantControlPlane.
//!
//! The certificate authority signs nothing else that could be presented as a client (the
//! server's own certificate is for server authentication only), so the name alone identifies
//! the caller once the TLS handshake has checked the chain.

use std::fmt;

/// A TenantControlPlane, as a caller of the API.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant {
    pub namespace: String,
    pub name: String,
}

impl Tenant {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The common name of this tenant's client certificate.
    pub fn common_name(&self) -> String {
        self.to_string()
    }

    /// The tenant a common name names: two DNS labels or subdomains joined by one `/`.
    pub fn from_common_name(cn: &str) -> Option<Self> {
        let (namespace, name) = cn.split_once('/')?;
        (is_object_name(namespace) && is_object_name(name)).then(|| Self::new(namespace, name))
    }

    /// The tenant a DER client certificate names, if it names one.
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
        Self::from_common_name(cn)
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A DNS-1123 subdomain, the form of namespace and object names.
fn is_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{self, CertProfile};
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_common_name_names_a_tenant_only_as_namespace_slash_name() {
        for (cn, expected) in [
            ("tenants/demo", Some(Tenant::new("tenants", "demo"))),
            ("ns-1/t.example", Some(Tenant::new("ns-1", "t.example"))),
            ("demo", None),
            ("/demo", None),
            ("tenants/", None),
            ("a/b/c", None),
            ("Tenants/demo", None),
            ("tenants/-demo", None),
            ("tenants/demo ", None),
            ("system:node:x/y", None),
        ] {
            assert_eq!(Tenant::from_common_name(cn), expected, "{cn:?}");
        }
        let t = Tenant::new("tenants", "demo");
        assert_eq!(Tenant::from_common_name(&t.common_name()), Some(t));
    }

    #[test]
    fn the_tenant_is_read_from_an_issued_certificate() {
        let ca = pki::generate_ca("test", Duration::from_secs(3600)).unwrap();
        let tenant = Tenant::new("tenants", "demo");
        let profile = CertProfile::client(&tenant.common_name(), &[], Duration::from_secs(600));
        let pair = pki::issue(&ca, &profile, SystemTime::now()).unwrap();
        let der = pem::parse(&pair.cert).unwrap();
        assert_eq!(Tenant::from_certificate(der.contents()), Some(tenant));
        let other = CertProfile::client("system:admin", &[], Duration::from_secs(600));
        let pair = pki::issue(&ca, &other, SystemTime::now()).unwrap();
        let der = pem::parse(&pair.cert).unwrap();
        assert_eq!(Tenant::from_certificate(der.contents()), None);
        assert_eq!(Tenant::from_certificate(b"not a certificate"), None);
    }
}
