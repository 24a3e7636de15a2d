//! Build provenance, the bottom layer: what `gateway version`, `--version`, `/status` and
//! `gateway_build_info` report. Values are fixed at compile time by `build.rs`.

/// The Cargo package version, e.g. `0.5.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The short commit hash the binary was built from; `unknown` when built outside git
/// without `GATEWAY_BUILD_COMMIT` set.
pub const COMMIT: &str = env!("GATEWAY_COMMIT");

/// The target triple, e.g. `x86_64-unknown-linux-gnu`.
pub const TARGET: &str = env!("GATEWAY_TARGET");

/// What follows the program name on `gateway version` and `gateway --version`:
/// `0.5.0 (commit 1a2b3c4d5e6f, x86_64-unknown-linux-gnu)`.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("GATEWAY_COMMIT"),
    ", ",
    env!("GATEWAY_TARGET"),
    ")"
);

/// `gateway version --json`: `{"version": …, "commit": …, "target": …}`.
pub fn json() -> serde_json::Value {
    serde_json::json!({
        "version": VERSION,
        "commit": COMMIT,
        "target": TARGET,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_line_is_made_of_the_three_fields() {
        assert_eq!(LONG, format!("{VERSION} (commit {COMMIT}, {TARGET})"));
        assert!(!COMMIT.is_empty() && !COMMIT.contains(char::is_whitespace));
        assert_eq!(json()["target"], TARGET);
    }
}
