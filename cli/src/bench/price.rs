//! `price`: what each part of the hot path costs on this server. The ceiling (claim 100 with
//! `SKIP LOCKED`, mark them running, finish them with one UPDATE) runs on jobq's own schema:
//! without history, with the two history rows per job jobq writes (claimed, completed), then
//! with history but without each secondary index in turn (dropped in the bench database and
//! put back as it was), and last on a narrow table with one index: the floor. The difference
//! between two variants is the price of what one has and the other lacks.

use anyhow::Result;
use jobq_config::ClaimMode;
use sqlx::MySqlPool;

use super::{ceiling_of, sql, Batch, Report};

/// The secondary indexes priced, by table.
const INDEXES: [(&str, &str); 4] = [
    ("jobq_jobs", "jobq_jobs_due"),
    ("jobq_jobs", "jobq_jobs_keys"),
    ("jobq_jobs", "jobq_jobs_unique"),
    ("jobq_transitions", "jobq_transitions_job"),
];

/// Rounds per variant: one run is noisy on a small shared machine (the previous run's purge
/// and page flushing); the variants are run round-robin and each reports its median.
const ROUNDS: usize = 3;

/// A variant of the hot path.
#[derive(Clone, Copy)]
enum Variant {
    Plain,
    History,
    Without(&'static str, &'static str),
    Narrow,
}

impl Variant {
    fn note(self) -> String {
        match self {
            Variant::Plain => "jobq schema, no history".into(),
            Variant::History => "jobq schema, history (claimed + completed rows)".into(),
            Variant::Without(_, index) => format!("history, without {index}"),
            Variant::Narrow => {
                "narrow table (id, queue, state, priority, run_at; one index): the floor".into()
            }
        }
    }
}

pub(super) async fn run(pool: &MySqlPool, n: u32, connections: u32) -> Result<Vec<Report>> {
    let mut variants = vec![Variant::Plain, Variant::History];
    variants.extend(INDEXES.map(|(t, i)| Variant::Without(t, i)));
    variants.push(Variant::Narrow);
    let mut runs: Vec<Vec<Report>> = vec![Vec::new(); variants.len()];
    for round in 0..ROUNDS {
        for (v, out) in variants.iter().zip(&mut runs) {
            eprintln!("  round {}/{ROUNDS}: {}", round + 1, v.note());
            out.push(measure(pool, n, connections, *v).await?);
        }
    }
    Ok(variants
        .iter()
        .zip(runs)
        .map(|(v, mut rs)| {
            rs.sort_by(|a, b| a.jobs_per_s.total_cmp(&b.jobs_per_s));
            let mut r = rs.swap_remove(rs.len() / 2);
            r.scenario = "price".into();
            r.note = format!("{} (median of {ROUNDS})", v.note());
            r
        })
        .collect())
}

async fn measure(pool: &MySqlPool, n: u32, connections: u32, v: Variant) -> Result<Report> {
    let mode = ClaimMode::SkipLocked;
    let history = Batch::Jobq { history: true };
    match v {
        Variant::Plain => {
            ceiling_of(pool, n, mode, connections, Batch::Jobq { history: false }).await
        }
        Variant::History => ceiling_of(pool, n, mode, connections, history).await,
        Variant::Narrow => ceiling_of(pool, n, mode, connections, Batch::Narrow).await,
        Variant::Without(table, index) => {
            let definition = sql::index_definition(pool, table, index).await?;
            anyhow::ensure!(
                !definition.ends_with("()"),
                "index {index} of {table} not found; is the bench database migrated?"
            );
            sql::alter(pool, table, &format!("DROP INDEX {index}")).await?;
            let r = ceiling_of(pool, n, mode, connections, history).await;
            // Put it back whatever happened.
            sql::alter(pool, table, &format!("ADD {definition}")).await?;
            r
        }
    }
}

/// The price table: each variant's rate, against the variant with history (what jobq does).
pub(super) fn print(rows: &[Report]) {
    let base = rows
        .iter()
        .find(|r| r.note.starts_with("jobq schema, history"))
        .map_or(1.0, |r| r.jobs_per_s);
    outln!("| variant | jobs | jobs/s | vs. with history | statements/job | rows written/job |");
    outln!("|---|---:|---:|---:|---:|---:|");
    for r in rows {
        outln!(
            "| {} | {} | {:.0} | {:+.0}% | {:.2} | {:.2} |",
            r.note,
            r.jobs,
            r.jobs_per_s,
            100.0 * (r.jobs_per_s / base - 1.0),
            r.statements_per_job,
            r.rows_written_per_job
        );
    }
}
