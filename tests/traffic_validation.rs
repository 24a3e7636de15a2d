//! Validation of the traffic keys (routes: conditions, `rewrite`, `headers`, `redirect`,
//! `directResponse`, `rateLimit`; clusters: `activeHealth`): each mistake is reported at
//! its key path and line, with what was expected, and every mistake in a file at once.
#![allow(clippy::unwrap_used)]

use gateway::config::{load_str, Loaded, Problem};
use std::path::Path;

fn load(text: &str) -> Result<Loaded, Vec<Problem>> {
    load_str(Path::new("gateway.yaml"), text).map_err(|e| e.errors)
}

fn problems(text: &str) -> Vec<Problem> {
    match load(text) {
        Ok(l) => panic!("expected errors, it loaded: {:#?}", l.config.routes),
        Err(e) => e,
    }
}

/// The error at `path`, which must be on the line of `line_with` and mention `says`.
fn expect(errors: &[Problem], text: &str, path: &str, line_with: &str, says: &str) {
    let Some(e) = errors.iter().find(|p| p.path == path) else {
        panic!("no error at `{path}`:\n{errors:#?}");
    };
    let at = text
        .find(line_with)
        .unwrap_or_else(|| panic!("`{line_with}` not in the text"));
    assert_eq!(
        e.line,
        text[..at].matches('\n').count() + 1,
        "line of {path}: {e:?}"
    );
    assert!(
        e.message.to_lowercase().contains(&says.to_lowercase()),
        "{path} should say `{says}`: {e:?}"
    );
}

/// A listener and a cluster, for routes to go with.
const BASE: &str = "\
listeners: [{ name: public, address: 127.0.0.1:8080 }]
clusters: [{ name: app, endpoints: [{ address: 127.0.0.1:9000 }] }]
";

fn with_routes(routes: &str) -> String {
    format!("{BASE}routes:\n{routes}")
}

#[test]
fn route_conditions_are_checked_at_their_key_paths() {
    let text = with_routes(
        r#"  - name: a
    match:
      methods: [get, "GE T", POST, POST]
      headers:
        - { name: "x canary", value: "1" }
        - { name: x-env, value: prod, present: true }
        - { name: x-none }
        - { name: x-off, present: false }
        - { name: X-Env, value: "b" }
        - { name: host, present: true }
        - { name: x-bad, value: "a\nb" }
    cluster: app
  - name: b
    match: { methods: [] }
    cluster: app
"#,
    );
    let errs = problems(&text);
    let m = "routes[0].match.methods";
    expect(
        &errs,
        &text,
        &format!("{m}[0]"),
        "methods: [get",
        "write `GET`",
    );
    expect(
        &errs,
        &text,
        &format!("{m}[1]"),
        "methods: [get",
        "not an HTTP method",
    );
    expect(
        &errs,
        &text,
        &format!("{m}[3]"),
        "methods: [get",
        "listed twice",
    );
    let h = "routes[0].match.headers";
    expect(
        &errs,
        &text,
        &format!("{h}[0].name"),
        "x canary",
        "invalid header name",
    );
    expect(
        &errs,
        &text,
        &format!("{h}[1].present"),
        "x-env, value: prod",
        "not both",
    );
    expect(&errs, &text, &format!("{h}[2]"), "x-none", "`value`");
    expect(
        &errs,
        &text,
        &format!("{h}[3].present"),
        "x-off",
        "not supported",
    );
    expect(
        &errs,
        &text,
        &format!("{h}[4].name"),
        "X-Env",
        "one condition per header",
    );
    expect(
        &errs,
        &text,
        &format!("{h}[5].name"),
        "name: host",
        "match.host",
    );
    expect(
        &errs,
        &text,
        &format!("{h}[6].value"),
        "x-bad",
        "control characters",
    );
    expect(
        &errs,
        &text,
        "routes[1].match.methods",
        "methods: []",
        "at least one",
    );
    assert_eq!(errs.len(), 11, "{errs:#?}");
}

#[test]
fn valid_conditions_load_canonically_and_only_identical_ones_shadow() {
    let text = with_routes(
        r#"  - name: a
    match: { pathPrefix: /api, methods: [GET, PATCH], headers: [{ name: X-Canary, value: "1" }, { name: x-beta, present: true }] }
    cluster: app
  - name: b
    match: { pathPrefix: /api, methods: [GET] }
    cluster: app
  - name: c
    match: { pathPrefix: /api, headers: [{ name: x-beta, present: true }, { name: x-canary, value: "1" }], methods: [PATCH, GET] }
    cluster: app
"#,
    );
    let loaded = load(&text).unwrap();
    let a = &loaded.config.routes[0];
    assert_eq!(
        a.methods.as_ref().unwrap(),
        &[http::Method::GET, http::Method::PATCH]
    );
    assert_eq!(a.match_headers[0].name, "x-canary");
    assert_eq!(a.match_headers[0].value.as_ref().unwrap(), "1");
    assert_eq!(a.match_headers[1].value, None);
    // `c` has the same conditions as `a` in another order: it can never be chosen.
    assert_eq!(loaded.warnings.len(), 1, "{:#?}", loaded.warnings);
    assert_eq!(loaded.warnings[0].path, "routes[2]");
    assert!(loaded.warnings[0].message.contains("routes[0]"));
}

#[test]
fn rewrite_keys_are_checked_at_their_key_paths() {
    let text = with_routes(
        r#"  - name: a
    cluster: app
    rewrite: { pathPrefix: api, host: "a b" }
  - name: b
    cluster: app
    rewrite: { pathPrefix: "/x/../y", host: "h.test:0" }
  - name: c
    cluster: app
    rewrite: { pathPrefix: "/x?y", host: "[::1" , path: /z }
"#,
    );
    let errs = problems(&text);
    expect(
        &errs,
        &text,
        "routes[0].rewrite.pathPrefix",
        "pathPrefix: api",
        "must start with /",
    );
    expect(
        &errs,
        &text,
        "routes[0].rewrite.host",
        "a b",
        "invalid host",
    );
    expect(
        &errs,
        &text,
        "routes[1].rewrite.pathPrefix",
        "/x/../y",
        "not normalised",
    );
    expect(&errs, &text, "routes[1].rewrite.host", "h.test:0", "port");
    expect(
        &errs,
        &text,
        "routes[2].rewrite.pathPrefix",
        "/x?y",
        "query",
    );
    expect(
        &errs,
        &text,
        "routes[2].rewrite.host",
        "[::1",
        "invalid host",
    );
    expect(
        &errs,
        &text,
        "routes[2].rewrite.path",
        "path: /z",
        "unknown key",
    );
    assert_eq!(errs.len(), 7, "{errs:#?}");
}

#[test]
fn rewrites_with_ports_and_ip_hosts_load() {
    let text = with_routes(
        r#"  - { name: a, cluster: app, rewrite: { pathPrefix: /v2/, host: "api.internal:8080" } }
  - { name: b, cluster: app, rewrite: { host: "[2001:db8::1]:443" }, match: { pathPrefix: /b } }
  - { name: c, cluster: app, rewrite: { host: "10.0.0.1" }, match: { pathPrefix: /c } }
"#,
    );
    let loaded = load(&text).unwrap();
    let r = &loaded.config.routes;
    assert_eq!(r[0].rewrite.path_prefix.as_deref(), Some("/v2/"));
    assert_eq!(r[0].rewrite.host.as_deref(), Some("api.internal:8080"));
    assert_eq!(r[1].rewrite.path_prefix, None);
    assert_eq!(r[2].rewrite.host.as_deref(), Some("10.0.0.1"));
}

#[test]
fn the_upstream_path_is_an_access_log_field() {
    let text = format!(
        "{}accessLog: {{ fields: [path, upstreamPath, status] }}\n",
        with_routes("  - { name: a, cluster: app }\n")
    );
    let loaded = load(&text).unwrap();
    let fields: Vec<&str> = loaded
        .config
        .access_log
        .unwrap()
        .fields
        .iter()
        .map(|f| f.name())
        .collect();
    assert_eq!(fields, ["path", "upstreamPath", "status"]);
}

#[test]
fn header_rules_are_checked_at_their_key_paths() {
    let text = with_routes(
        r#"  - name: a
    cluster: app
    headers:
      request:
        set: { Connection: close, x-env: prod, X-ENV: dev, "bad name": x, x-num: 1 }
        add: { host: h, x-tag: "a\nb" }
        remove: [content-length, x-env, x-request-id, te]
      response:
        set: [not, a, map]
        replace: { server: x }
"#,
    );
    let errs = problems(&text);
    let rq = "routes[0].headers.request";
    expect(
        &errs,
        &text,
        &format!("{rq}.set.Connection"),
        "Connection: close",
        "hop-by-hop",
    );
    expect(
        &errs,
        &text,
        &format!("{rq}.set.X-ENV"),
        "X-ENV",
        "case-insensitive",
    );
    expect(
        &errs,
        &text,
        &format!("{rq}.set.bad name"),
        "bad name",
        "invalid header name",
    );
    expect(
        &errs,
        &text,
        &format!("{rq}.set.x-num"),
        "x-num",
        "quote numbers",
    );
    expect(
        &errs,
        &text,
        &format!("{rq}.add.host"),
        "host: h",
        "rewrite.host",
    );
    expect(
        &errs,
        &text,
        &format!("{rq}.add.x-tag"),
        "x-tag",
        "control characters",
    );
    expect(
        &errs,
        &text,
        &format!("{rq}.remove[0]"),
        "remove: [content-length",
        "frames the body",
    );
    expect(
        &errs,
        &text,
        &format!("{rq}.remove[1]"),
        "remove: [content-length",
        "remove runs first",
    );
    expect(
        &errs,
        &text,
        &format!("{rq}.remove[2]"),
        "remove: [content-length",
        "request id",
    );
    expect(
        &errs,
        &text,
        &format!("{rq}.remove[3]"),
        "remove: [content-length",
        "hop-by-hop",
    );
    let rs = "routes[0].headers.response";
    expect(
        &errs,
        &text,
        &format!("{rs}.set"),
        "set: [not",
        "expected a mapping",
    );
    expect(
        &errs,
        &text,
        &format!("{rs}.replace"),
        "replace:",
        "unknown key",
    );
    assert_eq!(errs.len(), 12, "{errs:#?}");
}

#[test]
fn header_rules_load_lower_cased_in_file_order() {
    let text = with_routes(
        r#"  - name: a
    cluster: app
    headers:
      request: { set: { X-Env: prod, x-b: "2" }, add: { x-env: extra }, remove: [X-Debug] }
      response: { remove: [server] }
"#,
    );
    let r = &load(&text).unwrap().config.routes[0];
    let names: Vec<&str> = r
        .request_headers
        .set
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(names, ["x-env", "x-b"]);
    assert_eq!(r.request_headers.add[0].1, "extra");
    assert_eq!(r.request_headers.remove[0], "x-debug");
    assert_eq!(r.response_headers.remove[0], "server");
    assert!(r.response_headers.set.is_empty());
}

#[test]
fn a_route_has_exactly_one_of_cluster_redirect_and_direct_response() {
    let text = with_routes(
        r#"  - name: both
    cluster: app
    redirect: { scheme: https }
  - name: none
    match: { pathPrefix: /none }
  - name: three
    match: { pathPrefix: /three }
    cluster: app
    redirect: { scheme: https }
    directResponse: { status: 200 }
"#,
    );
    let errs = problems(&text);
    expect(
        &errs,
        &text,
        "routes[0].redirect",
        "redirect: { scheme",
        "also has `cluster`",
    );
    expect(
        &errs,
        &text,
        "routes[1].cluster",
        "name: none",
        "missing required key `cluster`",
    );
    let two: Vec<&Problem> = errs
        .iter()
        .filter(|p| p.path.starts_with("routes[2]."))
        .collect();
    assert_eq!(two.len(), 2, "{two:#?}");
    assert_eq!(errs.len(), 4, "{errs:#?}");
}

#[test]
fn redirect_and_direct_response_keys_are_checked_at_their_key_paths() {
    let text = format!(
        "{BASE}routes:\n{}",
        r#"  - name: a
    redirect: { scheme: ftp, host: "h.test:8080", port: 0, path: "p", code: 304 }
  - name: b
    match: { pathPrefix: /b }
    redirect: { path: /x, pathPrefix: /y }
  - name: c
    match: { pathPrefix: /c }
    redirect: { code: 302 }
  - name: d
    match: { pathPrefix: /d }
    directResponse: { status: 101 }
  - name: e
    match: { pathPrefix: /e }
    directResponse: { status: 204, body: "x", contentType: "a\u0001b" }
  - name: f
    match: { pathPrefix: /f }
    directResponse: { body: "no status" }
  - name: g
    match: { pathPrefix: /g }
    redirect: { scheme: https }
    rewrite: { pathPrefix: / }
    timeouts: { request: 1s }
    retry: { attempts: 2 }
    headers: { request: { set: { x-a: b } }, response: { set: { x-ok: "1" } } }
"#
    );
    let errs = problems(&text);
    let r = "routes[0].redirect";
    expect(
        &errs,
        &text,
        &format!("{r}.scheme"),
        "scheme: ftp",
        "http or https",
    );
    expect(
        &errs,
        &text,
        &format!("{r}.host"),
        "scheme: ftp",
        "as `port`",
    );
    expect(
        &errs,
        &text,
        &format!("{r}.port"),
        "scheme: ftp",
        "out of range",
    );
    expect(
        &errs,
        &text,
        &format!("{r}.path"),
        "scheme: ftp",
        "must start with /",
    );
    expect(
        &errs,
        &text,
        &format!("{r}.code"),
        "scheme: ftp",
        "301, 302, 303, 307 or 308",
    );
    expect(
        &errs,
        &text,
        "routes[1].redirect.pathPrefix",
        "path: /x",
        "not both",
    );
    expect(
        &errs,
        &text,
        "routes[2].redirect",
        "code: 302",
        "must change at least one",
    );
    expect(
        &errs,
        &text,
        "routes[3].directResponse.status",
        "status: 101",
        "out of range",
    );
    expect(
        &errs,
        &text,
        "routes[4].directResponse.body",
        "status: 204",
        "no body",
    );
    expect(
        &errs,
        &text,
        "routes[4].directResponse.contentType",
        "status: 204",
        "control characters",
    );
    expect(
        &errs,
        &text,
        "routes[5].directResponse.status",
        "no status",
        "missing required key",
    );
    for key in ["rewrite", "timeouts", "retry", "headers.request"] {
        expect(
            &errs,
            &text,
            &format!("routes[6].{key}"),
            if key == "headers.request" {
                "headers: {"
            } else {
                key
            },
            "no effect on a route that answers by itself",
        );
    }
    assert_eq!(errs.len(), 15, "{errs:#?}");
}

#[test]
fn a_configuration_of_only_redirects_and_direct_responses_needs_no_cluster() {
    let text = "\
listeners: [{ name: plain, address: 127.0.0.1:8080 }]
routes:
  - { name: ok, match: { pathPrefix: /healthz }, directResponse: { status: 200, body: \"ok\" } }
  - { name: to-https, redirect: { scheme: https, port: 8443 } }
";
    let loaded = load(text).unwrap();
    assert!(loaded.config.clusters.is_empty());
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    use gateway::config::model::RouteAction;
    match &loaded.config.routes[1].action {
        RouteAction::Redirect(r) => {
            assert_eq!(
                (r.scheme.as_deref(), r.port, r.code),
                (Some("https"), Some(8443), 301)
            )
        }
        other => panic!("{other:?}"),
    }
    match &loaded.config.routes[0].action {
        RouteAction::Direct(d) => assert_eq!((d.status, d.body.as_str()), (200, "ok")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rate_limit_keys_are_checked_at_their_key_paths() {
    let text = with_routes(
        r#"  - name: a
    cluster: app
    rateLimit: { requestsPerSecond: 0 }
  - name: b
    match: { pathPrefix: /b }
    cluster: app
    rateLimit: { requestsPerSecond: -5, burst: 0, key: ip }
  - name: c
    match: { pathPrefix: /c }
    cluster: app
    rateLimit: { requestsPerSecond: "ten", key: "header:bad name" }
  - name: d
    match: { pathPrefix: /d }
    cluster: app
    rateLimit: { burst: 5, per: second }
"#,
    );
    let errs = problems(&text);
    expect(
        &errs,
        &text,
        "routes[0].rateLimit.requestsPerSecond",
        "requestsPerSecond: 0",
        "more than 0",
    );
    expect(
        &errs,
        &text,
        "routes[1].rateLimit.requestsPerSecond",
        "requestsPerSecond: -5",
        "out of range",
    );
    expect(
        &errs,
        &text,
        "routes[2].rateLimit.requestsPerSecond",
        "\"ten\"",
        "expected a number",
    );
    expect(
        &errs,
        &text,
        "routes[3].rateLimit.requestsPerSecond",
        "burst: 5, per",
        "missing required key",
    );
    expect(
        &errs,
        &text,
        "routes[3].rateLimit.per",
        "burst: 5, per",
        "unknown key",
    );
    assert!(
        errs.iter().all(|e| e.path != "routes[1].rateLimit.key"),
        "a limit whose rate is already wrong is not checked further: {errs:#?}"
    );
    assert_eq!(errs.len(), 5, "{errs:#?}");

    // With a valid rate, the rest is checked too.
    let text = with_routes(
        r#"  - { name: a, cluster: app, rateLimit: { requestsPerSecond: 5, burst: 0 } }
  - { name: b, match: { pathPrefix: /b }, cluster: app, rateLimit: { requestsPerSecond: 5, key: ip } }
  - { name: c, match: { pathPrefix: /c }, cluster: app, rateLimit: { requestsPerSecond: 5, key: "header:bad name" } }
"#,
    );
    let errs = problems(&text);
    expect(
        &errs,
        &text,
        "routes[0].rateLimit.burst",
        "burst: 0",
        "out of range",
    );
    expect(
        &errs,
        &text,
        "routes[1].rateLimit.key",
        "key: ip",
        "unknown key kind `ip`",
    );
    expect(
        &errs,
        &text,
        "routes[2].rateLimit.key",
        "bad name",
        "not a valid header name",
    );
    assert_eq!(errs.len(), 3, "{errs:#?}");
}

#[test]
fn rate_limits_load_with_their_defaults() {
    use gateway::config::model::RateLimitKey;
    let text = with_routes(
        r#"  - { name: a, cluster: app, rateLimit: { requestsPerSecond: 2.5 } }
  - { name: b, match: { pathPrefix: /b }, cluster: app, rateLimit: { requestsPerSecond: 100, burst: 300, key: route } }
  - { name: c, match: { pathPrefix: /c }, cluster: app, rateLimit: { requestsPerSecond: 1, key: "header:X-Api-Key" } }
"#,
    );
    let routes = load(&text).unwrap().config.routes;
    let a = routes[0].rate_limit.as_ref().unwrap();
    assert_eq!(
        (a.requests_per_second, a.burst, &a.key),
        (2.5, 3, &RateLimitKey::ClientIp)
    );
    let b = routes[1].rate_limit.as_ref().unwrap();
    assert_eq!((b.burst, &b.key), (300, &RateLimitKey::Route));
    match &routes[2].rate_limit.as_ref().unwrap().key {
        RateLimitKey::Header(h) => assert_eq!(h, "x-api-key"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn active_health_keys_are_checked_at_their_key_paths() {
    let text = format!(
        "{}{}",
        "listeners: [{ name: public, address: 127.0.0.1:8080 }]\nroutes: [{ name: r, cluster: a }]\nclusters:\n",
        r#"  - name: a
    endpoints: [{ address: 127.0.0.1:9000 }]
    activeHealth:
      path: healthz
      interval: 0s
      unhealthyThreshold: 0
      healthyThreshold: 101
      expectedStatuses: [200, "200-99", 700, "abc", true]
      host: "a b"
  - name: b
    endpoints: [{ address: 127.0.0.1:9001 }]
    activeHealth: { interval: 1s, timeout: 2s, expectedStatuses: [] }
  - name: c
    endpoints: [{ address: 127.0.0.1:9002 }]
    activeHealth: { path: "/h#frag", method: HEAD }
"#
    );
    let errs = problems(&text);
    let a = "clusters[0].activeHealth";
    expect(
        &errs,
        &text,
        &format!("{a}.path"),
        "path: healthz",
        "starting with /",
    );
    expect(
        &errs,
        &text,
        &format!("{a}.interval"),
        "interval: 0s",
        "more than 0s",
    );
    expect(
        &errs,
        &text,
        &format!("{a}.timeout"),
        "interval: 0s",
        "longer than interval",
    );
    expect(
        &errs,
        &text,
        &format!("{a}.unhealthyThreshold"),
        "unhealthyThreshold: 0",
        "out of range",
    );
    expect(
        &errs,
        &text,
        &format!("{a}.healthyThreshold"),
        "healthyThreshold: 101",
        "out of range",
    );
    for i in 1..=4 {
        expect(
            &errs,
            &text,
            &format!("{a}.expectedStatuses[{i}]"),
            "expectedStatuses: [200",
            "100 to 599",
        );
    }
    expect(
        &errs,
        &text,
        &format!("{a}.host"),
        "host: \"a b\"",
        "invalid host",
    );
    let b = "clusters[1].activeHealth";
    expect(
        &errs,
        &text,
        &format!("{b}.path"),
        "interval: 1s, timeout: 2s",
        "missing required key",
    );
    expect(
        &errs,
        &text,
        &format!("{b}.timeout"),
        "interval: 1s, timeout: 2s",
        "longer than interval",
    );
    expect(
        &errs,
        &text,
        &format!("{b}.expectedStatuses"),
        "interval: 1s, timeout: 2s",
        "at least one",
    );
    let c = "clusters[2].activeHealth";
    expect(&errs, &text, &format!("{c}.path"), "/h#frag", "no fragment");
    expect(
        &errs,
        &text,
        &format!("{c}.method"),
        "/h#frag",
        "unknown key",
    );
    assert_eq!(errs.len(), 15, "{errs:#?}");
}

#[test]
fn active_health_loads_with_its_defaults() {
    let text = "\
listeners: [{ name: public, address: 127.0.0.1:8080 }]
routes: [{ name: r, cluster: a }]
clusters:
  - name: a
    endpoints: [{ address: 127.0.0.1:9000 }]
    activeHealth: { path: \"/healthz?deep=1\" }
  - name: b
    endpoints: [{ address: 127.0.0.1:9001 }]
    activeHealth: { path: /h, interval: 10s, timeout: 10s, expectedStatuses: [204, \"300-399\"], host: \"h.test:8080\" }
";
    let clusters = load(text).unwrap().config.clusters;
    let a = clusters[0].active_health.as_ref().unwrap();
    assert_eq!(a.path, "/healthz?deep=1");
    assert_eq!(
        (
            a.interval,
            a.timeout,
            a.unhealthy_threshold,
            a.healthy_threshold
        ),
        (
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(1),
            3,
            2
        )
    );
    assert_eq!(a.expected_statuses, [(200, 399)]);
    assert_eq!(a.host, None);
    let b = clusters[1].active_health.as_ref().unwrap();
    assert_eq!(b.expected_statuses, [(204, 204), (300, 399)]);
    assert_eq!(b.host.as_deref(), Some("h.test:8080"));
}
