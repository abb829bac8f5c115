//! Helpers the subcommands share: flag parsers, the claim-mode flag, connecting (checked
//! migrated) and migrating, the built-in registry, and making text safe to print (passwords
//! redacted, control characters escaped).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use jobq_config::{ClaimMode, Config};
use jobq_worker::{builtin, Registry};

/// A claim mode on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ModeArg {
    /// `SELECT … FOR UPDATE SKIP LOCKED`.
    SkipLocked,
    /// A per-queue `GET_LOCK` around the claim.
    NamedLock,
}

impl From<ModeArg> for ClaimMode {
    fn from(m: ModeArg) -> ClaimMode {
        match m {
            ModeArg::SkipLocked => ClaimMode::SkipLocked,
            ModeArg::NamedLock => ClaimMode::NamedLock,
        }
    }
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; write durations like 500ms, 10s, 1h"))
}

pub(crate) fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{e}; write an RFC 3339 time such as 2030-01-01T00:00:00Z"))
}

/// `jobq migrate`: every server the configuration names (`database_url` and each queue's).
pub(crate) async fn migrate(settings: &Config) -> Result<ExitCode> {
    let servers = settings.servers();
    for url in &servers {
        let report = jobq_worker::migrate(url)
            .await
            .with_context(|| format!("migrating {}", redact(url)))?;
        if report.moved_from_sqlx > 0 {
            eprintln!(
                "jobq: moved {} rows of an earlier jobq from _sqlx_migrations to jobq_migrations",
                report.moved_from_sqlx
            );
        }
        for m in &report.applied {
            eprintln!("jobq: applied {} {}", m.version, m.description);
        }
        history_layout(settings, url).await?;
    }
    match servers.len() {
        1 => eprintln!("jobq: database migrated"),
        n => eprintln!("jobq: {n} databases migrated"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The history layout `maintenance.history_partition` asks for, on the server of `url`
/// (after its migrations): converted, or partitions rolled; says what changed.
async fn history_layout(settings: &Config, url: &str) -> Result<()> {
    let on = jobq_worker::on_server(settings, url)?;
    let pool = jobq_worker::connect(&on)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))?;
    let r = jobq_worker::apply_history_layout(&pool, &on)
        .await
        .with_context(|| format!("applying maintenance.history_partition on {}", redact(url)));
    pool.close().await;
    let r = r?;
    if let Some(why) = &r.roll_failed {
        eprintln!(
            "jobq: warning: rolling the history partitions failed ({why}); the maintenance leader \
             rolls them again within a minute"
        );
    }
    match (r.converted, r.partitioned) {
        (true, true) => eprintln!(
            "jobq: jobq_transitions partitioned by time: {} partitions",
            r.partitions
        ),
        (true, false) => eprintln!("jobq: jobq_transitions is one table again (not partitioned)"),
        (false, true) if r.added + r.dropped > 0 => eprintln!(
            "jobq: history partitions rolled: {} created ahead, {} dropped past retention, {} now",
            r.added, r.dropped, r.partitions
        ),
        _ => {}
    }
    Ok(())
}

pub(crate) async fn connected(settings: &Config) -> Result<sqlx::MySqlPool> {
    let pool = jobq_worker::connect(settings)
        .await
        .with_context(|| format!("connecting to {}", redact(settings.database_url())))?;
    jobq_worker::check_migrated(&pool).await?;
    Ok(pool)
}

/// The URL with any password hidden, for messages. The credentials end at the last `@` before
/// the path or query (an `@` in the query, such as a file name in `ssl-ca`, is not theirs).
pub(crate) fn redact(url: &str) -> String {
    let Some(s) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[s..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) if rest[..at].contains(':') => {
            let user_end = s + rest[..at].find(':').unwrap_or(0);
            format!("{}:***{}", &url[..user_end], &url[s + at..])
        }
        _ => url.to_owned(),
    }
}

pub(crate) fn builtin_registry() -> Result<Registry> {
    let mut r = Registry::new();
    builtin::register(&mut r)?;
    Ok(r)
}

/// `s` with control characters escaped (`\n`, `\u{1b}`, …): error texts and worker ids come
/// from handlers and other programs, and must not drive the operator's terminal.
pub(crate) fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_only_the_password() {
        let table = [
            ("mysql://u:secret@h:3306/db", "mysql://u:***@h:3306/db"),
            ("mysql://u:p@ss@h/db", "mysql://u:***@h/db"),
            ("mysql://u@h/db", "mysql://u@h/db"),
            (
                "mysql://u:pw@db1:3306/app?ssl-ca=/etc/ssl/me@corp.pem",
                "mysql://u:***@db1:3306/app?ssl-ca=/etc/ssl/me@corp.pem",
            ),
            ("mysql://h/db?x=a@b", "mysql://h/db?x=a@b"),
            ("not a url", "not a url"),
        ];
        for (url, shown) in table {
            assert_eq!(redact(url), shown, "{url}");
        }
    }
}
