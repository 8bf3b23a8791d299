//! The `kubectl-orrery` binary's command line where no cluster is needed: its verbs, what it
//! refuses before asking a cluster, and a kubeconfig it cannot load.

use orrery::api::{SUPPORTED_MINORS, supported_range};
use std::process::{Command, Output};

/// Runs `kubectl-orrery args…` with an empty environment (HOME without a kubeconfig).
fn plugin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-orrery"))
        .args(args)
        .env_clear()
        .env("HOME", "/nonexistent")
        .output()
        .expect("kubectl-orrery runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_names_the_verbs_as_kubectl_shows_them() {
    let out = plugin(&["--help"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    assert!(help.contains("Usage: kubectl orrery"), "{help}");
    for verb in ["get", "describe", "wait", "upgrade"] {
        assert!(help.contains(&format!("\n  {verb} ")), "{verb} in {help}");
    }
    for flag in ["--kubeconfig", "--context", "--namespace"] {
        assert!(help.contains(flag), "{flag} in {help}");
    }
}

#[test]
fn versions_admission_would_refuse_are_refused_offline() {
    // Just past either end of the supported range.
    let (newer, older) = (
        format!("v1.{}.0", SUPPORTED_MINORS.end() + 1),
        format!("v1.{}.9", SUPPORTED_MINORS.start() - 1),
    );
    let outside = format!("outside the supported range {}", supported_range());
    let cases = [
        ("1.34.4", "vMAJOR.MINOR.PATCH"),
        ("v1.34", "vMAJOR.MINOR.PATCH"),
        (newer.as_str(), outside.as_str()),
        (older.as_str(), outside.as_str()),
    ];
    for (version, words) in cases {
        let out = plugin(&["upgrade", "demo", "--to", version]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{version}: {err}");
        assert!(err.contains(words), "{version}: {err}");
    }
}

#[test]
fn a_missing_kubeconfig_says_how_to_name_one() {
    let out = plugin(&["--kubeconfig", "/nonexistent/config", "describe", "demo"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: cannot load the kubeconfig: /nonexistent/config"),
        "{err}"
    );
    assert!(err.contains("--kubeconfig or KUBECONFIG"), "{err}");
}
