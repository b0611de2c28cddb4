//! The common result format of every benchmark.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

/// One measured figure, against its baseline measured in the same run.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub bench: String,
    pub metric: String,
    pub unit: String,
    pub ferry: f64,
    pub baseline: f64,
    pub baseline_name: String,
    /// Greater than 1 means Ferry is better.
    pub ratio: f64,
}

/// Whether a bigger number is better for a metric.
#[derive(Clone, Copy, Debug)]
pub enum Better {
    Higher,
    Lower,
}

impl Row {
    pub fn new(
        bench: &str,
        metric: &str,
        unit: &str,
        ferry: f64,
        baseline: f64,
        baseline_name: &str,
        better: Better,
    ) -> Row {
        let ratio = match better {
            Better::Higher => ferry / baseline,
            Better::Lower => baseline / ferry,
        };
        Row {
            bench: bench.to_string(),
            metric: metric.to_string(),
            unit: unit.to_string(),
            ferry,
            baseline,
            baseline_name: baseline_name.to_string(),
            ratio,
        }
    }
}

pub fn print(name: &str, rows: &[Row]) {
    println!("\nbenchmark {name}");
    println!(
        "{:<28} {:>12} {:>12} {:>8}  {:<12} baseline is",
        "metric", "ferry", "baseline", "ratio", "unit"
    );
    for row in rows {
        println!(
            "{:<28} {:>12.2} {:>12.2} {:>8.2}  {:<12} {}",
            row.metric, row.ferry, row.baseline, row.ratio, row.unit, row.baseline_name
        );
    }
}

pub fn write_json(dir: &Path, name: &str, rows: &[Row]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    let json = serde_json::to_string_pretty(rows)?;
    std::fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
