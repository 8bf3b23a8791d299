//! One line of `describe` and the tree of them, as `clusterctl describe cluster` shows a cluster:
//! NAME, READY, SEVERITY, REASON, SINCE, MESSAGE; alike items grouped into one line.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Ready {
    True,
    False,
    Unknown,
}

impl Ready {
    /// From a condition's status.
    pub fn of(status: &str) -> Self {
        match status {
            "True" => Self::True,
            "False" => Self::False,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// How much a row that is not Ready matters: Info for what is expected on the way (waiting,
/// no nodes yet), Warning for what needs a look, Error for what is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "Info",
            Self::Warning => "Warning",
            Self::Error => "Error",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub name: String,
    /// Blank for a row that has no readiness of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<Ready>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// When the row's state began (the condition's last transition, a certificate's issue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl Row {
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// A row showing condition `c`; blank when the condition is not set. The reason is shown
    /// only when the condition is not True, as clusterctl does.
    pub fn from_condition(name: impl Into<String>, c: Option<&Condition>) -> Self {
        let mut row = Self::named(name);
        if let Some(c) = c {
            let ready = Ready::of(&c.status);
            row.ready = Some(ready);
            row.severity = severity(ready, &c.reason);
            if ready != Ready::True {
                row.reason = c.reason.clone();
            }
            row.since = Some(c.last_transition_time.clone());
            row.message = c.message.clone();
        }
        row
    }

    /// A row whose content could not be read, saying why.
    pub fn note(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Some(Severity::Info),
            message: message.into(),
            ..Self::named(name)
        }
    }
}

/// Severity of a row that is not Ready: Orrery's reasons for waiting start with "Waiting".
pub fn severity(ready: Ready, reason: &str) -> Option<Severity> {
    match ready {
        Ready::True => None,
        Ready::Unknown => Some(Severity::Info),
        Ready::False if reason.starts_with("Waiting") => Some(Severity::Info),
        Ready::False => Some(Severity::Warning),
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tree {
    #[serde(flatten)]
    pub row: Row,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Tree>,
}

impl Tree {
    pub fn leaf(row: Row) -> Self {
        Self {
            row,
            children: Vec::new(),
        }
    }

    pub fn with(row: Row, children: Vec<Tree>) -> Self {
        Self { row, children }
    }
}

/// One of many alike things (pods, nodes, certificates): its short name and its row.
#[derive(Clone, Debug)]
pub struct Item {
    pub name: String,
    pub row: Row,
}

/// Items as rows, in their order; unless `expand`, items alike in readiness, reason and message
/// become one row "N <plural>..." that names them.
pub fn grouped(items: Vec<Item>, plural: &str, expand: bool) -> Vec<Tree> {
    if expand {
        return items.into_iter().map(|i| Tree::leaf(i.row)).collect();
    }
    let alike = |a: &Row, b: &Row| {
        a.ready == b.ready
            && a.severity == b.severity
            && a.reason == b.reason
            && a.message == b.message
    };
    let mut groups: Vec<Vec<Item>> = Vec::new();
    for item in items {
        match groups.iter_mut().find(|g| alike(&g[0].row, &item.row)) {
            Some(group) => group.push(item),
            None => groups.push(vec![item]),
        }
    }
    groups.into_iter().map(|g| group_row(g, plural)).collect()
}

fn group_row(mut group: Vec<Item>, plural: &str) -> Tree {
    if group.len() == 1 {
        return Tree::leaf(group.remove(0).row);
    }
    let names: Vec<&str> = group.iter().map(|i| i.name.as_str()).collect();
    let first = &group[0].row;
    let message = if first.message.is_empty() {
        format!("See {}", names.join(", "))
    } else {
        format!("{}: {}", first.message, names.join(", "))
    };
    Tree::leaf(Row {
        name: format!("{} {plural}...", group.len()),
        since: group.iter().filter_map(|i| i.row.since.clone()).max(),
        message,
        ..first.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, ready: Ready, reason: &str, since: &str) -> Item {
        Item {
            name: name.into(),
            row: Row {
                name: format!("Pod/{name}"),
                ready: Some(ready),
                severity: severity(ready, reason),
                reason: reason.into(),
                since: Some(Time(since.parse().unwrap())),
                message: String::new(),
            },
        }
    }

    #[test]
    fn alike_items_are_grouped_in_order_unless_expanded() {
        let items = vec![
            item("a", Ready::True, "", "2026-01-01T00:00:00Z"),
            item(
                "b",
                Ready::False,
                "CrashLoopBackOff",
                "2026-01-01T00:00:00Z",
            ),
            item("c", Ready::True, "", "2026-01-02T00:00:00Z"),
        ];
        let rows: Vec<Row> = grouped(items.clone(), "Pods", false)
            .into_iter()
            .map(|t| t.row)
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].name, "2 Pods...");
        assert_eq!(rows[0].message, "See a, c");
        assert_eq!(
            rows[0].since,
            Some(Time("2026-01-02T00:00:00Z".parse().unwrap()))
        );
        assert_eq!(rows[1].name, "Pod/b");
        assert_eq!(rows[1].severity, Some(Severity::Warning));
        let expanded: Vec<String> = grouped(items, "Pods", true)
            .into_iter()
            .map(|t| t.row.name)
            .collect();
        assert_eq!(expanded, ["Pod/a", "Pod/b", "Pod/c"]);
    }

    #[test]
    fn a_condition_becomes_a_row() {
        let c: Condition = serde_json::from_value(serde_json::json!({
            "type": "DataStoreReady", "status": "False", "reason": "WaitingForDataStore",
            "message": "DataStore x is not Ready", "lastTransitionTime": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        let row = Row::from_condition("DataStore/x", Some(&c));
        assert_eq!(row.ready, Some(Ready::False));
        assert_eq!(row.severity, Some(Severity::Info));
        assert_eq!(row.reason, "WaitingForDataStore");
        let mut c = c;
        c.status = "True".into();
        c.reason = "TenantProvisioned".into();
        let row = Row::from_condition("DataStore/x", Some(&c));
        assert_eq!((row.ready, row.severity), (Some(Ready::True), None));
        assert_eq!(row.reason, "", "no reason on a True row");
        assert_eq!(Row::from_condition("x", None), Row::named("x"));
    }
}
