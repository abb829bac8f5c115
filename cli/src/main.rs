//! `jobq`: migrate, enqueue, work, inspect, queues, demo, bench, lock, web. `cli.rs` parses
//! the command line and dispatches; each command lives in a file of its own (`enqueue.rs`,
//! `work.rs`, `show.rs`, `demo.rs`, `bench/`, …) and shares helpers through `common.rs`, never
//! through `cli.rs`; the operator endpoint is `http.rs`. This file only maps the outcome to an
//! exit code: 0 success, 1 failure at run time, 2 bad usage or config.

#[macro_use]
mod out;

mod acts;
mod admin;
mod bench;
mod cli;
mod common;
mod demo;
mod enqueue;
mod http;
mod lock;
mod queues;
mod schedules;
mod show;
mod table;
mod throwaway;
mod work;
mod workflows;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("jobq: error: {}", chain(&e));
            if is_usage(&e) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A command line the command refuses before doing anything (exit status 2, like clap's own
/// usage errors): `bail!(Usage("--count must be at least 1".into()))`.
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Whether `e` is bad usage (exit 2): a refused flag or argument, invalid configuration, or a
/// job the producer's validation refused before connecting (name, payload, size).
fn is_usage(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<Usage>()
            || c.is::<jobq_config::ConfigError>()
            || match c.downcast_ref::<jobq_worker::ProducerError>() {
                Some(
                    jobq_worker::ProducerError::InvalidJson(_)
                    | jobq_worker::ProducerError::PayloadTooLarge { .. },
                ) => true,
                // "no host answered" is about the servers, not the command line.
                Some(jobq_worker::ProducerError::Invalid { field, .. }) => *field != "database_url",
                _ => false,
            }
    })
}

/// `error: cause: cause`, leaving out a cause whose text the previous message already contains
/// (some of sqlx's errors repeat their source in their own message).
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut last = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if last.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        last = text;
    }
    out
}
