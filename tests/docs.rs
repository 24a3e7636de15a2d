#![allow(clippy::unwrap_used)]
//! The documentation against the binary: `docs/configuration.md` lists exactly the keys
//! the validator accepts (taken from the validator's own table), each default is the
//! default, each duration's `0s` is what the validator does with it, and its complete
//! example is valid and uses every key. The README and docs link only to files in the
//! repository, to headings that exist.

mod support;

use gateway::config::raw::{self, Node, Value};
use gateway::config::validate::{accepted_keys, parse_duration, parse_size};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use support::TestCa;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn reference() -> String {
    std::fs::read_to_string(root().join("docs/configuration.md")).unwrap()
}

/// One row of the reference's key tables.
#[derive(Debug, Clone)]
struct Row {
    key: String,
    kind: String,
    default: String,
    zero: String,
}

/// Every table row whose first cell is a backticked key path.
fn rows(md: &str) -> Vec<Row> {
    md.lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            if cells.len() != 5 {
                return None;
            }
            Some(Row {
                key: cells[0].trim_matches('`').to_string(),
                kind: cells[1].to_string(),
                default: cells[2].to_string(),
                zero: cells[3].to_string(),
            })
        })
        .collect()
}

#[test]
fn the_reference_lists_exactly_the_keys_the_validator_accepts() {
    let documented: Vec<String> = rows(&reference()).into_iter().map(|r| r.key).collect();
    let unique: BTreeSet<String> = documented.iter().cloned().collect();
    assert_eq!(unique.len(), documented.len(), "a key is listed twice");
    let accepted: BTreeSet<String> = accepted_keys().into_iter().collect();
    assert!(accepted.len() > 60, "the validator's table looks empty");
    let missing: Vec<_> = accepted.difference(&unique).collect();
    let extra: Vec<_> = unique.difference(&accepted).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/configuration.md and the validator disagree.\n  accepted but not documented: {missing:?}\n  documented but not accepted: {extra:?}"
    );
}

#[test]
fn every_row_says_its_type_and_default_and_every_duration_what_0s_means() {
    for r in rows(&reference()) {
        assert!(!r.kind.is_empty() && !r.default.is_empty(), "{r:?}");
        if r.kind == "duration" {
            assert!(
                r.zero != "—" && !r.zero.is_empty(),
                "{}: what does 0s mean?",
                r.key
            );
        } else {
            assert_eq!(r.zero, "—", "{}: only durations have a 0s column", r.key);
        }
    }
}

/// The complete example, written to a folder with the files it names.
struct Example {
    dir: tempfile::TempDir,
    text: String,
}

impl Example {
    fn new() -> Example {
        let md = reference();
        let from = md
            .find("## A complete example")
            .expect("the example's heading");
        let start = md[from..].find("```yaml\n").unwrap() + from + "```yaml\n".len();
        let end = md[start..].find("```").unwrap() + start;
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        let ca = TestCa::new();
        ca.leaf(&certs, "example.com", &["example.com", "*.example.com"]);
        ca.leaf(&certs, "client", &["gateway.internal"]);
        std::fs::write(certs.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("admin.token"), "s3cret\n").unwrap();
        Example {
            dir,
            text: md[start..end].to_string(),
        }
    }

    fn load(&self, text: &str) -> Result<gateway::config::Loaded, gateway::config::Invalid> {
        let path = self.dir.path().join("gateway.yaml");
        std::fs::write(&path, text).unwrap();
        gateway::config::load(&path)
    }
}

/// Every key path in a tree, generic (`listeners[].name`), with the key's node.
fn key_paths<'n>(node: &'n Node, path: &str, out: &mut Vec<(String, &'n Node, &'n Node)>) {
    match &node.value {
        Value::Map(entries) => {
            for (k, v) in entries {
                let Value::Str(key) = &k.value else { continue };
                let p = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                out.push((p.clone(), k, v));
                key_paths(v, &p, out);
            }
        }
        Value::Seq(items) => {
            for item in items {
                key_paths(item, &format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_complete_example_is_valid_and_uses_every_key() {
    let ex = Example::new();
    let loaded = ex.load(&ex.text).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let tree = raw::parse(&ex.text).unwrap();
    let mut found = Vec::new();
    key_paths(&tree, "", &mut found);
    let used: BTreeSet<String> = found.into_iter().map(|(p, _, _)| p).collect();
    let accepted: BTreeSet<String> = accepted_keys().into_iter().collect();
    let unused: Vec<_> = accepted.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "the complete example leaves out: {unused:?}"
    );
}

/// `text` with line `line` (1-based) changed by `edit`.
fn edit_line(text: &str, line: usize, edit: impl FnOnce(&str) -> Option<String>) -> String {
    let mut edit = Some(edit);
    let mut out = String::new();
    for (i, l) in text.lines().enumerate() {
        if i + 1 == line {
            if let Some(new) = edit.take().and_then(|f| f(l)) {
                out.push_str(&new);
                out.push('\n');
            }
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// The first place `key` (generic) is given in the example: (key node, value node).
fn find<'n>(tree: &'n Node, key: &str) -> (&'n Node, &'n Node) {
    let mut all = Vec::new();
    key_paths(tree, "", &mut all);
    all.into_iter()
        .find(|(p, _, _)| p == key)
        .map(|(_, k, v)| (k, v))
        .unwrap_or_else(|| panic!("the example does not give {key}"))
}

#[test]
fn every_durations_0s_does_what_the_reference_says() {
    let ex = Example::new();
    let tree = raw::parse(&ex.text).unwrap();
    let mut checked = 0;
    for r in rows(&reference())
        .into_iter()
        .filter(|r| r.kind == "duration")
    {
        let (_, value) = find(&tree, &r.key);
        let text = edit_line(&ex.text, value.line, |l| {
            let at = value.col - 1;
            let len = l[at..]
                .find(|c: char| c.is_whitespace() || c == ',' || c == '}')
                .unwrap_or(l.len() - at);
            Some(format!("{}0s{}", &l[..at], &l[at + len..]))
        });
        let result = ex.load(&text);
        let generic = |p: &str| {
            let mut out = String::new();
            let mut skip = false;
            for c in p.chars() {
                match c {
                    '[' => {
                        skip = true;
                        out.push('[');
                    }
                    ']' => {
                        skip = false;
                        out.push(']');
                    }
                    _ if skip => {}
                    _ => out.push(c),
                }
            }
            out
        };
        match (r.zero.as_str(), result) {
            (zero, Ok(l)) if zero.ends_with("(deprecated)") => assert!(
                l.warnings
                    .iter()
                    .any(|w| generic(&w.path) == r.key && w.message.contains("deprecated")),
                "{}: 0s is documented as deprecated but gets no warning",
                r.key
            ),
            ("error", Ok(_)) => panic!("{}: 0s is documented as an error but accepted", r.key),
            ("error", Err(e)) => assert!(
                e.errors.iter().any(|p| generic(&p.path) == r.key),
                "{}: 0s refused, but not at its key path: {e}",
                r.key
            ),
            (meaning, Err(e)) => {
                panic!(
                    "{}: 0s is documented as `{meaning}` but refused: {e}",
                    r.key
                )
            }
            (_, Ok(_)) => {}
        }
        checked += 1;
    }
    assert!(checked >= 20, "checked only {checked} durations");
}

/// The value at `key` (generic) in the `/config` document: the first list item that has it.
fn lookup<'v>(doc: &'v serde_json::Value, key: &str) -> Option<&'v serde_json::Value> {
    let (head, rest) = match key.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (key, None),
    };
    let (name, list) = match head.strip_suffix("[]") {
        Some(n) => (n, true),
        None => (head, false),
    };
    let v = doc.get(name)?;
    match (list, rest) {
        (false, None) => Some(v),
        (false, Some(r)) => lookup(v, r),
        (true, None) => Some(v),
        (true, Some(r)) => v.as_array()?.iter().find_map(|item| lookup(item, r)),
    }
}

/// Whether a documented default (YAML) and a `/config` value are the same setting.
fn same(documented: &Node, actual: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (&documented.value, actual) {
        (Value::Str(d), J::String(a)) => {
            d == a || parse_duration(d).is_some_and(|d| parse_duration(a) == Some(d))
        }
        (Value::Str(d), J::Number(a)) => parse_size(d).is_some_and(|d| a.as_u64() == Some(d)),
        (Value::Int(d), J::Number(a)) => a.as_f64() == Some(*d as f64),
        (Value::Float(d), J::Number(a)) => a.as_f64() == Some(*d),
        (Value::Bool(d), J::Bool(a)) => d == a,
        (Value::Seq(d), J::Array(a)) => {
            d.len() == a.len() && d.iter().zip(a).all(|(d, a)| same(d, a))
        }
        _ => false,
    }
}

#[test]
fn every_documented_default_is_the_default() {
    // The mode of a cluster whose security names a CA bundle and a client certificate
    // cannot be left out without making the example invalid.
    const CANNOT_BE_LEFT_OUT: &[&str] = &["clusters[].security.mode"];
    let ex = Example::new();
    let tree = raw::parse(&ex.text).unwrap();
    let mut checked = BTreeMap::new();
    for r in rows(&reference()) {
        let Some(literal) = r
            .default
            .strip_prefix('`')
            .and_then(|d| d.split_once('`'))
            .map(|(d, _)| d)
        else {
            continue; // required, absent, "see below", "the cluster's", …
        };
        if r.kind.starts_with("mapping") || r.kind.starts_with("list of mappings") {
            continue;
        }
        if CANNOT_BE_LEFT_OUT.contains(&r.key.as_str()) {
            continue;
        }
        let documented = raw::parse(literal).unwrap();
        let (key_node, _) = find(&tree, &r.key);
        let text = edit_line(&ex.text, key_node.line, |_| None);
        let loaded = ex
            .load(&text)
            .unwrap_or_else(|e| panic!("{}: the example without it is invalid: {e}", r.key));
        let doc = gateway::admin::config_document(&loaded.config);
        let actual = lookup(&doc, &r.key)
            .unwrap_or_else(|| panic!("{}: not in the /config document", r.key));
        assert!(
            same(&documented, actual),
            "{}: documented default `{literal}`, actual {actual}",
            r.key
        );
        checked.insert(r.key, literal.to_string());
    }
    assert!(
        checked.len() >= 35,
        "checked only {}: {checked:#?}",
        checked.len()
    );
}

// ---- links -------------------------------------------------------------------------------

fn markdown_files() -> Vec<PathBuf> {
    let mut out = vec![root().join("README.md")];
    let mut dirs = vec![root().join("docs")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    out
}

/// GitHub's anchor for a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(md: &str) -> BTreeSet<String> {
    md.lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

/// `(target, line)` of every inline markdown link.
fn links(md: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (i, line) in md.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((after[..end].to_string(), i + 1));
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn the_readme_and_docs_link_only_to_files_and_headings_in_the_repository() {
    let repo = root().canonicalize().unwrap();
    let mut problems = Vec::new();
    let mut seen = 0;
    for file in markdown_files() {
        let md = std::fs::read_to_string(&file).unwrap();
        let shown = file
            .strip_prefix(&repo)
            .unwrap_or(&file)
            .display()
            .to_string();
        if md.contains("shared/spec") {
            problems.push(format!(
                "{shown} points at shared/spec, which a clone does not have"
            ));
        }
        for (target, line) in links(&md) {
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            seen += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            let Ok(real) = resolved.canonicalize() else {
                problems.push(format!("{shown}:{line}: {target} does not exist"));
                continue;
            };
            if !real.starts_with(&repo) {
                problems.push(format!(
                    "{shown}:{line}: {target} is outside the repository"
                ));
                continue;
            }
            if let Some(anchor) = anchor {
                if real.extension().is_some_and(|x| x == "md") {
                    let text = std::fs::read_to_string(&real).unwrap();
                    if !anchors(&text).contains(anchor) {
                        problems.push(format!("{shown}:{line}: no heading #{anchor} in {path}"));
                    }
                }
            }
        }
    }
    assert!(seen > 20, "read only {seen} links");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_reference_is_what_the_readme_points_at() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.contains("(docs/configuration.md)"),
        "the README must link the configuration reference"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_latency_is_measured_where_the_docs_say_and_only_there() {
    let overview = std::fs::read_to_string(root().join("docs/observability/overview.md")).unwrap();
    let row = overview
        .lines()
        .find(|l| l.starts_with("| `latencyMs` |"))
        .expect("the latencyMs row");
    assert!(row.contains("`passiveHealth.latency`"), "{row}");

    let up = support::Upstream::start("up").await;
    let gw = support::Gateway::start(&format!(
        r#"admin: {{ address: 127.0.0.1:0 }}
listeners: [{{ name: public, address: 127.0.0.1:0 }}]
routes:
  - {{ name: measured, match: {{ pathPrefix: /m }}, cluster: measured }}
  - {{ name: plain, cluster: plain }}
clusters:
  - name: measured
    endpoints: [{{ address: "{a}" }}]
    passiveHealth: {{ latency: {{ threshold: 1s }} }}
  - name: plain
    endpoints: [{{ address: "{a}" }}]
    passiveHealth: {{ consecutiveFailures: 3 }}
"#,
        a = up.addr
    ))
    .await;
    for path in ["/m", "/m", "/p", "/p"] {
        assert_eq!(support::get(gw.addr, "x", path).await.status, 200);
    }
    let status = support::get(gw.admin(), "admin", "/status").await.json();
    let latency = |cluster: &str| {
        status["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == cluster)
            .unwrap()["endpoints"][0]["latencyMs"]
            .clone()
    };
    assert!(latency("measured").is_number(), "{status:#}");
    assert!(latency("plain").is_null(), "{status:#}");
}
