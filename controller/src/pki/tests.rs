//! Every certificate is checked with the real `openssl`, not only with our own parser.

use super::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn spec() -> TenantPkiSpec {
    TenantPkiSpec {
        tenant_name: "t1".into(),
        cluster_domain: "cluster.local".into(),
        service_cidr: "10.96.0.0/16".into(),
        api_port: 6443,
        service_dns_names: vec![
            "t1.ns1".into(),
            "t1.ns1.svc".into(),
            "t1.ns1.svc.cluster.local".into(),
        ],
        service_ips: vec!["10.0.0.10".parse().unwrap(), "203.0.113.5".parse().unwrap()],
        endpoint: "203.0.113.5:6443".into(),
        cert_sans: vec![
            "api.example.com".into(),
            "*.apps.example.com".into(),
            "192.0.2.7".into(),
        ],
        validity: 365 * DAY,
        renew_before: 30 * DAY,
        datastore_user: "orrery/ns1/t1".into(),
    }
}

/// One DataStore CA for the whole test binary: its generation is not what is under test.
fn datastore_ca() -> &'static KeyPairPem {
    static CA: OnceLock<KeyPairPem> = OnceLock::new();
    CA.get_or_init(|| generate_ca("etcd CA", CA_VALIDITY).unwrap())
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn fresh(spec: &TenantPkiSpec, at: SystemTime) -> DesiredPki {
    reconcile_pki(spec, &CurrentPki::default(), datastore_ca(), at).unwrap()
}

fn as_current(d: &DesiredPki) -> CurrentPki {
    CurrentPki {
        ca: Some(d.ca.clone()),
        front_proxy_ca: Some(d.front_proxy_ca.clone()),
        service_account: Some(d.service_account.clone()),
        certs: Some(d.certs.clone()),
    }
}

fn renewed_items(d: &DesiredPki) -> Vec<&str> {
    d.renewed.iter().map(|(item, _)| item.as_str()).collect()
}

fn pair(d: &DesiredPki, leaf: &str) -> KeyPairPem {
    KeyPairPem {
        cert: d.certs[&format!("{leaf}.crt")].clone(),
        key: d.certs[&format!("{leaf}.key")].clone(),
    }
}

fn ca_pair(data: &BTreeMap<String, String>) -> KeyPairPem {
    KeyPairPem {
        cert: data[TLS_CRT].clone(),
        key: data[TLS_KEY].clone(),
    }
}

/// The CA bundle each leaf must chain to, and the openssl purpose it must satisfy.
fn issuer_of<'a>(d: &'a DesiredPki, leaf: &str) -> (&'a str, &'static str) {
    let ca = match leaf {
        FRONT_PROXY_CLIENT => FRONT_PROXY_CA_CRT,
        DATASTORE_CLIENT => DATASTORE_CA_CRT,
        _ => CA_CRT,
    };
    let purpose = if leaf == APISERVER {
        "sslserver"
    } else {
        "sslclient"
    };
    (&d.certs[ca], purpose)
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `openssl verify` of `cert` against `ca` for `purpose`, optionally at another time.
fn verify(ca: &str, cert: &str, purpose: &str, at: Option<SystemTime>) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let ca_path = write(dir.path(), "ca.pem", ca);
    let cert_path = write(dir.path(), "cert.pem", cert);
    let attime = at.map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs().to_string());
    let mut args = vec![
        "verify",
        "-CAfile",
        ca_path.to_str().unwrap(),
        "-purpose",
        purpose,
    ];
    if let Some(t) = &attime {
        args.extend(["-attime", t.as_str()]);
    }
    args.push(cert_path.to_str().unwrap());
    let (ok, text) = openssl(&args);
    if ok { Ok(()) } else { Err(text) }
}

fn text_of(cert: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "cert.pem", cert);
    let (ok, text) = openssl(&["x509", "-noout", "-text", "-in", path.to_str().unwrap()]);
    assert!(ok, "{text}");
    text
}

/// Public key of a certificate and of a private key, as openssl prints them.
fn openssl_pubkeys(cert: &str, key: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let cert_path = write(dir.path(), "cert.pem", cert);
    let key_path = write(dir.path(), "key.pem", key);
    let (ok1, from_cert) = openssl(&[
        "x509",
        "-noout",
        "-pubkey",
        "-in",
        cert_path.to_str().unwrap(),
    ]);
    let (ok2, from_key) = openssl(&["pkey", "-pubout", "-in", key_path.to_str().unwrap()]);
    assert!(ok1 && ok2, "{from_cert}\n{from_key}");
    (from_cert, from_key)
}

fn parsed<R>(cert: &str, f: impl FnOnce(&X509Certificate<'_>) -> R) -> R {
    let der = der::first_block(cert, "CERTIFICATE").unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    f(&x)
}

/// (CN, O values in order) of a certificate.
fn subject_of(cert: &str) -> (String, Vec<String>) {
    parsed(cert, |x| {
        let cn = x
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        let orgs = x
            .subject()
            .iter_organization()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        (cn, orgs)
    })
}

fn sans_of(cert: &str) -> (Vec<String>, Vec<IpAddr>) {
    parsed(cert, |x| {
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for name in &x
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
        {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(raw) => ips.push(ip_from_bytes(raw).unwrap()),
                other => panic!("unexpected SAN {other:?}"),
            }
        }
        (dns, ips)
    })
}

fn validity_of(cert: &str) -> (SystemTime, SystemTime) {
    parsed(cert, |x| {
        (
            to_system(x.validity().not_before),
            to_system(x.validity().not_after),
        )
    })
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("not base64: {e}"))
}

fn approx(a: SystemTime, b: SystemTime, tolerance: Duration) -> bool {
    let diff = a.duration_since(b).unwrap_or_else(|e| e.duration());
    diff <= tolerance
}

#[test]
fn fresh_pki_verifies_with_openssl() {
    let at = now();
    let d = fresh(&spec(), at);

    let mut expected_keys: Vec<String> = vec![
        CA_CRT.into(),
        FRONT_PROXY_CA_CRT.into(),
        DATASTORE_CA_CRT.into(),
    ];
    for leaf in LEAVES {
        expected_keys.push(format!("{leaf}.crt"));
        expected_keys.push(format!("{leaf}.key"));
    }
    expected_keys.sort();
    assert_eq!(d.certs.keys().cloned().collect::<Vec<_>>(), expected_keys);
    assert_eq!(d.certs[CA_CRT], d.ca[TLS_CRT]);
    assert_eq!(d.certs[FRONT_PROXY_CA_CRT], d.front_proxy_ca[TLS_CRT]);
    assert_eq!(d.certs[DATASTORE_CA_CRT], datastore_ca().cert);

    let mut created = vec![ITEM_CA, ITEM_FRONT_PROXY_CA, ITEM_SERVICE_ACCOUNT];
    created.extend(LEAVES);
    assert_eq!(renewed_items(&d), created);
    assert!(d.renewed.iter().all(|(_, why)| why == "created"));

    for ca in [&d.ca, &d.front_proxy_ca] {
        let cert = &ca[TLS_CRT];
        verify(cert, cert, "any", None).unwrap();
        let text = text_of(cert);
        for needle in [
            "CA:TRUE",
            "Digital Signature, Certificate Sign, CRL Sign",
            "id-ecPublicKey",
            "prime256v1",
            "ecdsa-with-SHA256",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
        let (from, to) = validity_of(cert);
        assert!(approx(from, at - CLOCK_SKEW, Duration::from_secs(2)));
        assert!(approx(to, at + CA_VALIDITY, Duration::from_secs(2)));
    }
    assert_eq!(subject_of(&d.ca[TLS_CRT]).0, "t1-ca");
    assert_eq!(
        subject_of(&d.front_proxy_ca[TLS_CRT]).0,
        "t1-front-proxy-ca"
    );

    let subjects: [(&str, &str, &[&str]); 8] = [
        (APISERVER, "kube-apiserver", &[]),
        (
            APISERVER_KUBELET_CLIENT,
            "kube-apiserver-kubelet-client",
            &["system:masters"],
        ),
        (FRONT_PROXY_CLIENT, "front-proxy-client", &[]),
        (DATASTORE_CLIENT, "orrery/ns1/t1", &[]),
        (ADMIN, "kubernetes-admin", &["system:masters"]),
        (CONTROLLER_MANAGER, "system:kube-controller-manager", &[]),
        (SCHEDULER, "system:kube-scheduler", &[]),
        (KONNECTIVITY_SERVER, "system:konnectivity-server", &[]),
    ];
    for (leaf, cn, orgs) in subjects {
        let p = pair(&d, leaf);
        let (ca, purpose) = issuer_of(&d, leaf);
        verify(ca, &p.cert, purpose, None).unwrap_or_else(|e| panic!("{leaf}: {e}"));
        // A leaf must not chain to the wrong CA.
        let wrong = if ca == d.certs[CA_CRT] {
            &d.certs[FRONT_PROXY_CA_CRT]
        } else {
            &d.certs[CA_CRT]
        };
        assert!(
            verify(wrong, &p.cert, purpose, None).is_err(),
            "{leaf} verifies against the wrong CA"
        );

        let text = text_of(&p.cert);
        let (eku, not_eku) = if leaf == APISERVER {
            (
                "TLS Web Server Authentication",
                "TLS Web Client Authentication",
            )
        } else {
            (
                "TLS Web Client Authentication",
                "TLS Web Server Authentication",
            )
        };
        for needle in [
            eku,
            "X509v3 Key Usage: critical\n                Digital Signature\n",
            "CA:FALSE",
            "X509v3 Authority Key Identifier",
            "prime256v1",
        ] {
            assert!(text.contains(needle), "{leaf}: {needle} missing in\n{text}");
        }
        assert!(!text.contains(not_eku), "{leaf}: unexpected {not_eku}");
        assert!(
            !text.contains("Key Encipherment"),
            "{leaf}: ECDSA needs no keyEncipherment"
        );

        let (got_cn, got_orgs) = subject_of(&p.cert);
        assert_eq!(got_cn, cn, "{leaf}");
        assert_eq!(got_orgs, orgs, "{leaf}");

        let (from, to) = validity_of(&p.cert);
        assert!(
            approx(to, at + spec().validity, Duration::from_secs(2)),
            "{leaf} not_after"
        );
        assert!(
            approx(from, at - CLOCK_SKEW, Duration::from_secs(2)),
            "{leaf} not_before"
        );

        let (pub_cert, pub_key) = openssl_pubkeys(&p.cert, &p.key);
        assert_eq!(
            pub_cert, pub_key,
            "{leaf}: key does not belong to the certificate"
        );
        assert!(
            p.key.starts_with("-----BEGIN PRIVATE KEY-----"),
            "{leaf}: PKCS#8 expected"
        );
    }

    let (dns, ips) = sans_of(&d.certs["apiserver.crt"]);
    assert_eq!(
        dns,
        [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "localhost",
            "t1.ns1",
            "t1.ns1.svc",
            "t1.ns1.svc.cluster.local",
            "api.example.com",
            "*.apps.example.com",
        ]
    );
    let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
    assert_eq!(
        ips,
        [
            "10.96.0.1",
            "127.0.0.1",
            "10.0.0.10",
            "203.0.113.5",
            "192.0.2.7"
        ]
    );
    let text = text_of(&d.certs["apiserver.crt"]);
    for needle in [
        "DNS:kubernetes.default.svc.cluster.local",
        "IP Address:10.96.0.1",
        "DNS:*.apps.example.com",
    ] {
        assert!(text.contains(needle), "{needle} missing in\n{text}");
    }

    let expected_renewal = truncate(at + spec().validity) - spec().renew_before;
    assert_eq!(d.next_renewal, Some(expected_renewal));
}

#[test]
fn service_account_pair_matches() {
    let d = fresh(&spec(), now());
    let key = &d.service_account[SA_KEY];
    assert!(
        key.starts_with("-----BEGIN PRIVATE KEY-----"),
        "sa.key must be PKCS#8"
    );
    assert!(d.service_account[SA_PUB].starts_with("-----BEGIN PUBLIC KEY-----"));
    let dir = tempfile::tempdir().unwrap();
    let key_path = write(dir.path(), "sa.key", key);
    let (ok, text) = openssl(&["pkey", "-in", key_path.to_str().unwrap(), "-noout", "-text"]);
    assert!(ok && text.contains("P-256"), "{text}");
    let (ok, public) = openssl(&["pkey", "-in", key_path.to_str().unwrap(), "-pubout"]);
    assert!(ok, "{public}");
    assert_eq!(public, d.service_account[SA_PUB]);
}

#[test]
fn second_reconcile_is_byte_identical() {
    let at = now();
    let first = fresh(&spec(), at);
    let second = reconcile_pki(&spec(), &as_current(&first), datastore_ca(), at).unwrap();
    assert!(second.renewed.is_empty(), "{:?}", second.renewed);
    assert_eq!(
        second,
        DesiredPki {
            renewed: Vec::new(),
            ..first.clone()
        }
    );
    // Still nothing to do much later, as long as no leaf is in its window.
    let later =
        reconcile_pki(&spec(), &as_current(&first), datastore_ca(), at + 300 * DAY).unwrap();
    assert!(later.renewed.is_empty(), "{:?}", later.renewed);
    assert_eq!(later.certs, first.certs);
    assert_eq!(later.admin_kubeconfig, first.admin_kubeconfig);
    assert_eq!(later.component_kubeconfigs, first.component_kubeconfigs);
}

#[test]
fn leaves_inside_the_renewal_window_are_renewed() {
    let s = spec();
    let at = now();
    let first = fresh(&s, at);
    let window_opens = truncate(at + s.validity) - s.renew_before;

    let before =
        reconcile_pki(&s, &as_current(&first), datastore_ca(), window_opens - DAY).unwrap();
    assert!(before.renewed.is_empty(), "{:?}", before.renewed);
    assert_eq!(before.certs, first.certs);

    let inside = window_opens + DAY;
    let d = reconcile_pki(&s, &as_current(&first), datastore_ca(), inside).unwrap();
    assert_eq!(renewed_items(&d), LEAVES);
    for (_, why) in &d.renewed {
        assert!(why.contains("inside the renewal window"), "{why}");
    }
    // CAs and the service-account key stay.
    assert_eq!(d.ca, first.ca);
    assert_eq!(d.front_proxy_ca, first.front_proxy_ca);
    assert_eq!(d.service_account, first.service_account);
    for leaf in LEAVES {
        let (ca, purpose) = issuer_of(&d, leaf);
        verify(ca, &d.certs[&format!("{leaf}.crt")], purpose, Some(inside))
            .unwrap_or_else(|e| panic!("{leaf}: {e}"));
        assert_ne!(
            d.certs[&format!("{leaf}.key")],
            first.certs[&format!("{leaf}.key")],
            "{leaf}: new key expected"
        );
    }
    assert_eq!(
        d.next_renewal,
        Some(truncate(inside + s.validity) - s.renew_before)
    );
    assert_ne!(d.admin_kubeconfig, first.admin_kubeconfig);
}

#[test]
fn only_the_leaf_inside_its_window_is_renewed() {
    let s = spec();
    let at = now();
    let first = fresh(&s, at);
    // An admin certificate issued 340 days ago has 25 days left: inside the 30-day window.
    let old_admin = issue(
        &ca_pair(&first.ca),
        &CertProfile::client("kubernetes-admin", &["system:masters"], s.validity),
        at - 340 * DAY,
    )
    .unwrap();
    let mut current = as_current(&first);
    let certs = current.certs.as_mut().unwrap();
    certs.insert("admin.crt".into(), old_admin.cert.clone());
    certs.insert("admin.key".into(), old_admin.key.clone());

    let d = reconcile_pki(&s, &current, datastore_ca(), at).unwrap();
    assert_eq!(renewed_items(&d), [ADMIN]);
    assert!(
        d.renewed[0].1.contains("inside the renewal window"),
        "{:?}",
        d.renewed
    );
    for leaf in LEAVES.iter().filter(|l| **l != ADMIN) {
        assert_eq!(pair(&d, leaf), pair(&first, leaf), "{leaf} must be kept");
    }
    verify(&d.certs[CA_CRT], &d.certs["admin.crt"], "sslclient", None).unwrap();
    // The next wake-up is for the leaves that were kept.
    assert_eq!(
        d.next_renewal,
        Some(truncate(at + s.validity) - s.renew_before)
    );
    // With a 20-day window the old certificate (25 days left) is kept, and it is the next due.
    let narrow = TenantPkiSpec {
        renew_before: 20 * DAY,
        ..s.clone()
    };
    let kept = reconcile_pki(&narrow, &current, datastore_ca(), at).unwrap();
    assert!(kept.renewed.is_empty(), "{:?}", kept.renewed);
    assert_eq!(kept.certs["admin.crt"], old_admin.cert);
    assert_eq!(
        kept.next_renewal,
        Some(truncate(at - 340 * DAY + s.validity) - narrow.renew_before)
    );
}

#[test]
fn cert_san_change_renews_only_the_apiserver_certificate() {
    let at = now();
    let first = fresh(&spec(), at);
    let mut changed = spec();
    changed.cert_sans.push("new.example.com".into());
    let d = reconcile_pki(&changed, &as_current(&first), datastore_ca(), at).unwrap();
    assert_eq!(
        d.renewed,
        [(APISERVER.to_string(), "SANs changed".to_string())]
    );
    for leaf in LEAVES.iter().filter(|l| **l != APISERVER) {
        assert_eq!(pair(&d, leaf), pair(&first, leaf), "{leaf} must be kept");
    }
    assert_eq!(d.admin_kubeconfig, first.admin_kubeconfig);
    assert_eq!(d.component_kubeconfigs, first.component_kubeconfigs);
    let text = text_of(&d.certs["apiserver.crt"]);
    assert!(text.contains("DNS:new.example.com"), "{text}");
    verify(
        &d.certs[CA_CRT],
        &d.certs["apiserver.crt"],
        "sslserver",
        None,
    )
    .unwrap();

    // A new management Service IP also reaches the apiserver certificate only.
    let mut moved = spec();
    moved.service_ips.push("10.0.0.99".parse().unwrap());
    let d = reconcile_pki(&moved, &as_current(&first), datastore_ca(), at).unwrap();
    assert_eq!(renewed_items(&d), [APISERVER]);

    // The same SANs in another order, or in upper case, are the same certificate.
    let mut reordered = spec();
    reordered.cert_sans.reverse();
    reordered.cert_sans[0] = reordered.cert_sans[0].to_uppercase();
    reordered.service_dns_names.reverse();
    let d = reconcile_pki(&reordered, &as_current(&first), datastore_ca(), at).unwrap();
    assert!(d.renewed.is_empty(), "{:?}", d.renewed);
}

#[test]
fn subject_change_renews_only_that_leaf() {
    let at = now();
    let first = fresh(&spec(), at);
    let mut changed = spec();
    changed.datastore_user = "orrery/ns1/t1-renamed".into();
    let d = reconcile_pki(&changed, &as_current(&first), datastore_ca(), at).unwrap();
    assert_eq!(
        d.renewed,
        [(DATASTORE_CLIENT.to_string(), "subject changed".to_string())]
    );
    assert_eq!(
        subject_of(&d.certs["datastore-client.crt"]).0,
        "orrery/ns1/t1-renamed"
    );
    verify(
        &datastore_ca().cert,
        &d.certs["datastore-client.crt"],
        "sslclient",
        None,
    )
    .unwrap();
}

#[test]
fn leaf_signed_by_another_ca_is_renewed() {
    let at = now();
    let first = fresh(&spec(), at);
    let stranger = generate_ca("t1-ca", CA_VALIDITY).unwrap();
    let forged = issue(
        &stranger,
        &CertProfile::client("kubernetes-admin", &["system:masters"], spec().validity),
        at,
    )
    .unwrap();
    let mut current = as_current(&first);
    let certs = current.certs.as_mut().unwrap();
    certs.insert("admin.crt".into(), forged.cert);
    certs.insert("admin.key".into(), forged.key);
    let d = reconcile_pki(&spec(), &current, datastore_ca(), at).unwrap();
    assert_eq!(
        d.renewed,
        [(
            ADMIN.to_string(),
            "not signed by the current CA".to_string()
        )]
    );
    verify(&d.certs[CA_CRT], &d.certs["admin.crt"], "sslclient", None).unwrap();
    assert_ne!(d.admin_kubeconfig, first.admin_kubeconfig);
    assert_eq!(d.component_kubeconfigs, first.component_kubeconfigs);
}

#[test]
fn broken_leaf_material_is_renewed() {
    let at = now();
    let first = fresh(&spec(), at);
    let cases: [(&str, &str, &str); 4] = [
        (
            "admin.key",
            "scheduler.key",
            "private key does not match the certificate",
        ),
        ("admin.key", "garbage", "private key does not parse"),
        ("admin.crt", "garbage", "certificate is not PEM"),
        (
            "admin.crt",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "certificate does not parse",
        ),
    ];
    for (key, value, why) in cases {
        let mut current = as_current(&first);
        let certs = current.certs.as_mut().unwrap();
        let value = certs.get(value).cloned().unwrap_or(value.to_string());
        certs.insert(key.into(), value);
        let d = reconcile_pki(&spec(), &current, datastore_ca(), at).unwrap();
        assert_eq!(d.renewed, [(ADMIN.to_string(), why.to_string())], "{key}");
        verify(&d.certs[CA_CRT], &d.certs["admin.crt"], "sslclient", None).unwrap();
    }
    // A key missing from the Secret is simply issued again.
    let mut current = as_current(&first);
    current.certs.as_mut().unwrap().remove("scheduler.key");
    let d = reconcile_pki(&spec(), &current, datastore_ca(), at).unwrap();
    assert_eq!(d.renewed, [(SCHEDULER.to_string(), "created".to_string())]);
}

#[test]
fn an_unusable_ca_is_an_error_never_a_regeneration() {
    let at = now();
    let first = fresh(&spec(), at);
    let leaf = pair(&first, ADMIN);
    let other = generate_ca("other", CA_VALIDITY).unwrap();
    let cases: Vec<(&str, BTreeMap<String, String>)> = vec![
        (
            "garbled certificate",
            BTreeMap::from([
                (TLS_CRT.into(), "garbage".into()),
                (TLS_KEY.into(), first.ca[TLS_KEY].clone()),
            ]),
        ),
        (
            "garbled key",
            BTreeMap::from([
                (TLS_CRT.into(), first.ca[TLS_CRT].clone()),
                (
                    TLS_KEY.into(),
                    "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
                ),
            ]),
        ),
        (
            "missing key",
            BTreeMap::from([(TLS_CRT.into(), first.ca[TLS_CRT].clone())]),
        ),
        ("empty Secret", BTreeMap::new()),
        (
            "key of another CA",
            BTreeMap::from([
                (TLS_CRT.into(), first.ca[TLS_CRT].clone()),
                (TLS_KEY.into(), other.key.clone()),
            ]),
        ),
        (
            "not a CA",
            BTreeMap::from([
                (TLS_CRT.into(), leaf.cert.clone()),
                (TLS_KEY.into(), leaf.key.clone()),
            ]),
        ),
    ];
    for (what, data) in cases {
        for front_proxy in [false, true] {
            let mut current = as_current(&first);
            if front_proxy {
                current.front_proxy_ca = Some(data.clone());
            } else {
                current.ca = Some(data.clone());
            }
            match reconcile_pki(&spec(), &current, datastore_ca(), at) {
                Err(e @ PkiError::UnusableCa { .. }) => {
                    let message = e.to_string();
                    assert!(
                        message.contains("never replaced automatically"),
                        "{what}: {message}"
                    );
                    assert!(
                        message.contains(if front_proxy {
                            "front-proxy CA"
                        } else {
                            "tenant CA"
                        }),
                        "{message}"
                    );
                }
                other => panic!("{what}: expected an unusable-CA error, got {other:?}"),
            }
        }
    }
    // An expired CA is not replaced either.
    let eleven_years = at + CA_VALIDITY + 365 * DAY;
    let err =
        reconcile_pki(&spec(), &as_current(&first), datastore_ca(), eleven_years).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    // Nor is the DataStore CA.
    let broken = KeyPairPem {
        cert: datastore_ca().cert.clone(),
        key: other.key,
    };
    let err = reconcile_pki(&spec(), &as_current(&first), &broken, at).unwrap_err();
    assert!(err.to_string().contains("DataStore CA"), "{err}");
}

#[test]
fn the_service_account_key_is_kept_or_refused() {
    let at = now();
    let first = fresh(&spec(), at);
    let mut current = as_current(&first);
    current.service_account = Some(BTreeMap::from([(SA_KEY.into(), "garbage".into())]));
    assert!(matches!(
        reconcile_pki(&spec(), &current, datastore_ca(), at),
        Err(PkiError::UnusableServiceAccountKey(_))
    ));
    // A lost sa.pub is derived again from the key; the key itself does not change.
    current.service_account = Some(BTreeMap::from([(
        SA_KEY.into(),
        first.service_account[SA_KEY].clone(),
    )]));
    let d = reconcile_pki(&spec(), &current, datastore_ca(), at).unwrap();
    assert_eq!(d.service_account, first.service_account);
    assert_eq!(renewed_items(&d), [ITEM_SERVICE_ACCOUNT]);
}

/// Makes a CA with the openssl CLI the way a user would, returning (tls.crt, tls.key).
fn openssl_ca(key_args: &[&str], subject: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ca.key");
    let crt = dir.path().join("ca.crt");
    // The output option goes right after the command: genrsa wants the key size last.
    let mut args = vec![key_args[0], "-out", key.to_str().unwrap()];
    args.extend(&key_args[1..]);
    let (ok, text) = openssl(&args);
    assert!(ok, "{text}");
    let (ok, text) = openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        key.to_str().unwrap(),
        "-subj",
        subject,
        "-days",
        "3650",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        crt.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    (
        std::fs::read_to_string(crt).unwrap(),
        std::fs::read_to_string(key).unwrap(),
    )
}

#[test]
fn a_user_supplied_ca_is_used() {
    let cases = [
        // SEC1 key after an EC PARAMETERS block, repeated DC attributes in the subject.
        (
            openssl_ca(
                &["ecparam", "-name", "prime256v1", "-genkey"],
                "/DC=com/DC=example/O=Example Corp/CN=Example Root",
            ),
            "EC PRIVATE KEY",
        ),
        // PKCS#1 RSA key, multi-valued RDN in the subject.
        (
            openssl_ca(
                &["genrsa", "-traditional", "2048"],
                "/O=Example Corp/CN=Example RSA Root+OU=Platform",
            ),
            "RSA PRIVATE KEY",
        ),
        // PKCS#8 P-384 key.
        (
            openssl_ca(
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-384",
                ],
                "/CN=Example P-384 Root",
            ),
            "-----BEGIN PRIVATE KEY",
        ),
    ];
    let at = now();
    for ((crt, key), kind) in cases {
        assert!(key.contains(kind), "{key}");
        let user_ca = BTreeMap::from([
            (TLS_CRT.to_string(), crt.clone()),
            (TLS_KEY.to_string(), key.clone()),
        ]);
        let current = CurrentPki {
            ca: Some(user_ca.clone()),
            ..Default::default()
        };
        let d = reconcile_pki(&spec(), &current, datastore_ca(), at)
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(d.ca, user_ca, "{kind}: the CA Secret is taken as it is");
        assert_eq!(d.certs[CA_CRT], crt);
        assert!(!renewed_items(&d).contains(&ITEM_CA), "{kind}");
        for leaf in LEAVES {
            let (ca, purpose) = issuer_of(&d, leaf);
            verify(ca, &d.certs[&format!("{leaf}.crt")], purpose, None)
                .unwrap_or_else(|e| panic!("{kind} {leaf}: {e}"));
        }
        let again = reconcile_pki(&spec(), &as_current(&d), datastore_ca(), at).unwrap();
        assert!(again.renewed.is_empty(), "{kind}: {:?}", again.renewed);
        assert_eq!(again.certs, d.certs);
    }
}

#[test]
fn replacing_the_ca_renews_every_leaf_it_signs() {
    let at = now();
    let first = fresh(&spec(), at);
    let replacement = generate_ca("t1 replacement CA", CA_VALIDITY).unwrap();
    let mut current = as_current(&first);
    current.ca = Some(BTreeMap::from([
        (TLS_CRT.to_string(), replacement.cert.clone()),
        (TLS_KEY.to_string(), replacement.key.clone()),
    ]));
    let d = reconcile_pki(&spec(), &current, datastore_ca(), at).unwrap();
    let signed_by_ca: Vec<&str> = LEAVES
        .iter()
        .copied()
        .filter(|l| ![FRONT_PROXY_CLIENT, DATASTORE_CLIENT].contains(l))
        .collect();
    assert_eq!(renewed_items(&d), signed_by_ca);
    assert!(
        d.renewed
            .iter()
            .all(|(_, why)| why == "not signed by the current CA")
    );
    assert_eq!(d.certs[CA_CRT], replacement.cert);
    for leaf in signed_by_ca {
        verify(
            &replacement.cert,
            &d.certs[&format!("{leaf}.crt")],
            "any",
            None,
        )
        .unwrap();
    }
    assert_eq!(
        pair(&d, FRONT_PROXY_CLIENT),
        pair(&first, FRONT_PROXY_CLIENT)
    );
}

#[test]
fn datastore_ca_change_reissues_only_the_datastore_client() {
    let at = now();
    let first = fresh(&spec(), at);
    let new_ds = generate_ca("etcd CA 2", CA_VALIDITY).unwrap();
    let d = reconcile_pki(&spec(), &as_current(&first), &new_ds, at).unwrap();
    assert_eq!(
        d.renewed,
        [(
            DATASTORE_CLIENT.to_string(),
            "not signed by the current CA".to_string()
        )]
    );
    assert_eq!(d.certs[DATASTORE_CA_CRT], new_ds.cert);
    verify(
        &new_ds.cert,
        &d.certs["datastore-client.crt"],
        "sslclient",
        None,
    )
    .unwrap();
    let mut rest = d.certs.clone();
    let mut before = first.certs.clone();
    for key in [
        DATASTORE_CA_CRT,
        "datastore-client.crt",
        "datastore-client.key",
    ] {
        rest.remove(key);
        before.remove(key);
    }
    assert_eq!(rest, before);
    assert_eq!(d.admin_kubeconfig, first.admin_kubeconfig);
    assert_eq!(d.component_kubeconfigs, first.component_kubeconfigs);
}

#[test]
fn leaves_never_outlive_their_ca_and_do_not_churn_near_its_end() {
    let at = now();
    let short_ca = generate_ca("short-lived", 100 * DAY).unwrap();
    let current = CurrentPki {
        ca: Some(BTreeMap::from([
            (TLS_CRT.to_string(), short_ca.cert.clone()),
            (TLS_KEY.to_string(), short_ca.key.clone()),
        ])),
        ..Default::default()
    };
    let d = reconcile_pki(&spec(), &current, datastore_ca(), at).unwrap();
    let (_, ca_end) = validity_of(&short_ca.cert);
    assert_eq!(validity_of(&d.certs["admin.crt"]).1, ca_end);
    // 10 days before the CA expires every leaf it signed is inside its window, but a new one
    // would end on the same day: keep them, and do not ask to be woken up for them.
    let late = reconcile_pki(&spec(), &as_current(&d), datastore_ca(), ca_end - 10 * DAY).unwrap();
    assert!(late.renewed.is_empty(), "{:?}", late.renewed);
    let front_proxy_end = validity_of(&d.certs["front-proxy-client.crt"]).1;
    assert_eq!(
        late.next_renewal,
        Some(front_proxy_end - spec().renew_before)
    );
}

fn yaml(text: &str) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(text).unwrap()
}

#[test]
fn kubeconfigs_parse_point_at_the_right_server_and_verify() {
    let d = fresh(&spec(), now());
    let cases = [
        (
            &d.admin_kubeconfig[ADMIN_KUBECONFIG],
            ADMIN,
            "kubernetes-admin",
            "https://203.0.113.5:6443",
        ),
        (
            &d.component_kubeconfigs[CONTROLLER_MANAGER_CONF],
            CONTROLLER_MANAGER,
            "system:kube-controller-manager",
            "https://127.0.0.1:6443",
        ),
        (
            &d.component_kubeconfigs[SCHEDULER_CONF],
            SCHEDULER,
            "system:kube-scheduler",
            "https://127.0.0.1:6443",
        ),
        (
            &d.component_kubeconfigs[KONNECTIVITY_SERVER_CONF],
            KONNECTIVITY_SERVER,
            "system:konnectivity-server",
            "https://127.0.0.1:6443",
        ),
        (
            &d.addon_kubeconfigs[CLOUD_CONTROLLER_CONF],
            CLOUD_CONTROLLER,
            CLOUD_CONTROLLER_USER,
            "https://203.0.113.5:6443",
        ),
        (
            &d.addon_kubeconfigs[CLUSTER_AUTOSCALER_CONF],
            CLUSTER_AUTOSCALER,
            CLUSTER_AUTOSCALER_USER,
            "https://203.0.113.5:6443",
        ),
    ];
    assert_eq!(d.component_kubeconfigs.len(), 3);
    assert_eq!(d.addon_kubeconfigs.len(), 2);
    for (text, leaf, user, server) in cases {
        let k = yaml(text);
        assert_eq!(k["apiVersion"].as_str(), Some("v1"));
        assert_eq!(k["kind"].as_str(), Some("Config"));
        let cluster = &k["clusters"][0];
        assert_eq!(cluster["name"].as_str(), Some("t1"));
        assert_eq!(
            cluster["cluster"]["server"].as_str(),
            Some(server),
            "{leaf}"
        );
        let context = format!("{user}@t1");
        assert_eq!(k["current-context"].as_str(), Some(context.as_str()));
        assert_eq!(k["contexts"][0]["name"].as_str(), Some(context.as_str()));
        assert_eq!(k["contexts"][0]["context"]["cluster"].as_str(), Some("t1"));
        assert_eq!(k["contexts"][0]["context"]["user"].as_str(), Some(user));
        assert_eq!(k["users"][0]["name"].as_str(), Some(user));
        let data = |v: &serde_yaml_ng::Value| {
            String::from_utf8(base64_decode(v.as_str().unwrap())).unwrap()
        };
        let ca = data(&cluster["cluster"]["certificate-authority-data"]);
        let cert = data(&k["users"][0]["user"]["client-certificate-data"]);
        let key = data(&k["users"][0]["user"]["client-key-data"]);
        assert_eq!(ca, d.certs[CA_CRT]);
        assert_eq!(cert, d.certs[&format!("{leaf}.crt")]);
        verify(&ca, &cert, "sslclient", None).unwrap_or_else(|e| panic!("{leaf}: {e}"));
        let (pub_cert, pub_key) = openssl_pubkeys(&cert, &key);
        assert_eq!(pub_cert, pub_key, "{leaf}");
        // The server the kubeconfig names is in the apiserver certificate.
        let host = server
            .trim_start_matches("https://")
            .rsplit_once(':')
            .unwrap()
            .0;
        assert!(
            text_of(&d.certs["apiserver.crt"]).contains(&format!("IP Address:{host}")),
            "{host}"
        );
    }
    // Deterministic: the same certificates give the same bytes.
    let again = reconcile_pki(&spec(), &as_current(&d), datastore_ca(), now()).unwrap();
    assert_eq!(again.admin_kubeconfig, d.admin_kubeconfig);
    assert_eq!(again.component_kubeconfigs, d.component_kubeconfigs);
}

/// kube reads back what was written, and can build a TLS client from it.
#[tokio::test]
async fn kubeconfigs_round_trip_through_kube() {
    let d = fresh(&spec(), now());
    let cases = [
        (
            &d.admin_kubeconfig[ADMIN_KUBECONFIG],
            ADMIN,
            "https://203.0.113.5:6443",
        ),
        (
            &d.component_kubeconfigs[CONTROLLER_MANAGER_CONF],
            CONTROLLER_MANAGER,
            "https://127.0.0.1:6443",
        ),
        (
            &d.component_kubeconfigs[SCHEDULER_CONF],
            SCHEDULER,
            "https://127.0.0.1:6443",
        ),
        (
            &d.component_kubeconfigs[KONNECTIVITY_SERVER_CONF],
            KONNECTIVITY_SERVER,
            "https://127.0.0.1:6443",
        ),
    ];
    for (text, leaf, server) in cases {
        let k = kube::config::Kubeconfig::from_yaml(text).unwrap();
        let [cluster] = k.clusters.as_slice() else {
            panic!("{leaf}: expected one cluster, got {:?}", k.clusters);
        };
        let cluster = cluster.cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some(server), "{leaf}");
        let ca = base64_decode(cluster.certificate_authority_data.as_deref().unwrap());
        assert_eq!(ca, d.certs[CA_CRT].as_bytes(), "{leaf}");
        let [user] = k.auth_infos.as_slice() else {
            panic!("{leaf}: expected one user");
        };
        // The key is a secrecy::SecretString; its serialised form is what a file would hold.
        let user = serde_json::to_value(user.auth_info.as_ref().unwrap()).unwrap();
        let data = |field: &str| base64_decode(user[field].as_str().unwrap());
        let cert = data("client-certificate-data");
        let key = data("client-key-data");
        assert_eq!(cert, d.certs[&format!("{leaf}.crt")].as_bytes(), "{leaf}");
        assert_eq!(key, d.certs[&format!("{leaf}.key")].as_bytes(), "{leaf}");

        let config = kube::Config::from_custom_kubeconfig(k, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("{leaf}: {e}"));
        assert_eq!(config.cluster_url.to_string(), format!("{server}/"));
        let ca_der = der::first_block(&d.certs[CA_CRT], "CERTIFICATE").unwrap();
        assert_eq!(config.root_cert, Some(vec![ca_der]), "{leaf}");
        // Building the client parses the certificate and key into rustls.
        kube::Client::try_from(config).unwrap_or_else(|e| panic!("{leaf}: {e}"));
    }
}

#[test]
fn endpoints_in_every_shape() {
    let cases = [
        (
            "[fd00::10]:443",
            "https://[fd00::10]:443",
            Some("fd00::10"),
            None,
        ),
        (
            "fd00::10",
            "https://[fd00::10]:6443",
            Some("fd00::10"),
            None,
        ),
        (
            "api.t1.example.com",
            "https://api.t1.example.com:6443",
            None,
            Some("api.t1.example.com"),
        ),
        (
            "API.t1.example.com:8443",
            "https://API.t1.example.com:8443",
            None,
            Some("api.t1.example.com"),
        ),
    ];
    for (endpoint, server, ip, dns) in cases {
        let mut s = spec();
        s.endpoint = endpoint.into();
        s.service_cidr = "10.96.0.0/16, fd00:10:96::/112".into();
        let d = fresh(&s, now());
        let k = yaml(&d.admin_kubeconfig[ADMIN_KUBECONFIG]);
        assert_eq!(k["clusters"][0]["cluster"]["server"].as_str(), Some(server));
        let (names, ips) = sans_of(&d.certs["apiserver.crt"]);
        assert!(
            ips.contains(&"10.96.0.1".parse().unwrap())
                && ips.contains(&"fd00:10:96::1".parse().unwrap())
        );
        if let Some(ip) = ip {
            assert!(ips.contains(&ip.parse().unwrap()), "{endpoint}");
        }
        if let Some(dns) = dns {
            assert!(names.iter().any(|n| n == dns), "{endpoint}");
        }
    }
}

/// A change that makes a spec invalid.
type Breakage = (&'static str, fn(&mut TenantPkiSpec));

#[test]
fn invalid_input_is_an_error() {
    let cases: [Breakage; 8] = [
        ("service CIDR", |s| s.service_cidr = "10.96.0.0/33".into()),
        ("service CIDR", |s| s.service_cidr = String::new()),
        ("certSANs", |s| s.cert_sans.push("not a name!".into())),
        ("certSANs", |s| s.cert_sans.push("exämple.com".into())),
        ("endpoint", |s| s.endpoint = String::new()),
        ("endpoint", |s| s.endpoint = "host:port".into()),
        ("certificate validity", |s| s.renew_before = s.validity),
        ("datastore user", |s| s.datastore_user = String::new()),
    ];
    for (field, change) in cases {
        let mut s = spec();
        change(&mut s);
        match reconcile_pki(&s, &CurrentPki::default(), datastore_ca(), now()) {
            Err(PkiError::Invalid { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{field}: expected an error, got {other:?}"),
        }
    }
}

#[test]
fn issue_handles_several_groups_and_dual_usage() {
    let at = now();
    let ca = generate_ca("etcd CA", CA_VALIDITY).unwrap();
    let profile = CertProfile {
        common_name: "etcd-0".into(),
        organizations: vec!["system:nodes".into(), "orrery:etcd".into()],
        dns_names: vec!["etcd-0.etcd.orrery-system.svc".into(), "localhost".into()],
        ip_addresses: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
        usage: CertUsage::ServerAndClient,
        validity: 90 * DAY,
    };
    let p = issue(&ca, &profile, at).unwrap();
    verify(&ca.cert, &p.cert, "sslserver", None).unwrap();
    verify(&ca.cert, &p.cert, "sslclient", None).unwrap();
    assert_eq!(
        subject_of(&p.cert),
        (
            "etcd-0".to_string(),
            vec!["system:nodes".to_string(), "orrery:etcd".to_string()]
        )
    );
    let text = text_of(&p.cert);
    assert!(
        text.contains("Subject: O = system:nodes, O = orrery:etcd, CN = etcd-0"),
        "{text}"
    );
    assert!(text.contains("IP Address:0:0:0:0:0:0:0:1"), "{text}");
    assert!(approx(
        validity_of(&p.cert).1,
        at + 90 * DAY,
        Duration::from_secs(2)
    ));

    assert!(is_valid_for(&p, &ca, &profile, at));
    assert!(
        !is_valid_for(&p, &ca, &profile, at + 70 * DAY),
        "past two thirds of its life"
    );
    let mut other_profile = profile.clone();
    other_profile.dns_names.push("etcd-1".into());
    assert!(!is_valid_for(&p, &ca, &other_profile, at));
    let other_ca = generate_ca("etcd CA", CA_VALIDITY).unwrap();
    assert!(!is_valid_for(&p, &other_ca, &profile, at));
}

#[test]
fn key_pair_pem_debug_hides_the_key() {
    let ca = datastore_ca();
    let shown = format!("{ca:?}");
    assert!(!shown.contains("PRIVATE KEY") && shown.contains("redacted"));
}

/// CPU time of the calling thread from the scheduler's accounting, in nanoseconds; wall time
/// would also count whatever else the machine is doing (test runners are busy).
fn thread_cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// Mean CPU time (wall time where unavailable) of `f` over `runs` calls.
fn mean_cost(runs: u32, mut f: impl FnMut()) -> (Duration, &'static str) {
    let (cpu, wall) = (thread_cpu_time(), std::time::Instant::now());
    for _ in 0..runs {
        f();
    }
    match (cpu, thread_cpu_time()) {
        // Zero means the kernel keeps no such accounting.
        (Some(a), Some(b)) if b > a => ((b - a) / runs, "CPU"),
        _ => (wall.elapsed() / runs, "wall"),
    }
}

/// Prints the cost of a whole tenant PKI; a figure to watch, not a pass/fail criterion.
#[test]
fn pki_generation_time_per_tenant() {
    const RUNS: u32 = 20;
    let s = spec();
    let ds = datastore_ca();
    let at = now();
    let current = as_current(&fresh(&s, at)); // also warms up
    let (scratch, clock) = mean_cost(RUNS, || {
        reconcile_pki(&s, &CurrentPki::default(), ds, at).unwrap();
    });
    let (steady, _) = mean_cost(RUNS, || {
        assert!(
            reconcile_pki(&s, &current, ds, at)
                .unwrap()
                .renewed
                .is_empty()
        );
    });
    println!(
        "tenant PKI from scratch: {:.3} ms {clock} time per tenant; unchanged re-check: {:.3} ms \
         (mean of {RUNS} runs, {} build)",
        scratch.as_secs_f64() * 1e3,
        steady.as_secs_f64() * 1e3,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    );
}
