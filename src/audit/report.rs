//! The audit report as text for people and as JSON for machines.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Finding, Severity};

/// Version of the JSON layout; it changes only when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

/// The JSON report. Field order and finding order are stable.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub schema_version: u32,
    /// Namespaces audited, sorted; a namespace without findings is listed too.
    pub namespaces: Vec<String>,
    pub fail_on: Severity,
    pub summary: Summary,
    pub findings: Vec<Finding>,
}

/// Counts of findings by severity.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub total: usize,
    pub critical: usize,
    pub high: usize,
    pub medium: usize,
    pub low: usize,
    pub info: usize,
    /// Findings at or above `failOn`: the exit status is non-zero when this is.
    pub at_or_above_fail_on: usize,
}

impl Report {
    pub fn new(mut namespaces: Vec<String>, findings: Vec<Finding>, fail_on: Severity) -> Self {
        namespaces.sort();
        namespaces.dedup();
        let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
        let summary = Summary {
            total: findings.len(),
            critical: count(Severity::Critical),
            high: count(Severity::High),
            medium: count(Severity::Medium),
            low: count(Severity::Low),
            info: count(Severity::Info),
            at_or_above_fail_on: findings.iter().filter(|f| f.severity >= fail_on).count(),
        };
        Report {
            schema_version: SCHEMA_VERSION,
            namespaces,
            fail_on,
            summary,
            findings,
        }
    }

    /// True when the audit should fail: some finding is at or above `failOn`.
    pub fn failed(&self) -> bool {
        self.summary.at_or_above_fail_on > 0
    }

    pub fn to_json(&self) -> String {
        let mut out = serde_json::to_string_pretty(self).expect("the report serializes");
        out.push('\n');
        out
    }

    /// One section per namespace, findings as aligned columns, then the totals.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for ns in &self.namespaces {
            let rows: Vec<[&str; 5]> = self
                .findings
                .iter()
                .filter(|f| &f.namespace == ns)
                .map(|f| {
                    [
                        f.severity.as_str(),
                        f.type_.as_str(),
                        f.policy.as_deref().unwrap_or("-"),
                        f.object.as_str(),
                        f.message.as_str(),
                    ]
                })
                .collect();
            if rows.is_empty() {
                let _ = writeln!(out, "Namespace {ns}: no findings\n");
                continue;
            }
            let _ = writeln!(out, "Namespace {ns}: {} finding(s)", rows.len());
            let header = ["SEVERITY", "TYPE", "POLICY", "OBJECT", "MESSAGE"];
            let mut widths = header.map(str::len);
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.len());
                }
            }
            for row in std::iter::once(&header).chain(rows.iter()) {
                let _ = writeln!(
                    out,
                    "  {:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    row[4],
                    w0 = widths[0],
                    w1 = widths[1],
                    w2 = widths[2],
                    w3 = widths[3],
                );
            }
            out.push('\n');
        }
        let s = &self.summary;
        let _ = writeln!(
            out,
            "{} finding(s): {} critical, {} high, {} medium, {} low, {} info; {} at or above --fail-on {}",
            s.total,
            s.critical,
            s.high,
            s.medium,
            s.low,
            s.info,
            s.at_or_above_fail_on,
            self.fail_on.as_str()
        );
        out
    }
}
