//! The certificates in a tenant's `<tenant>-certs` Secret, one row each with its expiry (pure).

use super::render::age;
use super::row::{Item, Ready, Row, Severity};
use crate::pki::{CA_CRT, DATASTORE_CA_CRT, FRONT_PROXY_CA_CRT};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::BTreeMap;
use std::time::Duration;

/// The Secret's CA certificates, in this order; every other `*.crt` is a leaf.
const CAS: [&str; 3] = [CA_CRT, FRONT_PROXY_CA_CRT, DATASTORE_CA_CRT];

/// Rows of the CAs and of the leaves, from the Secret's data (key → PEM). A leaf inside
/// `renew_before` of its expiry is due for renewal by Orrery; a CA is never renewed silently.
pub fn items(
    data: &BTreeMap<String, Vec<u8>>,
    renew_before: Duration,
    now: Timestamp,
) -> (Vec<Item>, Vec<Item>) {
    let item = |key: &str, pem: &[u8], ca: bool| {
        let name = key.trim_end_matches(".crt").to_string();
        let kind = if ca { "CA" } else { "Certificate" };
        Item {
            row: row(&format!("{kind}/{name}"), pem, ca, renew_before, now),
            name,
        }
    };
    let cas = CAS
        .iter()
        .filter_map(|k| data.get(*k).map(|pem| item(k, pem, true)))
        .collect();
    let mut leaves: Vec<Item> = data
        .iter()
        .filter(|(k, _)| k.ends_with(".crt") && !CAS.contains(&k.as_str()))
        .map(|(k, pem)| item(k, pem, false))
        .collect();
    leaves.sort_by(|a, b| a.name.cmp(&b.name));
    (cas, leaves)
}

fn row(name: &str, pem: &[u8], ca: bool, renew_before: Duration, now: Timestamp) -> Row {
    let (not_before, not_after) = match validity(pem) {
        Ok(v) => v,
        Err(e) => {
            return Row {
                ready: Some(Ready::False),
                severity: Some(Severity::Warning),
                reason: "Unreadable".into(),
                message: e,
                ..Row::named(name)
            };
        }
    };
    let left = not_after.as_second() - now.as_second();
    let date = not_after.strftime("%Y-%m-%d");
    let (ready, severity, reason, message) = if left <= 0 {
        (
            Ready::False,
            Some(Severity::Error),
            "Expired",
            format!("expired {date} ({} ago)", age(-left)),
        )
    } else if left < renew_before.as_secs() as i64 && ca {
        (
            Ready::True,
            Some(Severity::Warning),
            "ExpiresSoon",
            format!(
                "expires {date} (in {}); a CA is never replaced silently",
                age(left)
            ),
        )
    } else if left < renew_before.as_secs() as i64 {
        (
            Ready::True,
            Some(Severity::Info),
            "RenewalDue",
            format!("expires {date} (in {}); Orrery renews it", age(left)),
        )
    } else {
        (
            Ready::True,
            None,
            "",
            format!("expires {date} (in {})", age(left)),
        )
    };
    Row {
        ready: Some(ready),
        severity,
        reason: reason.into(),
        since: Some(Time(not_before)),
        message,
        ..Row::named(name)
    }
}

/// Not-before and not-after of the first certificate in `pem`.
fn validity(pem: &[u8]) -> Result<(Timestamp, Timestamp), String> {
    let block = pem::parse(pem).map_err(|e| format!("invalid PEM: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(block.contents())
        .map_err(|e| format!("invalid certificate: {e}"))?;
    let at = |t: x509_parser::time::ASN1Time| {
        Timestamp::from_second(t.timestamp()).map_err(|e| format!("invalid time: {e}"))
    };
    Ok((
        at(cert.validity().not_before)?,
        at(cert.validity().not_after)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{self, CertProfile};
    use std::time::{SystemTime, UNIX_EPOCH};

    const DAY: u64 = 24 * 3600;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    /// A Secret's data: a CA valid for ten years from `start`, and a leaf valid for
    /// `leaf_days` from `start`.
    fn data(start: u64, leaf_days: u64) -> BTreeMap<String, Vec<u8>> {
        let ca = pki::generate_ca("t-ca", Duration::from_secs(3650 * DAY)).unwrap();
        let profile = CertProfile::client("admin", &[], Duration::from_secs(leaf_days * DAY));
        let leaf = pki::issue(&ca, &profile, at(start)).unwrap();
        BTreeMap::from([
            ("ca.crt".to_string(), ca.cert.into_bytes()),
            ("admin.crt".to_string(), leaf.cert.into_bytes()),
            ("admin.key".to_string(), leaf.key.into_bytes()),
        ])
    }

    #[test]
    fn each_certificate_with_its_expiry() {
        let now_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let now = Timestamp::from_second(now_secs as i64).unwrap();
        let renew = Duration::from_secs(30 * DAY);
        // (issued days ago, lifetime in days) → (ready, severity, reason, message start)
        type Case = (
            u64,
            u64,
            Ready,
            Option<Severity>,
            &'static str,
            &'static str,
        );
        let cases: &[Case] = &[
            (1, 365, Ready::True, None, "", "expires "),
            (
                350,
                365,
                Ready::True,
                Some(Severity::Info),
                "RenewalDue",
                "expires ",
            ),
            (
                400,
                365,
                Ready::False,
                Some(Severity::Error),
                "Expired",
                "expired ",
            ),
        ];
        for (ago, days, ready, severity, reason, message) in cases {
            let start = now_secs - ago * DAY;
            let (cas, leaves) = items(&data(start, *days), renew, now);
            assert_eq!(cas.len(), 1);
            assert_eq!(cas[0].row.name, "CA/ca");
            assert_eq!(cas[0].row.ready, Some(Ready::True));
            assert_eq!(leaves.len(), 1, "keys are not certificates");
            let row = &leaves[0].row;
            assert_eq!(row.name, "Certificate/admin");
            assert_eq!(leaves[0].name, "admin");
            assert_eq!(
                (row.ready, row.severity, row.reason.as_str()),
                (Some(*ready), *severity, *reason),
                "{ago} days ago for {days}"
            );
            assert!(row.message.starts_with(message), "{}", row.message);
            // Issued with five minutes' grace for clock skew.
            assert_eq!(
                row.since,
                Some(Time(Timestamp::from_second(start as i64 - 300).unwrap()))
            );
        }
    }

    #[test]
    fn the_date_and_time_left_are_shown() {
        let start = 1_800_000_000; // 2027-01-15T08:00:00Z
        let (_, leaves) = items(
            &data(start, 365),
            Duration::from_secs(30 * DAY),
            Timestamp::from_second(start as i64 + 100 * DAY as i64).unwrap(),
        );
        assert_eq!(leaves[0].row.message, "expires 2028-01-15 (in 265d)");
    }

    #[test]
    fn garbage_is_reported() {
        let data = BTreeMap::from([("apiserver.crt".to_string(), b"nope".to_vec())]);
        let (_, leaves) = items(&data, Duration::from_secs(DAY), Timestamp::now());
        assert_eq!(leaves[0].row.reason, "Unreadable");
        assert!(leaves[0].row.message.contains("invalid PEM"));
    }
}
