//! `jobq schedules`: the recurring jobs with their next and last slot and last outcome; pause,
//! resume, or run one now.

use std::process::ExitCode;

use anyhow::Result;
use jobq_config::Config;

#[derive(clap::Args, Debug)]
pub(crate) struct SchedulesArgs {
    #[command(subcommand)]
    action: Option<SchedulesAction>,
    /// List as JSON (one array).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand, Debug)]
enum SchedulesAction {
    /// Enqueue no more slots of NAME until it is resumed.
    Pause {
        /// The schedule.
        name: String,
    },
    /// Enqueue NAME's slots again (its latest missed slot runs once, per its `missed` policy).
    Resume {
        /// The schedule.
        name: String,
    },
    /// Enqueue NAME's job once, now; prints its id.
    Run {
        /// The schedule.
        name: String,
    },
}

/// The configuration of the server `name`'s queue lives on (`[queues.NAME] database_url`): a
/// schedule's state and its jobs are kept there, by that server's maintenance leader.
fn server_of(settings: &Config, name: &str) -> Result<Config> {
    let queue = settings
        .schedules()
        .iter()
        .find(|s| s.name == name)
        .map_or("default", |s| s.queue.as_str());
    Ok(jobq_worker::on_server(
        settings,
        settings.database_of(queue),
    )?)
}

pub(crate) async fn run(settings: &Config, a: SchedulesArgs) -> Result<ExitCode> {
    let pool = match &a.action {
        Some(
            SchedulesAction::Pause { name }
            | SchedulesAction::Resume { name }
            | SchedulesAction::Run { name },
        ) => crate::common::connected(&server_of(settings, name)?).await?,
        None => crate::common::connected(settings).await?,
    };
    match a.action {
        Some(SchedulesAction::Pause { name }) => {
            let by = crate::acts::actor();
            if jobq_worker::pause_schedule(&pool, settings, &name, &by).await? {
                outln!("paused {name}");
            } else {
                outln!("{name} was already paused");
            }
        }
        Some(SchedulesAction::Resume { name }) => {
            if jobq_worker::resume_schedule(&pool, settings, &name).await? {
                outln!("resumed {name}");
            } else {
                outln!("{name} was not paused");
            }
        }
        Some(SchedulesAction::Run { name }) => {
            let id = jobq_worker::run_schedule_now(&pool, settings, &name).await?;
            outln!("{id}");
        }
        None => {
            // Each schedule as its own queue's server keeps it.
            let mut list = Vec::new();
            for url in settings.servers() {
                let pool = if url == settings.database_url() {
                    pool.clone()
                } else {
                    crate::common::connected(&jobq_worker::on_server(settings, url)?).await?
                };
                list.extend(
                    jobq_worker::list_schedules(&pool, settings)
                        .await?
                        .into_iter()
                        .filter(|s| settings.lives_on(&s.queue, url)),
                );
            }
            if a.json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            let t = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or("-".to_owned(), |t| {
                    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
                })
            };
            use crate::table::{Align::*, Table};
            let mut table = Table::new(&[
                ("schedule", Left),
                ("cron", Left),
                ("timezone", Left),
                ("kind", Left),
                ("state", Left),
                ("next slot", Left),
                ("last slot", Left),
                ("last outcome", Left),
            ]);
            for s in &list {
                let outcome = match (&s.last_outcome, &s.last_job, &s.last_job_state) {
                    (Some(o), Some(j), Some(st)) if o == "enqueued" => format!("job {j} {st}"),
                    (Some(o), _, _) => o.clone(),
                    _ => "-".into(),
                };
                table.row(vec![
                    s.name.clone(),
                    s.cron.clone(),
                    s.timezone.clone(),
                    s.kind.clone(),
                    (if s.paused { "paused" } else { "active" }).to_owned(),
                    t(s.next_slot),
                    t(s.last_slot),
                    outcome,
                ]);
            }
            table.print();
        }
    }
    Ok(ExitCode::SUCCESS)
}
