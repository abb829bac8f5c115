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

pub(super) async fn run(pool: &MySqlPool, n: u32, connections: u32) -> Result<Vec<Report>> {
    let mode = ClaimMode::SkipLocked;
    let mut out = Vec::new();
    let mut variant = |mut r: Report, note: String| {
        r.scenario = "price".into();
        r.note = note;
        out.push(r);
    };
    let plain = ceiling_of(pool, n, mode, connections, Batch::Jobq { history: false }).await?;
    variant(plain, "jobq schema, no history".into());
    let history = Batch::Jobq { history: true };
    variant(
        ceiling_of(pool, n, mode, connections, history).await?,
        "jobq schema, history (claimed + completed rows)".into(),
    );
    for (table, index) in INDEXES {
        let definition = sql::index_definition(pool, table, index).await?;
        anyhow::ensure!(
            !definition.ends_with("()"),
            "index {index} of {table} not found; is the bench database migrated?"
        );
        sql::alter(pool, table, &format!("DROP INDEX {index}")).await?;
        let r = ceiling_of(pool, n, mode, connections, history).await;
        // Put it back whatever happened.
        sql::alter(pool, table, &format!("ADD {definition}")).await?;
        variant(r?, format!("history, without {index}"));
    }
    variant(
        ceiling_of(pool, n, mode, connections, Batch::Narrow).await?,
        "narrow table (id, queue, state, priority, run_at; one index): the floor".into(),
    );
    Ok(out)
}

/// The price table: each variant's rate, against the variant with history (what jobq does).
pub(super) fn print(rows: &[Report]) {
    let base = rows
        .iter()
        .find(|r| r.note.starts_with("jobq schema, history"))
        .map_or(1.0, |r| r.jobs_per_s);
    println!("| variant | jobs | jobs/s | vs. with history | statements/job | rows written/job |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
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
