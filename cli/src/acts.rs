//! `jobq cancel|retry|discard ID…`: operators' acts on jobs by id, recorded with who asked
//! (`cli:USER@HOST`). Exits 1 when any id could not be acted on (unknown, or in a state the
//! act does not apply to), after acting on the others.

use std::process::ExitCode;

use std::io::IsTerminal;

use anyhow::{bail, Result};
use jobq_config::Config;
use jobq_worker::{Act, Acted, JobFilter, JobId, JobState};

#[derive(clap::Args, Debug)]
pub(crate) struct ActArgs {
    /// Job ids. Or leave them out and select jobs with --state (and --queue, --kind).
    #[arg(
        value_name = "ID",
        required_unless_present = "state",
        conflicts_with = "state"
    )]
    ids: Vec<u64>,
    /// Act on every job in this state (in batches of 1000), e.g. --state discarded.
    #[arg(long)]
    state: Option<JobState>,
    /// With --state: only jobs of this queue.
    #[arg(long, requires = "state")]
    queue: Option<String>,
    /// With --state: only jobs of this kind.
    #[arg(long, requires = "state")]
    kind: Option<String>,
    /// With --state: do it without asking (needed when standard input is a terminal).
    #[arg(long, requires = "state")]
    yes: bool,
    /// One JSON object per job (by id), or one summary object (by filter).
    #[arg(long)]
    json: bool,
}

/// `cli:USER@HOST`, recorded as who acted (also by `jobq schedules pause`).
pub(crate) fn actor() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}@{}", jobq_worker::hostname())
}

pub(crate) async fn run(settings: &Config, act: Act, a: ActArgs) -> Result<ExitCode> {
    if let Some(state) = a.state {
        return by_filter(settings, act, state, a).await;
    }
    let pool = crate::common::connected(settings).await?;
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
            outln!("{v}");
            continue;
        }
        match acted {
            Acted::Done { from, to } => outln!("{id} {to} (was {from})"),
            Acted::CancelRequested => outln!(
                "{id} cancel requested: it is running; its worker stops it at its next heartbeat \
                 and it ends cancelled (unless it finishes first)"
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

/// Acts on every job matching the filter ([`jobq_worker::act_on_filter`]). Prints how many
/// jobs each outcome got.
async fn by_filter(settings: &Config, act: Act, state: JobState, a: ActArgs) -> Result<ExitCode> {
    if std::io::stdin().is_terminal() && !a.yes {
        bail!(crate::Usage(format!(
            "this acts on every {state} job{}{}; add --yes to go ahead",
            a.queue
                .as_deref()
                .map(|q| format!(" of queue {q}"))
                .unwrap_or_default(),
            a.kind
                .as_deref()
                .map(|k| format!(" of kind {k}"))
                .unwrap_or_default(),
        )));
    }
    let pool = crate::common::connected(settings).await?;
    let filter = JobFilter {
        queue: a.queue.clone(),
        kind: a.kind.clone(),
        ..Default::default()
    };
    let tally = jobq_worker::act_on_filter(&pool, act, state, &filter, &actor()).await?;
    let (done, requested, refused) = (tally.done, tally.cancel_requested, tally.skipped);
    if a.json {
        outln!(
            "{}",
            serde_json::json!({"done": done, "cancel_requested": requested, "skipped": refused})
        );
    } else {
        outln!(
            "{done} jobs done, {requested} cancel requests, {refused} skipped (changed meanwhile)"
        );
    }
    Ok(ExitCode::SUCCESS)
}
