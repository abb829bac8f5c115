//! `jobq`: migrate, enqueue, work, inspect, queues, demo, bench, lock, web. The commands live in `cli.rs` (and
//! `demo.rs`, `bench/`, `lock.rs`, `queues.rs`, with the operator endpoint in `http.rs`); this file only maps the
//! outcome to an exit code: 0 success, 1 failure at run time, 2 bad usage or config.

#[macro_use]
mod out;

mod acts;
mod admin;
mod bench;
mod cli;
mod demo;
mod http;
mod lock;
mod queues;
mod schedules;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("jobq: error: {}", chain(&e));
            if e.downcast_ref::<jobq_config::ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
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
