//! Beside the request flow, not in it: the property checks behind every fuzz target, one
//! function per target, each taking the raw input bytes and panicking when a property of
//! the gateway's code does not hold.
//!
//! This one file is compiled twice: by the `fuzz/` crate (libFuzzer, nightly) and by
//! `tests/fuzz_corpus.rs` (`#[path]`-included, stable), which replays every committed corpus
//! file and regression through the same functions. It may use only `gateway`, `http`,
//! `serde_json`, `tokio` and `std`, the crates both builds have.
//!
//! The checks compare the gateway against references written here from the spec
//! (`shared/spec/config.md`, RFC 3986, the modules' own documentation), not copied from
//! the code they check.
#![allow(unreachable_pub, dead_code)]

use std::path::{Path, PathBuf};

/// A property check: panics when the input shows a property does not hold.
pub type Check = fn(&[u8]);

/// Every target: (name, check). The corpus folders are `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Check)] = &[
    ("config", config),
    ("sniff", sniff),
    ("path", path),
    ("router", router),
    ("x509", x509),
    ("h2guard", h2guard),
];

// ---------------------------------------------------------------------------------------
// config: YAML/JSON bytes → gateway::config::load_str

/// The folder config files are "in", so the examples' relative certificate paths resolve:
/// `examples/` of the repository, found from either crate's manifest folder.
fn examples_dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let direct = here.join("examples");
    if direct.join("certs").is_dir() {
        direct
    } else {
        here.join("..").join("examples")
    }
}

/// The config pipeline never panics; it returns a config or a non-empty list of errors,
/// each with a message and a position inside the file; YAML and JSON agree on what is
/// JSON; and loading is deterministic.
pub fn config(data: &[u8]) {
    // `load` reads files with `read_to_string`: text that is not UTF-8 never gets here.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = examples_dir();
    let yaml = dir.join("fuzz.yaml");
    let json = dir.join("fuzz.json");
    let as_yaml = check_load(&yaml, text);
    let as_json = check_load(&json, text);
    if serde_json::from_str::<serde_json::Value>(text).is_ok() {
        // Valid JSON is YAML flow syntax: the two readings must see the same tree.
        assert_eq!(
            as_yaml, as_json,
            "the same JSON text validated differently as .yaml and .json"
        );
    }
}

/// What a load came to, for comparing two loads: Ok(hash) or the error messages with
/// their key paths and positions.
type Outcome = Result<u64, Vec<(String, usize, usize, String)>>;

fn check_load(path: &Path, text: &str) -> Outcome {
    // Lines as YAML counts them (`\n`, `\r\n` and a lone `\r` each end one); JSON's
    // positions count only `\n`, so they never point further.
    let lines = text.replace("\r\n", "\n").split(['\n', '\r']).count();
    let outcome = match gateway::config::load_str(path, text) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                check_problem(w, path, lines);
            }
            Ok(loaded.hash)
        }
        Err(invalid) => {
            assert!(
                !invalid.errors.is_empty(),
                "a config was refused with no error at all"
            );
            for p in invalid.errors.iter().chain(&invalid.warnings) {
                check_problem(p, path, lines);
            }
            // The whole report renders.
            let rendered = invalid.to_string();
            assert!(rendered.contains(&invalid.errors[0].message));
            Err(invalid
                .errors
                .iter()
                .map(|p| (p.path.clone(), p.line, p.col, p.message.clone()))
                .collect())
        }
    };
    let again = gateway::config::load_str(path, text)
        .map(|l| l.hash)
        .map_err(|i| {
            i.errors
                .iter()
                .map(|p| (p.path.clone(), p.line, p.col, p.message.clone()))
                .collect()
        });
    assert_eq!(outcome, again, "loading the same text twice differed");
    outcome
}

fn check_problem(p: &gateway::config::Problem, path: &Path, lines: usize) {
    assert!(
        !p.message.trim().is_empty(),
        "a problem without a message: {p:?}"
    );
    assert_eq!(p.file, path, "a problem names another file: {p:?}");
    assert!(
        p.line <= lines,
        "a problem points at line {} of a {lines}-line file: {p:?}",
        p.line
    );
    assert!(
        p.line == 0 || p.col > 0,
        "a problem has a line but no column: {p:?}"
    );
}

// ---------------------------------------------------------------------------------------
// sniff: gateway::http::sniff::Sniffer

/// Large enough for any fuzz input: the head limit itself is not under test here (the
/// gateway passes `maxRequestHeadersSize + 1024`).
const SNIFF_MAX_HEAD: usize = 64 * 1024 + 1024;

/// What a sniffer tells the connection: the request it refused (0 = none), and whether a
/// request head is in progress.
fn sniff_run(chunks: &[&[u8]], max_head: usize) -> (u64, bool) {
    let (refused, in_progress, _) = sniff_bytes(chunks, max_head);
    (refused, in_progress)
}

/// As [`sniff_run`], with the bytes the sniffer handed on to hyper, in order.
fn sniff_bytes(chunks: &[&[u8]], max_head: usize) -> (u64, bool, Vec<u8>) {
    use gateway::http::sniff::{HeadWatch, Sniffer};
    use std::sync::Arc;
    let watch = Arc::new(HeadWatch::new(0));
    let mut s = Sniffer::on_process_clock(max_head, watch.clone());
    let mut newlines = 0u64;
    let mut handed_on = Vec::new();
    let mut space = [0u8; 61];
    for c in chunks {
        let pass = s.feed(c).expect("a connection that may speak any version");
        handed_on.extend_from_slice(&c[..pass]);
        loop {
            let mut buf = tokio::io::ReadBuf::new(&mut space);
            if !s.take_output(&mut buf) {
                break;
            }
            handed_on.extend_from_slice(buf.filled());
        }
        newlines += c.iter().filter(|&&b| b == b'\n').count() as u64;
    }
    // Every head has a line end, so no more heads than line ends were seen.
    let refused = (1..=newlines + 1)
        .find(|&n| watch.refused(n).is_some())
        .unwrap_or(0);
    (refused, watch.head_since_ms().is_some(), handed_on)
}

/// Splits `data` into reads whose lengths come from `seed` (1 to 64 bytes each).
fn splits(data: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut state = u32::from(seed) | 0x100;
    let mut rest = data;
    while !rest.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = (((state >> 16) % 64) as usize + 1).min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

/// Two modes, by the first byte. Even: the rest is raw client bytes, and whatever they
/// are, the sniffer's verdict does not depend on how the bytes were split into reads
/// (one read, byte by byte, or pseudo-random reads). Odd: the rest describes a pipeline
/// of well-formed requests (see [`build_pipeline`]), and the sniffer refuses exactly the
/// first one the spec refuses (a fragment in the target, or Content-Length with
/// Transfer-Encoding), however it is split, and is not left inside a head (unless
/// nothing was sent: the first head is due from accept).
pub fn sniff(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // A tiny head limit: the switch-off path must not panic either.
    let _ = sniff_run(&splits(rest, mode), 16);
    if mode % 2 == 0 {
        let whole = sniff_run(&[rest], SNIFF_MAX_HEAD);
        let bytewise: Vec<&[u8]> = rest.chunks(1).collect();
        assert_eq!(
            sniff_run(&bytewise, SNIFF_MAX_HEAD),
            whole,
            "byte-by-byte reads changed the sniffer's verdict"
        );
        assert_eq!(
            sniff_run(&splits(rest, mode), SNIFF_MAX_HEAD),
            whole,
            "splitting the reads changed the sniffer's verdict"
        );
    } else {
        let (stream, want) = build_pipeline(rest);
        for (refused, in_progress, handed_on) in [
            sniff_bytes(&[&stream], SNIFF_MAX_HEAD),
            sniff_bytes(&stream.chunks(1).collect::<Vec<_>>(), SNIFF_MAX_HEAD),
            sniff_bytes(&splits(&stream, mode), SNIFF_MAX_HEAD),
        ] {
            // A connection that has sent nothing yet still owes its first head.
            assert_eq!(
                (refused, in_progress),
                (want, stream.is_empty()),
                "pipeline {:?}",
                String::from_utf8_lossy(&stream)
            );
            // Well-formed requests reach hyper exactly as they were sent.
            if want == 0 {
                assert!(
                    handed_on == stream,
                    "the sniffer changed the bytes of {:?}: {:?}",
                    String::from_utf8_lossy(&stream),
                    String::from_utf8_lossy(&handed_on)
                );
            }
        }
    }
}

/// Builds pipelined HTTP/1.1 requests from `spec` (4 bytes a request, each followed by
/// its body bytes),
/// and the 1-based number of the request the sniffer must refuse (0 = none).
///
/// Each request: a method and target (some with a fragment), framing (none,
/// Content-Length, chunked with extensions and trailers, both CL and TE, an upgrade),
/// bodies of arbitrary bytes, which may themselves look like request heads. The sniffer
/// stops looking after an upgrade, a CONNECT or an HTTP/2 preface, and after the first
/// refusal, so nothing after those counts.
pub fn build_pipeline(spec: &[u8]) -> (Vec<u8>, u64) {
    const METHODS: &[&str] = &[
        "GET", "POST", "PUT", "DELETE", "OPTIONS", "CONNECT", "PATCH",
    ];
    const TARGETS: &[&str] = &[
        "/",
        "/a/b?x=1",
        "/a#frag",
        "http://h/x",
        "/p?q=#f",
        "*",
        "h:443",
        "/%2e%2e/",
    ];
    let mut out = Vec::new();
    let mut want = 0u64;
    let mut n = 0u64;
    let mut rest = spec;
    while rest.len() >= 4 && n < 64 {
        let (req, tail) = rest.split_at(4);
        rest = tail;
        n += 1;
        let method = METHODS[usize::from(req[0]) % METHODS.len()];
        let target = TARGETS[usize::from(req[0] >> 3) % TARGETS.len()];
        let framing = req[1] % 6;
        let body_len = usize::from(req[2] % 32).min(rest.len());
        let (body, tail) = rest.split_at(body_len);
        rest = tail;
        if req[3] % 16 == 15 {
            // A client switching to HTTP/2: nothing after the preface is HTTP/1.
            out.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
            out.extend_from_slice(body);
            return (out, want);
        }
        // Blank lines before a request line are allowed (RFC 9112 §2.2).
        for _ in 0..req[3] % 3 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("{method} {target} HTTP/1.1\r\nHost: h\r\n").as_bytes());
        if req[3] & 0x10 != 0 {
            out.extend_from_slice(b"X-Filler: a: b; c\r\n");
        }
        let fragment = target.contains('#');
        let upgrade = framing == 5;
        let (cl, te) = match framing {
            1 => (true, false),
            2 | 3 => (false, true),
            4 => (true, true),
            _ => (false, false),
        };
        if cl {
            let sep = if req[3] & 0x20 != 0 { ":" } else { ": " };
            out.extend_from_slice(format!("Content-Length{sep}{body_len}\r\n").as_bytes());
        }
        if te {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        if upgrade {
            out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: websocket\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if fragment || (cl && te) {
            // The gateway answers 400 and closes: nothing after it is read.
            want = n;
            return (out, want);
        }
        if upgrade || method == "CONNECT" {
            out.extend_from_slice(body);
            return (out, want);
        }
        if te {
            // Chunked: the body in chunks of up to 7 bytes, maybe with extensions, then
            // a last chunk and maybe trailers.
            for (i, chunk) in body.chunks(7).enumerate() {
                let ext = if framing == 3 && i % 2 == 0 {
                    ";ext=1"
                } else {
                    ""
                };
                out.extend_from_slice(format!("{:x}{ext}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n");
            if framing == 3 {
                out.extend_from_slice(b"x-trailer: t\r\n");
            }
            out.extend_from_slice(b"\r\n");
        } else if cl {
            out.extend_from_slice(body);
        }
    }
    (out, want)
}

// ---------------------------------------------------------------------------------------
// path: gateway::path::normalize_path

/// Path normalisation, against RFC 3986 §5.2.4 applied literally and the spec's decoding
/// rule: the result never has a dot segment, never climbs above `/`, is its own
/// normalisation, and the path forwarded upstream (as an upstream's HTTP parser reads it)
/// is the path the router matched.
pub fn path(data: &[u8]) {
    // As a hyper server sees it: the request-target parsed by the `http` crate.
    if let Ok(pq) = http::uri::PathAndQuery::try_from(data) {
        if pq.path().starts_with('/') {
            check_path(pq.path(), pq.query(), true);
        }
    }
    // And any string at all: normalize_path takes a &str.
    if let Ok(s) = std::str::from_utf8(data) {
        check_path(s, None, false);
    }
}

fn check_path(input: &str, query: Option<&str>, from_http: bool) {
    use gateway::path::normalize_path;
    let got = normalize_path(input);
    let want = reference_normalize(input);
    assert_eq!(
        got.as_deref(),
        want.as_deref(),
        "normalize_path({input:?}) differs from RFC 3986 §5.2.4 with the spec's decoding"
    );
    let Some(norm) = got else {
        return;
    };
    assert!(norm.starts_with('/'), "{input:?} → {norm:?}");
    for seg in norm.split('/') {
        assert!(
            seg != "." && seg != "..",
            "{input:?} → {norm:?} keeps a dot segment"
        );
    }
    assert!(
        !norm.bytes().any(|b| b <= 0x20 || b == 0x7f),
        "{input:?} → {norm:?} carries a control byte or space"
    );
    // No escape of an unreserved character survives (an encoded dot segment would).
    let bytes = norm.as_bytes();
    for (i, _) in norm.match_indices('%') {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        let c = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
        let c = c.unwrap_or_else(|| panic!("{input:?} → {norm:?}: a bad escape at {i}"));
        assert!(
            !is_unreserved(c),
            "{input:?} → {norm:?}: %{:02X} should have been decoded",
            c
        );
    }
    // A fixed point: normalising again changes nothing (and borrows).
    let again = normalize_path(&norm);
    assert!(
        matches!(again, Some(std::borrow::Cow::Borrowed(s)) if s == norm),
        "not a fixed point: {input:?} → {norm:?} → {again:?}"
    );
    if !from_http {
        // A bare string may hold `?` or `#`, which no parsed request path has.
        return;
    }
    // What is forwarded: the normalised path with the query kept, as the proxy builds it.
    let mut forwarded = norm.to_string();
    if let Some(q) = query {
        forwarded.push('?');
        forwarded.push_str(q);
    }
    match http::uri::PathAndQuery::try_from(forwarded.as_str()) {
        Ok(up) => {
            assert_eq!(
                up.path(),
                norm,
                "the upstream would read another path than the router matched"
            );
            assert_eq!(up.query(), query, "the query changed on the way upstream");
            // An upstream that normalises too sees the same thing.
            assert_eq!(normalize_path(up.path()).as_deref(), Some(&*norm));
        }
        Err(e) => panic!(
            "{input:?} parsed as a request-target but its normal form {forwarded:?} does not: {e}"
        ),
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// The spec's normalisation read literally: refuse a path not starting with `/`, a control
/// byte or space, a bad escape or an escaped control byte; decode escapes of unreserved
/// characters, keep the others with upper-case hex; then RFC 3986 §5.2.4.
fn reference_normalize(path: &str) -> Option<String> {
    if !path.starts_with('/') || path.bytes().any(|b| b <= 0x20 || b == 0x7f) {
        return None;
    }
    let mut decoded = String::new();
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            decoded.push(c);
            continue;
        }
        let hi = chars.next()?.to_digit(16)?;
        let lo = chars.next()?.to_digit(16)?;
        let byte = (hi * 16 + lo) as u8;
        if byte < 0x20 || byte == 0x7f {
            return None;
        }
        if is_unreserved(byte) {
            decoded.push(char::from(byte));
        } else {
            decoded.push_str(&format!("%{byte:02X}"));
        }
    }
    Some(rfc3986_remove_dot_segments(&decoded))
}

/// RFC 3986 §5.2.4, step by step as the RFC writes it (input and output buffers).
fn rfc3986_remove_dot_segments(path: &str) -> String {
    let mut input = path.to_string();
    let mut output = String::new();
    let pop = |out: &mut String| match out.rfind('/') {
        Some(i) => out.truncate(i),
        None => out.clear(),
    };
    while !input.is_empty() {
        if input.starts_with("../") {
            input.replace_range(..3, "");
        } else if input.starts_with("./") {
            input.replace_range(..2, "");
        } else if input.starts_with("/./") {
            input.replace_range(..3, "/");
        } else if input == "/." {
            input = "/".into();
        } else if input.starts_with("/../") {
            input.replace_range(..4, "/");
            pop(&mut output);
        } else if input == "/.." {
            input = "/".into();
            pop(&mut output);
        } else if input == "." || input == ".." {
            input.clear();
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |i| i + start);
            output.push_str(&input[..end]);
            input.replace_range(..end, "");
        }
    }
    output
}

// ---------------------------------------------------------------------------------------
// router: gateway::router::Router against the spec's precedence

/// The input is text, one entry a line: `R <host> <prefix>` adds a route (host `-` = any
/// host, `*.name` = wildcard), `Q <host> <path>` asks for a request (host `-` = none).
/// Routes the config validator would refuse are left out; request paths are normalised
/// first, as the proxy does. The compiled router must pick what a literal reading of the
/// spec picks, and report the same shadowed routes.
pub fn router(data: &[u8]) {
    use gateway::config::model::HostMatch;
    use gateway::path::normalize_path;
    use gateway::router::Router;
    let text = String::from_utf8_lossy(data);
    let mut table: Vec<(HostMatch, String)> = Vec::new();
    let mut queries: Vec<(Option<String>, String)> = Vec::new();
    for line in text.lines() {
        let mut words = line.split(' ');
        let (Some(kind), Some(host), Some(p)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        match kind {
            "R" => {
                let Some(host) = route_host(host) else {
                    continue;
                };
                if valid_prefix(p) && table.len() < 256 {
                    table.push((host, p.to_string()));
                }
            }
            "Q" => {
                if let Some(n) = normalize_path(p) {
                    queries.push(((host != "-").then(|| host.to_string()), n.into_owned()));
                }
            }
            _ => {}
        }
    }
    let (router, shadowed) = Router::build(
        table
            .iter()
            .enumerate()
            .map(|(i, (h, p))| (h.clone(), p.clone(), i)),
    );
    let want_shadowed: Vec<usize> = (0..table.len())
        .filter(|&i| table[..i].iter().any(|e| *e == table[i]))
        .collect();
    assert_eq!(shadowed, want_shadowed, "shadowed routes");
    assert_eq!(router.len(), table.len() - want_shadowed.len());
    for (host, path) in &queries {
        let got = router.find(host.as_deref(), path).copied();
        let want = reference_route(&table, host.as_deref(), path);
        assert_eq!(got, want, "host {host:?} path {path:?} table {table:?}");
    }
}

/// A route's `match.host` as the config validator accepts it: a DNS name of labels of
/// letters, digits, `-` and `_`, at most 253 characters, optionally `*.` before it.
fn route_host(h: &str) -> Option<gateway::config::model::HostMatch> {
    use gateway::config::model::HostMatch;
    if h == "-" {
        return Some(HostMatch::Any);
    }
    let lower = h.to_ascii_lowercase();
    let (wild, name) = match lower.strip_prefix("*.") {
        Some(n) => (true, n),
        None => (false, lower.as_str()),
    };
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then(|| {
        if wild {
            HostMatch::Wildcard(name.to_string())
        } else {
            HostMatch::Exact(name.to_string())
        }
    })
}

/// A `pathPrefix` the validator accepts: starts with `/`, no query, fragment, space or
/// control byte, and already in normal form.
fn valid_prefix(p: &str) -> bool {
    p.starts_with('/')
        && !p
            .bytes()
            .any(|b| b.is_ascii_control() || matches!(b, b'?' | b'#' | b' '))
        && reference_normalize(p).as_deref() == Some(p)
}

/// The spec's route selection, read literally (spec "routes", steps 1 to 4):
/// the request host with its port stripped (and a trailing dot, which names the same
/// host) and lower-cased; the exact group, then the wildcard `*.parent` covering exactly
/// one more (non-empty) label, then the any-host group; the first group with a matching
/// prefix decides; in it the longest segment-boundary prefix, the first in the file
/// among equals. Host names are at most 253 characters, so a longer "host" can only
/// meet any-host routes.
fn reference_route(
    table: &[(gateway::config::model::HostMatch, String)],
    host: Option<&str>,
    path: &str,
) -> Option<usize> {
    use gateway::config::model::HostMatch;
    let host = host.map(|h| {
        let h = if h.starts_with('[') {
            h.find(']').map_or(h, |end| &h[..=end])
        } else {
            match h.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => h,
            }
        };
        h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase()
    });
    let host = host.filter(|h| !h.is_empty() && h.len() <= 253);
    let segment_match = |prefix: &str| {
        path == prefix
            || (path.starts_with(prefix)
                && (prefix.ends_with('/') || path.as_bytes()[prefix.len()] == b'/'))
    };
    let in_group = |m: &HostMatch, group: usize| match (group, m, host.as_deref()) {
        (0, HostMatch::Exact(e), Some(h)) => e == h,
        (1, HostMatch::Wildcard(w), Some(h)) => h
            .split_once('.')
            .is_some_and(|(label, parent)| !label.is_empty() && parent == w),
        (2, HostMatch::Any, _) => true,
        _ => false,
    };
    for group in 0..3 {
        let mut best: Option<usize> = None;
        for (i, (m, p)) in table.iter().enumerate() {
            if in_group(m, group)
                && segment_match(p)
                && best.is_none_or(|b| p.len() > table[b].1.len())
            {
                best = Some(i);
            }
        }
        if best.is_some() {
            return best;
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// x509: gateway::x509::parse

/// The DER reader never panics; what it reads is consistent: DNS names lower-cased, a
/// notAfter that formats; bytes after the certificate change nothing; a certificate cut
/// short is not read.
pub fn x509(data: &[u8]) {
    use gateway::x509::{format_time, parse};
    let Some(info) = parse(data) else {
        return;
    };
    for name in &info.dns_names {
        assert!(
            !name.bytes().any(|b| b.is_ascii_uppercase()),
            "a DNS name not lower-cased: {name:?}"
        );
    }
    let _ = format_time(info.not_after);
    // The outer SEQUENCE's extent, read independently of the parser.
    let len = der_extent(data).expect("parse accepted input whose outer TLV does not fit");
    assert_eq!(
        parse(&data[..len]).as_ref(),
        Some(&info),
        "bytes after the certificate changed what was read"
    );
    let mut with_tail = data[..len].to_vec();
    with_tail.extend_from_slice(b"\x30\x00trailing");
    assert_eq!(parse(&with_tail).as_ref(), Some(&info));
    for cut in [0, 1, len / 2, len - 1] {
        assert_eq!(
            parse(&data[..cut]),
            None,
            "a certificate cut to {cut} of {len} bytes was read"
        );
    }
}

/// The length of the first DER TLV of `der` (header and content), if it fits.
fn der_extent(der: &[u8]) -> Option<usize> {
    let first = *der.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        let bytes = der.get(2..2 + n)?;
        (
            bytes.iter().fold(0usize, |a, &b| (a << 8) | usize::from(b)),
            2 + n,
        )
    };
    let total = header.checked_add(len)?;
    (total <= der.len()).then_some(total)
}

// ---------------------------------------------------------------------------------------
// h2guard: gateway::http::h2guard::H2Guard

/// The input is a list of records `tag, length, bytes`: by `tag % 4`, 0 and 1 are one
/// read of client bytes; 2 is a write by the gateway, which the socket may accept only in
/// part (at most `tag >> 2` bytes a call, 0 = all); 3 is a vectored write of the bytes
/// split in two at `tag >> 2`. The guard is driven through these, and must:
/// - never change a byte either way, and deliver every client read whole until it trips;
/// - trip exactly where a reference reading of its documented rules trips, for the same
///   reason, withholding the read that tripped it and failing every read and write after;
/// - then send GOAWAY (ENHANCE_YOUR_CALM, the highest stream the client opened) if the
///   gateway's output is between frames, and nothing otherwise;
/// - pass everything untouched when the client does not start with the HTTP/2 preface,
///   or when it was built with `H2Guard::off`.
pub fn h2guard(data: &[u8]) {
    for off in [false, true] {
        h2guard_run(data, off);
    }
}

/// Why the guard closed the client described by `data` (see [`h2guard`]), if it did,
/// and whether GOAWAY was written: for tests that the seeds reach both rules.
pub fn h2guard_outcome(data: &[u8]) -> (Option<&'static str>, bool) {
    h2guard_run(data, false)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op<'a> {
    Read(&'a [u8]),
    Write(&'a [u8], usize),
    Vectored(&'a [u8], usize),
}

fn h2_ops(data: &[u8]) -> Vec<Op<'_>> {
    let mut ops = Vec::new();
    let mut rest = data;
    while let [tag, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (bytes, tail) = tail.split_at(n);
        rest = tail;
        let arg = usize::from(tag >> 2);
        ops.push(match tag % 4 {
            0 | 1 => Op::Read(bytes),
            2 => Op::Write(bytes, arg),
            _ => Op::Vectored(bytes, arg.min(bytes.len())),
        });
    }
    ops
}

/// The socket under the guard: reads come from a queue, writes are recorded.
#[derive(Debug, Default)]
struct MockState {
    reads: std::collections::VecDeque<Vec<u8>>,
    written: Vec<u8>,
    /// Most bytes one write call accepts (0 = all).
    write_limit: usize,
}

#[derive(Debug, Clone, Default)]
struct Mock(std::rc::Rc<std::cell::RefCell<MockState>>);

impl tokio::io::AsyncRead for Mock {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let mut s = self.0.borrow_mut();
        if let Some(chunk) = s.reads.pop_front() {
            assert!(
                chunk.len() <= buf.remaining(),
                "test driver: read too large"
            );
            buf.put_slice(&chunk);
        }
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Mock {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        b: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut s = self.0.borrow_mut();
        let n = match s.write_limit {
            0 => b.len(),
            limit => b.len().min(limit),
        };
        s.written.extend_from_slice(&b[..n]);
        std::task::Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut s = self.0.borrow_mut();
        let mut budget = match s.write_limit {
            0 => usize::MAX,
            limit => limit,
        };
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(budget);
            s.written.extend_from_slice(&b[..take]);
            n += take;
            budget -= take;
        }
        std::task::Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

fn h2guard_run(data: &[u8], off: bool) -> (Option<&'static str>, bool) {
    use gateway::http::h2guard::H2Guard;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncWrite};

    let ops = h2_ops(data);
    let mock = Mock::default();
    let mut guard = if off {
        H2Guard::off(mock.clone())
    } else {
        H2Guard::new(mock.clone(), None)
    };
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut model = GuardModel::new(off);
    let mut delivered = Vec::new();
    let mut sent = Vec::new();
    let mut tripped_at: Option<(&'static str, usize)> = None;
    // What the socket must have received once the guard tripped.
    let mut final_written: Option<Vec<u8>> = None;
    for op in ops {
        match op {
            Op::Read([]) => {}
            Op::Read(bytes) => {
                let verdict = model.client(bytes);
                mock.0.borrow_mut().reads.push_back(bytes.to_vec());
                let mut storage = vec![0u8; bytes.len()];
                let mut buf = tokio::io::ReadBuf::new(&mut storage);
                let r = Pin::new(&mut guard).poll_read(&mut cx, &mut buf);
                match (r, tripped_at, verdict) {
                    (Poll::Ready(Ok(())), None, None) => {
                        assert_eq!(buf.filled(), bytes, "a client read was changed");
                        delivered.extend_from_slice(bytes);
                    }
                    (Poll::Ready(Err(_)), None, Some(reason)) => {
                        assert_eq!(guard.tripped(), Some(reason), "tripped for another reason");
                        tripped_at = Some((reason, delivered.len()));
                        // The GOAWAY goes out only between the gateway's own frames.
                        let mut want = sent.clone();
                        if model.out_at_boundary() {
                            want.extend_from_slice(&goaway(model.highest_stream));
                        }
                        assert_eq!(mock.0.borrow().written, want, "GOAWAY on trip");
                        final_written = Some(want);
                    }
                    (Poll::Ready(Err(_)), Some(_), _) => {
                        // Tripped: the socket is not read any more.
                        mock.0.borrow_mut().reads.pop_back();
                    }
                    (r, t, v) => panic!(
                        "read after {} client bytes: guard {r:?}, tripped {t:?}, reference {v:?} ({:?})",
                        delivered.len(),
                        guard.tripped()
                    ),
                }
            }
            Op::Write(bytes, limit) => {
                mock.0.borrow_mut().write_limit = limit;
                let mut rest = bytes;
                while !rest.is_empty() {
                    match Pin::new(&mut guard).poll_write(&mut cx, rest) {
                        Poll::Ready(Ok(n)) => {
                            assert!(tripped_at.is_none(), "a write after the trip went through");
                            assert!(n > 0 && n <= rest.len());
                            model.gateway(&rest[..n]);
                            sent.extend_from_slice(&rest[..n]);
                            rest = &rest[n..];
                        }
                        Poll::Ready(Err(_)) => {
                            assert!(tripped_at.is_some(), "a write failed untripped");
                            break;
                        }
                        Poll::Pending => panic!("the mock never blocks"),
                    }
                }
            }
            Op::Vectored(bytes, at) => {
                mock.0.borrow_mut().write_limit = 0;
                let (a, b) = bytes.split_at(at);
                let slices = [std::io::IoSlice::new(a), std::io::IoSlice::new(b)];
                match Pin::new(&mut guard).poll_write_vectored(&mut cx, &slices) {
                    Poll::Ready(Ok(n)) => {
                        assert!(tripped_at.is_none(), "a write after the trip went through");
                        assert_eq!(n, bytes.len());
                        model.gateway(bytes);
                        sent.extend_from_slice(bytes);
                    }
                    Poll::Ready(Err(_)) => {
                        assert!(tripped_at.is_some(), "a write failed untripped")
                    }
                    Poll::Pending => panic!("the mock never blocks"),
                }
            }
        }
        if tripped_at.is_none() {
            assert_eq!(
                mock.0.borrow().written,
                sent,
                "the gateway's bytes were changed"
            );
        }
    }
    assert_eq!(guard.tripped(), tripped_at.map(|t| t.0));
    if let Some(want) = &final_written {
        assert_eq!(
            mock.0.borrow().written,
            *want,
            "bytes written after the trip"
        );
    }
    if off {
        assert!(tripped_at.is_none(), "a guard built off tripped");
    }
    let goaway_sent = final_written.is_some_and(|w| w.len() > sent.len());
    (tripped_at.map(|t| t.0), goaway_sent)
}

/// The HTTP/2 frame header (9 bytes).
#[derive(Debug, Clone, Copy)]
struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

/// An incremental reader of frame headers, byte at a time.
#[derive(Debug, Default)]
struct FrameReader {
    head: Vec<u8>,
    skip: usize,
}

impl FrameReader {
    /// One byte in; a frame header when this byte completes one.
    fn byte(&mut self, b: u8) -> Option<FrameHead> {
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        self.head.push(b);
        if self.head.len() < 9 {
            return None;
        }
        let h = std::mem::take(&mut self.head);
        let head = FrameHead {
            len: usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]),
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        };
        self.skip = head.len;
        Some(head)
    }

    fn at_boundary(&self) -> bool {
        self.head.is_empty() && self.skip == 0
    }
}

/// The guard's rules as its module documentation states them, over both directions.
#[derive(Debug)]
struct GuardModel {
    /// Client preface bytes matched; None once the client proved not to be HTTP/2.
    preface: Option<usize>,
    inbound: FrameReader,
    outbound: FrameReader,
    highest_stream: u32,
    opened: u64,
    resets: u64,
    strikes: u32,
    tripped: bool,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl GuardModel {
    fn new(off: bool) -> Self {
        GuardModel {
            preface: (!off).then_some(0),
            inbound: FrameReader::default(),
            outbound: FrameReader::default(),
            highest_stream: 0,
            opened: 0,
            resets: 0,
            strikes: 0,
            tripped: false,
        }
    }

    fn out_at_boundary(&self) -> bool {
        self.outbound.at_boundary()
    }

    /// A client read; why the guard must trip on it, if it must.
    fn client(&mut self, bytes: &[u8]) -> Option<&'static str> {
        use gateway::http::h2guard::{MAX_STRIKES, MIN_RESETS};
        for &b in bytes {
            let matched = self.preface?;
            if matched < H2_PREFACE.len() {
                self.preface = (H2_PREFACE[matched] == b).then_some(matched + 1);
                continue;
            }
            let Some(h) = self.inbound.byte(b) else {
                continue;
            };
            const ACK: u8 = 0x1;
            const END_STREAM: u8 = 0x1;
            match h.kind {
                // HEADERS: a request, which may open a stream.
                0x1 => {
                    if h.stream > self.highest_stream {
                        self.highest_stream = h.stream;
                        self.opened += 1;
                    }
                    self.strikes = 0;
                }
                // DATA with payload, or ending its stream, is traffic; empty DATA a strike.
                0x0 if h.len > 0 || h.flags & END_STREAM != 0 => self.strikes = 0,
                0x0 | 0x2 => self.strikes += 1,
                // RST_STREAM: rapid reset once MIN_RESETS and half of the opened streams.
                0x3 => {
                    self.resets += 1;
                    if self.resets >= MIN_RESETS && self.resets * 2 >= self.opened {
                        self.tripped = true;
                        return Some("rapid_reset");
                    }
                }
                // SETTINGS and PING, except acknowledgements.
                0x4 | 0x6 if h.flags & ACK == 0 => self.strikes += 1,
                _ => {}
            }
            if self.strikes > MAX_STRIKES {
                self.tripped = true;
                return Some("control_frame_flood");
            }
        }
        None
    }

    /// Bytes the gateway wrote; its HEADERS and DATA frames clear the strikes.
    fn gateway(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(h) = self.outbound.byte(b) {
                if h.kind == 0x0 || h.kind == 0x1 {
                    self.strikes = 0;
                }
            }
        }
    }
}

/// GOAWAY with ENHANCE_YOUR_CALM and `last` as the last stream id.
fn goaway(last: u32) -> [u8; 17] {
    let mut f = [0u8; 17];
    f[2] = 8;
    f[3] = 0x7;
    f[9..13].copy_from_slice(&last.to_be_bytes());
    f[13..17].copy_from_slice(&0xb_u32.to_be_bytes());
    f
}
