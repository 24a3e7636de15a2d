//! The layers of `src/` point one way (DESIGN.md, principle 6): foundation → config →
//! runtime pieces → state → serving → process. This test reads every source file, finds
//! what it imports from the crate (`crate::a::b` paths and `super::sibling` paths), and
//! fails when a file imports from a layer above its own, when files import each other in
//! a cycle, or when a file is not in the table below (so a new module must say where it
//! sits).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where each file sits. `None`: a module list only (`mod` lines and comments), which
/// neither imports nor is imported from.
const LAYERS: &[(&str, Option<u8>)] = &[
    // 0 — foundation: imports nothing from the crate but each other.
    ("lib.rs", Some(0)),
    ("error.rs", Some(0)),
    ("util.rs", Some(0)),
    ("x509.rs", Some(0)),
    ("certs.rs", Some(0)),
    ("path.rs", Some(0)),
    ("version.rs", Some(0)),
    ("notify.rs", Some(0)),
    // 1 — config: file → positioned tree → checked model (with its key material).
    ("config/mod.rs", Some(1)),
    ("config/raw.rs", Some(1)),
    ("config/validate.rs", Some(1)),
    ("config/model.rs", Some(1)),
    // 2 — runtime pieces, built from the model and used by the snapshot.
    ("router.rs", Some(2)),
    ("balance/mod.rs", Some(2)),
    ("balance/wrr.rs", Some(2)),
    ("balance/health.rs", Some(2)),
    ("balance/active.rs", Some(2)),
    ("balance/ratelimit.rs", Some(2)),
    ("upstream.rs", Some(2)),
    ("tls.rs", Some(2)),
    ("telemetry/mod.rs", None),
    ("telemetry/access_log.rs", Some(2)),
    ("telemetry/metrics.rs", Some(2)),
    ("telemetry/request.rs", Some(2)),
    ("http/mod.rs", None),
    ("http/headers.rs", Some(2)),
    ("http/grpc.rs", Some(2)),
    ("http/sniff.rs", Some(2)),
    ("http/h2guard.rs", Some(2)),
    ("http/body.rs", Some(2)),
    ("http/response.rs", Some(2)),
    ("http/rules.rs", Some(2)),
    ("l4/access.rs", Some(2)),
    // 3 — state: the snapshot built from the model, behind one ArcSwap.
    ("state.rs", Some(3)),
    // 4 — serving: accept loops and what runs on each connection.
    ("listener.rs", Some(4)),
    ("http/server.rs", Some(4)),
    ("http/proxy.rs", Some(4)),
    ("l4/mod.rs", Some(4)),
    ("admin.rs", Some(4)),
    // 5 — process: start, the listener registry, reload, signals, the demo.
    ("runtime.rs", Some(5)),
    ("registry.rs", Some(5)),
    ("reload.rs", Some(5)),
    ("watch.rs", Some(5)),
    ("demo.rs", Some(5)),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Source text without comment lines (doc comments name paths without importing them).
fn code(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The file a module path `a::b` (from the crate root) lives in, if `a` is a module.
fn resolve(segments: &[&str], files: &BTreeSet<String>) -> Option<String> {
    let candidates = match segments {
        [a, b] if !b.is_empty() => vec![
            format!("{a}/{b}.rs"),
            format!("{a}/{b}/mod.rs"),
            format!("{a}.rs"),
            format!("{a}/mod.rs"),
        ],
        [a, ..] => vec![format!("{a}.rs"), format!("{a}/mod.rs")],
        [] => return None,
    };
    candidates.into_iter().find(|c| files.contains(c))
}

/// What `file` (relative to src/) imports from other files of the crate.
fn imports(file: &str, text: &str, files: &BTreeSet<String>) -> Result<BTreeSet<String>, String> {
    let code = code(text);
    if code.contains("crate::{") {
        return Err(format!(
            "{file}: grouped `crate::{{…}}` imports are not read by this test; import each module's items on its own line"
        ));
    }
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let a = ident(rest);
        if a.is_empty() {
            continue; // crate::VERSION and other root items: lib.rs, the bottom layer.
        }
        let after = &rest[a.len()..];
        let b = after.strip_prefix("::").map(ident).unwrap_or("");
        if let Some(target) = resolve(&[a, b], files) {
            out.insert(target);
        }
    }
    // `super::sibling` from a file inside a directory module.
    if let Some(dir) = Path::new(file)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        let is_mod = file.ends_with("/mod.rs");
        for (i, _) in code.match_indices("super::") {
            let name = ident(&code[i + "super::".len()..]);
            if name.is_empty() || is_mod {
                continue; // `super::*` / `super::Item`: the file itself or its parent module.
            }
            let dir = dir.to_string_lossy();
            if let Some(target) = resolve(&[&dir, name], files) {
                if target != file {
                    out.insert(target);
                }
            }
        }
    }
    out.remove(file);
    Ok(out)
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every violation of the layer rules in `graph`, as sentences.
fn violations(graph: &Graph, layers: &BTreeMap<String, Option<u8>>) -> Vec<String> {
    let mut out = Vec::new();
    for (file, deps) in graph {
        let Some(&from) = layers.get(file) else {
            out.push(format!(
                "{file} is not in the layer table of tests/layers.rs: add it where it sits"
            ));
            continue;
        };
        for dep in deps {
            match (from, layers.get(dep).copied().flatten()) {
                (None, _) => out.push(format!(
                    "{file} is listed as a module list only, but imports {dep}"
                )),
                (Some(_), None) => out.push(format!(
                    "{file} imports {dep}, which is a module list only (import the module itself)"
                )),
                (Some(f), Some(t)) if t > f => out.push(format!(
                    "{file} (layer {f}) imports {dep} (layer {t}): a layer may only import from itself and the layers below"
                )),
                _ => {}
            }
        }
    }
    // Cycles, even within a layer: the file graph must be a DAG.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 = on the stack, 2 = done
    fn visit<'g>(
        node: &'g str,
        graph: &'g Graph,
        state: &mut BTreeMap<&'g str, u8>,
        stack: &mut Vec<&'g str>,
        out: &mut Vec<String>,
    ) {
        state.insert(node, 1);
        stack.push(node);
        for dep in graph.get(node).into_iter().flatten() {
            match state.get(dep.as_str()) {
                Some(1) => {
                    let start = stack.iter().position(|n| n == dep).unwrap_or(0);
                    let mut cycle: Vec<&str> = stack[start..].to_vec();
                    cycle.push(dep);
                    out.push(format!("import cycle: {}", cycle.join(" → ")));
                }
                Some(_) => {}
                None => visit(dep, graph, state, stack, out),
            }
        }
        stack.pop();
        state.insert(node, 2);
    }
    for node in graph.keys() {
        if !state.contains_key(node.as_str()) {
            visit(node, graph, &mut state, &mut Vec::new(), &mut out);
        }
    }
    out
}

fn table() -> BTreeMap<String, Option<u8>> {
    LAYERS.iter().map(|(f, l)| (f.to_string(), *l)).collect()
}

#[test]
fn no_module_imports_from_a_layer_above_it_and_there_are_no_cycles() {
    let root = src();
    let mut paths = Vec::new();
    rust_files(&root, &mut paths);
    let files: BTreeSet<String> = paths
        .iter()
        .map(|p| {
            p.strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|f| f != "main.rs") // the binary: outside the library's layers
        .collect();
    let mut graph = Graph::new();
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        match imports(file, &text, &files) {
            Ok(deps) => {
                graph.insert(file.clone(), deps);
            }
            Err(e) => problems.push(e),
        }
    }
    problems.extend(violations(&graph, &table()));
    assert!(
        problems.is_empty(),
        "layering violations:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_checker_catches_an_upward_import_a_cycle_and_an_unlisted_file() {
    let files: BTreeSet<String> = ["config/model.rs", "state.rs", "router.rs", "upstream.rs"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let upward = imports(
        "config/model.rs",
        "use crate::state::Snapshot;\n// crate::router in a comment is not an import\n",
        &files,
    )
    .unwrap();
    assert_eq!(upward, BTreeSet::from(["state.rs".to_string()]));
    let mut graph = Graph::new();
    graph.insert("config/model.rs".into(), upward);
    graph.insert("router.rs".into(), BTreeSet::from(["upstream.rs".into()]));
    graph.insert("upstream.rs".into(), BTreeSet::from(["router.rs".into()]));
    graph.insert("new_module.rs".into(), BTreeSet::new());
    let found = violations(&graph, &table());
    assert!(
        found
            .iter()
            .any(|v| v.contains("config/model.rs (layer 1) imports state.rs (layer 3)")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|v| v.starts_with("import cycle")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|v| v.contains("new_module.rs is not in the layer table")),
        "{found:?}"
    );
    assert!(imports("x.rs", "use crate::{a, b};", &files).is_err());
}
