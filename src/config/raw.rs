//! Config, step 1 of 3: the file as a tree of positioned nodes (YAML or JSON), before any meaning.
//!
//! We walk parser events ourselves rather than deserialize with serde so that the next step
//! can report *every* error in the file with its key path and line, not just the first.
//!
//! `${VAR}` and `${VAR:-default}` in values are replaced here, as the file is read and before
//! any value is interpreted, by the environment's values. Only values are substituted, never
//! keys or structure, so a variable's value cannot add keys or break the file's syntax
//! whatever it holds. A variable that is not set (and has no default) is kept on its node
//! for the validator to report at the node's key path.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::HashMap;

/// A value from the file with the position (1-based line and column) where it starts.
#[derive(Debug, Clone)]
pub struct Node {
    pub value: Value,
    pub line: usize,
    pub col: usize,
    /// What environment substitution did to this scalar, if it had any `${…}`.
    pub env: Option<Box<Env>>,
}

/// Environment substitution in one scalar.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    /// The whole scalar was one `${…}`: its value, which the validator may read as a
    /// number or boolean even when the scalar was quoted (JSON has no other way to write
    /// `"weight": "${W}"`), or as a string even when it was not.
    pub whole: Option<String>,
    /// Why substitution failed (a variable not set without a default, a malformed `${`);
    /// the value then holds what could be substituted.
    pub errors: Vec<String>,
}

impl Node {
    fn new(value: Value, line: usize, col: usize) -> Node {
        Node {
            value,
            line,
            col,
            env: None,
        }
    }
}

/// The shapes a configuration value can take.
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order; duplicates are kept so the validator can report them.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// A short name of the type, for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A syntax error: the file could not be read as YAML/JSON at all.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub message: String,
    pub line: usize,
    pub col: usize,
}

/// Parses YAML (JSON is read through the same parser, as a YAML flow document) into a tree,
/// without environment substitution. An empty document yields `Value::Null`.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    parse_with_env(text, None)
}

/// Looks an environment variable up: `Some` when it is set (and valid UTF-8).
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// As [`parse`], with `${VAR}` and `${VAR:-default}` in values replaced through `env`.
pub fn parse_with_env(text: &str, env: Option<Lookup<'_>>) -> Result<Node, SyntaxError> {
    let mut builder = Builder {
        env,
        end: text_end(text),
        ..Builder::default()
    };
    let mut parser = Parser::new_from_str(text);
    let mut documents = 0usize;
    for item in &mut parser {
        let (event, span) = item.map_err(|e| {
            let (line, col) = within(builder.end, e.marker().line(), e.marker().col() + 1);
            SyntaxError {
                message: e.info().to_string(),
                line,
                col,
            }
        })?;
        if let Event::DocumentStart(_) = event {
            documents += 1;
            if documents > 1 {
                return Err(SyntaxError {
                    message: "only one YAML document is allowed per file".into(),
                    line: span.start.line(),
                    col: span.start.col() + 1,
                });
            }
        }
        builder.event(event, span)?;
    }
    Ok(builder.root.unwrap_or_else(|| Node::new(Value::Null, 1, 1)))
}

/// Where a text ends, as (last line, column just after its last character). Lines are
/// counted as YAML counts them: `\n`, `\r\n` and a lone `\r` each end one.
fn text_end(text: &str) -> (usize, usize) {
    let bytes = text.as_bytes();
    let (mut lines, mut last, mut i) = (1, 0, 0);
    while i < bytes.len() {
        let line_break = match (bytes[i], bytes.get(i + 1)) {
            (b'\r', Some(b'\n')) => 2,
            (b'\r' | b'\n', _) => 1,
            _ => 0,
        };
        if line_break == 0 {
            i += 1;
            continue;
        }
        i += line_break;
        lines += 1;
        last = i;
    }
    (lines, text[last..].chars().count() + 1)
}

/// The parser puts the end of a text without a final line break on the line after the
/// last one; a position there (an error, or the empty value of `key:` at the very end)
/// points at the end of the last line instead.
fn within(end: (usize, usize), line: usize, col: usize) -> (usize, usize) {
    if line <= end.0 {
        (line, col)
    } else {
        end
    }
}

enum Open {
    Seq(Node, usize),
    Map(Node, Option<Node>, usize),
}

#[derive(Default)]
struct Builder<'e> {
    stack: Vec<Open>,
    root: Option<Node>,
    anchors: HashMap<usize, Node>,
    env: Option<Lookup<'e>>,
    /// See [`within`].
    end: (usize, usize),
}

impl Builder<'_> {
    /// Whether the next scalar is a mapping key (keys are never substituted).
    fn next_is_key(&self) -> bool {
        matches!(self.stack.last(), Some(Open::Map(_, None, _)))
    }

    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), SyntaxError> {
        let (line, col) = within(self.end, span.start.line(), span.start.col() + 1);
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let quoted = tag.is_some() || style != ScalarStyle::Plain;
                let substituted = match self.env {
                    Some(env) if !self.next_is_key() && text.contains('$') => {
                        Some(substitute(&text, env))
                    }
                    _ => None,
                };
                let node = match substituted {
                    None => {
                        let value = if quoted {
                            Value::Str(text.into_owned())
                        } else {
                            plain_scalar(&text)
                        };
                        Node::new(value, line, col)
                    }
                    Some((expanded, env)) => {
                        let value = if quoted {
                            Value::Str(expanded)
                        } else {
                            plain_scalar(&expanded)
                        };
                        let env = (env != Env::default()).then(|| Box::new(env));
                        Node {
                            value,
                            line,
                            col,
                            env,
                        }
                    }
                };
                self.push(node, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Open::Seq(
                Node::new(Value::Seq(Vec::new()), line, col),
                anchor,
            )),
            Event::MappingStart(anchor, _) => self.stack.push(Open::Map(
                Node::new(Value::Map(Vec::new()), line, col),
                None,
                anchor,
            )),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(Open::Seq(node, anchor) | Open::Map(node, _, anchor)) = self.stack.pop()
                {
                    self.push(node, anchor);
                }
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().ok_or(SyntaxError {
                    message: "alias to an unknown anchor".into(),
                    line,
                    col,
                })?;
                self.push(node, 0);
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd => {}
        }
        Ok(())
    }

    fn push(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq(seq, _)) => {
                if let Value::Seq(items) = &mut seq.value {
                    items.push(node);
                }
            }
            Some(Open::Map(map, pending_key, _)) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => {
                    if let Value::Map(entries) = &mut map.value {
                        entries.push((key, node));
                    }
                }
            },
        }
    }
}

/// Replaces `${NAME}` and `${NAME:-default}` (the default when NAME is unset or empty, as
/// in the shell) in `text`; `$${` is a literal `${`. Returns the text and what happened.
fn substitute(text: &str, env: Lookup<'_>) -> (String, Env) {
    let mut out = String::with_capacity(text.len());
    let mut report = Env::default();
    let mut rest = text;
    let mut pieces = 0usize;
    let mut literal = false;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        literal |= at > 0;
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            literal = true;
            rest = after;
            continue;
        }
        let Some(body) = tail.strip_prefix("${") else {
            out.push('$');
            literal = true;
            rest = &tail[1..];
            continue;
        };
        let Some(end) = body.find('}') else {
            report.errors.push(format!(
                "`{tail}` has no closing `}}`; write `$${{` for a literal `${{`"
            ));
            out.push_str(tail);
            rest = "";
            literal = true;
            break;
        };
        let expr = &body[..end];
        rest = &body[end + 1..];
        pieces += 1;
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        let valid = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            report.errors.push(format!(
                "`${{{expr}}}`: `{name}` is not a variable name (letters, digits and _, not                  starting with a digit); write `$${{` for a literal `${{`"
            ));
            continue;
        }
        match (env(name).filter(|v| !v.is_empty() || default.is_none()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => report.errors.push(format!(
                "environment variable `{name}` is not set; set it, or give a default:                  ${{{name}:-value}}"
            )),
        }
    }
    out.push_str(rest);
    literal |= !rest.is_empty();
    if pieces == 1 && !literal && report.errors.is_empty() {
        report.whole = Some(out.clone());
    }
    (out, report)
}

/// YAML 1.2 core schema resolution for unquoted scalars.
pub fn plain_scalar(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::Int(i);
    }
    let looks_numeric = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && text.bytes().any(|b| b.is_ascii_digit());
    if looks_numeric {
        if let Ok(f) = text.parse::<f64>() {
            return Value::Float(f);
        }
    }
    Value::Str(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_give_the_same_tree_with_positions() {
        let yaml = parse("a: 1\nb:\n  - x\n  - \"2\"\n").expect("yaml parses");
        let Value::Map(entries) = &yaml.value else {
            panic!("expected map")
        };
        assert_eq!(entries.len(), 2);
        assert!(matches!(entries[0].1.value, Value::Int(1)));
        let Value::Seq(items) = &entries[1].1.value else {
            panic!("expected seq")
        };
        assert!(matches!(&items[1].value, Value::Str(s) if s == "2"));
        assert_eq!(items[1].line, 4);

        let json = parse("{\"a\": 1, \"b\": [\"x\", \"2\"]}").expect("json parses");
        let Value::Map(entries) = &json.value else {
            panic!("expected map")
        };
        assert!(matches!(entries[0].1.value, Value::Int(1)));
    }

    #[test]
    fn variables_in_values_are_substituted_and_keys_are_left_alone() {
        let env = |name: &str| match name {
            "PORT" => Some("8080".to_string()),
            "HOST" => Some("10.0.0.1".to_string()),
            "EMPTY" => Some(String::new()),
            "TRICKY" => Some("a: b\n- c # d".to_string()),
            _ => None,
        };
        let text = "port: ${PORT}\nq: \"${PORT}\"\naddr: ${HOST}:${PORT}\n\
                    d: ${MISSING:-5s}\ne: ${EMPTY:-x}\nf: $${PORT}\nt: ${TRICKY}\n\
                    ${PORT}: key\nbad: ${NOPE}\n";
        let tree = parse_with_env(text, Some(&env)).expect("parses");
        let Value::Map(entries) = &tree.value else {
            panic!("map")
        };
        let get = |k: &str| {
            &entries
                .iter()
                .find(|(key, _)| matches!(&key.value, Value::Str(s) if s == k))
                .expect(k)
                .1
        };
        assert!(matches!(get("port").value, Value::Int(8080)));
        assert!(
            matches!(&get("q").value, Value::Str(s) if s == "8080"),
            "quoted stays a string"
        );
        assert_eq!(
            get("q").env.as_ref().and_then(|e| e.whole.as_deref()),
            Some("8080")
        );
        assert!(matches!(&get("addr").value, Value::Str(s) if s == "10.0.0.1:8080"));
        assert_eq!(
            get("addr").env.as_ref().and_then(|e| e.whole.as_deref()),
            None
        );
        assert!(matches!(&get("d").value, Value::Str(s) if s == "5s"));
        assert!(
            matches!(&get("e").value, Value::Str(s) if s == "x"),
            ":- also covers empty"
        );
        assert!(matches!(&get("f").value, Value::Str(s) if s == "${PORT}"));
        assert!(
            matches!(&get("t").value, Value::Str(s) if s == "a: b\n- c # d"),
            "a value is never read as YAML"
        );
        assert!(entries
            .iter()
            .any(|(k, _)| matches!(&k.value, Value::Str(s) if s == "${PORT}")));
        let bad = get("bad").env.as_ref().expect("reported");
        assert!(bad.errors[0].contains("`NOPE` is not set"), "{bad:?}");
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let err = parse("a: [1, 2\nb: 3\n").expect_err("unterminated flow sequence");
        assert!(err.line >= 1, "{err:?}");
    }

    #[test]
    fn an_error_at_the_end_of_a_file_without_a_final_line_break_points_inside_the_file() {
        // Found by the config fuzz target: the parser said line 2 of a one-line file.
        let err = parse("a: [").expect_err("unterminated");
        assert_eq!((err.line, err.col), (1, 5), "{err:?}");
        let err = parse("a: b\nc: [").expect_err("unterminated");
        assert_eq!((err.line, err.col), (2, 5), "{err:?}");
        let err = parse("a: [\n").expect_err("unterminated");
        assert_eq!((err.line, err.col), (2, 1), "{err:?}");
        let err = parse("a: b\rc: [").expect_err("unterminated");
        assert_eq!((err.line, err.col), (2, 5), "{err:?}");
        // A value at the very end: `---` alone is an empty (null) document.
        let doc = parse("---").expect("parses");
        assert_eq!((doc.line, doc.col), (1, 4), "{doc:?}");
    }
}
