//! What a scenario hands back: a JSON document for machines and a two-column table for people.

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub warnings: Vec<String>,
    pub result: serde_json::Value,
    #[serde(skip)]
    pub table: Vec<(String, String)>,
}

impl Report {
    pub fn new(scenario: &'static str, result: &impl Serialize) -> Report {
        Report {
            scenario,
            warnings: Vec::new(),
            result: serde_json::to_value(result).expect("results serialize"),
            table: Vec::new(),
        }
    }

    pub fn row(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.table.push((name.into(), value.into()));
        self
    }

    pub fn render(&self) -> String {
        let width = self.table.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = format!("resbench {}\n", self.scenario);
        out.push_str(&format!("{}\n", "-".repeat(width + 40)));
        for (k, v) in &self.table {
            out.push_str(&format!("{k:<width$}  {v}\n"));
        }
        for w in &self.warnings {
            out.push_str(&format!("WARNING: {w}\n"));
        }
        out
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn per_sec(n: f64) -> String {
    if n >= 10_000.0 { format!("{:.0}/s", n) } else { format!("{:.1}/s", n) }
}

/// Microseconds of CPU per item, or n/a when nothing was delivered.
pub fn cpu_us_per(cpu_seconds: f64, items: u64) -> Option<f64> {
    (items > 0).then(|| cpu_seconds * 1e6 / items as f64)
}

pub fn opt_us(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.2} µs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_units() {
        let mut r = Report::new("x", &serde_json::json!({"a": 1}));
        r.row("delivered", "10").row("long name", "2");
        r.warnings.push("w".into());
        let s = r.render();
        assert!(s.contains("delivered  10\n"));
        assert!(s.contains("long name  2\n"));
        assert!(s.contains("WARNING: w"));
        assert_eq!(mib(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(per_sec(12_345.6), "12346/s");
        assert_eq!(per_sec(12.34), "12.3/s");
        assert_eq!(cpu_us_per(1.0, 0), None);
        assert_eq!(cpu_us_per(0.5, 100_000), Some(5.0));
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["result"]["a"], 1);
        assert!(j.get("table").is_none());
    }
}
