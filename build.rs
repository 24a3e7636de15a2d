//! Build provenance for `src/version.rs`: the commit and the target, as `rustc` env vars.
//!
//! - `GATEWAY_COMMIT`: `$GATEWAY_BUILD_COMMIT` if set (builds from a source tarball,
//!   where there is no `.git`), else `git rev-parse --short=12 HEAD`, else `unknown`.
//!   A failing or missing git never fails the build.
//! - `GATEWAY_TARGET`: the target triple cargo builds for.
//!
//! Cargo reruns this script only when `HEAD` or the ref it points to moves (or the
//! override changes), so an ordinary edit-compile cycle does not rebuild the crate.

use std::path::{Path, PathBuf};
use std::process::Command;

const OVERRIDE: &str = "GATEWAY_BUILD_COMMIT";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed={OVERRIDE}");

    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=GATEWAY_TARGET={target}");

    let commit = match std::env::var(OVERRIDE) {
        Ok(c) if !c.trim().is_empty() => sanitize(c.trim()),
        _ => from_git().unwrap_or_else(|| "unknown".into()),
    };
    println!("cargo:rustc-env=GATEWAY_COMMIT={commit}");
}

/// Keeps an override printable and short: it ends up in a metric label, in JSON and on
/// the `--version` line, so no spaces, quotes or control characters.
fn sanitize(s: &str) -> String {
    let s: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(40)
        .collect();
    if s.is_empty() {
        "unknown".into()
    } else {
        s
    }
}

fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn from_git() -> Option<String> {
    // Only this package's own checkout counts: a source tarball unpacked inside some
    // other repository must not report that repository's commit.
    let top = PathBuf::from(git(&["rev-parse", "--show-toplevel"])?);
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    if top.canonicalize().ok()? != manifest.canonicalize().ok()? {
        return None;
    }
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    watch_head();
    Some(commit)
}

/// Declares the files whose change means `HEAD` moved. Only existing paths are given:
/// cargo reruns a build script on every build when a declared path is missing.
fn watch_head() {
    let abs = |p: String| -> Option<PathBuf> {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            return Some(p);
        }
        let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
        Some(Path::new(&dir).join(p))
    };
    let Some(git_dir) = git(&["rev-parse", "--git-dir"]).and_then(abs) else {
        return;
    };
    watch(&git_dir.join("HEAD"));
    // A worktree keeps HEAD in its own git dir, and refs in the common one.
    let common = git(&["rev-parse", "--git-common-dir"])
        .and_then(abs)
        .unwrap_or_else(|| git_dir.clone());
    watch(&common.join("packed-refs"));
    if let Some(refname) = git(&["symbolic-ref", "-q", "HEAD"]) {
        // On a branch: the loose ref, or (if it is only packed so far) the directory
        // in which the next commit creates it.
        let loose = common.join(&refname);
        if loose.exists() {
            watch(&loose);
        } else if let Some(parent) = loose.ancestors().skip(1).find(|p| p.is_dir()) {
            watch(parent);
        }
    }
}

fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
