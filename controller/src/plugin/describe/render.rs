//! The tree as a table, as `clusterctl describe cluster` prints one (pure): the tree drawn in the
//! NAME column, SINCE as a kubectl age, colour only when asked for.

use super::row::{Ready, Severity, Tree};
use anstyle::{AnsiColor, Style};
use jiff::Timestamp;
use serde::Serialize;

/// One tenant's tree; `namespace` is set when tenants of several namespaces are shown.
#[derive(Clone, Debug, Serialize)]
pub struct Described {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(flatten)]
    pub tree: Tree,
}

const HEADER: [&str; 7] = [
    "NAMESPACE",
    "NAME",
    "READY",
    "SEVERITY",
    "REASON",
    "SINCE",
    "MESSAGE",
];

/// A cell: its text and its style.
struct Cell(String, Style);

/// The table of every tree, with a NAMESPACE column when any tree has a namespace.
pub fn table(described: &[Described], now: Timestamp, colour: bool) -> String {
    let with_namespace = described.iter().any(|d| d.namespace.is_some());
    let mut lines: Vec<Vec<Cell>> = vec![
        HEADER
            .iter()
            .map(|h| Cell(h.to_string(), Style::new()))
            .collect(),
    ];
    for d in described {
        let namespace = d.namespace.clone().unwrap_or_default();
        walk(
            &d.tree,
            (String::new(), String::new()),
            &mut |prefix, tree| {
                let row = &tree.row;
                let colour = row_colour(row.ready, row.severity);
                let first = prefix.is_empty();
                lines.push(vec![
                    Cell(
                        if first {
                            namespace.clone()
                        } else {
                            String::new()
                        },
                        Style::new(),
                    ),
                    Cell(
                        format!("{prefix}{}", row.name),
                        if first {
                            Style::new().bold()
                        } else {
                            Style::new()
                        },
                    ),
                    Cell(row.ready.map_or("", Ready::as_str).into(), colour),
                    Cell(row.severity.map_or("", Severity::as_str).into(), colour),
                    Cell(row.reason.clone(), Style::new()),
                    Cell(
                        row.since
                            .as_ref()
                            .map(|t| age(now.as_second() - t.0.as_second()))
                            .unwrap_or_default(),
                        Style::new(),
                    ),
                    // One line per row, whatever the message holds.
                    Cell(row.message.replace('\n', " "), Style::new()),
                ]);
            },
        );
    }
    if !with_namespace {
        for line in &mut lines {
            line.remove(0);
        }
    }
    layout(&lines, colour)
}

/// Calls `f` with the drawn prefix of every node, depth first; `prefixes` are this node's
/// prefix and the one its children continue from.
fn walk(tree: &Tree, prefixes: (String, String), f: &mut impl FnMut(&str, &Tree)) {
    let (own, below) = prefixes;
    f(&own, tree);
    let n = tree.children.len();
    for (i, child) in tree.children.iter().enumerate() {
        let last = i + 1 == n;
        let branch = if last { "└─" } else { "├─" };
        let rest = if last { "  " } else { "│ " };
        walk(
            child,
            (format!("{below}{branch}"), format!("{below}{rest}")),
            f,
        );
    }
}

/// Pads every column but the last to its widest cell, two spaces apart; styles go around the
/// padded text so that they do not count in the width.
fn layout(lines: &[Vec<Cell>], colour: bool) -> String {
    let columns = lines.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].0.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in lines {
        let mut text = String::new();
        for (c, Cell(cell, style)) in line.iter().enumerate() {
            let padded = if c + 1 == columns {
                cell.clone()
            } else {
                format!("{cell:<width$}  ", width = widths[c])
            };
            if colour && !cell.is_empty() && *style != Style::new() {
                let (body, pad) = padded.split_at(cell.len());
                text.push_str(&format!("{style}{body}{style:#}{pad}"));
            } else {
                text.push_str(&padded);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

fn row_colour(ready: Option<Ready>, severity: Option<Severity>) -> Style {
    let colour = match (ready, severity) {
        (_, Some(Severity::Error)) => AnsiColor::Red,
        (_, Some(Severity::Warning)) => AnsiColor::Yellow,
        (_, Some(Severity::Info)) => AnsiColor::Cyan,
        (Some(Ready::True), None) => AnsiColor::Green,
        _ => return Style::new(),
    };
    colour.on_default()
}

/// Whether to colour: only on a terminal, and never when NO_COLOR is set (no-color.org).
pub fn colour_wanted() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A duration in seconds as kubectl prints ages: two units while they say something, one after.
pub fn age(seconds: i64) -> String {
    if seconds < 0 {
        return "0s".into();
    }
    let (s, m, h) = (seconds, seconds / 60, seconds / 3600);
    let (d, y) = (h / 24, h / (24 * 365));
    let two = |a: i64, ua: &str, b: i64, ub: &str| {
        if b == 0 {
            format!("{a}{ua}")
        } else {
            format!("{a}{ua}{b}{ub}")
        }
    };
    match () {
        () if s < 120 => format!("{s}s"),
        () if m < 10 => two(m, "m", s % 60, "s"),
        () if m < 180 => format!("{m}m"),
        () if h < 8 => two(h, "h", m % 60, "m"),
        () if h < 48 => format!("{h}h"),
        () if h < 24 * 8 => two(d, "d", h % 24, "h"),
        () if h < 24 * 365 * 2 => format!("{d}d"),
        () if y < 8 => two(y, "y", d % 365, "d"),
        () => format!("{y}y"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::row::Row;
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn row(name: &str, ready: Option<Ready>, severity: Option<Severity>, reason: &str) -> Row {
        Row {
            name: name.into(),
            ready,
            severity,
            reason: reason.into(),
            since: Some(Time("2026-01-01T00:00:00Z".parse().unwrap())),
            message: "m".into(),
        }
    }

    fn sample() -> Tree {
        Tree::with(
            row("TenantControlPlane/demo", Some(Ready::True), None, ""),
            vec![
                Tree::with(
                    row(
                        "ControlPlane - Deployment/demo",
                        Some(Ready::True),
                        None,
                        "",
                    ),
                    vec![Tree::leaf(row("2 Pods...", Some(Ready::True), None, ""))],
                ),
                Tree::with(
                    row(
                        "Addons",
                        Some(Ready::False),
                        Some(Severity::Warning),
                        "BootstrapFailed",
                    ),
                    vec![
                        Tree::leaf(row("CoreDNS - Deployment/coredns", None, None, "")),
                        Tree::leaf(row("kube-proxy - DaemonSet/kube-proxy", None, None, "")),
                    ],
                ),
            ],
        )
    }

    #[test]
    fn the_tree_is_drawn_in_aligned_columns() {
        let now: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let d = Described {
            namespace: None,
            tree: sample(),
        };
        let want = "\
NAME                                   READY  SEVERITY  REASON           SINCE  MESSAGE
TenantControlPlane/demo                True                              5m     m
├─ControlPlane - Deployment/demo       True                              5m     m
│ └─2 Pods...                          True                              5m     m
└─Addons                               False  Warning   BootstrapFailed  5m     m
  ├─CoreDNS - Deployment/coredns                                         5m     m
  └─kube-proxy - DaemonSet/kube-proxy                                    5m     m
";
        assert_eq!(table(std::slice::from_ref(&d), now, false), want);
        let all = table(
            &[Described {
                namespace: Some("t".into()),
                ..d.clone()
            }],
            now,
            false,
        );
        assert!(all.starts_with("NAMESPACE  NAME"), "{all}");
        assert!(
            all.contains("\nt          TenantControlPlane/demo"),
            "{all}"
        );
        assert!(all.contains("\n           ├─ControlPlane"), "{all}");
        let coloured = table(&[d], now, true);
        assert!(
            coloured.contains("\u{1b}[33mWarning\u{1b}[0m"),
            "{coloured:?}"
        );
        assert_eq!(
            coloured.lines().count(),
            want.lines().count(),
            "colour does not change the lines"
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (-3, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (150, "2m30s"),
            (600, "10m"),
            (179 * 60, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60, "3h1m"),
            (47 * 3600, "47h"),
            (49 * 3600, "2d1h"),
            (8 * 86400, "8d"),
            (364 * 86400, "364d"),
            (3 * 365 * 86400 + 86400, "3y1d"),
            (10 * 365 * 86400, "10y"),
        ];
        for (seconds, want) in cases {
            assert_eq!(age(seconds), want, "{seconds}");
        }
    }
}
