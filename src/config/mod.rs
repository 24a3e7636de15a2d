//! Configuration: file → positioned tree (`raw`) → checked model (`validate`, `model`).
//!
//! Nothing downstream of `load` sees an unchecked value; a bad file yields every error
//! with its key path and position, and the running configuration is never touched.

pub mod model;
pub mod raw;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::Config;

/// One problem found in a configuration file (an error, or a warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based; 0 when the format gives no position.
    pub line: usize,
    pub col: usize,
    /// Key path such as `clusters[1].endpoints[0].weight`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.col)?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A configuration that passed validation, with the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Problem>,
    /// FNV-1a hash of the file's bytes, shown in `/status`.
    pub hash: u64,
}

/// Every error found in a file that did not validate.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render(.errors))]
pub struct Invalid {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

fn render(errors: &[Problem]) -> String {
    let mut out = format!(
        "configuration is invalid ({} error{}):",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for e in errors {
        out.push_str("\n  ");
        out.push_str(&e.to_string());
    }
    out
}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Loaded, Invalid> {
    let whole = |message: String| Invalid {
        errors: vec![Problem {
            file: path.to_path_buf(),
            line: 0,
            col: 0,
            path: String::new(),
            message,
        }],
        warnings: Vec::new(),
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| whole(format!("cannot read configuration file: {e}")))?;
    load_str(path, &text)
}

/// Parses and validates configuration text; `path` names the file in errors and anchors
/// relative paths. `${VAR}` in values comes from the process environment.
pub fn load_str(path: &Path, text: &str) -> Result<Loaded, Invalid> {
    load_str_with_env(path, text, &|name| std::env::var(name).ok())
}

/// As [`load_str`], with environment variables looked up through `env`.
pub fn load_str_with_env(path: &Path, text: &str, env: raw::Lookup<'_>) -> Result<Loaded, Invalid> {
    let syntax = |line: usize, col: usize, message: String| Invalid {
        errors: vec![Problem {
            file: path.to_path_buf(),
            line,
            col,
            path: String::new(),
            message,
        }],
        warnings: Vec::new(),
    };
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if is_json {
        // The tree comes from the YAML parser (JSON is YAML flow syntax), but strict JSON
        // syntax errors get serde_json's clearer message and position.
        if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
            // The position is the problem's own; serde_json's text repeats it. serde_json
            // says column 0 at an end of input right after a line end; columns are 1-based
            // everywhere else.
            let full = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = full.strip_suffix(&suffix).unwrap_or(&full);
            let col = e.column().max(1);
            return Err(syntax(e.line(), col, format!("invalid JSON: {message}")));
        }
    }
    let tree = raw::parse_with_env(text, Some(env))
        .map_err(|e| syntax(e.line, e.col, format!("invalid YAML: {}", e.message)))?;
    let (config, mut errors, mut warnings) = validate::validate(path, &tree);
    // In file order, as an editor goes through them (problems about the whole file first).
    errors.sort_by_key(|p| (p.line, p.col));
    warnings.sort_by_key(|p| (p.line, p.col));
    match config {
        Some(config) if errors.is_empty() => Ok(Loaded {
            config,
            warnings,
            hash: crate::certs::fnv1a(text.as_bytes()),
        }),
        _ => Err(Invalid { errors, warnings }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_file_that_ends_too_early_gets_a_1_based_column() {
        // Found by the `config` fuzz target: serde_json reports column 0 there.
        for text in ["", "{\"version\": 1,\n", "[\n"] {
            let Err(e) = load_str(Path::new("gateway.json"), text) else {
                panic!("{text:?} loaded");
            };
            let p = &e.errors[0];
            assert!(p.line >= 1 && p.col >= 1, "{text:?}: {p:?}");
        }
    }
}
