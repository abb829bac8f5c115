//! Every `jobq` command line README shows (in shell blocks and inline code) names flags the
//! command has: each is looked up in the help of the command it is given to.

use std::collections::BTreeMap;
use std::process::Command;

const README: &str = include_str!("../../../README.md");

/// The `jobq …` command lines of README: lines of shell blocks (after any `VAR=value` words)
/// and inline code spans that start with `jobq `.
fn command_lines() -> Vec<String> {
    let mut out = Vec::new();
    let mut in_shell = false;
    for line in README.lines() {
        if line.starts_with("```") {
            in_shell = matches!(line, "```sh" | "```bash" | "```console");
            continue;
        }
        if in_shell {
            let words: Vec<&str> = line
                .split_whitespace()
                .skip_while(|w| w.contains('=') && !w.starts_with('-'))
                .collect();
            if words.first() == Some(&"jobq") {
                out.push(words.join(" "));
            }
        } else {
            for span in line.split('`').skip(1).step_by(2) {
                if span.starts_with("jobq ") {
                    out.push(span.to_owned());
                }
            }
        }
    }
    out
}

#[test]
fn every_documented_flag_exists() {
    let lines = command_lines();
    assert!(
        lines.len() > 20,
        "found only {} jobq command lines",
        lines.len()
    );
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    let mut checked = 0;
    for line in &lines {
        // Up to a comment, a pipe or `--` (what follows `--` is another program's).
        let line = line.split(" #").next().unwrap();
        let line = line.split(" |").next().unwrap();
        let words: Vec<&str> = line
            .split_whitespace()
            .skip(1)
            .take_while(|w| *w != "--")
            .collect();
        // The command path: the words before the first flag that are not placeholders.
        let path: Vec<&str> = words
            .iter()
            .take_while(|w| !w.starts_with('-') && !w.starts_with('['))
            .copied()
            .filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
            .collect();
        let flags: Vec<&str> = words
            .iter()
            .map(|w| w.trim_start_matches('['))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| {
                w.split(['=', ']', ','])
                    .next()
                    .unwrap()
                    .trim_end_matches(['.', ':', ')'])
            })
            .collect();
        if flags.is_empty() {
            continue;
        }
        let key = path.join(" ");
        let help = helps.entry(key.clone()).or_insert_with(|| {
            // Subcommands: as many of the path's words as name one (the rest are arguments).
            let mut best = String::new();
            for n in (0..=path.len()).rev() {
                let out = Command::new(env!("CARGO_BIN_EXE_jobq"))
                    .args(&path[..n])
                    .arg("--help")
                    .output()
                    .unwrap();
                if out.status.success() {
                    best = String::from_utf8_lossy(&out.stdout).into_owned();
                    break;
                }
            }
            best
        });
        for flag in flags {
            checked += 1;
            assert!(
                help.contains(&format!("{flag} "))
                    || help.contains(&format!("{flag}\n"))
                    || help.contains(&format!("{flag} <"))
                    || help.contains(&format!("{flag}=")),
                "README shows `{line}`, but `jobq {key} --help` has no {flag}"
            );
        }
    }
    assert!(checked > 20, "only {checked} flags checked");
}
