//! The fast integration tests, against a real MySQL/MariaDB (DATABASE_URL, default from
//! .cargo/config.toml): `cargo test --test it` runs in seconds. The slow ones (crashes, a
//! database restart, contention, Prometheus) are in `tests/slow/`. Every test gets its own
//! database from `#[sqlx::test]`, so they run in parallel.

#[path = "../support/common.rs"]
mod common;
#[path = "../support/http.rs"]
mod http;
#[path = "../support/procs.rs"]
mod procs;

mod acts;
mod admin;
mod cli;
mod commands;
mod core;
mod edges;
mod enqueue;
mod foreign;
mod journal;
mod manners;
mod migrations;
mod outcomes;
mod prefetch;
mod readme;
mod results;
mod schedules;
mod trace;
mod unique;
mod web;
mod workflows;
mod workspace;
