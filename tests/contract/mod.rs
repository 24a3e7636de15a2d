//! Test helpers for the observability contracts: `openspec/admin.yaml` loaded with the
//! gateway's own YAML reader and checked with `jsonschema`, and a parser for the
//! Prometheus/OpenMetrics text that `/metrics` serves.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use crate::support::Got;
use gateway::config::raw::{Node, Value as Yaml};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

// ---- the OpenAPI contract ------------------------------------------------------------

/// `openspec/admin.yaml` as JSON.
pub struct Contract {
    pub doc: Value,
}

fn to_json(node: &Node) -> Value {
    match &node.value {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => json!(b),
        Yaml::Int(i) => json!(i),
        Yaml::Float(f) => json!(f),
        Yaml::Str(s) => json!(s),
        Yaml::Seq(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Map(entries) => {
            let mut m = Map::new();
            for (k, v) in entries {
                // Response codes such as 200 may be written unquoted.
                let key = match &k.value {
                    Yaml::Str(s) => s.clone(),
                    Yaml::Int(i) => i.to_string(),
                    other => panic!("line {}: unsupported mapping key {other:?}", k.line),
                };
                assert!(
                    m.insert(key.clone(), to_json(v)).is_none(),
                    "line {}: duplicate key {key}",
                    k.line
                );
            }
            Value::Object(m)
        }
    }
}

/// Escapes one JSON-pointer segment.
fn segment(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

impl Contract {
    pub fn load() -> Contract {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openspec/admin.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let tree = gateway::config::raw::parse(&text)
            .unwrap_or_else(|e| panic!("{path}:{}:{}: {}", e.line, e.col, e.message));
        let doc = to_json(&tree);
        assert_eq!(doc["openapi"], "3.1.0");
        Contract { doc }
    }

    /// A validator for the schema at `pointer` (a JSON pointer into the document), with
    /// the whole document as its root so that `$ref`s to components resolve.
    pub fn validator(&self, pointer: &str) -> jsonschema::Validator {
        assert!(
            self.doc.pointer(pointer).is_some(),
            "no schema at {pointer} in openspec/admin.yaml"
        );
        let mut root = self.doc.clone();
        root["$ref"] = json!(format!("#{pointer}"));
        jsonschema::draft202012::new(&root)
            .unwrap_or_else(|e| panic!("schema at {pointer} does not compile: {e}"))
    }

    /// Validates `instance` against `components/schemas/<name>`.
    pub fn check_schema(&self, name: &str, instance: &Value) {
        let pointer = format!("/components/schemas/{}", segment(name));
        let errors: Vec<String> = self
            .validator(&pointer)
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{name} does not validate:\n  {}\n{instance:#}",
            errors.join("\n  ")
        );
    }

    /// Whether `instance` is valid against `components/schemas/<name>`.
    pub fn is_valid(&self, name: &str, instance: &Value) -> bool {
        self.validator(&format!("/components/schemas/{}", segment(name)))
            .is_valid(instance)
    }

    /// Follows a `$ref` to components (responses, headers), returning the pointer of
    /// the object it names.
    fn deref(&self, pointer: String) -> String {
        match self
            .doc
            .pointer(&pointer)
            .and_then(|v| v.get("$ref"))
            .and_then(Value::as_str)
        {
            Some(r) => self.deref(r.trim_start_matches('#').to_string()),
            None => pointer,
        }
    }

    /// Checks a real response against the operation's documented response for its
    /// status: the status is documented, the media type is, every documented header is
    /// present (and valid), and the body validates against the schema. Paths the
    /// document does not list are checked against `components/responses/NotFound`.
    pub fn check(&self, path: &str, method: &str, got: &Got) {
        let op = format!("/paths/{}/{}", segment(path), method.to_ascii_lowercase());
        let response = if self.doc.pointer(&op).is_some() {
            let r = format!("{op}/responses/{}", got.status.as_u16());
            assert!(
                self.doc.pointer(&r).is_some(),
                "{method} {path} answered {} which openspec/admin.yaml does not document: {}",
                got.status,
                got.text()
            );
            self.deref(r)
        } else {
            assert_eq!(got.status, 404, "{method} {path} is not in the contract");
            "/components/responses/NotFound".to_string()
        };
        self.check_at(&response, &format!("{method} {path}"), got);
    }

    /// Checks a real response against `components/responses/<name>`.
    pub fn check_component(&self, name: &str, got: &Got) {
        let pointer = format!("/components/responses/{}", segment(name));
        assert!(self.doc.pointer(&pointer).is_some(), "no {pointer}");
        self.check_at(&pointer, name, got);
    }

    fn check_at(&self, response: &str, what: &str, got: &Got) {
        let spec = self.doc.pointer(response).unwrap();
        if let Some(headers) = spec.get("headers").and_then(Value::as_object) {
            for name in headers.keys() {
                let value = got.header(name).unwrap_or_else(|| {
                    panic!("{what} {}: documented header {name} missing", got.status)
                });
                let h = self.deref(format!("{response}/headers/{}", segment(name)));
                let errors: Vec<String> = self
                    .validator(&format!("{h}/schema"))
                    .iter_errors(&json!(value))
                    .map(|e| e.to_string())
                    .collect();
                assert!(errors.is_empty(), "header {name}: {value}: {errors:?}");
            }
        }
        let content_type = got.header("content-type").unwrap_or("");
        let media = content_type.split(';').next().unwrap_or("").trim();
        let content = spec
            .get("content")
            .and_then(Value::as_object)
            .unwrap_or_else(|| panic!("{response} documents no content"));
        assert!(
            content.contains_key(media),
            "{what}: content-type {content_type} is not documented at {response}"
        );
        let instance = if media.ends_with("json") {
            got.json()
        } else {
            json!(got.text())
        };
        let schema = format!("{response}/content/{}/schema", segment(media));
        let errors: Vec<String> = self
            .validator(&schema)
            .iter_errors(&instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what} {} does not match {schema}:\n  {}\n{instance:#}",
            got.status,
            errors.join("\n  ")
        );
    }

    /// The methods the document lists for `path`, upper-case.
    pub fn methods(&self, path: &str) -> Vec<String> {
        self.doc["paths"][path]
            .as_object()
            .map(|ops| ops.keys().map(|m| m.to_ascii_uppercase()).collect())
            .unwrap_or_default()
    }

    pub fn paths(&self) -> Vec<String> {
        self.doc["paths"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }
}

// ---- the metrics text ----------------------------------------------------------------

/// One sample line.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` body.
#[derive(Debug, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// Family name → type (`counter`, `gauge`, `histogram`, `info`, …).
    pub types: BTreeMap<String, String>,
    pub help: BTreeMap<String, String>,
}

/// Reads a label value up to its closing quote, undoing `\\`, `\"` and `\n`.
fn label_value(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, line: &str) -> String {
    let mut out = String::new();
    loop {
        match chars.next() {
            Some('"') => return out,
            Some('\\') => match chars.next() {
                Some('n') => out.push('\n'),
                Some(c @ ('\\' | '"')) => out.push(c),
                other => panic!("bad escape {other:?} in: {line}"),
            },
            Some(c) => out.push(c),
            None => panic!("unterminated label value in: {line}"),
        }
    }
}

fn parse_sample(line: &str) -> Sample {
    let mut chars = line.chars().peekable();
    let mut name = String::new();
    while let Some(&c) = chars.peek() {
        if c == '{' || c == ' ' {
            break;
        }
        assert!(
            c.is_ascii_alphanumeric() || c == '_' || c == ':',
            "bad metric name in: {line}"
        );
        name.push(c);
        chars.next();
    }
    let mut labels = BTreeMap::new();
    if chars.peek() == Some(&'{') {
        chars.next();
        loop {
            match chars.next() {
                Some('}') => break,
                Some(',') => {}
                Some(c) => {
                    let mut key = String::from(c);
                    key.extend(chars.by_ref().take_while(|&c| c != '='));
                    assert_eq!(chars.next(), Some('"'), "label {key} unquoted in: {line}");
                    let value = label_value(&mut chars, line);
                    assert!(
                        labels.insert(key.clone(), value).is_none(),
                        "label {key} twice in: {line}"
                    );
                }
                None => panic!("unterminated label set in: {line}"),
            }
        }
    }
    let rest: String = chars.collect();
    let raw = rest
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("no value in: {line}"));
    let value = match raw {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value {v} in: {line}")),
    };
    Sample {
        name,
        labels,
        value,
    }
}

impl Scrape {
    /// Parses the text format strictly enough to catch a malformed exposition: every
    /// sample belongs to a family announced by `# TYPE`, and the text ends with `# EOF`.
    pub fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        let mut saw_eof = false;
        for line in text.lines() {
            assert!(!saw_eof, "text after # EOF: {line}");
            if line == "# EOF" {
                saw_eof = true;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    s.types.insert(name.into(), kind.into()).is_none(),
                    "{name} announced twice"
                );
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                s.help.insert(name.into(), help.into());
            } else if line.starts_with("# UNIT ") || line.is_empty() {
            } else if line.starts_with('#') {
                panic!("unknown comment line: {line}");
            } else {
                let sample = parse_sample(line);
                assert!(
                    s.family_of(&sample.name).is_some(),
                    "sample {} has no # TYPE",
                    sample.name
                );
                s.samples.push(sample);
            }
        }
        assert!(saw_eof, "the exposition does not end with # EOF");
        s
    }

    /// The family a sample name belongs to, with its type.
    pub fn family_of(&self, sample: &str) -> Option<(&str, &str)> {
        if let Some((f, t)) = self.types.get_key_value(sample) {
            return Some((f, t));
        }
        for suffix in ["_total", "_bucket", "_sum", "_count", "_info", "_created"] {
            if let Some(base) = sample.strip_suffix(suffix) {
                if let Some((f, t)) = self.types.get_key_value(base) {
                    return Some((f, t));
                }
            }
        }
        None
    }

    /// The value of the sample `name` with exactly these labels; None if absent.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Like `get`, with an absent series read as 0 (a counter not created yet).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// Sum of every sample named `name`.
    pub fn total(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }
}
