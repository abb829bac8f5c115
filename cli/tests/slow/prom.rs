//! Metrics against a real Prometheus (Debian package `prometheus`): every PromQL expression of the
//! dashboard and of the alert rules must be valid and return data while jobs of every outcome run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use jobq_worker::{NewJob, Producer};
use serde_json::{json, Value};
use sqlx::MySqlPool;

use crate::common::*;
use crate::http::{encode, free_port, get};
use crate::procs::WorkerProc;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn prometheus() -> Option<PathBuf> {
    ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Samples of `/metrics` text: (name, labels) for lines whose value is > 0.
fn positive_series(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let v: f64 = value.parse().ok()?;
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            (v > 0.0).then(|| (name.to_owned(), labels.trim_end_matches('}').to_owned()))
        })
        .collect()
}

fn has(series: &[(String, String)], name: &str, labels: &[&str]) -> bool {
    series
        .iter()
        .any(|(n, l)| n == name && labels.iter().all(|want| l.split(',').any(|x| x == *want)))
}

struct Prom {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prom {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(bin: &Path, target_port: u16) -> Prom {
    let dir = tempfile::tempdir().unwrap();
    let rules = repo()
        .join("dashboards/jobq-alerts.yml")
        .canonicalize()
        .unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: jobq\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .expect("start prometheus");
    Prom {
        child,
        port,
        _dir: dir,
    }
}

/// Runs an instant query; Ok(number of series) or Err(Prometheus' error).
fn query(port: u16, q: &str) -> Result<usize, String> {
    let (status, body) = get(port, &format!("/api/v1/query?query={}", encode(q)))?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if status != 200 || v["status"] != "success" {
        return Err(format!("HTTP {status}: {body}"));
    }
    Ok(v["data"]["result"].as_array().map_or(0, |a| a.len()))
}

/// The dashboard's expressions with Grafana's variables replaced as "All" and a 30 s window.
fn dashboard_queries() -> Vec<(String, String)> {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("dashboards/jobq.json")).unwrap(),
    )
    .unwrap();
    assert!(
        dash["schemaVersion"].as_u64().unwrap() >= 30,
        "schemaVersion set"
    );
    assert!(dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["type"] == "datasource"));
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"]
                .as_str()
                .unwrap()
                .replace("$queue", ".*")
                .replace("$kind", ".*")
                .replace("$__rate_interval", "30s");
            out.push((p["title"].as_str().unwrap().to_owned(), e));
        }
    }
    out
}

/// The alert rules' expressions, and for each the parts whose value the alert compares (the
/// "signal", which must have data even when the alert does not fire).
fn alert_queries() -> Vec<(String, String, Vec<String>)> {
    let text = std::fs::read_to_string(repo().join("dashboards/jobq-alerts.yml")).unwrap();
    let mut out = Vec::new();
    let mut name = String::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(n) = l.strip_prefix("- alert: ") {
            name = n.to_owned();
        } else if let Some(e) = l.strip_prefix("expr: ") {
            let signals = e
                .split(" or ")
                .map(|part| {
                    let part = part.trim();
                    match part.rfind(['>', '<']) {
                        Some(i) if part[i + 1..].trim().parse::<f64>().is_ok() => {
                            part[..i].trim().to_owned()
                        }
                        _ => part.to_owned(),
                    }
                })
                .collect();
            out.push((name.clone(), e.to_owned(), signals));
        }
    }
    assert_eq!(out.len(), 5, "five alert rules");
    out
}

#[sqlx::test(migrations = false)]
async fn dashboards_and_alerts_against_real_prometheus(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let bin = prometheus()
        .expect("prometheus is not installed: apt-get install prometheus (scripts/test does)");
    let url = url_of(&db).await;
    let p = Producer::new(db.clone());
    let mut jobs = Vec::new();
    for _ in 0..150 {
        jobs.push(NewJob::json("noop", json!({})));
        jobs.push(NewJob::json("noop", json!({})).queue("locked"));
    }
    for _ in 0..20 {
        jobs.push(NewJob::json("sleep", json!({"ms": 30})));
        jobs.push(NewJob::json("record", json!({})));
        jobs.push(NewJob::json("fail", json!({"times": 1})));
    }
    for with in ["discard", "cancel", "snooze"] {
        for _ in 0..5 {
            jobs.push(NewJob::json("fail", json!({"times": 1, "with": with})));
        }
    }
    for _ in 0..3 {
        jobs.push(NewJob::json("fail", json!({"times": 9})).max_attempts(1));
        jobs.push(NewJob::json("panic", json!({})).max_attempts(1));
    }
    p.enqueue_many(jobs).await.unwrap();
    let victim_jobs: Vec<NewJob> = (0..4)
        .map(|_| NewJob::json("record", json!({"ms": 60000})).queue("victim"))
        .collect();
    p.enqueue_many(victim_jobs).await.unwrap();

    let metrics_port = free_port();
    let mut w = WorkerProc::spawn(
        &url,
        &["--queues", "default,locked", "--concurrency", "8"],
        &[
            ("JOBQ_METRICS__LISTEN", &format!("127.0.0.1:{metrics_port}")),
            ("JOBQ_QUEUES__LOCKED__CLAIM_MODE", "named-lock"),
            ("JOBQ_WORKER__BACKOFF_BASE", "200ms"),
            ("JOBQ_MAINTENANCE__INTERVAL", "200ms"),
        ],
    );
    wait_for(Duration::from_secs(20), "/healthz", || async {
        matches!(get(metrics_port, "/healthz"), Ok((200, _)))
    })
    .await;
    // Readiness follows the first database check of a background task: it may lag /healthz.
    wait_for(Duration::from_secs(20), "/readyz", || async {
        matches!(get(metrics_port, "/readyz"), Ok((200, _)))
    })
    .await;
    assert_eq!(get(metrics_port, "/nope").unwrap().0, 404);
    let prom = start_prometheus(&bin, metrics_port);

    // The victim holds long jobs on its own queue and dies: the metrics worker (the leader)
    // rescues them, and nobody works `victim`, so its lag grows.
    let mut victim = WorkerProc::spawn(
        &url,
        &["--queues", "victim"],
        &[
            ("JOBQ_WORKER__LEASE_TTL", "2s"),
            ("JOBQ_WORKER__HEARTBEAT_INTERVAL", "500ms"),
            // The metrics worker leads and exports the samples: the victim never takes over,
            // even when a loaded machine delays the leader's renewal.
            ("JOBQ_MAINTENANCE__LEAD", "false"),
        ],
    );
    wait_for(
        Duration::from_secs(30),
        "victim running, as sampled by the leader",
        || async {
            let (_, text) = get(metrics_port, "/metrics").unwrap();
            has(
                &positive_series(&text),
                "jobq_queue_running_jobs",
                &["queue=\"victim\""],
            )
        },
    )
    .await;
    wait_for(
        Duration::from_secs(30),
        "prometheus scraped the zero-valued rescue series",
        || async {
            query(prom.port, "jobq_jobs_rescued_total{queue=\"victim\"} == 0").unwrap_or(0) > 0
        },
    )
    .await;
    victim.kill9();

    wait_for(Duration::from_secs(60), "all jobs final and the victim's jobs rescued", || async {
        count(&db, "SELECT COUNT(*) FROM jobq_jobs WHERE queue <> 'victim' AND state NOT IN ('completed', 'discarded', 'cancelled')").await == 0
            && count(&db, "SELECT COUNT(*) FROM jobq_transitions WHERE event = 'rescued'").await == 4
    })
    .await;

    // The leader samples depth every few ticks.
    wait_for(Duration::from_secs(20), "victim depth exported", || async {
        let (_, text) = get(metrics_port, "/metrics").unwrap();
        has(
            &positive_series(&text),
            "jobq_queue_available_jobs",
            &["queue=\"victim\""],
        )
    })
    .await;
    // The exporter's own text: each outcome appears with its labels.
    let (_, text) = get(metrics_port, "/metrics").unwrap();
    let s = positive_series(&text);
    for (kind, outcome) in [
        ("noop", "completed"),
        ("fail", "retried"),
        ("fail", "discarded"),
        ("fail", "cancelled"),
        ("fail", "snoozed"),
        ("panic", "discarded"),
        ("record", "completed"),
    ] {
        let k = format!("kind=\"{kind}\"");
        let o = format!("outcome=\"{outcome}\"");
        assert!(
            has(
                &s,
                "jobq_jobs_finished_total",
                &["queue=\"default\"", &k, &o]
            ),
            "{kind} {outcome} missing:\n{text}"
        );
    }
    assert!(
        has(
            &s,
            "jobq_jobs_rescued_total",
            &["queue=\"victim\"", "outcome=\"available\""]
        ),
        "{text}"
    );
    assert!(has(
        &s,
        "jobq_jobs_claimed_total",
        &["queue=\"locked\"", "kind=\"noop\""]
    ));
    assert!(has(
        &s,
        "jobq_named_lock_wait_seconds_count",
        &["queue=\"locked\""]
    ));
    assert!(has(
        &s,
        "jobq_job_run_duration_seconds_bucket",
        &["kind=\"sleep\"", "outcome=\"completed\""]
    ));
    assert!(!text.contains("job_id"), "no job ids in labels");

    // Let Prometheus take enough scrapes for 30 s windows and the leader's samples.
    wait_for(
        Duration::from_secs(60),
        "prometheus has the rescue",
        || async {
            query(prom.port, "sum(increase(jobq_jobs_rescued_total[30s])) > 0").unwrap_or(0) > 0
        },
    )
    .await;
    let mut failures = Vec::new();
    for (title, q) in dashboard_queries() {
        match query(prom.port, &q) {
            Ok(0) => failures.push(format!("dashboard panel {title:?}: no data for {q}")),
            Ok(_) => {}
            Err(e) => failures.push(format!("dashboard panel {title:?}: invalid {q}: {e}")),
        }
    }
    for (name, expr, signals) in alert_queries() {
        if let Err(e) = query(prom.port, &expr) {
            failures.push(format!("alert {name}: invalid {expr}: {e}"));
        }
        let with_data = signals
            .iter()
            .map(|q| query(prom.port, q))
            .filter(|r| matches!(r, Ok(n) if *n > 0))
            .count();
        if with_data == 0 {
            failures.push(format!("alert {name}: no data behind {expr}"));
        }
    }
    // Prometheus loaded the rules file itself.
    let (_, rules) = get(prom.port, "/api/v1/rules").unwrap();
    assert!(
        rules.contains("JobqQueueLagHigh") && rules.contains("JobqRescuesHappening"),
        "{rules}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let check = Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo().join("dashboards/jobq-alerts.yml"))
        .output();
    if let Ok(o) = check {
        assert!(
            o.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    w.stop_cleanly();
}
