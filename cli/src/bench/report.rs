//! What a bench run reports: one row per run, as JSON lines or a table against the same-run
//! ceiling.

use super::*;

#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct Report {
    pub(super) scenario: String,
    pub(super) claim_mode: String,
    pub(super) processes: u32,
    pub(super) concurrency: u32,
    pub(super) jobs: u32,
    pub(super) enqueue_jobs_per_s: Option<f64>,
    pub(super) jobs_per_s: f64,
    pub(super) ceiling_jobs_per_s: Option<f64>,
    pub(super) percent_of_ceiling: Option<f64>,
    /// `--floor`: the rate against the narrow-table floor of the same invocation.
    pub(super) percent_of_floor: Option<f64>,
    pub(super) pickup_p50_ms: Option<f64>,
    pub(super) pickup_p95_ms: Option<f64>,
    pub(super) pickup_p99_ms: Option<f64>,
    pub(super) claims_per_job: Option<f64>,
    pub(super) claim_round_trips_per_job: Option<f64>,
    pub(super) statements_per_job: f64,
    pub(super) rows_written_per_job: f64,
    pub(super) note: String,
}

pub(super) fn emit(a: &BenchArgs, r: &Report) {
    if a.json {
        outln!("{}", serde_json::to_string(r).unwrap_or_default());
    } else {
        eprintln!(
            "\r  {:<9} {:<11} {:<6} {:>7} jobs: {:>8.0} jobs/s{}",
            r.scenario,
            r.claim_mode,
            slots_text(r),
            r.jobs,
            r.jobs_per_s,
            r.percent_of_ceiling
                .map(|p| format!(" ({p:.0}% of ceiling)"))
                .unwrap_or_default()
                + &r.percent_of_floor
                    .map(|p| format!(" ({p:.0}% of floor)"))
                    .unwrap_or_default()
        );
    }
}

pub(super) fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

pub(super) fn print_table(rows: &[Report]) {
    outln!(
        "| scenario | mode | procs x conc | jobs | enqueue jobs/s | jobs/s | % of ceiling | pickup p50/p95/p99 ms | claims/job | claim RTs/job | statements/job | rows written/job |"
    );
    outln!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let pickup = match (r.pickup_p50_ms, r.pickup_p95_ms, r.pickup_p99_ms) {
            (Some(a), Some(b), Some(c)) => format!("{a:.1} / {b:.1} / {c:.1}"),
            _ => "-".into(),
        };
        outln!(
            "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {:.2} | {:.2} |",
            r.scenario,
            r.claim_mode,
            slots_text(r),
            r.jobs,
            fmt_opt(r.enqueue_jobs_per_s, 0),
            r.jobs_per_s,
            match r.percent_of_floor {
                Some(f) => format!("{} ({f:.0} of floor)", fmt_opt(r.percent_of_ceiling, 0)),
                None => fmt_opt(r.percent_of_ceiling, 0),
            },
            pickup,
            fmt_opt(r.claims_per_job, 3),
            fmt_opt(r.claim_round_trips_per_job, 3),
            r.statements_per_job,
            r.rows_written_per_job,
        );
    }
    // The fan-in scenario's findings are in its notes.
    for r in rows
        .iter()
        .filter(|r| r.scenario.starts_with("fan-in") || r.scenario.ends_with("+blocked"))
    {
        if !r.note.is_empty() && !r.note.starts_with("history on") {
            outln!("{}: {}", r.scenario, r.note);
        }
    }
}

/// The slots of a report: `PxC`, or `PxC+N` (`PxC+auto`) for the worker runs of a bench with
/// a fixed (adaptive) prefetch.
pub(super) fn slots_text(r: &Report) -> String {
    let p = PREFETCH.get().copied().unwrap_or_default();
    // The ceiling and the floor are raw SQL, and the enqueue scenarios run no worker.
    let workers = !matches!(r.scenario.as_str(), "ceiling" | "floor")
        && !r.scenario.starts_with("single-enqueue");
    if !p.is_off() && workers {
        format!("{}x{}+{p}", r.processes, r.concurrency)
    } else {
        format!("{}x{}", r.processes, r.concurrency)
    }
}

pub(super) fn per_job(delta: u64, n: u32) -> f64 {
    delta as f64 / f64::from(n)
}

pub(super) fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}
