//! The results table, in Markdown.

use std::fmt::Write as _;

use crate::run::{Measured, Part};

pub struct Table {
    text: String,
}

/// What a row is about, besides the calls measured.
pub struct RowHead<'a> {
    pub scenario: &'a str,
    pub backend: &'a str,
    pub concurrency: usize,
    pub seconds: f64,
    pub peak_rss_mib: f64,
}

impl Table {
    pub fn new() -> Self {
        let mut text = String::new();
        text.push_str(
            "| scenario | backend | concurrency | calls/s | p50 ms | p99 ms | p99.9 ms | errors | server peak RSS MiB |\n",
        );
        text.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        Self { text }
    }

    /// One row for the run; with `split`, one more for each kind of call
    /// it made (registrations, closes, accepts). Each row is also printed to
    /// stderr as it comes.
    pub fn add(&mut self, head: &RowHead, measured: &Measured, split: bool) {
        self.row(head, head.scenario, &measured.total());
        if split {
            for (kind, part) in measured.split() {
                self.row(head, &format!("{} ({kind})", head.scenario), part);
            }
        }
        if let Some(error) = &measured.first_error {
            eprintln!("  first error: {error}");
        }
    }

    fn row(&mut self, head: &RowHead, label: &str, part: &Part) {
        let sorted = &part.latencies_us;
        let row = format!(
            "| {label} | {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {:.1} |",
            head.backend,
            head.concurrency,
            sorted.len() as f64 / head.seconds,
            percentile_ms(sorted, 0.50),
            percentile_ms(sorted, 0.99),
            percentile_ms(sorted, 0.999),
            part.errors,
            head.peak_rss_mib,
        );
        eprintln!("{row}");
        writeln!(self.text, "{row}").unwrap();
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// The `p` quantile of sorted microseconds, in milliseconds.
fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[index]) / 1000.0
}

/// Bytes in MiB, or `-` when unknown.
pub fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".into(), |b| format!("{:.1}", b as f64 / 1_048_576.0))
}
