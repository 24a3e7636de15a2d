#![allow(clippy::unwrap_used)]
//! Black-box tests of the user-facing configuration contract (the spec's "File format"
//! and the sections it names): every error carries its file, line and key path,
//! every error in a file is reported at once, defaults are applied, warnings do not make a
//! file invalid, and the real binary's `validate` and `version` commands behave as
//! documented.

use gateway::config::model::{HostMatch, LogTarget, Protocol};
use gateway::config::{load, load_str, Invalid, Loaded, Problem};
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

// ---- helpers -------------------------------------------------------------------------

const YAML_FILE: &str = "gateway.yaml";

fn load_yaml(text: &str) -> Result<Loaded, Invalid> {
    load_str(Path::new(YAML_FILE), text)
}

/// Loads text that must be valid; panics with every error otherwise.
fn valid(text: &str) -> Loaded {
    match load_yaml(text) {
        Ok(loaded) => loaded,
        Err(invalid) => panic!("expected a valid configuration, got {invalid}"),
    }
}

/// Loads text that must be invalid and returns its errors.
fn errors(text: &str) -> Vec<Problem> {
    errors_in(YAML_FILE, text)
}

fn errors_in(file: &str, text: &str) -> Vec<Problem> {
    match load_str(Path::new(file), text) {
        Ok(loaded) => panic!(
            "expected the configuration to be invalid, but it loaded: {:#?}",
            loaded.config
        ),
        Err(invalid) => {
            assert!(
                !invalid.errors.is_empty(),
                "an invalid file must carry at least one error"
            );
            invalid.errors
        }
    }
}

/// 1-based line and column of the first occurrence of `needle` in `text`.
fn position_of(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` does not occur in the test input"));
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = at - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

fn line_of(text: &str, needle: &str) -> usize {
    position_of(text, needle).0
}

/// The error at exactly `path`; panics listing every error when there is none.
fn error_at<'a>(errors: &'a [Problem], path: &str) -> &'a Problem {
    errors
        .iter()
        .find(|p| p.path == path)
        .unwrap_or_else(|| panic!("no error at `{path}`; errors were:\n{errors:#?}"))
}

/// Asserts an error at `path`, on `line`, in the YAML test file, whose message contains
/// `needle` (case-insensitively).
fn assert_error(errors: &[Problem], path: &str, line: usize, needle: &str) -> Problem {
    let e = error_at(errors, path).clone();
    assert_eq!(e.file, PathBuf::from(YAML_FILE), "file of {e:?}");
    assert_eq!(e.line, line, "line of the error at `{path}`: {e:?}");
    assert!(e.col >= 1, "a YAML error carries a column: {e:?}");
    assert!(
        e.message.to_lowercase().contains(&needle.to_lowercase()),
        "message of the error at `{path}` should mention `{needle}`: {e:?}"
    );
    e
}

fn paths(errors: &[Problem]) -> Vec<&str> {
    errors.iter().map(|p| p.path.as_str()).collect()
}

/// A small valid file; tests that need a valid base start from it.
const MINIMAL: &str = "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
";

// ---- 1. each error: key path, line, what was expected ---------------------------------

#[test]
fn the_minimal_config_used_by_these_tests_is_valid() {
    let loaded = valid(MINIMAL);
    assert_eq!(loaded.config.listeners.len(), 1);
    assert_eq!(loaded.config.routes.len(), 1);
    assert_eq!(loaded.config.clusters.len(), 1);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn unknown_top_level_key_is_reported_with_its_path_and_line() {
    let text = format!("{MINIMAL}lisenters: []\n");
    let errs = errors(&text);
    let (line, col) = position_of(&text, "lisenters");
    let e = assert_error(&errs, "lisenters", line, "unknown key");
    assert_eq!(e.col, col);
    assert!(
        e.message.contains("listeners"),
        "the message lists the expected keys: {e:?}"
    );
    assert_eq!(errs.len(), 1, "{errs:#?}");
}

#[test]
fn unknown_key_is_reported_with_its_path_and_line() {
    let text = "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
    timeouts:
      readHeader: 5s
      raed: 30s
routes:
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
        wieght: 3
";
    let errs = errors(text);
    let (line, col) = position_of(text, "raed");
    let e = assert_error(&errs, "listeners[0].timeouts.raed", line, "unknown key");
    assert_eq!(e.col, col);
    assert!(e.message.contains("read"), "{e:?}");
    assert_error(
        &errs,
        "clusters[0].endpoints[0].wieght",
        line_of(text, "wieght"),
        "unknown key",
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
}

#[test]
fn a_string_where_an_integer_is_expected_is_a_type_error() {
    let text = "\
version: 1
workers: four
listeners:
  - name: public
    address: 127.0.0.1:8080
    maxConnections: lots
routes:
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
        weight: \"3\"
";
    let errs = errors(text);
    assert_error(&errs, "workers", line_of(text, "four"), "integer");
    let e = assert_error(
        &errs,
        "listeners[0].maxConnections",
        line_of(text, "lots"),
        "expected an integer",
    );
    assert!(e.message.contains("string"), "names what was found: {e:?}");
    assert_error(
        &errs,
        "clusters[0].endpoints[0].weight",
        line_of(text, "\"3\""),
        "integer",
    );
    assert_eq!(errs.len(), 3, "{errs:#?}");
}

#[test]
fn a_mapping_where_a_list_is_expected_is_a_type_error() {
    let text = "\
version: 1
listeners:
  name: public
  address: 127.0.0.1:8080
clusters: nope
";
    let errs = errors(text);
    assert_error(&errs, "listeners", line_of(text, "name: public"), "list");
    assert_error(&errs, "clusters", line_of(text, "nope"), "list");
}

#[test]
fn endpoint_weight_zero_and_over_one_thousand_are_out_of_range() {
    let text = "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
  - name: other
    endpoints:
      - address: 127.0.0.1:9001
        weight: 0
      - address: 127.0.0.1:9002
        weight: 1001
      - address: 127.0.0.1:9003
        weight: -5
";
    let errs = errors(text);
    let (line, col) = position_of(text, "0\n      - address: 127.0.0.1:9002");
    let e = assert_error(&errs, "clusters[1].endpoints[0].weight", line, "1 to 1000");
    assert_eq!(e.col, col, "the column of the value: {e:?}");
    assert_error(
        &errs,
        "clusters[1].endpoints[1].weight",
        line_of(text, "1001"),
        "1 to 1000",
    );
    assert_error(
        &errs,
        "clusters[1].endpoints[2].weight",
        line_of(text, "-5"),
        "1 to 1000",
    );
    assert_eq!(errs.len(), 3, "{errs:#?}");
}

#[test]
fn endpoint_weights_one_and_one_thousand_are_accepted() {
    let text = MINIMAL.replace(
        "      - address: 127.0.0.1:9000\n",
        "      - address: 127.0.0.1:9000\n        weight: 1\n      - address: 127.0.0.1:9001\n        weight: 1000\n",
    );
    let loaded = valid(&text);
    let weights: Vec<u32> = loaded.config.clusters[0]
        .endpoints
        .iter()
        .map(|e| e.weight)
        .collect();
    assert_eq!(weights, [1, 1000]);
}

proptest! {
    #[test]
    fn any_weight_outside_one_to_one_thousand_is_rejected_at_its_path(
        weight in prop_oneof![-100_000i64..=0, 1001i64..=100_000]
    ) {
        let text = MINIMAL.replace(
            "127.0.0.1:9000\n",
            &format!("127.0.0.1:9000\n        weight: {weight}\n"),
        );
        let errs = errors(&text);
        prop_assert_eq!(paths(&errs), vec!["clusters[0].endpoints[0].weight"]);
        prop_assert_eq!(errs[0].line, line_of(&text, "weight:"));
    }

    #[test]
    fn any_weight_from_one_to_one_thousand_is_accepted(weight in 1u32..=1000) {
        let text = MINIMAL.replace(
            "127.0.0.1:9000\n",
            &format!("127.0.0.1:9000\n        weight: {weight}\n"),
        );
        let loaded = valid(&text);
        prop_assert_eq!(loaded.config.clusters[0].endpoints[0].weight, weight);
    }
}

#[test]
fn durations_without_a_unit_or_with_an_unknown_unit_are_rejected() {
    let text = "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
    timeouts:
      readHeader: 5
      idle: 5 parsecs
routes:
  - name: default
    cluster: app
    timeouts:
      request: ten seconds
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
    timeouts:
      connect: \"5\"
reload:
  debounce: 1,5s
";
    let errs = errors(text);
    let e = assert_error(
        &errs,
        "listeners[0].timeouts.readHeader",
        line_of(text, "readHeader: 5"),
        "duration",
    );
    assert!(e.message.contains("5s"), "shows the expected form: {e:?}");
    let e = assert_error(
        &errs,
        "listeners[0].timeouts.idle",
        line_of(text, "5 parsecs"),
        "duration",
    );
    assert!(
        e.message.contains("5 parsecs"),
        "shows the bad value: {e:?}"
    );
    assert_error(
        &errs,
        "routes[0].timeouts.request",
        line_of(text, "ten seconds"),
        "duration",
    );
    assert_error(
        &errs,
        "clusters[0].timeouts.connect",
        line_of(text, "connect: \"5\""),
        "duration",
    );
    assert_error(&errs, "reload.debounce", line_of(text, "1,5s"), "duration");
    assert_eq!(errs.len(), 5, "{errs:#?}");
}

#[test]
fn durations_accept_milliseconds_seconds_minutes_hours_and_zero() {
    let text = "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
    timeouts:
      readHeader: 250ms
      read: 1m
      write: 1h
      idle: 1.5s
routes:
  - name: default
    cluster: app
    timeouts:
      request: 0s
      read: 1m30s
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
";
    let loaded = valid(text);
    let t = loaded.config.listeners[0].timeouts;
    assert_eq!(t.read_header, Duration::from_millis(250));
    assert_eq!(t.read, Duration::from_secs(60));
    assert_eq!(t.write, Duration::from_secs(3600));
    assert_eq!(t.idle, Duration::from_millis(1500), "a fraction of a unit");
    let r = loaded.config.routes[0].timeouts;
    assert_eq!(r.request, None, "`0s` turns the request timeout off");
    assert_eq!(r.read, Some(Duration::from_secs(90)));
}

#[test]
fn bad_sizes_are_rejected() {
    let text = "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
    limits:
      maxRequestHeadersSize: lots
      maxRequestBody: 12 furlongs
  - name: internal
    address: 127.0.0.1:8081
    limits:
      maxRequestHeadersSize: true
      maxRequestBody: -1
routes:
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
";
    let errs = errors(text);
    let e = assert_error(
        &errs,
        "listeners[0].limits.maxRequestHeadersSize",
        line_of(text, "lots"),
        "size",
    );
    assert!(
        e.message.contains("64KiB"),
        "shows the expected form: {e:?}"
    );
    assert_error(
        &errs,
        "listeners[0].limits.maxRequestBody",
        line_of(text, "12 furlongs"),
        "size",
    );
    assert_error(
        &errs,
        "listeners[1].limits.maxRequestHeadersSize",
        line_of(text, "true"),
        "size",
    );
    assert_error(
        &errs,
        "listeners[1].limits.maxRequestBody",
        line_of(text, "-1"),
        "size",
    );
    assert_eq!(errs.len(), 4, "{errs:#?}");
}

#[test]
fn sizes_accept_strings_with_units_and_plain_integers() {
    let text = "\
version: 1
listeners:
  - name: a
    address: 127.0.0.1:8080
    limits:
      maxRequestHeadersSize: 32KiB
      maxRequestBody: 1MiB
  - name: b
    address: 127.0.0.1:8081
    limits:
      maxRequestHeadersSize: 16384
      maxRequestBody: 0
routes:
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
";
    let loaded = valid(text);
    let a = loaded.config.listeners[0].limits;
    assert_eq!(a.max_request_headers_size, 32 * 1024);
    assert_eq!(a.max_request_body, 1024 * 1024);
    let b = loaded.config.listeners[1].limits;
    assert_eq!(b.max_request_headers_size, 16384);
    assert_eq!(b.max_request_body, 0, "0 = unlimited");
}

#[test]
fn names_with_invalid_characters_or_over_64_characters_are_rejected() {
    let long = "c".repeat(65);
    let text = format!(
        "\
version: 1
listeners:
  - name: my listener
    address: 127.0.0.1:8080
routes:
  - name: \"api/v1\"
    cluster: app
  - name: \"\"
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
  - name: {long}
    endpoints:
      - address: 127.0.0.1:9001
"
    );
    let errs = errors(&text);
    let e = assert_error(
        &errs,
        "listeners[0].name",
        line_of(&text, "my listener"),
        "invalid name",
    );
    assert!(
        e.message.contains("[A-Za-z0-9_.-]{1,64}"),
        "says what a name may be: {e:?}"
    );
    assert_error(
        &errs,
        "routes[0].name",
        line_of(&text, "api/v1"),
        "invalid name",
    );
    assert_error(
        &errs,
        "routes[1].name",
        line_of(&text, "\"\""),
        "invalid name",
    );
    assert_error(
        &errs,
        "clusters[1].name",
        line_of(&text, &long),
        "invalid name",
    );
}

#[test]
fn names_of_exactly_64_allowed_characters_are_accepted() {
    let name = format!("A-z_0.9{}", "x".repeat(57));
    assert_eq!(name.len(), 64);
    let text = MINIMAL
        .replace("name: app", &format!("name: {name}"))
        .replace("cluster: app", &format!("cluster: {name}"));
    let loaded = valid(&text);
    assert_eq!(loaded.config.clusters[0].name, name);
}

#[test]
fn duplicate_names_within_listeners_routes_and_clusters_are_rejected() {
    let text = "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
  - name: public
    address: 127.0.0.1:8081
routes:
  - name: api
    match:
      pathPrefix: /api
    cluster: app
  - name: api
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
  - name: app
    endpoints:
      - address: 127.0.0.1:9001
";
    let errs = errors(text);
    let second = |needle: &str| {
        let first = text.find(needle).unwrap();
        let at = first + 1 + text[first + 1..].find(needle).unwrap();
        text[..at].matches('\n').count() + 1
    };
    let e = assert_error(
        &errs,
        "listeners[1].name",
        second("name: public"),
        "duplicate name",
    );
    assert!(
        e.message.contains("listeners[0].name"),
        "points at the first use: {e:?}"
    );
    let e = assert_error(
        &errs,
        "routes[1].name",
        second("name: api"),
        "duplicate name",
    );
    assert!(e.message.contains("routes[0].name"), "{e:?}");
    let e = assert_error(
        &errs,
        "clusters[1].name",
        second("name: app"),
        "duplicate name",
    );
    assert!(e.message.contains("clusters[0].name"), "{e:?}");
    assert_eq!(errs.len(), 3, "{errs:#?}");
}

#[test]
fn the_same_name_in_different_lists_is_allowed() {
    let text = "\
version: 1
listeners:
  - name: app
    address: 127.0.0.1:8080
routes:
  - name: app
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
";
    valid(text);
}

#[test]
fn route_naming_a_missing_cluster_is_rejected() {
    let text = "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: default
    match:
      pathPrefix: /
    cluster: nowhere
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
";
    let errs = errors(text);
    let e = assert_error(
        &errs,
        "routes[0].cluster",
        line_of(text, "cluster: nowhere"),
        "does not exist",
    );
    assert!(e.message.contains("nowhere"), "names the cluster: {e:?}");
    assert_eq!(errs.len(), 1, "{errs:#?}");
}

#[test]
fn route_naming_a_missing_listener_is_rejected() {
    let text = "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: default
    cluster: app
    listeners: [public, intranet]
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
";
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let e = &errs[0];
    assert!(
        e.path == "routes[0].listeners" || e.path == "routes[0].listeners[1]",
        "path of the missing listener: {e:?}"
    );
    assert_eq!(e.line, line_of(text, "intranet"), "{e:?}");
    assert!(e.message.contains("intranet"), "names the listener: {e:?}");
    assert!(e.message.contains("does not exist"), "{e:?}");
}

#[test]
fn two_listeners_on_the_same_address_are_rejected() {
    let text = "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
  - name: again
    address: 127.0.0.1:8080
routes:
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
";
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let second_address = line_of(text, "name: again") + 1;
    let e = assert_error(
        &errs,
        "listeners[1].address",
        second_address,
        "already used",
    );
    assert!(
        e.message.contains("listeners[0].address"),
        "names the other user of the address: {e:?}"
    );
}

#[test]
fn admin_on_a_listeners_address_is_rejected() {
    let text = "\
version: 1
admin:
  address: 127.0.0.1:8080
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
";
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let e = &errs[0];
    assert!(
        e.path == "listeners[0].address" || e.path == "admin.address",
        "{e:?}"
    );
    let lines = [
        line_of(text, "  address: 127.0.0.1:8080"),
        line_of(text, "    address: 127.0.0.1:8080"),
    ];
    assert!(
        lines.contains(&e.line),
        "line of one of the addresses: {e:?}"
    );
    assert!(e.message.contains("already used"), "{e:?}");
    assert!(
        e.message.contains("admin"),
        "names the admin listener: {e:?}"
    );
}

#[test]
fn cluster_with_no_endpoints_is_rejected() {
    let text = "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints: []
  - name: bare
";
    let errs = errors(text);
    assert_error(
        &errs,
        "clusters[0].endpoints",
        line_of(text, "endpoints: []"),
        "at least one endpoint",
    );
    assert_error(
        &errs,
        "clusters[1].endpoints",
        line_of(text, "name: bare"),
        "missing required key",
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
}

#[test]
fn endpoint_address_without_a_port_or_with_port_zero_is_rejected() {
    let bad = [
        "10.0.0.11",
        "backend.internal",
        "10.0.0.11:0",
        "backend.internal:0",
        "\"[::1]:0\"",
        "10.0.0.11:65536",
        "10.0.0.11:http",
        "back end:80",
        "\":8080\"",
    ];
    let endpoints: String = bad
        .iter()
        .map(|a| format!("      - address: {a}\n"))
        .collect();
    let text = format!(
        "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints:
{endpoints}"
    );
    let errs = errors(&text);
    let accepted: Vec<&str> = bad
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            !errs
                .iter()
                .any(|e| e.path == format!("clusters[0].endpoints[{i}].address"))
        })
        .map(|(_, a)| *a)
        .collect();
    assert!(
        accepted.is_empty(),
        "these endpoint addresses were accepted: {accepted:?}"
    );
    for (i, a) in bad.iter().enumerate() {
        let path = format!("clusters[0].endpoints[{i}].address");
        let e = assert_error(
            &errs,
            &path,
            line_of(&text, &format!("address: {a}\n")),
            "invalid endpoint",
        );
        assert!(
            e.message.contains(a.trim_matches('"')),
            "shows the bad value: {e:?}"
        );
    }
    assert_eq!(errs.len(), bad.len(), "{errs:#?}");
}

#[test]
fn endpoints_may_be_ip_or_dns_names_with_a_port() {
    let text = MINIMAL.replace(
        "      - address: 127.0.0.1:9000\n",
        "      - address: 127.0.0.1:9000\n      - address: backend.internal:8080\n      - address: \"[::1]:9000\"\n      - address: localhost:65535\n",
    );
    let loaded = valid(&text);
    let addresses: Vec<&str> = loaded.config.clusters[0]
        .endpoints
        .iter()
        .map(|e| e.address.as_str())
        .collect();
    assert_eq!(
        addresses,
        [
            "127.0.0.1:9000",
            "backend.internal:8080",
            "[::1]:9000",
            "localhost:65535"
        ]
    );
}

#[test]
fn bad_listener_and_admin_addresses_are_rejected() {
    let bad = [
        "localhost:8080",
        "\"8080\"",
        "0.0.0.0",
        "0.0.0.0:99999",
        "\"::1:8080\"",
        "0.0.0.0:http",
    ];
    let listeners: String = bad
        .iter()
        .enumerate()
        .map(|(i, a)| format!("  - name: l{i}\n    address: {a}\n"))
        .collect();
    let text = format!(
        "\
version: 1
admin:
  address: \"admin:9901\"
listeners:
{listeners}routes:
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
"
    );
    let errs = errors(&text);
    assert_error(
        &errs,
        "admin.address",
        line_of(&text, "admin:9901"),
        "invalid address",
    );
    for (i, a) in bad.iter().enumerate() {
        let e = assert_error(
            &errs,
            &format!("listeners[{i}].address"),
            line_of(&text, &format!("address: {a}\n")),
            "invalid address",
        );
        assert!(e.message.contains("ip:port"), "{e:?}");
    }
    assert_eq!(errs.len(), bad.len() + 1, "{errs:#?}");
}

#[test]
fn ipv6_listener_addresses_are_accepted() {
    let text = MINIMAL.replace("127.0.0.1:8080", "\"[::]:8080\"");
    let loaded = valid(&text);
    assert_eq!(
        loaded.config.listeners[0].address,
        "[::]:8080".parse().unwrap()
    );
}

#[test]
fn host_match_with_a_port_or_a_bare_star_is_rejected() {
    let text = "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: with-port
    match:
      host: api.example.com:8080
    cluster: app
  - name: star
    match:
      host: \"*\"
    cluster: app
  - name: inner-star
    match:
      host: \"api.*.com\"
    cluster: app
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
";
    let errs = errors(text);
    let e = assert_error(
        &errs,
        "routes[0].match.host",
        line_of(text, "api.example.com:8080"),
        "invalid host",
    );
    assert!(e.message.contains("no port"), "{e:?}");
    assert_error(
        &errs,
        "routes[1].match.host",
        line_of(text, "\"*\""),
        "invalid host",
    );
    assert_error(
        &errs,
        "routes[2].match.host",
        line_of(text, "api.*.com"),
        "invalid host",
    );
    assert_eq!(errs.len(), 3, "{errs:#?}");
}

#[test]
fn host_matches_are_exact_or_one_leading_wildcard_and_lower_cased() {
    let text = "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: exact
    match:
      host: API.Example.com
    cluster: app
  - name: wild
    match:
      host: \"*.example.com\"
    cluster: app
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
";
    let loaded = valid(text);
    let hosts: Vec<&HostMatch> = loaded.config.routes.iter().map(|r| &r.host).collect();
    assert_eq!(
        hosts,
        [
            &HostMatch::Exact("api.example.com".into()),
            &HostMatch::Wildcard("example.com".into()),
            &HostMatch::Any,
        ]
    );
}

#[test]
fn path_prefix_must_start_with_a_slash_and_be_normalised() {
    let text = "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: relative
    match:
      pathPrefix: v1
    cluster: app
  - name: dotdot
    match:
      pathPrefix: /a/../b
    cluster: app
  - name: dot
    match:
      pathPrefix: /a/./b
    cluster: app
  - name: encoded
    match:
      pathPrefix: /%7Euser
    cluster: app
  - name: query
    match:
      pathPrefix: /search?q=1
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
";
    let errs = errors(text);
    assert_error(
        &errs,
        "routes[0].match.pathPrefix",
        line_of(text, "pathPrefix: v1"),
        "must start with /",
    );
    assert_error(
        &errs,
        "routes[1].match.pathPrefix",
        line_of(text, "/a/../b"),
        "not normalised",
    );
    assert_error(
        &errs,
        "routes[2].match.pathPrefix",
        line_of(text, "/a/./b"),
        "not normalised",
    );
    assert_error(
        &errs,
        "routes[3].match.pathPrefix",
        line_of(text, "/%7Euser"),
        "not normalised",
    );
    assert_error(
        &errs,
        "routes[4].match.pathPrefix",
        line_of(text, "/search?q=1"),
        "query",
    );
    assert_eq!(errs.len(), 5, "{errs:#?}");
}

#[test]
fn path_prefix_defaults_to_slash_and_keeps_a_trailing_slash() {
    let text = "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: v1
    match:
      pathPrefix: /v1
    cluster: app
  - name: v2
    match:
      pathPrefix: /v2/
    cluster: app
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
";
    let loaded = valid(text);
    let prefixes: Vec<&str> = loaded
        .config
        .routes
        .iter()
        .map(|r| r.path_prefix.as_str())
        .collect();
    assert_eq!(prefixes, ["/v1", "/v2/", "/"]);
}

#[test]
fn sample_rate_outside_zero_to_one_is_rejected() {
    for (rate, ok) in [
        ("0", true),
        ("0.0", true),
        ("0.25", true),
        ("1", true),
        ("1.0", true),
        ("1.5", false),
        ("-0.1", false),
        ("2", false),
        ("half", false),
    ] {
        let text = format!("{MINIMAL}accessLog:\n  path: stdout\n  sampleRate: {rate}\n");
        if ok {
            let loaded = valid(&text);
            let log = loaded.config.access_log.unwrap();
            assert_eq!(log.sample_rate, rate.parse::<f64>().unwrap());
        } else {
            let errs = errors(&text);
            assert_eq!(errs.len(), 1, "sampleRate {rate}: {errs:#?}");
            assert_error(
                &errs,
                "accessLog.sampleRate",
                line_of(&text, "sampleRate"),
                "0 to 1",
            );
        }
    }
}

#[test]
fn unknown_access_log_field_is_rejected() {
    let text = format!("{MINIMAL}accessLog:\n  fields: [ts, reqId, status]\n");
    let errs = errors(&text);
    let (line, col) = position_of(&text, "reqId");
    let e = assert_error(
        &errs,
        "accessLog.fields[1]",
        line,
        "unknown access-log field",
    );
    assert_eq!(e.col, col, "{e:?}");
    assert!(
        e.message.contains("requestId"),
        "lists the known fields: {e:?}"
    );
    assert_eq!(errs.len(), 1, "{errs:#?}");
}

#[test]
fn every_documented_access_log_field_is_accepted() {
    let fields = "[ts, requestId, clientAddr, listener, tls, sni, protocol, method, host, path, \
                  status, route, cluster, upstream, bytesIn, bytesOut, durationMs, upstreamMs, \
                  error, userAgent]";
    let text = format!(
        "{MINIMAL}accessLog:\n  path: stderr\n  sampleRate: 0.5\n  alwaysLogErrors: false\n  fields: {fields}\n"
    );
    let loaded = valid(&text);
    let log = loaded.config.access_log.unwrap();
    assert_eq!(log.target, LogTarget::Stderr);
    assert_eq!(log.sample_rate, 0.5);
    assert!(!log.always_log_errors);
    let names: Vec<&str> = log.fields.iter().map(|f| f.name()).collect();
    assert_eq!(names.len(), 20);
    assert_eq!(names[0], "ts");
    assert_eq!(names[19], "userAgent");
}

#[test]
fn missing_required_keys_are_reported_at_their_path() {
    let text = "\
version: 1
listeners:
  - name: public
    http2: false
routes:
  - name: default
    match:
      pathPrefix: /
clusters:
  - name: app
    endpoints:
      - weight: 2
  - endpoints:
      - address: 127.0.0.1:9001
";
    let errs = errors(text);
    assert_error(
        &errs,
        "listeners[0].address",
        line_of(text, "name: public"),
        "missing required key `address`",
    );
    assert_error(
        &errs,
        "routes[0].cluster",
        line_of(text, "name: default"),
        "missing required key `cluster`",
    );
    assert_error(
        &errs,
        "clusters[0].endpoints[0].address",
        line_of(text, "weight: 2"),
        "missing required key `address`",
    );
    assert_error(
        &errs,
        "clusters[1].name",
        line_of(text, "  - endpoints:"),
        "missing required key `name`",
    );
    assert_eq!(errs.len(), 4, "{errs:#?}");
}

#[test]
fn listener_tls_is_parsed_and_each_of_its_errors_has_a_key_path_and_line() {
    let text = "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8443
    tls:
      certificates:
        - cert: certs/missing.pem
          key: certs/missing.key
          serverNames: [\"bad name\"]
      minVersion: \"1.1\"
      alpn: [h2, h3]
      ciphers: [all]
routes:
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
";
    let errs = errors(text);
    assert_error(
        &errs,
        "listeners[0].tls.certificates[0].cert",
        line_of(text, "cert: certs/missing.pem"),
        "cannot read",
    );
    assert_error(
        &errs,
        "listeners[0].tls.certificates[0].serverNames[0]",
        line_of(text, "serverNames"),
        "invalid host",
    );
    assert_error(
        &errs,
        "listeners[0].tls.minVersion",
        line_of(text, "minVersion"),
        "expected \"1.2\" or \"1.3\"",
    );
    assert_error(
        &errs,
        "listeners[0].tls.alpn[1]",
        line_of(text, "alpn"),
        "unknown ALPN protocol `h3`",
    );
    assert_error(
        &errs,
        "listeners[0].tls.ciphers",
        line_of(text, "ciphers"),
        "unknown key",
    );
    assert_eq!(errs.len(), 5, "{errs:#?}");
    assert!(
        errs.iter().all(|e| !e.message.contains("not supported")),
        "{errs:#?}"
    );
}

#[test]
fn security_and_passive_health_are_validated_with_every_error_reported() {
    let text = "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
    security:
      mode: mtls
      caBundle: /nonexistent/ca.pem
      serverName: \"not a name\"
    passiveHealth:
      consecutiveFailures: 0
      baseEjectionTime: 10s
      maxEjectionTime: 5s
      maxEjectedPercent: 101
      latency: { threshold: 500ms, weightFactor: 0 }
  - name: plain
    endpoints:
      - address: 127.0.0.1:9001
    security:
      mode: none
      serverName: api.internal
";
    let errs = errors(text);
    assert_error(
        &errs,
        "clusters[0].security.caBundle",
        line_of(text, "caBundle:"),
        "cannot read",
    );
    assert_error(
        &errs,
        "clusters[0].security.serverName",
        line_of(text, "serverName: \"not"),
        "serverName",
    );
    assert_error(
        &errs,
        "clusters[0].security.clientCert",
        line_of(text, "mode: mtls"),
        "mtls needs",
    );
    assert_error(
        &errs,
        "clusters[0].security.clientKey",
        line_of(text, "mode: mtls"),
        "mtls needs",
    );
    assert_error(
        &errs,
        "clusters[0].passiveHealth.consecutiveFailures",
        line_of(text, "consecutiveFailures"),
        "out of range",
    );
    assert_error(
        &errs,
        "clusters[0].passiveHealth.maxEjectionTime",
        line_of(text, "maxEjectionTime"),
        "at least",
    );
    assert_error(
        &errs,
        "clusters[0].passiveHealth.maxEjectedPercent",
        line_of(text, "maxEjectedPercent"),
        "out of range",
    );
    assert_error(
        &errs,
        "clusters[0].passiveHealth.latency.weightFactor",
        line_of(text, "weightFactor"),
        "more than 0",
    );
    assert_error(
        &errs,
        "clusters[1].security.serverName",
        line_of(text, "serverName: api.internal"),
        "no effect",
    );
    assert_eq!(errs.len(), 9, "{errs:#?}");
}

#[test]
fn passive_health_defaults_and_tls_mode_load() {
    let text = "\
listeners: [{ name: public, address: \"127.0.0.1:8080\" }]
routes: [{ name: default, cluster: app }]
clusters:
  - name: app
    endpoints: [{ address: \"api.internal:443\" }]
    security: { mode: tls, serverName: api.internal }
    passiveHealth: {}
";
    let cfg = valid(text).config;
    let c = &cfg.clusters[0];
    assert_eq!(c.security.mode, gateway::config::model::SecurityMode::Tls);
    assert_eq!(c.security.server_name.as_deref(), Some("api.internal"));
    let h = c.passive_health.as_ref().unwrap();
    assert_eq!(h.consecutive_failures, 5);
    assert_eq!(h.base_ejection, std::time::Duration::from_secs(30));
    assert_eq!(h.max_ejection, std::time::Duration::from_secs(300));
    assert_eq!(h.max_ejected_percent, 50);
    assert_eq!(h.slow_start, std::time::Duration::from_secs(10));
    assert!(h.latency.is_none());
}

#[test]
fn security_on_a_cluster_used_only_by_l4_is_rejected() {
    let text = "\
l4:
  listeners:
    - { name: pg, address: \"127.0.0.1:15432\", cluster: db }
clusters:
  - name: db
    endpoints: [{ address: \"127.0.0.1:5432\" }]
    security: { mode: tls }
";
    let errs = errors(text);
    assert_error(
        &errs,
        "clusters[0].security",
        line_of(text, "security:"),
        "only by L4",
    );
}

#[test]
fn l4_at_the_top_level_is_validated_like_the_rest_of_the_file() {
    let text = format!(
        "{MINIMAL}l4:\n  listeners:\n    - name: postgres\n      address: 127.0.0.1:15432\n      cluster: app\n"
    );
    let loaded = valid(&text);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.config.l4.len(), 1);
    assert_eq!(loaded.config.l4[0].name, "postgres");
    assert_eq!(loaded.config.l4[0].cluster, "app");

    let text = text.replace("      cluster: app\n", "      cluster: nope\n");
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let (line, col) = position_of(&text, "nope");
    let e = assert_error(&errs, "l4.listeners[0].cluster", line, "does not exist");
    assert_eq!(e.col, col);
}

#[test]
fn yaml_syntax_error_gives_line_and_column() {
    // A value indented under a scalar: the stray `:` on line 5 is the error.
    let text = "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
      http2: true
";
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let e = &errs[0];
    assert_eq!(e.file, PathBuf::from(YAML_FILE));
    assert_eq!(e.path, "", "a syntax error is about the whole file: {e:?}");
    let (line, colon) = position_of(text, ": true");
    assert_eq!(
        (e.line, e.col),
        (line, colon),
        "position of the stray `:`: {e:?}"
    );
    assert!(e.message.contains("invalid YAML"), "{e:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("gateway.yaml:{line}:{colon}: invalid YAML")),
        "{e}"
    );

    // A tab used for indentation.
    let tab = "version: 1\nlisteners:\n\t- name: public\n";
    let errs = errors(tab);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].line, 3, "the tab is on line 3: {errs:#?}");
    assert!(errs[0].col >= 1, "{errs:#?}");

    // An unterminated flow list is noticed at the latest on the following line.
    let text = "\
version: 1
listeners:
  - name: public
    address: [127.0.0.1:8080
routes: []
";
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!((4..=5).contains(&errs[0].line), "{errs:#?}");
    assert!(errs[0].col >= 1, "{errs:#?}");
}

#[test]
fn a_second_yaml_document_in_one_file_is_a_syntax_error() {
    let text = format!("{MINIMAL}---\nversion: 1\n");
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].line, line_of(&text, "---"), "{errs:#?}");
    assert!(errs[0].message.contains("one YAML document"), "{errs:#?}");
}

#[test]
fn json_syntax_error_gives_line_and_column() {
    let text = "{\n  \"version\": 1,\n  \"listeners\": [\n    {\"name\": \"public\",, \"address\": \"127.0.0.1:8080\"}\n  ]\n}\n";
    let errs = errors_in("gateway.json", text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let e = &errs[0];
    assert_eq!(e.file, PathBuf::from("gateway.json"));
    assert_eq!(e.line, 4, "{e:?}");
    let (_, comma) = position_of(text, ",, ");
    assert!(
        (comma..=comma + 2).contains(&e.col),
        "column of the stray comma ({comma}): {e:?}"
    );
    assert!(e.message.contains("JSON"), "{e:?}");

    // A trailing comma is valid YAML flow syntax but not JSON.
    let text = "{\n  \"version\": 1,\n}\n";
    let errs = errors_in("gateway.json", text);
    assert_eq!(errs[0].line, 3, "{errs:#?}");
}

const YAML_EQUIVALENT: &str = "\
version: 1
workers: 2
admin:
  address: 127.0.0.1:9901
accessLog:
  path: stdout
  sampleRate: 0.5
  fields: [ts, status, route]
reload:
  watch: false
  debounce: 500ms
listeners:
  - name: public
    address: 0.0.0.0:8080
    http2: false
    maxConnections: 500
    limits:
      maxRequestHeadersSize: 32KiB
      maxRequestBody: 1048576
    timeouts:
      readHeader: 5s
      idle: 2m
routes:
  - name: api
    listeners: [public]
    match:
      host: api.example.com
      pathPrefix: /v1
    cluster: api
    timeouts:
      request: 10s
    retry:
      attempts: 2
  - name: default
    cluster: web
clusters:
  - name: api
    protocol: http2
    endpoints:
      - address: 127.0.0.1:9001
        weight: 3
      - address: backend.internal:9002
    timeouts:
      connect: 1s
  - name: web
    endpoints:
      - address: 127.0.0.1:9003
";

const JSON_EQUIVALENT: &str = r#"{
  "version": 1,
  "workers": 2,
  "admin": { "address": "127.0.0.1:9901" },
  "accessLog": { "path": "stdout", "sampleRate": 0.5, "fields": ["ts", "status", "route"] },
  "reload": { "watch": false, "debounce": "500ms" },
  "listeners": [
    {
      "name": "public",
      "address": "0.0.0.0:8080",
      "http2": false,
      "maxConnections": 500,
      "limits": { "maxRequestHeadersSize": "32KiB", "maxRequestBody": 1048576 },
      "timeouts": { "readHeader": "5s", "idle": "2m" }
    }
  ],
  "routes": [
    {
      "name": "api",
      "listeners": ["public"],
      "match": { "host": "api.example.com", "pathPrefix": "/v1" },
      "cluster": "api",
      "timeouts": { "request": "10s" },
      "retry": { "attempts": 2 }
    },
    { "name": "default", "cluster": "web" }
  ],
  "clusters": [
    {
      "name": "api",
      "protocol": "http2",
      "endpoints": [
        { "address": "127.0.0.1:9001", "weight": 3 },
        { "address": "backend.internal:9002" }
      ],
      "timeouts": { "connect": "1s" }
    },
    { "name": "web", "endpoints": [{ "address": "127.0.0.1:9003" }] }
  ]
}
"#;

#[test]
fn a_json_file_equivalent_to_a_yaml_file_loads_the_same() {
    let yaml = valid(YAML_EQUIVALENT);
    let json = match load_str(Path::new("gateway.json"), JSON_EQUIVALENT) {
        Ok(loaded) => loaded,
        Err(invalid) => panic!("the JSON equivalent should be valid: {invalid}"),
    };
    // The JSON text is also what serde_json reads, so it is strict JSON.
    serde_json::from_str::<serde_json::Value>(JSON_EQUIVALENT).unwrap();

    let mut a = yaml.config.clone();
    let mut b = json.config.clone();
    assert_eq!(a.source, PathBuf::from("gateway.yaml"));
    assert_eq!(b.source, PathBuf::from("gateway.json"));
    a.source = PathBuf::new();
    b.source = PathBuf::new();
    assert_eq!(format!("{a:#?}"), format!("{b:#?}"));
    assert_eq!(yaml.warnings.len(), json.warnings.len());

    // Spot-check that the shared model is really the one written in both files.
    let c = &yaml.config;
    assert_eq!(c.workers, 2);
    assert_eq!(
        c.admin.as_ref().unwrap().address,
        "127.0.0.1:9901".parse().unwrap()
    );
    assert!(!c.reload.watch);
    assert_eq!(c.reload.debounce, Duration::from_millis(500));
    let l = &c.listeners[0];
    assert!(!l.http2);
    assert_eq!(l.max_connections, 500);
    assert_eq!(l.limits.max_request_headers_size, 32 * 1024);
    assert_eq!(l.limits.max_request_body, 1_048_576);
    assert_eq!(l.timeouts.read_header, Duration::from_secs(5));
    assert_eq!(l.timeouts.idle, Duration::from_secs(120));
    let r = &c.routes[0];
    assert_eq!(r.listeners.as_deref(), Some(&["public".to_string()][..]));
    assert_eq!(r.host, HostMatch::Exact("api.example.com".into()));
    assert_eq!(r.path_prefix, "/v1");
    assert_eq!(r.timeouts.request, Some(Duration::from_secs(10)));
    assert_eq!(r.retry_attempts, 2);
    assert_eq!(c.clusters[0].protocol, Protocol::Http2);
    assert_eq!(c.clusters[0].timeouts.connect, Duration::from_secs(1));
    assert_eq!(c.clusters[0].endpoints[0].weight, 3);
    assert_eq!(c.clusters[0].endpoints[1].weight, 1);
}

#[test]
fn errors_in_a_json_file_carry_the_key_path_and_line() {
    let text = "{\n  \"version\": 1,\n  \"listeners\": [\n    { \"name\": \"public\", \"address\": \"127.0.0.1:8080\", \"maxConections\": 5 }\n  ],\n  \"routes\": [{ \"name\": \"default\", \"cluster\": \"app\" }],\n  \"clusters\": [\n    { \"name\": \"app\", \"endpoints\": [{ \"address\": \"127.0.0.1:9000\", \"weight\": 0 }] }\n  ]\n}\n";
    let errs = errors_in("gateway.json", text);
    let e = error_at(&errs, "listeners[0].maxConections");
    assert_eq!(e.file, PathBuf::from("gateway.json"));
    assert_eq!(e.line, 4, "{e:?}");
    assert_eq!(e.col, position_of(text, "\"maxConections\"").1, "{e:?}");
    let e = error_at(&errs, "clusters[0].endpoints[0].weight");
    assert_eq!(e.line, 8, "{e:?}");
    assert_eq!(errs.len(), 2, "{errs:#?}");
}

#[test]
fn an_empty_file_or_a_non_mapping_document_is_rejected() {
    let errs = errors("");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].message.contains("mapping"), "{errs:#?}");
    let errs = errors("- just\n- a list\n");
    assert!(errs[0].message.contains("mapping"), "{errs:#?}");
}

#[test]
fn a_key_repeated_in_one_mapping_is_rejected() {
    let text = format!("{MINIMAL}workers: 1\nworkers: 2\n");
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_error(
        &errs,
        "workers",
        line_of(&text, "workers: 2"),
        "duplicate key",
    );
}

#[test]
fn only_version_one_is_accepted() {
    let text = MINIMAL.replace("version: 1", "version: 2");
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_error(&errs, "version", 1, "only version 1 exists");
}

#[test]
fn relative_paths_are_relative_to_the_config_files_folder() {
    // Validation checks the access log could be created, so its folders must exist.
    let etc = tempfile::tempdir().unwrap();
    let var = tempfile::tempdir().unwrap();
    std::fs::create_dir(etc.path().join("logs")).unwrap();
    let config = etc.path().join("gateway.yaml");
    let text = format!("{MINIMAL}accessLog:\n  path: logs/access.log\n");
    let loaded = load_str(&config, &text).unwrap();
    assert_eq!(
        loaded.config.access_log.unwrap().target,
        LogTarget::File(etc.path().join("logs/access.log"))
    );
    let absolute = var.path().join("gateway.log");
    let text = format!("{MINIMAL}accessLog:\n  path: {}\n", absolute.display());
    let loaded = load_str(&config, &text).unwrap();
    assert_eq!(
        loaded.config.access_log.unwrap().target,
        LogTarget::File(absolute)
    );
}

#[test]
fn admin_token_file_is_read_relative_to_the_config_and_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), "s3cret\n").unwrap();
    std::fs::write(dir.path().join("empty.token"), "\n").unwrap();
    let config = dir.path().join("gateway.yaml");

    let text = format!("{MINIMAL}admin:\n  address: 127.0.0.1:9901\n  tokenFile: admin.token\n");
    std::fs::write(&config, &text).unwrap();
    let loaded = load(&config).unwrap_or_else(|invalid| panic!("{invalid}"));
    let admin = loaded.config.admin.unwrap();
    assert_eq!(admin.token_file, Some(dir.path().join("admin.token")));

    for (token, needle) in [("missing.token", "cannot read"), ("empty.token", "empty")] {
        let text = format!("{MINIMAL}admin:\n  address: 127.0.0.1:9901\n  tokenFile: {token}\n");
        std::fs::write(&config, &text).unwrap();
        let errs = load(&config).unwrap_err().errors;
        assert_eq!(errs.len(), 1, "{errs:#?}");
        let e = &errs[0];
        assert_eq!(e.file, config);
        assert_eq!(e.path, "admin.tokenFile");
        assert_eq!(e.line, line_of(&text, "tokenFile"));
        assert!(e.message.contains(needle), "{e:?}");
    }
}

#[test]
fn an_entry_with_a_bad_name_still_has_its_other_errors_reported() {
    // Every error in the file is reported: an invalid name must not hide the address
    // clash or the missing cluster of the same entry.
    let text = "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
  - name: bad name
    address: 127.0.0.1:8080
routes:
  - name: bad route
    cluster: nowhere
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
";
    let errs = errors(text);
    let mut found = paths(&errs);
    found.sort_unstable();
    assert_eq!(
        found,
        [
            "listeners[1].address",
            "listeners[1].name",
            "routes[0].cluster",
            "routes[0].name",
        ],
        "{errs:#?}"
    );
}

#[test]
fn problems_display_as_file_line_column_path_and_message() {
    let text = format!("{MINIMAL}lisenters: []\n");
    let errs = errors(&text);
    let (line, col) = position_of(&text, "lisenters");
    let shown = errs[0].to_string();
    assert!(
        shown.starts_with(&format!(
            "gateway.yaml:{line}:{col}: lisenters: unknown key"
        )),
        "{shown}"
    );
}

// ---- 2. every error in one file, together ---------------------------------------------

#[test]
fn every_error_in_a_file_is_reported_together() {
    let text = "\
version: 1
workers: many
admin:
  address: 127.0.0.1:9901
  tokn: x
accessLog:
  sampleRate: 3
  fields: [ts, nope]
listeners:
  - name: public
    address: 0.0.0.0:8080
    timeouts:
      idle: 60
  - name: public
    address: 0.0.0.0:8081
routes:
  - name: api
    match:
      host: \"*\"
      pathPrefix: api
    cluster: missing
  - name: default
    cluster: app
    retry:
      attempts: many
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1
        weight: 1001
  - name: empty
    endpoints: []
";
    let invalid = load_yaml(text).unwrap_err();
    let errs = &invalid.errors;
    let expected = [
        ("workers", "workers: many"),
        ("admin.tokn", "tokn"),
        ("accessLog.sampleRate", "sampleRate: 3"),
        ("accessLog.fields[1]", "nope"),
        ("listeners[0].timeouts.idle", "idle: 60"),
        (
            "listeners[1].name",
            "name: public\n    address: 0.0.0.0:8081",
        ),
        ("routes[0].match.host", "\"*\""),
        ("routes[0].match.pathPrefix", "pathPrefix: api"),
        ("routes[0].cluster", "cluster: missing"),
        ("routes[1].retry.attempts", "attempts: many"),
        ("clusters[0].endpoints[0].address", "address: 127.0.0.1\n"),
        ("clusters[0].endpoints[0].weight", "1001"),
        ("clusters[1].endpoints", "endpoints: []"),
    ];
    for (path, needle) in expected {
        let e = error_at(errs, path);
        assert_eq!(e.file, PathBuf::from(YAML_FILE));
        if path == "routes[0].cluster" {
            // A cross-reference: its exact line is checked by
            // `route_naming_a_missing_cluster_is_rejected`; here, within its route.
            let route = line_of(text, "name: api")..=line_of(text, needle);
            assert!(route.contains(&e.line), "line of `{path}`: {e:?}");
        } else {
            assert_eq!(e.line, line_of(text, needle), "line of `{path}`: {e:?}");
        }
    }
    assert!(errs.len() >= 6, "{errs:#?}");
    assert_eq!(errs.len(), expected.len(), "{errs:#?}");
    // One error per problem: no path is reported twice.
    let mut seen = paths(errs);
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), errs.len(), "{errs:#?}");
    // The rendered error lists them all.
    let rendered = invalid.to_string();
    assert!(
        rendered.contains(&format!("({} errors)", expected.len())),
        "{rendered}"
    );
    for (path, _) in expected {
        assert!(
            rendered.contains(&format!(": {path}: ")),
            "{path} in {rendered}"
        );
    }
}

// ---- 3. warnings -----------------------------------------------------------------------

#[test]
fn routes_with_the_same_host_and_path_prefix_give_a_warning_and_the_file_is_still_valid() {
    let text = "\
version: 1
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: first
    match:
      host: api.example.com
      pathPrefix: /v1
    cluster: app
  - name: second
    match:
      host: API.example.com
      pathPrefix: /v1
    cluster: app
  - name: other-prefix
    match:
      host: api.example.com
      pathPrefix: /v2
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
";
    let loaded = valid(text);
    assert_eq!(loaded.config.routes.len(), 3);
    assert_eq!(loaded.warnings.len(), 1, "{:#?}", loaded.warnings);
    let w = &loaded.warnings[0];
    assert_eq!(w.file, PathBuf::from(YAML_FILE));
    assert!(w.path.starts_with("routes[1]"), "{w:?}");
    assert!(w.line > 0, "{w:?}");
    assert!(
        w.message.contains("routes[0]"),
        "names the first route: {w:?}"
    );
    assert!(w.message.contains("first one wins"), "{w:?}");
}

#[test]
fn warnings_are_kept_alongside_errors() {
    let text = "\
version: 1
workers: lots
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: a
    cluster: app
  - name: b
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
";
    let invalid = load_yaml(text).unwrap_err();
    assert_eq!(paths(&invalid.errors), ["workers"]);
    assert_eq!(invalid.warnings.len(), 1, "{:#?}", invalid.warnings);
}

// ---- 4. defaults -----------------------------------------------------------------------

#[test]
fn defaults_are_applied_to_omitted_keys() {
    let loaded = valid(MINIMAL);
    let c = &loaded.config;
    assert_eq!(c.workers, 0, "0 = one worker per CPU core");
    assert!(c.admin.is_none());
    assert!(c.access_log.is_none());
    assert!(c.reload.watch);
    assert_eq!(c.reload.debounce, Duration::from_millis(250));

    let l = &c.listeners[0];
    assert_eq!(l.timeouts.read_header, Duration::from_secs(10));
    assert_eq!(l.timeouts.read, Duration::from_secs(30));
    assert_eq!(l.timeouts.write, Duration::from_secs(30));
    assert_eq!(l.timeouts.idle, Duration::from_secs(60));
    assert_eq!(l.max_connections, 10_000);
    assert_eq!(l.limits.max_request_headers_size, 64 * 1024);
    assert_eq!(l.limits.max_request_body, 0);
    assert!(l.http2);

    let r = &c.routes[0];
    assert_eq!(r.listeners, None, "default: every HTTP listener");
    assert_eq!(r.host, HostMatch::Any);
    assert_eq!(r.path_prefix, "/");
    assert_eq!(r.retry_attempts, 1);
    assert_eq!(r.timeouts.request, None, "no request timeout by default");
    assert_eq!(r.timeouts.connect, None, "inherits the cluster's");

    let cl = &c.clusters[0];
    assert_eq!(cl.protocol, Protocol::Http1);
    assert_eq!(cl.timeouts.connect, Duration::from_secs(5));
    assert_eq!(cl.timeouts.read, Duration::from_secs(30));
    assert_eq!(cl.timeouts.write, Duration::from_secs(30));
    assert_eq!(cl.endpoints[0].weight, 1);
}

#[test]
fn partly_given_sections_keep_the_defaults_of_the_other_keys() {
    let text = "\
version: 1
accessLog:
  path: stdout
listeners:
  - name: public
    address: 127.0.0.1:8080
    timeouts:
      idle: 5s
    limits:
      maxRequestBody: 1MiB
routes:
  - name: default
    cluster: app
    retry: {}
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
    timeouts:
      read: 2s
";
    let c = valid(text).config;
    let l = &c.listeners[0];
    assert_eq!(l.timeouts.idle, Duration::from_secs(5));
    assert_eq!(l.timeouts.read_header, Duration::from_secs(10));
    assert_eq!(l.timeouts.read, Duration::from_secs(30));
    assert_eq!(l.timeouts.write, Duration::from_secs(30));
    assert_eq!(l.limits.max_request_headers_size, 64 * 1024);
    assert_eq!(c.routes[0].retry_attempts, 1);
    assert_eq!(c.clusters[0].timeouts.connect, Duration::from_secs(5));
    assert_eq!(c.clusters[0].timeouts.read, Duration::from_secs(2));
    let log = c.access_log.unwrap();
    assert_eq!(log.target, LogTarget::Stdout);
    assert_eq!(log.sample_rate, 1.0);
    assert!(log.always_log_errors);
    assert!(log.fields.is_empty(), "empty = every field");
}

// ---- 5. the real binary ------------------------------------------------------------------

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
}

#[test]
fn validate_command_exits_zero_for_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("gateway.yaml", YAML_EQUIVALENT),
        ("gateway.json", JSON_EQUIVALENT),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let out = gateway()
            .args(["validate", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{name}: stderr:\n{stderr}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("valid"),
            "{name}: {out:?}"
        );
    }
}

#[test]
fn validate_command_exits_one_and_prints_every_error_with_file_line_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    let text = "\
version: 1
listeners:
  - name: public
    address: 0.0.0.0:8080
    timeouts:
      raed: 30s
routes:
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
        weight: 0
      - address: 127.0.0.1
";
    std::fs::write(&file, text).unwrap();
    let out = gateway()
        .args(["validate", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    let file_name = file.display().to_string();
    for (path, needle) in [
        ("listeners[0].timeouts.raed", "raed"),
        ("clusters[0].endpoints[0].weight", "weight: 0"),
        ("clusters[0].endpoints[1].address", "address: 127.0.0.1\n"),
    ] {
        let line = line_of(text, needle);
        let reported = stderr
            .lines()
            .find(|l| l.contains(path))
            .unwrap_or_else(|| panic!("`{path}` is not reported on stderr:\n{stderr}"));
        assert!(
            reported.contains(&format!("{file_name}:{line}:")),
            "`{path}` should be reported at {file_name}:{line}: {reported}"
        );
    }
    assert!(stderr.contains("3 errors"), "{stderr}");
}

#[test]
fn validate_command_reports_an_unreadable_file_and_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("missing.yaml");
    let out = gateway()
        .args(["validate", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.yaml"), "{stderr}");
}

#[test]
fn validate_command_prints_warnings_and_still_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.yaml");
    let text = MINIMAL.replace(
        "routes:\n",
        "routes:\n  - name: shadowed\n    cluster: app\n",
    );
    std::fs::write(&file, &text).unwrap();
    let out = gateway()
        .args(["validate", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("warning"), "{stderr}");
    assert!(stderr.contains("routes[1]"), "{stderr}");
}

#[test]
fn version_command_prints_the_version() {
    for args in [&["version"][..], &["--version"][..]] {
        let out = gateway().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(env!("CARGO_PKG_VERSION")),
            "{args:?} prints the version: {stdout}"
        );
        assert!(stdout.contains("gateway"), "{stdout}");
    }
    assert_eq!(gateway::VERSION, env!("CARGO_PKG_VERSION"));
}

// ---- 6. shipped examples -------------------------------------------------------------------

#[test]
fn every_example_config_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "expected at least one example config in {}",
        dir.display()
    );
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| load(f).err().map(|invalid| invalid.to_string()))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_quickstart_example_has_what_the_docs_promise() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart.yaml");
    let loaded = load(&path).unwrap_or_else(|invalid| panic!("{invalid}"));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let c = &loaded.config;
    assert_eq!(
        c.admin.as_ref().unwrap().address,
        "127.0.0.1:9901".parse().unwrap()
    );
    assert_eq!(c.access_log.as_ref().unwrap().target, LogTarget::Stdout);
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.listeners[0].name, "public");
    assert_eq!(c.listeners[0].address, "127.0.0.1:8080".parse().unwrap());
    assert!(c
        .routes
        .iter()
        .any(|r| matches!(r.host, HostMatch::Exact(_))));
    assert!(c
        .routes
        .iter()
        .any(|r| r.path_prefix != "/" && r.timeouts.request.is_some()));
    assert!(c
        .routes
        .iter()
        .any(|r| r.host == HostMatch::Any && r.path_prefix == "/"));
    assert_eq!(c.clusters.len(), 2);
    assert!(c
        .clusters
        .iter()
        .any(|cl| cl.endpoints.iter().any(|e| e.weight > 1)));
}

#[test]
fn a_wildcard_listener_and_a_specific_one_on_the_same_port_clash() {
    let text = "listeners:\n  - { name: a, address: \"0.0.0.0:8080\" }\n  - name: b\n    address: \"127.0.0.1:8080\"\n  - { name: c, address: \"127.0.0.1:8081\" }\n  - { name: d, address: \"[::]:8080\" }\n";
    let errs = errors(text);
    let e = assert_error(
        &errs,
        "listeners[1].address",
        line_of(text, "address: \"127.0.0.1:8080\""),
        "overlaps",
    );
    assert!(e.message.contains("0.0.0.0:8080"), "{}", e.message);
    // Another port, and the other address family, are fine.
    assert_eq!(
        paths(&errs)
            .iter()
            .filter(|p| p.ends_with(".address"))
            .count(),
        1,
        "{errs:?}"
    );
}

#[test]
fn examples_bind_loopback_so_trying_one_exposes_nothing() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let c = load(&path).unwrap_or_else(|e| panic!("{e}")).config;
        let addrs = c
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.address))
            .chain(c.l4.iter().map(|l| (l.name.clone(), l.address)))
            .chain(c.admin.iter().map(|a| ("admin".to_string(), a.address)));
        for (name, addr) in addrs {
            assert!(
                addr.ip().is_loopback(),
                "{}: {name} binds {addr}, not loopback",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "checked {checked} addresses");
}

// ---- 7. messages that help ------------------------------------------------------------------

#[test]
fn a_near_miss_key_gets_a_did_you_mean() {
    let text = MINIMAL
        .replace(
            "      - address: 127.0.0.1:9000\n",
            "      - address: 127.0.0.1:9000\n        wieght: 3\n",
        )
        .replace(
            "    address: 127.0.0.1:8080\n",
            "    address: 127.0.0.1:8080\n    max_connections: 10\n    Timeouts: {}\n",
        );
    let errs = errors(&text);
    let e = assert_error(
        &errs,
        "clusters[0].endpoints[0].wieght",
        line_of(&text, "wieght"),
        "unknown key",
    );
    assert!(e.message.contains("did you mean `weight`?"), "{e:?}");
    let e = error_at(&errs, "listeners[0].max_connections");
    assert!(
        e.message.contains("did you mean `maxConnections`?"),
        "{e:?}"
    );
    let e = error_at(&errs, "listeners[0].Timeouts");
    assert!(e.message.contains("did you mean `timeouts`?"), "{e:?}");
    // Nothing close: no guess, just the list.
    let errs = errors(&format!("{MINIMAL}colour: blue\n"));
    assert!(!errs[0].message.contains("did you mean"), "{errs:?}");
    assert!(errs[0].message.contains("expected one of"), "{errs:?}");
}

#[test]
fn errors_are_listed_in_file_order() {
    let text = "\
routes:
  - name: r
    cluster: missing
listeners:
  - name: public
    address: nowhere
clusters:
  - name: c
    endpoints:
      - address: 127.0.0.1:0
version: 3
";
    let errs = errors(text);
    let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
    let mut sorted = lines.clone();
    sorted.sort_unstable();
    assert_eq!(lines, sorted, "{errs:#?}");
    assert_eq!(errs.len(), 4, "{errs:#?}");
}

#[test]
fn an_empty_file_says_it_is_empty() {
    for text in ["", "\n", "# only a comment\n"] {
        let errs = errors(text);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(errs[0].message.contains("the file is empty"), "{errs:#?}");
    }
}

#[test]
fn a_json_syntax_error_states_its_position_once() {
    let errs = errors_in(
        "gateway.json",
        "{\n  \"listeners\": [\n    {\"name\": }\n  ]\n}\n",
    );
    assert_eq!(errs.len(), 1);
    let shown = errs[0].to_string();
    assert!(shown.starts_with("gateway.json:3:"), "{shown}");
    assert!(
        !shown.contains("line 3"),
        "the position is given twice: {shown}"
    );
    assert!(
        !shown.contains("column"),
        "the position is given twice: {shown}"
    );
}

#[test]
fn no_message_uses_rust_range_syntax() {
    let text = "\
workers: 5000
listeners:
  - name: public
    address: 127.0.0.1:8080
    maxConnections: 0
routes:
  - name: default
    cluster: app
    retry: { attempts: 99 }
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:0
        weight: 0
      - address: example.com:99999
accessLog:
  sampleRate: 2
";
    let errs = errors(text);
    assert!(errs.len() >= 6, "{errs:#?}");
    for e in &errs {
        assert!(!e.message.contains("..="), "{e}");
        assert!(!e.message.contains(".."), "{e}");
    }
}

#[test]
fn durations_and_sizes_follow_one_grammar() {
    let text = |readheader: &str, body: &str| {
        MINIMAL.replace(
            "    address: 127.0.0.1:8080\n",
            &format!(
                "    address: 127.0.0.1:8080\n    timeouts: {{ readHeader: \"{readheader}\" }}\n    limits: {{ maxRequestBody: \"{body}\" }}\n"
            ),
        )
    };
    // A fraction and a combination are fine in both.
    let c = valid(&text("1.5s", "1.5MiB")).config;
    assert_eq!(
        c.listeners[0].timeouts.read_header,
        Duration::from_millis(1500)
    );
    assert_eq!(c.listeners[0].limits.max_request_body, 1_572_864);
    let c = valid(&text("1m30s", "64KB")).config;
    assert_eq!(c.listeners[0].timeouts.read_header, Duration::from_secs(90));
    assert_eq!(c.listeners[0].limits.max_request_body, 64_000);
    // A space is refused in a duration (as in 0.5) with the spelling to use; in a size,
    // which 0.5 read, it is deprecated: read, with the same advice as a warning.
    let invalid = load_yaml(&text("30 s", "64 KB")).unwrap_err();
    let d = error_at(&invalid.errors, "listeners[0].timeouts.readHeader");
    assert!(
        d.message.contains("without spaces") && d.message.contains("\"30s\""),
        "{d}"
    );
    assert_eq!(invalid.errors.len(), 1, "{:#?}", invalid.errors);
    let loaded = valid(&text("30s", "64 KB"));
    assert_eq!(loaded.config.listeners[0].limits.max_request_body, 64_000);
    let w = &loaded.warnings[0];
    assert_eq!(w.path, "listeners[0].limits.maxRequestBody");
    assert!(
        w.message.contains("deprecated") && w.message.contains("`64KB`"),
        "{w}"
    );
    // What is not whole: sub-millisecond durations, fractions of a byte.
    let errs = errors(&text("1.0001s", "1.1KiB"));
    assert!(error_at(&errs, "listeners[0].timeouts.readHeader")
        .message
        .contains("milliseconds"));
    assert!(error_at(&errs, "listeners[0].limits.maxRequestBody")
        .message
        .contains("whole number of bytes"));
    // A bare number is not a duration, and says which unit is missing.
    let errs = errors(&MINIMAL.replace(
        "    address: 127.0.0.1:8080\n",
        "    address: 127.0.0.1:8080\n    timeouts: { idle: 30 }\n",
    ));
    assert!(
        error_at(&errs, "listeners[0].timeouts.idle")
            .message
            .contains("\"30s\""),
        "{errs:#?}"
    );
}

#[test]
fn zero_is_refused_for_every_timeout_that_cannot_be_off_and_accepted_where_it_means_off() {
    let base = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
    timeouts: { readHeader: 0s, read: 0s, write: 0s, idle: 0s }
routes:
  - name: default
    cluster: app
    timeouts: { connect: 0s, read: 0s, write: 0s, request: 0s }
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
    timeouts: { connect: 0s, read: 0s, write: 0s }
    passiveHealth: { baseEjectionTime: 0s, slowStart: 0s, latency: { threshold: 0s } }
shutdown: { drainTimeout: 0s, delay: 0s }
reload: { debounce: 0s }
l4:
  listeners:
    - { name: pg, address: 127.0.0.1:15432, cluster: app, idleTimeout: 0s, maxDuration: 0s }
";
    let invalid = load_yaml(base).unwrap_err();
    let mut refused: Vec<&str> = invalid.errors.iter().map(|e| e.path.as_str()).collect();
    refused.sort_unstable();
    assert_eq!(
        refused,
        [
            "clusters[0].passiveHealth.baseEjectionTime",
            "clusters[0].timeouts.connect",
            "clusters[0].timeouts.read",
            "l4.listeners[0].idleTimeout",
            "listeners[0].timeouts.readHeader",
            "routes[0].timeouts.connect",
            "routes[0].timeouts.read",
            "shutdown.drainTimeout",
        ],
        "{:#?}",
        invalid.errors
    );
    for e in &invalid.errors {
        assert!(e.message.contains("cannot be 0s"), "{e}");
    }
    // 0s meant "off" for these in 0.5: still off, with a warning, for one minor release
    // (docs/versioning.md), then refused.
    let mut deprecated: Vec<&str> = invalid
        .warnings
        .iter()
        .filter(|w| w.message.contains("deprecated"))
        .map(|w| w.path.as_str())
        .collect();
    deprecated.sort_unstable();
    assert_eq!(
        deprecated,
        [
            "clusters[0].passiveHealth.latency.threshold",
            "clusters[0].timeouts.write",
            "listeners[0].timeouts.idle",
            "listeners[0].timeouts.read",
            "listeners[0].timeouts.write",
            "routes[0].timeouts.write",
        ],
        "{:#?}",
        invalid.warnings
    );
}

#[test]
fn a_zero_timeout_that_meant_off_in_0_5_still_means_off() {
    let text = MINIMAL
        .replace(
            "    address: 127.0.0.1:8080\n",
            "    address: 127.0.0.1:8080\n    timeouts: { idle: 0s, write: 0s }\n",
        )
        .replace(
            "    cluster: app\n",
            "    cluster: app\n    timeouts: { write: 0s }\n",
        );
    let loaded = valid(&text);
    let t = loaded.config.listeners[0].timeouts;
    assert_eq!((t.idle, t.write), (Duration::ZERO, Duration::ZERO));
    assert_eq!(loaded.config.routes[0].timeouts.write, Some(Duration::ZERO));
    assert_eq!(loaded.warnings.len(), 3, "{:#?}", loaded.warnings);
}

// ---- 8. environment variables ---------------------------------------------------------------

fn load_env(text: &str, vars: &[(&str, &str)]) -> Result<Loaded, Invalid> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let env = move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    gateway::config::load_str_with_env(Path::new(YAML_FILE), text, &env)
}

#[test]
fn environment_variables_fill_values_with_their_defaults_and_types() {
    let text = "\
listeners:
  - name: public
    address: \"${BIND:-127.0.0.1}:${PORT}\"
    maxConnections: ${MAX_CONN}
routes:
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: ${UPSTREAM}
        weight: \"${WEIGHT}\"
";
    let loaded = load_env(
        text,
        &[
            ("PORT", "8181"),
            ("MAX_CONN", "77"),
            ("UPSTREAM", "10.1.2.3:9000"),
            ("WEIGHT", "4"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let c = loaded.config;
    assert_eq!(c.listeners[0].address, "127.0.0.1:8181".parse().unwrap());
    assert_eq!(c.listeners[0].max_connections, 77);
    assert_eq!(c.clusters[0].endpoints[0].address, "10.1.2.3:9000");
    assert_eq!(
        c.clusters[0].endpoints[0].weight, 4,
        "a quoted whole ${{…}} reads as a number"
    );

    // JSON has only quoted values: they work the same way.
    let json = "{\"listeners\": [{\"name\": \"public\", \"address\": \"127.0.0.1:${PORT}\", \"maxConnections\": \"${MAX_CONN}\"}], \"routes\": [{\"name\": \"r\", \"cluster\": \"c\"}], \"clusters\": [{\"name\": \"c\", \"endpoints\": [{\"address\": \"127.0.0.1:9\"}]}]}";
    let vars = [("PORT", "8282"), ("MAX_CONN", "5")];
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let env = move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let c = gateway::config::load_str_with_env(Path::new("gateway.json"), json, &env)
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    assert_eq!(c.listeners[0].max_connections, 5);
}

#[test]
fn a_variable_that_is_not_set_is_an_error_at_the_key_path_that_uses_it() {
    let text = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: \"${DB_HOST}:5432\"
admin:
  address: 127.0.0.1:9901
  tokenFile: ${TOKEN_FILE
";
    let errs = load_env(text, &[]).unwrap_err().errors;
    let e = assert_error(
        &errs,
        "clusters[0].endpoints[0].address",
        line_of(text, "DB_HOST"),
        "DB_HOST",
    );
    assert!(
        e.message.contains("not set") && e.message.contains("${DB_HOST:-"),
        "{e}"
    );
    assert_eq!(
        errs.iter()
            .filter(|e| e.path == "clusters[0].endpoints[0].address")
            .count(),
        1,
        "one error for the variable, not a second for the value it left: {errs:#?}"
    );
    let e = error_at(&errs, "admin.tokenFile");
    assert!(e.message.contains("no closing `}`"), "{e}");
}

#[test]
fn a_value_from_the_environment_never_changes_the_files_structure() {
    let text = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: ${ROUTE}
    cluster: app
clusters:
  - name: app
    endpoints:
      - address: 127.0.0.1:9000
";
    let errs = load_env(text, &[("ROUTE", "x\nadmin: { address: 0.0.0.0:1 }")])
        .unwrap_err()
        .errors;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(
        errs[0].path, "routes[0].name",
        "read as one (invalid) name: {errs:#?}"
    );
}

#[test]
fn nothing_to_serve_is_a_warning_on_a_file_that_is_otherwise_valid() {
    for text in [
        "version: 1\n",
        "{}\n",
        "clusters: [{ name: c, endpoints: [{ address: \"127.0.0.1:9\" }] }]\n",
    ] {
        let loaded = valid(text);
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.message.contains("nothing to serve")),
            "{text:?}: {:#?}",
            loaded.warnings
        );
    }
    assert!(!valid(MINIMAL)
        .warnings
        .iter()
        .any(|w| w.message.contains("nothing to serve")));
}

#[test]
fn an_access_log_path_is_checked_without_being_created() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    let with = |p: &str| format!("{MINIMAL}accessLog: {{ path: \"{p}\" }}\n");
    let e = load_str(&config, &with("missing/access.log"))
        .unwrap_err()
        .errors;
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].path, "accessLog.path");
    assert!(e[0].message.contains("does not exist"), "{e:#?}");
    std::fs::create_dir(dir.path().join("adir")).unwrap();
    let e = load_str(&config, &with("adir")).unwrap_err().errors;
    assert!(e[0].message.contains("is a directory"), "{e:#?}");
    std::fs::write(dir.path().join("afile"), "").unwrap();
    let e = load_str(&config, &with("afile/access.log"))
        .unwrap_err()
        .errors;
    assert!(e[0].message.contains("is not a directory"), "{e:#?}");
    // A file that can be created is fine, and validation does not create it.
    load_str(&config, &with("access.log")).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !dir.path().join("access.log").exists(),
        "validation created the access log"
    );
}
