//! `kubectl orrery upgrade TENANT --to vX.Y.Z`: refuses what admission would refuse (the CEL
//! rules on spec.version in `api.rs`), sets spec.version, then waits for the rollout.

use super::cli::{ClientArgs, UpgradeArgs};
use super::connect::{self, Management};
use super::error::{Error, Result};
use super::wait::{self, Goal};
use crate::api::{SUPPORTED_MINORS, TenantControlPlane, supported_range};
use kube::ResourceExt;
use kube::api::{Api, Patch};
use std::fmt;

/// A Kubernetes version `vMAJOR.MINOR.PATCH`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Version {
    /// Parses `vMAJOR.MINOR.PATCH` with digits only, as the spec.version pattern does.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad =
            || format!("{s:?}: a version has the form vMAJOR.MINOR.PATCH, for example v1.34.4");
        let parts: Vec<&str> = s.strip_prefix('v').ok_or_else(bad)?.split('.').collect();
        let number = |p: &str| {
            (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse().ok())
                .flatten()
                .ok_or_else(bad)
        };
        match parts.as_slice() {
            [major, minor, patch] => Ok(Self {
                major: number(major)?,
                minor: number(minor)?,
                patch: number(patch)?,
            }),
            _ => Err(bad()),
        }
    }

    /// Refuses a version outside [`SUPPORTED_MINORS`].
    pub fn check_supported(&self) -> Result<(), String> {
        if self.major == 1 && SUPPORTED_MINORS.contains(&self.minor) {
            return Ok(());
        }
        Err(format!(
            "{self} is outside the supported range {}",
            supported_range()
        ))
    }
}

/// What setting spec.version from `current` to `target` would do.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Upgrade,
    Unchanged,
}

/// Refuses a downgrade or a skipped minor, as admission does. A current version that does not
/// parse is left to the apiserver, as its rules do.
pub fn check(current: &str, target: Version) -> Result<Change, String> {
    target.check_supported()?;
    let Ok(current) = Version::parse(current) else {
        return Ok(Change::Upgrade);
    };
    if target == current {
        return Ok(Change::Unchanged);
    }
    if target < current {
        return Err(format!(
            "{current} → {target} is a downgrade: spec.version may not be downgraded"
        ));
    }
    if target.minor > current.minor + 1 {
        return Err(format!(
            "{current} → {target} skips a minor version: upgrade one minor at a time, first to \
             v{}.{}.x",
            current.major,
            current.minor + 1
        ));
    }
    Ok(Change::Upgrade)
}

pub async fn run(client: &ClientArgs, args: UpgradeArgs) -> Result<()> {
    let m = connect::connect(client).await?;
    let tcp = connect::tenant(&m, &args.tenant).await?;
    let name = tcp.name_any();
    let change = check(&tcp.spec.version, args.to)
        .map_err(|why| Error::Refused(format!("cannot upgrade {name}: {why}")))?;
    let generation = match change {
        Change::Unchanged => {
            eprintln!(
                "tenantcontrolplane.orrery.dev/{name}: spec.version is {} already",
                args.to
            );
            tcp.metadata.generation
        }
        Change::Upgrade => {
            let updated = set_version(&m, &tcp, args.to).await?;
            eprintln!(
                "tenantcontrolplane.orrery.dev/{name}: spec.version {} → {}",
                tcp.spec.version, updated.spec.version
            );
            updated.metadata.generation
        }
    };
    if args.no_wait {
        return Ok(());
    }
    let goal = Goal {
        generation,
        version: Some(args.to.to_string()),
    };
    wait::until(&m, &name, &goal, args.timeout.timeout, args.output).await
}

/// Sets spec.version with a merge patch that carries the resourceVersion read, so a change made
/// meanwhile (another upgrade) is not overwritten unseen.
async fn set_version(
    m: &Management,
    tcp: &TenantControlPlane,
    to: Version,
) -> Result<TenantControlPlane> {
    let api = Api::<TenantControlPlane>::namespaced(m.client.clone(), &m.namespace);
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": tcp.resource_version()},
        "spec": {"version": to.to_string()},
    });
    let name = tcp.name_any();
    api.patch(&name, &super::write_params(), &Patch::Merge(&patch))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 409 => Error::Conflict {
                kind: "TenantControlPlane",
                name: name.clone(),
            },
            kube::Error::Api(s) if s.code == 422 => Error::Rejected(s.message),
            e => super::error::forbidden_or(
                e,
                "patch",
                "tenantcontrolplanes",
                format!("TenantControlPlane {name}"),
                Some(&m.namespace),
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn versions_parse_like_the_spec_pattern() {
        assert_eq!(
            Version::parse("v1.34.4"),
            Ok(Version {
                major: 1,
                minor: 34,
                patch: 4
            })
        );
        for bad in [
            "1.34.4",
            "v1.34",
            "v1.34.4.1",
            "v1.34.x",
            "v1..4",
            "v1.34.+4",
            "",
        ] {
            let err = Version::parse(bad).unwrap_err();
            assert!(err.contains("vMAJOR.MINOR.PATCH"), "{bad}: {err}");
        }
        assert_eq!(v("v1.33.10").to_string(), "v1.33.10");
        assert!(v("v1.33.10") > v("v1.33.9"));
    }

    #[test]
    fn refuses_what_admission_refuses() {
        // (current spec.version, target, outcome or the words of the refusal)
        let cases: &[(&str, &str, Result<Change, &str>)] = &[
            ("v1.36.3", "v1.37.2", Ok(Change::Upgrade)),
            ("v1.36.2", "v1.36.3", Ok(Change::Upgrade)),
            ("v1.37.2", "v1.37.2", Ok(Change::Unchanged)),
            (
                "v1.37.2",
                "v1.37.1",
                Err("v1.37.2 → v1.37.1 is a downgrade"),
            ),
            ("v1.37.2", "v1.36.9", Err("may not be downgraded")),
            (
                "v1.34.1",
                "v1.36.0",
                Err("skips a minor version: upgrade one minor at a time, first to v1.35.x"),
            ),
            ("v1.37.2", "v1.38.0", Err("outside the supported range")),
            ("v1.37.2", "v2.34.0", Err("outside the supported range")),
            ("v1.33.0", "v1.33.2", Err("outside the supported range")),
            // An old object whose version does not parse: the apiserver decides.
            ("1.36", "v1.37.0", Ok(Change::Upgrade)),
        ];
        for (current, target, want) in cases {
            let got = check(current, v(target));
            match want {
                Ok(change) => assert_eq!(got.as_ref(), Ok(change), "{current} → {target}"),
                Err(words) => {
                    let err = got.unwrap_err();
                    assert!(err.contains(words), "{current} → {target}: {err}");
                }
            }
        }
    }
}
