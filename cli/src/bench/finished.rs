//! `jobq bench --finished N` (burn-down): what finished jobs kept in the table cost the
//! workers. The plain burn-down of `--jobs` no-op jobs runs on an empty table, then twice with
//! N completed jobs of the same queue and their history (three rows each) in the tables, then
//! on an empty table again: the runs without bracket the runs with, in one run of the bench,
//! so the machine's drift shows as the difference between the two runs without.

use super::*;

/// The four burn-downs (without, with, with, without); the last says the ratio.
pub(super) async fn burden(
    pool: &MySqlPool,
    url: &str,
    jobs: u32,
    finished: u64,
    mode: ClaimMode,
    processes: u32,
    concurrency: u32,
) -> Result<Vec<Report>> {
    let mut out = Vec::new();
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let r = burn_down(pool, url, jobs, mode, processes, concurrency).await?;
    without.push(r.jobs_per_s);
    out.push(r);
    sql::bench_reset(pool).await?;
    eprintln!("  inserting {finished} finished jobs with their history…");
    let started = Instant::now();
    sql::fill_finished(pool, QUEUE, finished).await?;
    eprintln!("  … in {:.0} s", started.elapsed().as_secs_f64());
    for _ in 0..2 {
        let mut r = burn_down_on(pool, url, jobs, mode, processes, concurrency).await?;
        r.scenario = "burn-down+finished".into();
        r.note = format!("{finished} finished jobs (and their history) in the tables");
        with.push(r.jobs_per_s);
        out.push(r);
    }
    let r = burn_down(pool, url, jobs, mode, processes, concurrency).await?;
    without.push(r.jobs_per_s);
    out.push(r);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    if let Some(last) = out.last_mut() {
        last.note = format!(
            "{finished} finished jobs kept: {:.1}% of the rate without them (means of 2 runs each, the runs without before and after: {:.0} vs {:.0} jobs/s)",
            100.0 * mean(&with) / mean(&without),
            mean(&with),
            mean(&without)
        );
    }
    Ok(out)
}
