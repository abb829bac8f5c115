//! The workspace as users meet it, read from cargo itself:
//! - `rust-version` tells the truth: no crate of the build (Linux, normal and build dependencies
//!   of the workspace, and their dev-dependencies) declares a newer Rust than the workspace
//!   does (Clippy's `incompatible_msrv` lint checks jobq's own use of the standard library);
//! - an application that embeds the worker compiles no command-line, console or exporter
//!   crates: `jobq-worker` without its default features pulls in none of clap, axum, askama,
//!   the Prometheus exporter or tracing-subscriber (the `jobq` binary is a package of its own).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// `cargo ARGS` on this workspace; its stdout.
fn cargo(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO"))
        .args(args)
        .args([
            "--manifest-path",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn version(v: &str) -> (u32, u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap());
    (
        parts.next().unwrap(),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

#[test]
fn rust_version_covers_every_dependency() {
    let out = cargo(&[
        "metadata",
        "--format-version",
        "1",
        "--filter-platform",
        "x86_64-unknown-linux-gnu",
    ]);
    let meta: serde_json::Value = serde_json::from_str(&out).unwrap();
    let packages: BTreeMap<&str, &serde_json::Value> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let declared: BTreeSet<&str> = members
        .iter()
        .map(|m| {
            packages[m]["rust_version"]
                .as_str()
                .expect("every crate sets rust-version")
        })
        .collect();
    assert_eq!(
        declared.len(),
        1,
        "the crates declare different rust-versions: {declared:?}"
    );
    let declared = *declared.first().unwrap();
    // Walk the resolved graph from the members: their dev-dependencies count, dependencies'
    // dev-dependencies do not.
    let nodes: BTreeMap<&str, &serde_json::Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let mut seen = BTreeSet::new();
    let mut todo: Vec<&str> = members.iter().copied().collect();
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let counts = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null() || k["kind"] == "build" || members.contains(id));
            if counts {
                todo.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    let newer: Vec<String> = seen
        .iter()
        .filter_map(|id| {
            let p = packages[id];
            let needs = p["rust_version"].as_str()?;
            (version(needs) > version(declared))
                .then(|| format!("{} {} needs {needs}", p["name"], p["version"]))
        })
        .collect();
    assert!(
        newer.is_empty(),
        "rust-version is {declared}, but: {}",
        newer.join("; ")
    );
}

#[test]
fn the_embedded_worker_compiles_no_cli_console_or_exporter() {
    let tree = cargo(&[
        "tree",
        "-p",
        "jobq-worker",
        "--no-default-features",
        "-e",
        "normal",
        "--prefix",
        "none",
    ]);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"sqlx"), "not a dependency tree:\n{tree}");
    for banned in [
        "clap",
        "axum",
        "askama",
        "metrics-exporter-prometheus",
        "tracing-subscriber",
        "anyhow",
    ] {
        assert!(
            !crates.contains(&banned),
            "jobq-worker without default features depends on {banned}:\n{tree}"
        );
    }
    // With its default features the console comes back.
    let full = cargo(&[
        "tree",
        "-p",
        "jobq-worker",
        "-e",
        "normal",
        "--prefix",
        "none",
    ]);
    assert!(full.lines().any(|l| l.starts_with("axum ")), "{full}");
}
