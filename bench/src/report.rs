//! What a scenario found: figures for people (a table) and for machines (JSON), and whether
//! every check held.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    /// The scenario's size and settings.
    pub params: serde_json::Value,
    /// True when every check held (every message delivered once, in order, to every
    /// recipient; every client back; ...). `problems` says what did not.
    pub verified: bool,
    pub problems: Vec<String>,
    pub figures: Vec<Figure>,
    /// Cores each part of the system used while the load ran (1.0 = one core busy).
    pub cpu_cores: BTreeMap<String, f64>,
    /// CPU microseconds each part spent per message, from the start of the load until every
    /// message was acknowledged and delivered (`total`: the system under test, not the bench).
    pub cpu_us_per_message: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
}

impl Report {
    pub fn new(scenario: &str, params: serde_json::Value) -> Report {
        Report {
            scenario: scenario.to_owned(),
            params,
            verified: true,
            problems: Vec::new(),
            figures: Vec::new(),
            cpu_cores: BTreeMap::new(),
            cpu_us_per_message: BTreeMap::new(),
        }
    }

    pub fn figure(&mut self, name: impl Into<String>, value: f64, unit: &'static str) {
        self.figures.push(Figure {
            name: name.into(),
            value,
            unit,
        });
    }

    /// Records a failed check.
    pub fn problem(&mut self, what: impl Into<String>) {
        self.verified = false;
        self.problems.push(what.into());
    }

    /// p50 … max of a latency histogram kept in microseconds, as milliseconds.
    pub fn latencies(&mut self, prefix: &str, h: &Histogram<u64>) {
        if h.is_empty() {
            self.problem(format!("{prefix}: no samples"));
            return;
        }
        for (label, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
            self.figure(
                format!("{prefix} {label}"),
                h.value_at_quantile(q) as f64 / 1000.0,
                "ms",
            );
        }
        self.figure(format!("{prefix} max"), h.max() as f64 / 1000.0, "ms");
    }

    /// The report as a table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let status = if self.verified {
            "verified"
        } else {
            "CHECKS FAILED"
        };
        let _ = writeln!(out, "── {} {} ({status})", self.scenario, self.params);
        let width = self.figures.iter().map(|f| f.name.len()).max().unwrap_or(0);
        for f in &self.figures {
            let _ = writeln!(
                out,
                "   {:<width$}  {:>12} {}",
                f.name,
                format_value(f.value),
                f.unit
            );
        }
        if !self.cpu_cores.is_empty() {
            let cores: Vec<String> = self
                .cpu_cores
                .iter()
                .map(|(k, v)| format!("{k} {v:.2}"))
                .collect();
            let _ = writeln!(out, "   {:<width$}  {}", "cpu cores", cores.join(", "));
        }
        if !self.cpu_us_per_message.is_empty() {
            let per: Vec<String> = self
                .cpu_us_per_message
                .iter()
                .map(|(k, v)| format!("{k} {v:.0}"))
                .collect();
            let _ = writeln!(out, "   {:<width$}  {}", "cpu µs/message", per.join(", "));
        }
        for p in &self.problems {
            let _ = writeln!(out, "   ! {p}");
        }
        out
    }
}

fn format_value(v: f64) -> String {
    if v.fract() == 0.0 || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A latency histogram: 1 µs to 10 minutes, three significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}
