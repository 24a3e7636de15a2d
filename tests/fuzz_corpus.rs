#![allow(clippy::unwrap_used)]
//! The fuzz targets' corpora, replayed on stable: every file under `fuzz/corpus/<target>/`
//! (the committed seeds) and `fuzz/artifacts/<target>/` (inputs that once crashed a
//! target, kept as regressions) goes through the same property check the fuzz target runs
//! (`fuzz/src/checks.rs`), so a bug found once stays fixed without nightly or libFuzzer.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

/// The files of one target's corpus and artifacts, skipping dotfiles (libFuzzer's
/// scratch files).
fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if path.is_file() && !hidden {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Replays one target; every failing input is named in the panic message.
fn replay(target: &str) {
    let (_, check) = checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no check named {target}"));
    let files = inputs(target);
    assert!(
        files.len() >= 3,
        "fuzz/corpus/{target} has {} seed files; the corpus is missing",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let data = std::fs::read(file).unwrap();
        if let Err(e) = std::panic::catch_unwind(|| check(&data)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{}: {msg}", file.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{target}: {} of {} inputs fail their check:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn every_target_has_a_corpus_folder_and_a_check() {
    for (name, _) in checks::TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(name);
        assert!(dir.is_dir(), "{} is missing", dir.display());
    }
    let targets = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    let mut on_disk: Vec<String> = std::fs::read_dir(targets)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    on_disk.sort();
    let mut named: Vec<String> = checks::TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    named.sort();
    assert_eq!(on_disk, named, "fuzz targets and checks::TARGETS disagree");
}

#[test]
fn config_corpus_replays_clean() {
    replay("config");
}

#[test]
fn sniff_corpus_replays_clean() {
    replay("sniff");
}

#[test]
fn path_corpus_replays_clean() {
    replay("path");
}

#[test]
fn router_corpus_replays_clean() {
    replay("router");
}

#[test]
fn x509_corpus_replays_clean() {
    replay("x509");
}

#[test]
fn h2guard_corpus_replays_clean() {
    replay("h2guard");
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_h2guard_seeds_reach_both_rules_and_the_goaway_rule() {
    // Without these, the h2guard check would only ever compare "no trip" with "no trip".
    let outcome = |name| checks::h2guard_outcome(&seed("h2guard", name));
    assert_eq!(outcome("rapid-reset"), (Some("rapid_reset"), true));
    assert_eq!(
        outcome("control-flood"),
        (Some("control_frame_flood"), true)
    );
    // Tripped while the gateway was half-way through a frame: no GOAWAY then.
    assert_eq!(
        outcome("trip-mid-frame"),
        (Some("control_frame_flood"), false)
    );
    for name in ["session", "pings-with-traffic", "http1", "bad-preface"] {
        assert_eq!(outcome(name), (None, false), "{name}");
    }
}

#[test]
fn the_sniff_pipeline_seeds_expect_the_refusals_they_were_written_for() {
    let want = |name| checks::build_pipeline(&seed("sniff", name)[1..]).1;
    assert_eq!(want("pipeline-mixed"), 0);
    assert_eq!(want("pipeline-smuggle"), 2);
    assert_eq!(want("pipeline-fragment"), 2);
    assert_eq!(want("pipeline-h2"), 0);
    assert_eq!(want("pipeline-upgrade"), 0);
}
