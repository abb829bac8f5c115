//! `jobq cancel|retry|discard ID…`: operators' acts on jobs by id, recorded with who asked
//! (`cli:USER@HOST`). Exits 1 when any id could not be acted on (unknown, or in a state the
//! act does not apply to), after acting on the others.

use std::process::ExitCode;

use anyhow::Result;
use jobq_config::Config;
use jobq_worker::{Act, Acted, JobId};

#[derive(clap::Args, Debug)]
pub(crate) struct ActArgs {
    /// Job ids.
    #[arg(required = true, value_name = "ID")]
    ids: Vec<u64>,
    /// One JSON object per job.
    #[arg(long)]
    json: bool,
}

/// `cli:USER@HOST`, recorded as who acted.
fn actor() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}@{}", jobq_worker::hostname())
}

pub(crate) async fn run(settings: &Config, act: Act, a: ActArgs) -> Result<ExitCode> {
    let pool = crate::cli::connected(settings).await?;
    let ids: Vec<JobId> = a.ids.iter().map(|&i| JobId(i)).collect();
    let out = jobq_worker::act_on_jobs(&pool, act, &ids, &actor()).await?;
    let verb = match act {
        Act::Cancel => "cancel",
        Act::Retry => "retry",
        Act::Discard => "discard",
    };
    let mut failed = 0;
    for (id, acted) in &out {
        if !acted.ok() {
            failed += 1;
        }
        if a.json {
            let mut v = serde_json::to_value(acted)?;
            v["id"] = serde_json::json!(id.0);
            println!("{v}");
            continue;
        }
        match acted {
            Acted::Done { from, to } => println!("{id} {to} (was {from})"),
            Acted::CancelRequested => println!(
                "{id} cancel requested: it is running; its worker stops it at its next heartbeat \
                 (then it ends cancelled)"
            ),
            Acted::Refused { state, why } => {
                eprintln!("{id}: cannot {verb} a {state} job: {why}")
            }
            Acted::NotFound => eprintln!("{id}: no such job"),
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
