//! `jobq bench --finished N` (burn-down): what finished jobs kept in the table cost the
//! workers. The plain burn-down of `--jobs` no-op jobs runs on an empty table, then twice with
//! N completed jobs of the same queue and their history (three rows each) in the tables, then
//! on an empty table again: the runs without bracket the runs with, in one run of the bench,
//! so the machine's drift shows as the difference between the two runs without. The runs
//! with start once the server has written out the fill's dirty pages.

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
    // The fill leaves gigabytes of dirty pages that the server writes out for minutes after:
    // the runs with the jobs would pay for that flushing, which is the fill's cost, not the
    // kept jobs'. Wait (up to 10 minutes) until it is done.
    let settling = Instant::now();
    while sql::dirty_pages(pool).await? > 1_000 && settling.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!(
        "  … dirty pages written out in {:.0} s ({} left)",
        settling.elapsed().as_secs_f64(),
        sql::dirty_pages(pool).await?
    );
    for _ in 0..2 {
        let mut r = burn_down_on(pool, url, jobs, mode, processes, concurrency).await?;
        r.scenario = "burn-down+finished".into();
        r.note = format!("{finished} finished jobs (and their history) in the tables");
        with.push(r.jobs_per_s);
        out.push(r);
    }
    // Still all there: no retention pruned them during the runs.
    let left = sql::completed_in(pool, QUEUE).await?;
    anyhow::ensure!(
        left as u64 >= finished + 2 * u64::from(jobs),
        "the finished jobs were pruned during the runs ({left} completed left): set no retention"
    );
    let r = burn_down(pool, url, jobs, mode, processes, concurrency).await?;
    without.push(r.jobs_per_s);
    out.push(r);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    if let Some(last) = out.last_mut() {
        // The drift of the machine: the two runs without, apart.
        let drift = 100.0 * (without[1] - without[0]).abs() / mean(&without);
        let ratio = 100.0 * mean(&with) / mean(&without);
        last.note = format!(
            "{finished} finished jobs kept: {ratio:.1}% of the rate without them (means of 2 runs each: {:.0} vs {:.0} jobs/s); the runs without differ by {drift:.1}%{}",
            mean(&with),
            mean(&without),
            if drift >= (100.0 - ratio).abs() { ", as much as the effect: inconclusive, run again" } else { "" }
        );
    }
    Ok(out)
}
