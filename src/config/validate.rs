//! Config, step 2 of 3: walks the positioned tree into the typed model, collecting every
//! error (with key path and line) instead of stopping at the first.
//!
//! Defaults live here, next to the key they belong to, and so does the list of every key a
//! mapping accepts ([`Section`]): `docs/configuration.md` is tested against it.

use super::model::*;
use super::raw::{Node, Value};
use super::Problem;
use crate::certs::{
    fnv1a_with, load_certificate, load_client_identity, load_roots, system_roots, CertProblem,
    Secret, UpstreamMaterial,
};
use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Default listener `maxConnections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default `limits.maxRequestHeadersSize`: 64 KiB.
pub const DEFAULT_MAX_HEADERS_SIZE: usize = 64 * 1024;
/// Default listener timeouts: readHeader 10s, read 30s, write 30s, idle 60s.
pub const DEFAULT_LISTENER_TIMEOUTS: ListenerTimeouts = ListenerTimeouts {
    read_header: Duration::from_secs(10),
    read: Duration::from_secs(30),
    write: Duration::from_secs(30),
    idle: Duration::from_secs(60),
};
/// Default cluster timeouts: connect 5s, read 30s, write 30s.
pub const DEFAULT_CLUSTER_TIMEOUTS: ClusterTimeouts = ClusterTimeouts {
    connect: Duration::from_secs(5),
    read: Duration::from_secs(30),
    write: Duration::from_secs(30),
};
/// Default `activeHealth.interval`: 5s.
pub const DEFAULT_ACTIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Default `activeHealth.timeout`: 1s.
pub const DEFAULT_ACTIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest `directResponse.body`: 1 MiB.
pub const DIRECT_BODY_LIMIT: usize = 1 << 20;
/// Default `retry.attempts`: one extra try on another endpoint.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 1;
/// Default `l4.listeners[].idleTimeout`: 10 minutes (the spec's example), long enough for
/// database and message-queue clients that sit quiet between bursts.
pub const DEFAULT_L4_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Default `l4.listeners[].maxConnections`, the same as for HTTP listeners.
pub const DEFAULT_L4_MAX_CONNECTIONS: usize = 10_000;

/// Declares every mapping of the configuration file: where it sits (its key path, with
/// `[]` for "any item of the list") and the keys it accepts. The validator reads a mapping
/// only through its `Section`, so this table is the complete list of accepted keys.
macro_rules! sections {
    ($($(#[$doc:meta])* $name:ident = $pattern:literal [$($key:literal),* $(,)?],)*) => {
        /// A mapping of the configuration file, and the keys it accepts.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Section {
            $($(#[$doc])* $name,)*
        }

        impl Section {
            /// Every mapping of the file.
            pub const ALL: &'static [Section] = &[$(Section::$name),*];

            /// Where the mapping sits: `listeners[].timeouts` (`""` for the top level).
            pub fn pattern(self) -> &'static str {
                match self {
                    $(Section::$name => $pattern,)*
                }
            }

            /// The keys the mapping accepts.
            pub fn keys(self) -> &'static [&'static str] {
                match self {
                    $(Section::$name => &[$($key),*],)*
                }
            }
        }
    };
}

sections! {
    /// The top level.
    Top = "" [
        "version", "workers", "admin", "accessLog", "reload", "shutdown", "listeners",
        "routes", "clusters", "l4",
    ],
    Admin = "admin" ["address", "tokenFile"],
    AccessLog = "accessLog" ["path", "sampleRate", "alwaysLogErrors", "fields"],
    Reload = "reload" ["watch", "debounce"],
    Shutdown = "shutdown" ["drainTimeout", "delay"],
    Listener = "listeners[]" [
        "name", "address", "http2", "maxConnections", "limits", "timeouts", "tls",
    ],
    ListenerLimits = "listeners[].limits" ["maxRequestHeadersSize", "maxRequestBody"],
    ListenerTimeouts = "listeners[].timeouts" ["readHeader", "read", "write", "idle"],
    ListenerTls = "listeners[].tls" ["certificates", "minVersion", "alpn"],
    TlsCertificate = "listeners[].tls.certificates[]" ["cert", "key", "serverNames"],
    Route = "routes[]" [
        "name", "listeners", "match", "cluster", "redirect", "directResponse", "timeouts",
        "retry", "rewrite", "headers", "rateLimit",
    ],
    RouteMatch = "routes[].match" ["host", "pathPrefix", "methods", "headers"],
    RouteMatchHeader = "routes[].match.headers[]" ["name", "value", "present"],
    RouteRewrite = "routes[].rewrite" ["pathPrefix", "host"],
    RouteHeaders = "routes[].headers" ["request", "response"],
    RouteRequestHeaders = "routes[].headers.request" ["set", "add", "remove"],
    RouteResponseHeaders = "routes[].headers.response" ["set", "add", "remove"],
    Redirect = "routes[].redirect" ["scheme", "host", "port", "path", "pathPrefix", "code"],
    DirectResponse = "routes[].directResponse" ["status", "body", "contentType"],
    RateLimit = "routes[].rateLimit" ["requestsPerSecond", "burst", "key"],
    RouteTimeouts = "routes[].timeouts" ["connect", "read", "write", "request"],
    RouteRetry = "routes[].retry" ["attempts"],
    Cluster = "clusters[]" [
        "name", "protocol", "endpoints", "timeouts", "security", "passiveHealth",
        "activeHealth",
    ],
    Endpoint = "clusters[].endpoints[]" ["address", "weight"],
    ClusterTimeouts = "clusters[].timeouts" ["connect", "read", "write"],
    Security = "clusters[].security" [
        "mode", "caBundle", "serverName", "clientCert", "clientKey",
    ],
    PassiveHealth = "clusters[].passiveHealth" [
        "consecutiveFailures", "baseEjectionTime", "maxEjectionTime", "maxEjectedPercent",
        "latency", "slowStart",
    ],
    Latency = "clusters[].passiveHealth.latency" ["threshold", "weightFactor"],
    ActiveHealth = "clusters[].activeHealth" [
        "path", "interval", "timeout", "unhealthyThreshold", "healthyThreshold",
        "expectedStatuses", "host",
    ],
    L4 = "l4" ["listeners"],
    L4Listener = "l4.listeners[]" [
        "name", "address", "cluster", "idleTimeout", "maxDuration", "maxConnections", "allow",
        "deny",
    ],
}

/// Every key the validator accepts, as a full key path (`listeners[].timeouts.readHeader`).
pub fn accepted_keys() -> Vec<String> {
    Section::ALL
        .iter()
        .flat_map(|s| s.keys().iter().map(move |k| join(s.pattern(), k)))
        .collect()
}

/// A key path with list indices taken out: `listeners[0].tls` → `listeners[].tls`.
fn generic_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// Validates a parsed file. Returns the model when there were no errors (it may still be
/// `Some` with errors, in which case it must not be used), plus errors and warnings.
pub fn validate(file: &Path, root: &Node) -> (Option<Config>, Vec<Problem>, Vec<Problem>) {
    let mut v = V {
        file: file.to_path_buf(),
        base: file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        errors: Vec::new(),
        warnings: Vec::new(),
        env_failed: HashSet::new(),
    };
    v.env_errors(root, "");
    let config = v.config(root);
    (config, v.errors, v.warnings)
}

struct V {
    file: PathBuf,
    base: PathBuf,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
    /// Key paths whose `${…}` could not be substituted: the one error said there is enough.
    env_failed: HashSet<String>,
}

/// The value a typed reader should see: a scalar that was one `${…}` as a whole is read by
/// its substituted text's own type (`"${WEIGHT}"` is the number 3 where a number is
/// expected).
fn resolved(node: &Node) -> Option<Value> {
    let whole = node.env.as_ref()?.whole.as_deref()?;
    match node.value {
        Value::Str(_) => Some(super::raw::plain_scalar(whole)),
        _ => None,
    }
}

/// The closest of `allowed` to an unknown `key`, if one is close enough to be a typo or a
/// different spelling (`max_connections`, `MaxConnections`, `wieght`).
fn suggestion<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let squash = |s: &str| {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect::<String>()
    };
    let k = squash(key);
    if let Some(exact) = allowed.iter().find(|a| squash(a) == k) {
        return Some(exact);
    }
    allowed
        .iter()
        .map(|a| (levenshtein(&k, &squash(a)), *a))
        .filter(|(d, a)| *d <= (a.len() / 4).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// Edit distance where swapping two neighbours counts once (`wieght` is one from `weight`).
fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// A mapping's entries after key checks.
struct Fields<'n> {
    entries: Vec<(&'n str, &'n Node)>,
    node: &'n Node,
    path: String,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, n)| *k == key && !matches!(n.value, Value::Null))
            .map(|(_, n)| *n)
    }
    fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

impl V {
    fn problem(&self, node: Option<&Node>, path: &str, message: String) -> Problem {
        Problem {
            file: self.file.clone(),
            line: node.map_or(0, |n| n.line),
            col: node.map_or(0, |n| n.col),
            path: path.to_string(),
            message,
        }
    }

    fn err(&mut self, node: Option<&Node>, path: &str, message: impl Into<String>) {
        if self.env_failed.contains(path) {
            return;
        }
        let p = self.problem(node, path, message.into());
        self.errors.push(p);
    }

    /// Reports every `${…}` that could not be substituted, at its value's key path.
    fn env_errors(&mut self, node: &Node, path: &str) {
        if let Some(env) = &node.env {
            for e in &env.errors {
                let p = self.problem(Some(node), path, e.clone());
                self.errors.push(p);
            }
            if !env.errors.is_empty() {
                self.env_failed.insert(path.to_string());
            }
        }
        match &node.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.env_errors(item, &index(path, i));
                }
            }
            Value::Map(entries) => {
                for (k, val) in entries {
                    if let Value::Str(key) = &k.value {
                        self.env_errors(val, &join(path, key));
                    }
                }
            }
            _ => {}
        }
    }

    fn warn(&mut self, node: Option<&Node>, path: &str, message: impl Into<String>) {
        let p = self.problem(node, path, message.into());
        self.warnings.push(p);
    }

    /// Checks that `node` is a mapping whose keys are all among `section`'s (and not
    /// repeated). Keys in `later` are known but not supported by this version: a clear
    /// error, not "unknown key".
    fn map<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        section: Section,
        later: &[(&str, &str)],
    ) -> Option<Fields<'n>> {
        debug_assert_eq!(
            generic_path(path),
            section.pattern(),
            "the Section table says where each mapping sits"
        );
        let allowed = section.keys();
        let Value::Map(entries) = &node.value else {
            self.err(
                Some(node),
                path,
                format!("expected a mapping, found {}", node.value.type_name()),
            );
            return None;
        };
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(entries.len());
        for (k, val) in entries {
            let Value::Str(key) = &k.value else {
                self.err(Some(k), path, "mapping keys must be strings");
                continue;
            };
            let key_path = join(path, key);
            if let Some((_, when)) = later.iter().find(|(name, _)| name == key) {
                self.err(
                    Some(k),
                    &key_path,
                    format!("`{key}` is not supported by this version of the gateway ({when})"),
                );
                continue;
            }
            if !allowed.contains(&key.as_str()) {
                let hint = match suggestion(key, allowed) {
                    Some(near) => format!("did you mean `{near}`? "),
                    None => String::new(),
                };
                self.err(
                    Some(k),
                    &key_path,
                    format!(
                        "unknown key `{key}`; {hint}expected one of: {}",
                        allowed.join(", ")
                    ),
                );
                continue;
            }
            if !seen.insert(key.as_str()) {
                self.err(Some(k), &key_path, format!("duplicate key `{key}`"));
                continue;
            }
            out.push((key.as_str(), val));
        }
        Some(Fields {
            entries: out,
            node,
            path: path.to_string(),
        })
    }

    fn require<'n>(&mut self, f: &Fields<'n>, key: &str) -> Option<&'n Node> {
        let n = f.get(key);
        if n.is_none() {
            self.err(
                Some(f.node),
                &f.path(key),
                format!("missing required key `{key}`"),
            );
        }
        n
    }

    fn seq<'n>(&mut self, node: &'n Node, path: &str) -> &'n [Node] {
        match &node.value {
            Value::Seq(items) => items,
            other => {
                self.err(
                    Some(node),
                    path,
                    format!("expected a list, found {}", other.type_name()),
                );
                &[]
            }
        }
    }

    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        if let Some(whole) = node.env.as_ref().and_then(|e| e.whole.as_ref()) {
            return Some(whole.clone());
        }
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            other => {
                self.err(
                    Some(node),
                    path,
                    format!("expected a string, found {}", other.type_name()),
                );
                None
            }
        }
    }

    fn opt_string(&mut self, f: &Fields<'_>, key: &str) -> Option<String> {
        f.get(key).and_then(|n| self.string(n, &f.path(key)))
    }

    fn bool_or(&mut self, f: &Fields<'_>, key: &str, default: bool) -> bool {
        let node = f.get(key);
        let env = node.and_then(resolved);
        match (node, env.as_ref().or(node.map(|n| &n.value))) {
            (None, _) | (_, None) => default,
            (Some(_), Some(Value::Bool(b))) => *b,
            (Some(n), Some(_)) => {
                self.err(
                    Some(n),
                    &f.path(key),
                    format!("expected true or false, found {}", n.value.type_name()),
                );
                default
            }
        }
    }

    fn uint_or(&mut self, f: &Fields<'_>, key: &str, min: u64, max: u64, default: u64) -> u64 {
        match f.get(key) {
            None => default,
            Some(n) => match resolved(n).unwrap_or_else(|| n.value.clone()) {
                Value::Int(i) if i >= 0 && (min..=max).contains(&(i as u64)) => i as u64,
                Value::Int(i) => {
                    self.err(
                        Some(n),
                        &f.path(key),
                        format!("{i} is out of range; expected an integer from {min} to {max}"),
                    );
                    default
                }
                other => {
                    self.err(
                        Some(n),
                        &f.path(key),
                        format!(
                            "expected an integer from {min} to {max}, found {}",
                            other.type_name()
                        ),
                    );
                    default
                }
            },
        }
    }

    fn float_or(&mut self, f: &Fields<'_>, key: &str, min: f64, max: f64, default: f64) -> f64 {
        let Some(n) = f.get(key) else {
            return default;
        };
        let x = match resolved(n).unwrap_or_else(|| n.value.clone()) {
            Value::Int(i) => i as f64,
            Value::Float(x) => x,
            other => {
                self.err(
                    Some(n),
                    &f.path(key),
                    format!(
                        "expected a number from {min} to {max}, found {}",
                        other.type_name()
                    ),
                );
                return default;
            }
        };
        if !(min..=max).contains(&x) {
            self.err(
                Some(n),
                &f.path(key),
                format!("{x} is out of range; expected a number from {min} to {max}"),
            );
            return default;
        }
        x
    }

    /// A duration string: see [`duration_grammar`].
    fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let parsed = match &node.value {
            Value::Str(s) => duration_grammar(s),
            Value::Int(i) => Err(format!(
                "found {i}: a duration needs a unit, such as \"{i}s\" or \"{i}ms\""
            )),
            other => Err(format!("found {}", other.type_name())),
        };
        match parsed {
            Ok(d) => Some(d),
            Err(why) => {
                self.err(
                    Some(node),
                    path,
                    format!(
                        "expected a duration such as \"250ms\", \"5s\", \"1.5s\", \"1m30s\" \
                         or \"1h\", {why}"
                    ),
                );
                None
            }
        }
    }

    /// A duration for which `0s` means what the key's documentation says (zero, off,
    /// unlimited): any value is taken.
    fn duration_or(&mut self, f: &Fields<'_>, key: &str, default: Duration) -> Duration {
        f.get(key)
            .and_then(|n| self.duration(n, &f.path(key)))
            .unwrap_or(default)
    }

    /// A timeout that cannot be off: `0s` is an error that says why (`zero`), rather than
    /// a value that fails every request at run time.
    fn timeout_or(&mut self, f: &Fields<'_>, key: &str, default: Duration, zero: &str) -> Duration {
        let Some(n) = f.get(key) else {
            return default;
        };
        match self.duration(n, &f.path(key)) {
            Some(d) if d.is_zero() => {
                self.err(Some(n), &f.path(key), format!("{key} cannot be 0s: {zero}"));
                default
            }
            Some(d) => d,
            None => default,
        }
    }

    /// A timeout whose `0s` meant "off" in 0.5 although no document said so. Off it
    /// stays, with a warning, for one minor release (docs/versioning.md: nothing valid
    /// is refused without a deprecation first); after that it is refused like the others.
    fn timeout_or_deprecated_off(
        &mut self,
        f: &Fields<'_>,
        key: &str,
        default: Duration,
        zero: &str,
    ) -> Duration {
        let Some(n) = f.get(key) else {
            return default;
        };
        match self.duration(n, &f.path(key)) {
            Some(d) if d.is_zero() => {
                let msg = format!(
                    "{key}: 0s turns this timeout off, which is deprecated: the next minor \
                     release refuses it ({zero})"
                );
                self.warn(Some(n), &f.path(key), msg);
                Duration::ZERO
            }
            Some(d) => d,
            None => default,
        }
    }

    /// A size: an integer number of bytes, or a string: see [`size_grammar`].
    fn size_or(&mut self, f: &Fields<'_>, key: &str, default: u64) -> u64 {
        let Some(n) = f.get(key) else {
            return default;
        };
        let parsed = match resolved(n).unwrap_or_else(|| n.value.clone()) {
            Value::Int(i) if i >= 0 => Ok(i as u64),
            Value::Int(i) => Err(format!("found {i}, which is negative")),
            Value::Str(s) => match size_grammar(&s) {
                // 0.5 read `64 KB`; it still does, for one minor release.
                Err(why) if s.contains(char::is_whitespace) => {
                    let joined: String = s.split_whitespace().collect();
                    match size_grammar(&joined) {
                        Ok(x) => {
                            let msg = format!(
                                "`{s}`: a space inside a size is deprecated (the next minor \
                                 release refuses it, as it refuses `30 s`); write `{joined}`"
                            );
                            self.warn(Some(n), &f.path(key), msg);
                            Ok(x)
                        }
                        Err(_) => Err(why),
                    }
                }
                other => other,
            },
            other => Err(format!("found {}", other.type_name())),
        };
        match parsed {
            Ok(x) => x,
            Err(why) => {
                self.err(
                    Some(n),
                    &f.path(key),
                    format!(
                        "expected a size such as 16384, \"64KiB\", \"1.5MiB\" or \"1MB\", {why}"
                    ),
                );
                default
            }
        }
    }

    fn name(&mut self, f: &Fields<'_>, seen: &mut HashMap<String, String>) -> Option<String> {
        let node = self.require(f, "name")?;
        let path = f.path("name");
        let name = self.string(node, &path)?;
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        // An invalid or repeated name is reported, but the entry is kept (the file is
        // invalid either way) so that its other errors, and references to it, still count.
        if !valid {
            self.err(
                Some(node),
                &path,
                format!("invalid name `{name}`; names match [A-Za-z0-9_.-]{{1,64}}"),
            );
        } else if let Some(first) = seen.get(&name) {
            let msg = format!("duplicate name `{name}` (first used at {first})");
            self.err(Some(node), &path, msg);
        } else {
            seen.insert(name.clone(), path);
        }
        Some(name)
    }

    fn path_value(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    // ---- sections ------------------------------------------------------------------

    fn config(&mut self, root: &Node) -> Option<Config> {
        if matches!(root.value, Value::Null) {
            self.err(
                None,
                "",
                "the file is empty; a configuration is a mapping with at least a listener, \
                 such as `listeners: [{ name: public, address: 127.0.0.1:8080 }]`",
            );
            return None;
        }
        let f = self.map(root, "", Section::Top, &[])?;
        if let Some(n) = f.get("version") {
            let v = resolved(n).unwrap_or_else(|| n.value.clone());
            if !matches!(v, Value::Int(1)) {
                let found = match v {
                    Value::Int(i) => format!("there is no version {i}"),
                    Value::Str(s) => format!("there is no version `{s}`"),
                    other => format!("found {}", other.type_name()),
                };
                self.err(
                    Some(n),
                    "version",
                    format!("{found}; only version 1 exists (`version: 1`)"),
                );
            }
        }
        let workers = self.uint_or(&f, "workers", 0, 1024, 0) as usize;
        let admin = f.get("admin").and_then(|n| self.admin(n, "admin"));
        let access_log = f
            .get("accessLog")
            .and_then(|n| self.access_log(n, "accessLog"));
        let reload = match f.get("reload") {
            Some(n) => self.reload(n, "reload"),
            None => Reload {
                watch: true,
                debounce: Duration::from_millis(250),
            },
        };

        let shutdown = match f.get("shutdown") {
            Some(n) => self.shutdown(n, "shutdown"),
            None => Shutdown::default(),
        };

        let mut listeners = Vec::new();
        let mut names = HashMap::new();
        if let Some(n) = f.get("listeners") {
            for (i, item) in self.seq(n, "listeners").iter().enumerate() {
                if let Some(l) = self.listener(item, &index("listeners", i), &mut names) {
                    listeners.push((l, item));
                }
            }
        }
        let mut clusters = Vec::new();
        let mut names = HashMap::new();
        let mut cluster_nodes: Vec<&Node> = Vec::new();
        if let Some(n) = f.get("clusters") {
            for (i, item) in self.seq(n, "clusters").iter().enumerate() {
                if let Some(c) = self.cluster(item, &index("clusters", i), &mut names) {
                    clusters.push(c);
                    cluster_nodes.push(item);
                }
            }
        }
        let l4 = match f.get("l4") {
            Some(n) => self.l4(n, "l4"),
            None => Vec::new(),
        };
        let mut routes = Vec::new();
        let mut names = HashMap::new();
        if let Some(n) = f.get("routes") {
            for (i, item) in self.seq(n, "routes").iter().enumerate() {
                if let Some(r) = self.route(item, &index("routes", i), &mut names) {
                    routes.push((r, item, index("routes", i)));
                }
            }
        }

        // Cross references, after every section has been read. Errors point at the key
        // they are about, so the line is the one to edit.
        let mut taken: Vec<(SocketAddr, String)> = Vec::new();
        if let Some(a) = admin.as_ref().filter(|a| a.address.port() != 0) {
            taken.push((a.address, "admin.address".into()));
        }
        // HTTP and L4 listeners share one address space (and the admin listener's).
        let binds =
            listeners
                .iter()
                .enumerate()
                .map(|(i, (l, node))| (l.address, format!("listeners[{i}].address"), *node))
                .chain(l4.iter().enumerate().map(|(i, (l, node))| {
                    (l.address, format!("l4.listeners[{i}].address"), *node)
                }));
        for (address, path, node) in binds {
            if address.port() == 0 {
                // Port 0 asks the OS for a free port: never a clash.
                continue;
            }
            if let Some((other_addr, other)) = taken.iter().find(|(a, _)| clashes(*a, address)) {
                let msg = if *other_addr == address {
                    format!("address {address} is already used by {other}")
                } else {
                    format!(
                        "address {address} overlaps {other_addr} ({other}): both bind port {}",
                        address.port()
                    )
                };
                self.err(Some(child(node, "address")), &path, msg);
            } else {
                taken.push((address, path));
            }
        }
        let cluster_names: HashSet<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
        let listener_names: HashSet<&str> =
            listeners.iter().map(|(l, _)| l.name.as_str()).collect();
        for (i, (l, node)) in l4.iter().enumerate() {
            let path = format!("l4.listeners[{i}]");
            if !cluster_names.contains(l.cluster.as_str()) {
                let msg = format!(
                    "L4 listener names cluster `{}`, which does not exist",
                    l.cluster
                );
                self.err(Some(child(node, "cluster")), &join(&path, "cluster"), msg);
            }
            if let Some(j) = listeners.iter().position(|(h, _)| h.name == l.name) {
                let msg = format!(
                    "name `{}` is already used by listeners[{j}]; HTTP and L4 listener names \
                     share the `listener` label in logs and metrics",
                    l.name
                );
                self.err(Some(child(node, "name")), &join(&path, "name"), msg);
            }
        }
        // Upstream TLS is an HTTP matter: L4 relays bytes as they are, so security on a
        // cluster that only L4 listeners use would silently do nothing.
        for (i, c) in clusters.iter().enumerate() {
            let used_by_route = routes
                .iter()
                .any(|(r, _, _)| r.action.cluster() == Some(c.name.as_str()));
            let used_by_l4 = l4.iter().any(|(l, _)| l.cluster == c.name);
            if c.security.mode != SecurityMode::None && used_by_l4 && !used_by_route {
                let node = cluster_nodes.get(i).map(|n| child(n, "security"));
                self.err(
                    node,
                    &format!("clusters[{i}].security"),
                    "security has no effect on a cluster used only by L4 listeners, which relay \
                     bytes unchanged (TLS passes through end to end)",
                );
            }
        }
        if let Some(a) = access_log.as_ref() {
            let has_l4_field = a.fields.iter().any(|f| f.applies_to_l4());
            if !l4.is_empty() && !a.fields.is_empty() && !has_l4_field {
                let msg = "none of these fields exist for L4 connections, whose log lines \
                           will be empty objects; add some of: ts, clientAddr, listener, cluster, \
                           upstream, bytesIn, bytesOut, durationMs, error";
                let node = f.get("accessLog").map(|n| child(n, "fields"));
                self.warn(node, "accessLog.fields", msg);
            }
        }
        type MatchKey = (
            HostMatch,
            String,
            Option<Vec<String>>,
            Option<Vec<String>>,
            Vec<(String, Option<Vec<u8>>)>,
        );
        let mut seen_matches: HashMap<MatchKey, String> = HashMap::new();
        for (r, node, path) in &routes {
            if let Some(cluster) = r.action.cluster().filter(|c| !cluster_names.contains(c)) {
                let msg = format!("route names cluster `{cluster}`, which does not exist");
                self.err(Some(child(node, "cluster")), &join(path, "cluster"), msg);
            }
            let listeners_node = child(node, "listeners");
            for (j, l) in r.listeners.iter().flatten().enumerate() {
                if !listener_names.contains(l.as_str()) {
                    let msg = if l4.iter().any(|(x, _)| x.name == *l) {
                        format!("route names `{l}`, which is an L4 listener; routes apply to HTTP listeners only")
                    } else {
                        format!("route names listener `{l}`, which does not exist")
                    };
                    let item = match &listeners_node.value {
                        Value::Seq(items) => items.get(j).unwrap_or(listeners_node),
                        _ => listeners_node,
                    };
                    self.err(Some(item), &index(&join(path, "listeners"), j), msg);
                }
            }
            let mut methods: Option<Vec<String>> = r
                .methods
                .as_ref()
                .map(|ms| ms.iter().map(|m| m.to_string()).collect());
            if let Some(m) = &mut methods {
                m.sort();
            }
            let mut conditions: Vec<(String, Option<Vec<u8>>)> = r
                .match_headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        h.value.as_ref().map(|v| v.as_bytes().to_vec()),
                    )
                })
                .collect();
            conditions.sort();
            let key = (
                r.host.clone(),
                r.path_prefix.clone(),
                r.listeners.clone(),
                methods,
                conditions,
            );
            if let Some(first) = seen_matches.get(&key) {
                let msg = format!(
                    "route has the same host, pathPrefix and conditions as {first}; the first one wins"
                );
                self.warn(Some(node), path, msg);
            } else {
                seen_matches.insert(key, path.clone());
            }
        }
        for (i, (l, node)) in listeners.iter().enumerate() {
            let has_route = routes.iter().any(|(r, _, _)| {
                r.listeners
                    .as_ref()
                    .is_none_or(|ls| ls.iter().any(|n| n == &l.name))
            });
            if !has_route {
                let msg = format!(
                    "listener `{}` has no routes: every request gets 404",
                    l.name
                );
                self.warn(Some(node), &index("listeners", i), msg);
            }
        }

        if listeners.is_empty() && l4.is_empty() {
            self.warn(
                Some(root),
                "",
                "there is no HTTP or L4 listener, so nothing to serve: `gateway run` refuses \
                 this configuration",
            );
        }

        Some(Config {
            source: self.file.clone(),
            workers,
            admin,
            access_log,
            reload,
            shutdown,
            listeners: listeners.into_iter().map(|(l, _)| l).collect(),
            routes: routes.into_iter().map(|(r, _, _)| r).collect(),
            clusters,
            l4: l4.into_iter().map(|(l, _)| l).collect(),
        })
    }

    fn admin(&mut self, node: &Node, path: &str) -> Option<Admin> {
        let f = self.map(node, path, Section::Admin, &[])?;
        let address = self.socket_addr(&f, "address");
        let token_file = self
            .opt_string(&f, "tokenFile")
            .map(|p| self.path_value(&p));
        let mut token = None;
        if let (Some(p), Some(n)) = (&token_file, f.get("tokenFile")) {
            match Secret::load(p) {
                Ok(t) => token = Some(t),
                Err(msg) => self.err(Some(n), &f.path("tokenFile"), msg),
            }
        }
        Some(Admin {
            address: address?,
            token_file,
            token,
        })
    }

    fn socket_addr(&mut self, f: &Fields<'_>, key: &str) -> Option<SocketAddr> {
        let node = self.require(f, key)?;
        let path = f.path(key);
        let s = self.string(node, &path)?;
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    Some(node),
                    &path,
                    format!(
                        "invalid address `{s}`; expected ip:port such as 0.0.0.0:8080 or [::]:8080"
                    ),
                );
                None
            }
        }
    }

    fn access_log(&mut self, node: &Node, path: &str) -> Option<AccessLog> {
        let f = self.map(node, path, Section::AccessLog, &[])?;
        let target = match self.opt_string(&f, "path").as_deref() {
            None | Some("stdout") => LogTarget::Stdout,
            Some("stderr") => LogTarget::Stderr,
            Some("") => {
                self.err(f.get("path"), &f.path("path"), "path must not be empty");
                LogTarget::Stdout
            }
            Some(p) => {
                let file = self.path_value(p);
                // `run` opens (and creates) it; `validate` checks it could, without creating it.
                if let Err(why) = check_writable(&file) {
                    self.err(f.get("path"), &f.path("path"), why);
                }
                LogTarget::File(file)
            }
        };
        let sample_rate = self.float_or(&f, "sampleRate", 0.0, 1.0, 1.0);
        let always_log_errors = self.bool_or(&f, "alwaysLogErrors", true);
        let mut fields = Vec::new();
        if let Some(n) = f.get("fields") {
            let fpath = f.path("fields");
            for (i, item) in self.seq(n, &fpath).iter().enumerate() {
                let ipath = index(&fpath, i);
                if let Some(name) = self.string(item, &ipath) {
                    match LogField::from_name(&name) {
                        Some(field) if fields.contains(&field) => self.err(
                            Some(item),
                            &ipath,
                            format!("field `{name}` is listed twice"),
                        ),
                        Some(field) => fields.push(field),
                        None => {
                            let known: Vec<&str> = LogField::ALL.iter().map(|f| f.name()).collect();
                            self.err(
                                Some(item),
                                &ipath,
                                format!(
                                    "unknown access-log field `{name}`; expected one of: {}",
                                    known.join(", ")
                                ),
                            )
                        }
                    }
                }
            }
        }
        Some(AccessLog {
            target,
            sample_rate,
            always_log_errors,
            fields,
        })
    }

    fn reload(&mut self, node: &Node, path: &str) -> Reload {
        let defaults = Reload {
            watch: true,
            debounce: Duration::from_millis(250),
        };
        let Some(f) = self.map(node, path, Section::Reload, &[]) else {
            return defaults;
        };
        Reload {
            watch: self.bool_or(&f, "watch", defaults.watch),
            debounce: self.duration_or(&f, "debounce", defaults.debounce),
        }
    }

    fn shutdown(&mut self, node: &Node, path: &str) -> Shutdown {
        let defaults = Shutdown::default();
        let Some(f) = self.map(node, path, Section::Shutdown, &[]) else {
            return defaults;
        };
        let drain_timeout = self.timeout_or(
            &f,
            "drainTimeout",
            defaults.drain_timeout,
            "in-flight requests would be cut at once; use a short value such as 1s",
        );
        Shutdown {
            drain_timeout,
            delay: self.duration_or(&f, "delay", defaults.delay),
        }
    }

    fn listener(
        &mut self,
        node: &Node,
        path: &str,
        names: &mut HashMap<String, String>,
    ) -> Option<Listener> {
        let f = self.map(node, path, Section::Listener, &[])?;
        let name = self.name(&f, names);
        let address = self.socket_addr(&f, "address");
        let http2 = self.bool_or(&f, "http2", true);
        let max_connections = self.uint_or(
            &f,
            "maxConnections",
            1,
            10_000_000,
            DEFAULT_MAX_CONNECTIONS as u64,
        ) as usize;
        let mut limits = Limits {
            max_request_headers_size: DEFAULT_MAX_HEADERS_SIZE,
            max_request_body: 0,
        };
        if let Some(n) = f.get("limits") {
            let lpath = f.path("limits");
            if let Some(lf) = self.map(n, &lpath, Section::ListenerLimits, &[]) {
                let h = self.size_or(
                    &lf,
                    "maxRequestHeadersSize",
                    DEFAULT_MAX_HEADERS_SIZE as u64,
                );
                if !(1024..=16 * 1024 * 1024).contains(&h) {
                    self.err(
                        lf.get("maxRequestHeadersSize"),
                        &lf.path("maxRequestHeadersSize"),
                        "maxRequestHeadersSize must be between 1KiB and 16MiB",
                    );
                }
                limits.max_request_headers_size = h as usize;
                limits.max_request_body = self.size_or(&lf, "maxRequestBody", 0);
            }
        }
        let mut timeouts = DEFAULT_LISTENER_TIMEOUTS;
        if let Some(n) = f.get("timeouts") {
            let tpath = f.path("timeouts");
            if let Some(tf) = self.map(n, &tpath, Section::ListenerTimeouts, &[]) {
                let forever = "a client could hold a connection forever; use a long value \
                               such as 1h instead";
                timeouts.read_header =
                    self.timeout_or(&tf, "readHeader", timeouts.read_header, forever);
                timeouts.read = self.timeout_or_deprecated_off(&tf, "read", timeouts.read, forever);
                timeouts.write =
                    self.timeout_or_deprecated_off(&tf, "write", timeouts.write, forever);
                timeouts.idle = self.timeout_or_deprecated_off(
                    &tf,
                    "idle",
                    timeouts.idle,
                    "an idle keep-alive connection would be held forever; use a long value \
                     such as 1h (there is no way to turn keep-alive off)",
                );
            }
        }
        let tls = f
            .get("tls")
            .and_then(|n| self.listener_tls(n, &f.path("tls")));
        if tls.is_some() && f.get("http2").is_some() {
            self.warn(
                f.get("http2"),
                &f.path("http2"),
                "http2 applies to plaintext listeners only (h2c); on a TLS listener `tls.alpn` \
                 decides whether HTTP/2 is offered",
            );
        }
        Some(Listener {
            name: name?,
            address: address?,
            http2,
            max_connections,
            limits,
            timeouts,
            tls,
        })
    }

    /// `listeners[].tls`: reads every certificate and key now, so that `validate` reports
    /// unreadable files, mismatched keys and expired certificates with their key paths.
    fn listener_tls(&mut self, node: &Node, path: &str) -> Option<ListenerTls> {
        let f = self.map(node, path, Section::ListenerTls, &[])?;
        let mut certificates = Vec::new();
        // Which entry first claimed each server name, for the "shadowed" warning.
        let mut claimed: HashMap<String, usize> = HashMap::new();
        if let Some(n) = self.require(&f, "certificates") {
            let cpath = f.path("certificates");
            let items = self.seq(n, &cpath);
            if items.is_empty() && matches!(n.value, Value::Seq(_)) {
                self.err(
                    Some(n),
                    &cpath,
                    "a TLS listener needs at least one certificate",
                );
            }
            for (i, item) in items.iter().enumerate() {
                let ipath = index(&cpath, i);
                if let Some(c) = self.tls_certificate(item, &ipath, i, &mut claimed) {
                    certificates.push(c);
                }
            }
        }
        let min_version = match f.get("minVersion") {
            None => TlsVersion::V1_2,
            Some(n) => match &n.value {
                Value::Str(s) if s == "1.2" => TlsVersion::V1_2,
                Value::Str(s) if s == "1.3" => TlsVersion::V1_3,
                // `minVersion: 1.2` unquoted is a YAML number; read it as meant.
                Value::Float(x) if *x == 1.2 => TlsVersion::V1_2,
                Value::Float(x) if *x == 1.3 => TlsVersion::V1_3,
                other => {
                    let found = match other {
                        Value::Str(s) => format!("`{s}`"),
                        Value::Float(x) => x.to_string(),
                        v => v.type_name().to_string(),
                    };
                    self.err(
                        Some(n),
                        &f.path("minVersion"),
                        format!("expected \"1.2\" or \"1.3\", found {found}"),
                    );
                    TlsVersion::V1_2
                }
            },
        };
        let mut alpn = vec![Alpn::H2, Alpn::Http11];
        if let Some(n) = f.get("alpn") {
            let apath = f.path("alpn");
            let items = self.seq(n, &apath);
            let mut list = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let ipath = index(&apath, i);
                let Some(name) = self.string(item, &ipath) else {
                    continue;
                };
                let proto = match name.as_str() {
                    "h2" => Alpn::H2,
                    "http/1.1" => Alpn::Http11,
                    other => {
                        self.err(
                            Some(item),
                            &ipath,
                            format!("unknown ALPN protocol `{other}`; expected h2 or http/1.1"),
                        );
                        continue;
                    }
                };
                if list.contains(&proto) {
                    self.err(Some(item), &ipath, format!("`{name}` is listed twice"));
                    continue;
                }
                list.push(proto);
            }
            if items.is_empty() && matches!(n.value, Value::Seq(_)) {
                self.err(
                    Some(n),
                    &apath,
                    "alpn must name at least one protocol (h2, http/1.1)",
                );
            }
            if !list.is_empty() {
                alpn = list;
            }
        }
        Some(ListenerTls {
            certificates,
            min_version,
            alpn,
        })
    }

    fn tls_certificate(
        &mut self,
        node: &Node,
        path: &str,
        position: usize,
        claimed: &mut HashMap<String, usize>,
    ) -> Option<TlsCertificate> {
        let f = self.map(node, path, Section::TlsCertificate, &[])?;
        let cert_node = self.require(&f, "cert");
        let cert = cert_node
            .and_then(|n| self.string(n, &f.path("cert")))
            .map(|p| self.path_value(&p));
        let key_node = self.require(&f, "key");
        let key = key_node
            .and_then(|n| self.string(n, &f.path("key")))
            .map(|p| self.path_value(&p));
        let mut server_names = Vec::new();
        if let Some(n) = f.get("serverNames") {
            let npath = f.path("serverNames");
            for (i, item) in self.seq(n, &npath).iter().enumerate() {
                let ipath = index(&npath, i);
                let Some(name) = self.string(item, &ipath) else {
                    continue;
                };
                match parse_host_match(&name) {
                    Ok(HostMatch::Exact(h)) => server_names.push(h),
                    Ok(HostMatch::Wildcard(h)) => server_names.push(format!("*.{h}")),
                    Ok(HostMatch::Any) => {}
                    Err(why) => self.err(Some(item), &ipath, why),
                }
            }
        }
        let (cert, key) = (cert?, key?);
        match load_certificate(&cert, &key, &server_names) {
            Err(CertProblem::Cert(msg)) => {
                self.err(cert_node, &f.path("cert"), msg);
                None
            }
            Err(CertProblem::Key(msg)) => {
                self.err(key_node, &f.path("key"), msg);
                None
            }
            Ok(loaded) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                if let Some(t) = loaded.not_after.filter(|&t| t < now) {
                    let msg = format!(
                        "certificate {} expired on {}; clients will refuse it",
                        cert.display(),
                        crate::x509::format_time(t)
                    );
                    self.warn(cert_node, &f.path("cert"), msg);
                }
                if loaded.names.is_empty() {
                    let msg = if position == 0 {
                        "the certificate has no DNS subjectAltName and no serverNames are set: \
                         it is served only to clients that send no SNI or an unknown name"
                    } else {
                        "the certificate has no DNS subjectAltName and no serverNames are set: \
                         SNI can never choose it (only the first certificate is the default)"
                    };
                    self.warn(cert_node, &f.path("cert"), msg);
                }
                for name in loaded.names.names() {
                    if let Some(first) = claimed.get(&name) {
                        let msg = format!(
                            "server name `{name}` is also claimed by certificates[{first}], \
                             which SNI picks for it"
                        );
                        self.warn(Some(node), path, msg);
                    } else {
                        claimed.insert(name, position);
                    }
                }
                Some(TlsCertificate {
                    cert,
                    key,
                    server_names,
                    loaded: Arc::new(loaded),
                })
            }
        }
    }

    fn cluster(
        &mut self,
        node: &Node,
        path: &str,
        names: &mut HashMap<String, String>,
    ) -> Option<Cluster> {
        let f = self.map(node, path, Section::Cluster, &[])?;
        let name = self.name(&f, names);
        let protocol = match self.opt_string(&f, "protocol").as_deref() {
            None | Some("http1") => Protocol::Http1,
            Some("http2") => Protocol::Http2,
            Some(other) => {
                let msg = format!("unknown protocol `{other}`; expected http1 or http2");
                self.err(f.get("protocol"), &f.path("protocol"), msg);
                Protocol::Http1
            }
        };
        let mut endpoints = Vec::new();
        if let Some(n) = self.require(&f, "endpoints") {
            let epath = f.path("endpoints");
            let items = self.seq(n, &epath);
            if items.is_empty() && matches!(n.value, Value::Seq(_)) {
                self.err(Some(n), &epath, "a cluster needs at least one endpoint");
            }
            for (i, item) in items.iter().enumerate() {
                let ipath = index(&epath, i);
                let Some(ef) = self.map(item, &ipath, Section::Endpoint, &[]) else {
                    continue;
                };
                let weight = self.uint_or(&ef, "weight", 1, 1000, 1) as u32;
                let Some(an) = self.require(&ef, "address") else {
                    continue;
                };
                let apath = ef.path("address");
                let Some(address) = self.string(an, &apath) else {
                    continue;
                };
                if let Err(why) = check_endpoint_address(&address) {
                    self.err(
                        Some(an),
                        &apath,
                        format!("invalid endpoint `{address}`: {why}"),
                    );
                    continue;
                }
                endpoints.push(Endpoint { address, weight });
            }
        }
        let mut timeouts = DEFAULT_CLUSTER_TIMEOUTS;
        if let Some(n) = f.get("timeouts") {
            let tpath = f.path("timeouts");
            if let Some(tf) = self.map(n, &tpath, Section::ClusterTimeouts, &[]) {
                timeouts.connect = self.timeout_or(&tf, "connect", timeouts.connect, UPSTREAM_ZERO);
                timeouts.read = self.timeout_or(&tf, "read", timeouts.read, UPSTREAM_ZERO);
                timeouts.write = self.timeout_or_deprecated_off(
                    &tf,
                    "write",
                    timeouts.write,
                    "a stalled upload would be waited for forever; use a long value such as 1h",
                );
            }
        }
        let security = match f.get("security") {
            Some(n) => self.security(n, &f.path("security")),
            None => Security::default(),
        };
        let passive_health = f
            .get("passiveHealth")
            .and_then(|n| self.passive_health(n, &f.path("passiveHealth")));
        let active_health = f
            .get("activeHealth")
            .and_then(|n| self.active_health(n, &f.path("activeHealth")));
        Some(Cluster {
            name: name?,
            protocol,
            endpoints,
            timeouts,
            security,
            passive_health,
            active_health,
        })
    }

    /// `clusters[].activeHealth`.
    fn active_health(&mut self, node: &Node, path: &str) -> Option<ActiveHealth> {
        let f = self.map(node, path, Section::ActiveHealth, &[])?;
        let mut ok = true;
        let check_path = self
            .require(&f, "path")
            .and_then(|n| self.string(n, &f.path("path")));
        if let Some(p) = &check_path {
            let bad = !p.starts_with('/')
                || p.bytes()
                    .any(|b| b.is_ascii_control() || b == b'#' || b == b' ' || b >= 0x80);
            if bad || http::uri::PathAndQuery::try_from(p.as_str()).is_err() {
                self.err(
                    f.get("path"),
                    &f.path("path"),
                    format!(
                        "invalid path `{p}`; expected a path starting with / (a query is \
                         allowed; no fragment, space or control character)"
                    ),
                );
                ok = false;
            }
        }
        let interval = self.duration_or(&f, "interval", DEFAULT_ACTIVE_INTERVAL);
        let timeout = self.duration_or(&f, "timeout", DEFAULT_ACTIVE_TIMEOUT);
        for (key, d) in [("interval", interval), ("timeout", timeout)] {
            if d.is_zero() {
                self.err(
                    f.get(key),
                    &f.path(key),
                    format!("{key} must be more than 0s"),
                );
                ok = false;
            }
        }
        if timeout > interval {
            self.err(
                f.get("timeout").or(f.get("interval")),
                &f.path("timeout"),
                format!(
                    "timeout ({}) is longer than interval ({}); a check must end before the next one is due",
                    crate::config::validate::show(timeout),
                    crate::config::validate::show(interval)
                ),
            );
            ok = false;
        }
        let unhealthy_threshold = self.uint_or(&f, "unhealthyThreshold", 1, 100, 3) as u32;
        let healthy_threshold = self.uint_or(&f, "healthyThreshold", 1, 100, 2) as u32;
        let mut expected_statuses = vec![(200, 399)];
        if let Some(n) = f.get("expectedStatuses") {
            let spath = f.path("expectedStatuses");
            let items = self.seq(n, &spath);
            if items.is_empty() && matches!(n.value, Value::Seq(_)) {
                self.err(
                    Some(n),
                    &spath,
                    "expectedStatuses must name at least one code or range",
                );
                ok = false;
            }
            let mut list = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let ipath = index(&spath, i);
                let parsed = match &item.value {
                    Value::Int(c) => u16::try_from(*c).ok().map(|c| (c, c)),
                    Value::Str(s) => parse_status_range(s),
                    _ => None,
                };
                match parsed {
                    Some((lo, hi))
                        if (100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi =>
                    {
                        list.push((lo, hi))
                    }
                    _ => {
                        let found = match &item.value {
                            Value::Int(c) => c.to_string(),
                            Value::Str(s) => format!("`{s}`"),
                            other => other.type_name().to_string(),
                        };
                        self.err(
                            Some(item),
                            &ipath,
                            format!(
                                "expected a status code from 100 to 599 or a range such as \
                                 \"200-399\", found {found}"
                            ),
                        );
                        ok = false;
                    }
                }
            }
            if !list.is_empty() {
                expected_statuses = list;
            }
        }
        let host = self.opt_string(&f, "host");
        if let Some(h) = &host {
            if let Err(why) = check_authority(h) {
                self.err(
                    f.get("host"),
                    &f.path("host"),
                    format!("invalid host `{h}`: {why}"),
                );
                ok = false;
            }
        }
        let check_path = check_path?;
        ok.then_some(ActiveHealth {
            path: check_path,
            interval,
            timeout,
            unhealthy_threshold,
            healthy_threshold,
            expected_statuses,
            host,
        })
    }

    fn security(&mut self, node: &Node, path: &str) -> Security {
        let Some(f) = self.map(node, path, Section::Security, &[]) else {
            return Security::default();
        };
        let mode = match self.opt_string(&f, "mode").as_deref() {
            None | Some("none") => SecurityMode::None,
            Some("tls") => SecurityMode::Tls,
            Some("mtls") => SecurityMode::Mtls,
            Some(other) => {
                let msg = format!("unknown mode `{other}`; expected none, tls or mtls");
                self.err(f.get("mode"), &f.path("mode"), msg);
                SecurityMode::None
            }
        };
        let file = |v: &mut Self, key: &str| v.opt_string(&f, key).map(|p| v.path_value(&p));
        let ca_bundle = file(self, "caBundle");
        let client_cert = file(self, "clientCert");
        let client_key = file(self, "clientKey");
        let server_name = self.opt_string(&f, "serverName");
        if let Some(name) = &server_name {
            if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                let msg = format!("invalid serverName `{name}`; expected a DNS name or IP address");
                self.err(f.get("serverName"), &f.path("serverName"), msg);
            }
        }
        if mode == SecurityMode::None {
            for key in ["caBundle", "serverName", "clientCert", "clientKey"] {
                if f.get(key).is_some() {
                    let msg =
                        format!("`{key}` has no effect with mode none; set mode: tls or mtls");
                    self.err(f.get(key), &f.path(key), msg);
                }
            }
        }
        // The material is read here, once; the snapshot is built from what was checked.
        let mut roots = None;
        if mode != SecurityMode::None {
            let loaded = match &ca_bundle {
                Some(ca) => load_roots(ca).map_err(|e| (f.get("caBundle"), "caBundle", e)),
                None => system_roots().map_err(|e| (f.get("mode"), "mode", e)),
            };
            match loaded {
                Ok(r) => roots = Some(r),
                Err((node, key, e)) => self.err(node, &f.path(key), e),
            }
        }
        let mut identity = None;
        match (mode, &client_cert, &client_key) {
            (SecurityMode::Mtls, Some(cert), Some(key)) => match load_client_identity(cert, key) {
                Ok(id) => identity = Some(id),
                Err(e) => self.err(f.get("clientCert"), &f.path("clientCert"), e),
            },
            (SecurityMode::Mtls, _, _) => {
                for (key, given) in [("clientCert", &client_cert), ("clientKey", &client_key)] {
                    if given.is_none() {
                        let msg = format!("mode mtls needs `{key}`");
                        self.err(Some(f.node), &f.path(key), msg);
                    }
                }
            }
            (SecurityMode::Tls, c, k) if c.is_some() || k.is_some() => {
                self.err(
                    f.get("clientCert").or(f.get("clientKey")),
                    &f.path(if c.is_some() {
                        "clientCert"
                    } else {
                        "clientKey"
                    }),
                    "a client certificate is only sent with mode mtls",
                );
            }
            _ => {}
        }
        let material = roots.map(|(roots, roots_fp)| {
            let (identity, id_fp) = match identity {
                Some((id, fp)) => (Some(id), fp),
                None => (None, 0),
            };
            Arc::new(UpstreamMaterial {
                roots: Arc::new(roots),
                identity,
                fingerprint: fnv1a_with(roots_fp, &id_fp.to_le_bytes()),
            })
        });
        Security {
            mode,
            ca_bundle,
            server_name,
            client_cert,
            client_key,
            material,
        }
    }

    fn passive_health(&mut self, node: &Node, path: &str) -> Option<PassiveHealth> {
        let f = self.map(node, path, Section::PassiveHealth, &[])?;
        let consecutive_failures = self.uint_or(&f, "consecutiveFailures", 1, 1000, 5) as u32;
        let base_ejection = self.timeout_or(
            &f,
            "baseEjectionTime",
            Duration::from_secs(30),
            "an ejected endpoint would come back at once; leave passiveHealth out to turn \
             ejection off",
        );
        let max_ejection = self.duration_or(&f, "maxEjectionTime", Duration::from_secs(300));
        if max_ejection < base_ejection {
            self.err(
                f.get("maxEjectionTime"),
                &f.path("maxEjectionTime"),
                "maxEjectionTime must be at least baseEjectionTime",
            );
        }
        let max_ejected_percent = self.uint_or(&f, "maxEjectedPercent", 0, 100, 50) as u32;
        let slow_start = self.duration_or(&f, "slowStart", Duration::from_secs(10));
        let latency = f.get("latency").and_then(|n| {
            let lpath = f.path("latency");
            let lf = self.map(n, &lpath, Section::Latency, &[])?;
            self.require(&lf, "threshold")?;
            let threshold = self.timeout_or_deprecated_off(
                &lf,
                "threshold",
                Duration::ZERO,
                "every endpoint counts as slow; leave latency out to turn it off",
            );
            let weight_factor = self.float_or(&lf, "weightFactor", 0.0, 1.0, 0.1);
            if weight_factor <= 0.0 {
                self.err(
                    lf.get("weightFactor"),
                    &lf.path("weightFactor"),
                    "weightFactor must be more than 0 (an endpoint is never de-preferred to nothing)",
                );
            }
            Some(LatencyPolicy {
                threshold,
                weight_factor,
            })
        });
        Some(PassiveHealth {
            consecutive_failures,
            base_ejection,
            max_ejection,
            max_ejected_percent,
            latency,
            slow_start,
        })
    }

    fn l4<'n>(&mut self, node: &'n Node, path: &str) -> Vec<(L4Listener, &'n Node)> {
        let Some(f) = self.map(node, path, Section::L4, &[]) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut names = HashMap::new();
        if let Some(n) = f.get("listeners") {
            let lpath = f.path("listeners");
            for (i, item) in self.seq(n, &lpath).iter().enumerate() {
                if let Some(l) = self.l4_listener(item, &index(&lpath, i), &mut names) {
                    out.push((l, item));
                }
            }
        }
        out
    }

    fn l4_listener(
        &mut self,
        node: &Node,
        path: &str,
        names: &mut HashMap<String, String>,
    ) -> Option<L4Listener> {
        let f = self.map(node, path, Section::L4Listener, &[])?;
        let name = self.name(&f, names);
        let address = self.socket_addr(&f, "address");
        let cluster = self
            .require(&f, "cluster")
            .and_then(|n| self.string(n, &f.path("cluster")));
        let idle_timeout = self.timeout_or(
            &f,
            "idleTimeout",
            DEFAULT_L4_IDLE_TIMEOUT,
            "a silent peer would hold a connection forever; use a long value such as 24h \
             instead",
        );
        let max_duration =
            Some(self.duration_or(&f, "maxDuration", Duration::ZERO)).filter(|d| !d.is_zero());
        let max_connections = self.uint_or(
            &f,
            "maxConnections",
            0,
            10_000_000,
            DEFAULT_L4_MAX_CONNECTIONS as u64,
        ) as usize;
        if max_connections == 0 {
            self.err(
                f.get("maxConnections"),
                &f.path("maxConnections"),
                "maxConnections must be at least 1: 0 would refuse every connection",
            );
        }
        let allow = self.networks(&f, "allow");
        let deny = self.networks(&f, "deny");
        Some(L4Listener {
            name: name?,
            address: address?,
            cluster: cluster?,
            idle_timeout,
            max_duration,
            max_connections,
            allow,
            deny,
        })
    }

    /// A list of IP networks (`10.0.0.0/8`, `2001:db8::/32`, or a bare address).
    fn networks(&mut self, f: &Fields<'_>, key: &str) -> Vec<IpNet> {
        let Some(n) = f.get(key) else {
            return Vec::new();
        };
        let path = f.path(key);
        let mut out = Vec::new();
        for (i, item) in self.seq(n, &path).iter().enumerate() {
            let ipath = index(&path, i);
            let parsed = match &item.value {
                Value::Str(s) => parse_network(s).ok_or_else(|| format!("`{s}`")),
                other => Err(other.type_name().to_string()),
            };
            match parsed {
                Ok(net) => {
                    let trunc = net.trunc();
                    if trunc != net {
                        let msg = format!(
                            "`{net}` has host bits set; it is read as {trunc}, which admits or \
                             refuses the whole network"
                        );
                        self.warn(Some(item), &ipath, msg);
                    }
                    out.push(trunc);
                }
                Err(found) => self.err(
                    Some(item),
                    &ipath,
                    format!(
                        "expected an IP address or CIDR network such as 10.0.0.0/8, \
                         192.0.2.7 or 2001:db8::/32, found {found}"
                    ),
                ),
            }
        }
        out
    }

    fn route(
        &mut self,
        node: &Node,
        path: &str,
        names: &mut HashMap<String, String>,
    ) -> Option<Route> {
        let f = self.map(node, path, Section::Route, &[])?;
        let name = self.name(&f, names);
        let listeners = f.get("listeners").map(|n| {
            let lpath = f.path("listeners");
            self.seq(n, &lpath)
                .iter()
                .enumerate()
                .filter_map(|(i, item)| self.string(item, &index(&lpath, i)))
                .collect::<Vec<_>>()
        });
        let mut host = HostMatch::Any;
        let mut path_prefix = "/".to_string();
        let mut methods = None;
        let mut match_headers = Vec::new();
        if let Some(n) = f.get("match") {
            let mpath = f.path("match");
            if let Some(mf) = self.map(n, &mpath, Section::RouteMatch, &[]) {
                methods = mf
                    .get("methods")
                    .and_then(|n| self.methods(n, &mf.path("methods")));
                if let Some(n) = mf.get("headers") {
                    match_headers = self.header_matches(n, &mf.path("headers"));
                }
                if let Some(h) = self.opt_string(&mf, "host") {
                    match parse_host_match(&h) {
                        Ok(m) => host = m,
                        Err(why) => self.err(mf.get("host"), &mf.path("host"), why),
                    }
                }
                if let Some(p) = self.opt_string(&mf, "pathPrefix") {
                    match check_prefix(&p) {
                        Ok(()) => path_prefix = p,
                        Err(why) => self.err(mf.get("pathPrefix"), &mf.path("pathPrefix"), why),
                    }
                }
            }
        }
        let action = self.route_action(&f);
        let mut timeouts = RouteTimeouts::default();
        if let Some(n) = f.get("timeouts") {
            let tpath = f.path("timeouts");
            if let Some(tf) = self.map(n, &tpath, Section::RouteTimeouts, &[]) {
                let get = |v: &mut Self, key: &str| {
                    tf.get(key)
                        .map(|_| v.timeout_or(&tf, key, Duration::ZERO, UPSTREAM_ZERO))
                        .filter(|d| !d.is_zero())
                };
                timeouts.connect = get(self, "connect");
                timeouts.read = get(self, "read");
                // 0s was "off" in 0.5 (deprecated): kept, where connect and read 0s failed
                // every request and are refused.
                timeouts.write = tf.get("write").map(|_| {
                    self.timeout_or_deprecated_off(
                        &tf,
                        "write",
                        Duration::ZERO,
                        "a stalled upload would be waited for forever; use a long value \
                         such as 1h",
                    )
                });
                // The one route timeout that can be off: 0s (the default) is off.
                timeouts.request = tf
                    .get("request")
                    .and_then(|n| self.duration(n, &tf.path("request")))
                    .filter(|d| !d.is_zero());
            }
        }
        let mut retry_attempts = DEFAULT_RETRY_ATTEMPTS;
        if let Some(n) = f.get("retry") {
            let rpath = f.path("retry");
            if let Some(rf) = self.map(n, &rpath, Section::RouteRetry, &[]) {
                retry_attempts =
                    self.uint_or(&rf, "attempts", 0, 10, u64::from(DEFAULT_RETRY_ATTEMPTS)) as u32;
            }
        }
        let rewrite = f
            .get("rewrite")
            .map(|n| self.rewrite(n, &f.path("rewrite")))
            .unwrap_or_default();
        let (request_headers, response_headers) = match f.get("headers") {
            Some(n) => self.header_rules(n, &f.path("headers")),
            None => Default::default(),
        };
        let rate_limit = f
            .get("rateLimit")
            .and_then(|n| self.rate_limit(n, &f.path("rateLimit")));
        // A route that answers by itself sends nothing upstream: these would do nothing.
        if matches!(
            action,
            Some(RouteAction::Redirect(_) | RouteAction::Direct(_))
        ) {
            let headers = f.get("headers").map(|n| child(n, "request"));
            let request_rules = (!request_headers.is_empty()).then_some(headers).flatten();
            for (node, key) in [
                (f.get("rewrite"), "rewrite".to_string()),
                (f.get("timeouts"), "timeouts".to_string()),
                (f.get("retry"), "retry".to_string()),
                (request_rules, "headers.request".to_string()),
            ] {
                if let Some(node) = node {
                    let msg = format!(
                        "`{key}` has no effect on a route that answers by itself (redirect or \
                         directResponse): nothing goes upstream"
                    );
                    self.err(Some(node), &f.path(&key), msg);
                }
            }
        }
        Some(Route {
            name: name?,
            listeners,
            host,
            path_prefix,
            methods,
            match_headers,
            action: action?,
            timeouts,
            retry_attempts,
            rewrite,
            request_headers,
            response_headers,
            rate_limit,
        })
    }

    /// `routes[].rateLimit`.
    fn rate_limit(&mut self, node: &Node, path: &str) -> Option<RateLimit> {
        let f = self.map(node, path, Section::RateLimit, &[])?;
        let rps_node = self.require(&f, "requestsPerSecond")?;
        let zero = match rps_node.value {
            Value::Int(i) => i == 0,
            Value::Float(x) => x == 0.0,
            _ => false,
        };
        if zero {
            self.err(
                Some(rps_node),
                &f.path("requestsPerSecond"),
                "requestsPerSecond must be more than 0 (leave rateLimit out for no limit)",
            );
            return None;
        }
        let rps = self.float_or(&f, "requestsPerSecond", 0.0, 1_000_000.0, 0.0);
        if rps <= 0.0 {
            // float_or said why.
            return None;
        }
        let default_burst = rps.ceil().min(1_000_000.0) as u64;
        let burst = self.uint_or(&f, "burst", 1, 1_000_000, default_burst.max(1)) as u32;
        let key = match self.opt_string(&f, "key").as_deref() {
            None | Some("clientIp") => RateLimitKey::ClientIp,
            Some("route") => RateLimitKey::Route,
            Some(k) => match k.strip_prefix("header:") {
                Some(name) => match http::HeaderName::from_bytes(name.as_bytes()) {
                    Ok(h) => RateLimitKey::Header(h),
                    Err(_) => {
                        let msg = format!("`{name}` is not a valid header name (in `{k}`)");
                        self.err(f.get("key"), &f.path("key"), msg);
                        return None;
                    }
                },
                None => {
                    let msg = format!(
                        "unknown key kind `{k}`; expected clientIp, route or header:NAME \
                         (such as header:x-api-key)"
                    );
                    self.err(f.get("key"), &f.path("key"), msg);
                    return None;
                }
            },
        };
        Some(RateLimit {
            requests_per_second: rps,
            burst,
            key,
        })
    }

    /// Exactly one of `cluster`, `redirect` and `directResponse`.
    fn route_action(&mut self, f: &Fields<'_>) -> Option<RouteAction> {
        let given: Vec<&str> = ["cluster", "redirect", "directResponse"]
            .into_iter()
            .filter(|k| f.get(k).is_some())
            .collect();
        match given.as_slice() {
            [] => {
                self.err(
                    Some(f.node),
                    &f.path("cluster"),
                    "missing required key `cluster` (or `redirect` or `directResponse`: a \
                     route needs exactly one of the three)",
                );
                return None;
            }
            [_] => {}
            [first, rest @ ..] => {
                for key in rest {
                    let msg = format!(
                        "a route has exactly one of `cluster`, `redirect` and `directResponse`; \
                         this one also has `{first}`"
                    );
                    self.err(f.get(key), &f.path(key), msg);
                }
                return None;
            }
        }
        let key = given[0];
        let node = f.get(key)?;
        let path = f.path(key);
        match key {
            "cluster" => self.string(node, &path).map(RouteAction::Cluster),
            "redirect" => self.redirect(node, &path).map(RouteAction::Redirect),
            _ => self.direct_response(node, &path).map(RouteAction::Direct),
        }
    }

    /// `routes[].redirect`.
    fn redirect(&mut self, node: &Node, path: &str) -> Option<Redirect> {
        let f = self.map(node, path, Section::Redirect, &[])?;
        let mut ok = true;
        let scheme = self.opt_string(&f, "scheme");
        if let Some(s) = scheme
            .as_deref()
            .filter(|s| !matches!(*s, "http" | "https"))
        {
            let msg = format!("unknown scheme `{s}`; expected http or https");
            self.err(f.get("scheme"), &f.path("scheme"), msg);
            ok = false;
        }
        let host = self.opt_string(&f, "host");
        if let Some(h) = &host {
            let bad = check_authority(h).err().or_else(|| {
                let port = h
                    .rsplit_once(':')
                    .is_some_and(|(a, _)| !a.contains(':') || a.ends_with(']'));
                port.then_some("give the port as `port`, not in `host`")
            });
            if let Some(why) = bad {
                let msg = format!("invalid host `{h}`: {why}");
                self.err(f.get("host"), &f.path("host"), msg);
                ok = false;
            }
        }
        let port = f
            .get("port")
            .map(|_| self.uint_or(&f, "port", 1, 65535, 443) as u16);
        let mut path_for = |v: &mut Self, key: &str| {
            let p = v.opt_string(&f, key)?;
            match check_prefix(&p) {
                Ok(()) => Some(p),
                Err(why) => {
                    v.err(f.get(key), &f.path(key), why.replace("pathPrefix", key));
                    ok = false;
                    None
                }
            }
        };
        let new_path = path_for(self, "path");
        let path_prefix = path_for(self, "pathPrefix");
        if f.get("path").is_some() && f.get("pathPrefix").is_some() {
            self.err(
                f.get("pathPrefix"),
                &f.path("pathPrefix"),
                "give `path` (the whole path) or `pathPrefix` (the matched prefix), not both",
            );
            ok = false;
        }
        let code = match f.get("code") {
            None => 301,
            Some(n) => match n.value {
                Value::Int(c @ (301 | 302 | 303 | 307 | 308)) => c as u16,
                _ => {
                    let found = match &n.value {
                        Value::Int(i) => i.to_string(),
                        other => other.type_name().to_string(),
                    };
                    self.err(
                        Some(n),
                        &f.path("code"),
                        format!("expected 301, 302, 303, 307 or 308, found {found}"),
                    );
                    ok = false;
                    301
                }
            },
        };
        let changes = ["scheme", "host", "port", "path", "pathPrefix"]
            .iter()
            .any(|k| f.get(k).is_some());
        if !changes {
            self.err(
                Some(node),
                path,
                "a redirect must change at least one of scheme, host, port, path or pathPrefix \
                 (else it would send clients back to the same URL)",
            );
            ok = false;
        }
        ok.then_some(Redirect {
            scheme,
            host: host.map(|h| h.to_ascii_lowercase()),
            port,
            path: new_path,
            path_prefix,
            code,
        })
    }

    /// `routes[].directResponse`.
    fn direct_response(&mut self, node: &Node, path: &str) -> Option<DirectResponse> {
        let f = self.map(node, path, Section::DirectResponse, &[])?;
        let status = self
            .require(&f, "status")
            .map(|_| self.uint_or(&f, "status", 200, 599, 200) as u16);
        let body = self.opt_string(&f, "body").unwrap_or_default();
        if body.len() > DIRECT_BODY_LIMIT {
            self.err(
                f.get("body"),
                &f.path("body"),
                format!("the body is {} bytes; at most 1 MiB", body.len()),
            );
        }
        if let (Some(s @ (204 | 304)), false) = (status, body.is_empty()) {
            self.err(
                f.get("body"),
                &f.path("body"),
                format!("a {s} response has no body"),
            );
        }
        let content_type = f.get("contentType").and_then(|n| {
            let cpath = f.path("contentType");
            let v = self.string(n, &cpath)?;
            self.header_value(n, &cpath, &v)
        });
        Some(DirectResponse {
            status: status?,
            body,
            content_type,
        })
    }

    /// `routes[].rewrite`: a replacement for the matched path prefix, and the upstream
    /// host.
    fn rewrite(&mut self, node: &Node, path: &str) -> RouteRewrite {
        let Some(f) = self.map(node, path, Section::RouteRewrite, &[]) else {
            return RouteRewrite::default();
        };
        let path_prefix = self
            .opt_string(&f, "pathPrefix")
            .filter(|p| match check_prefix(p) {
                Ok(()) => true,
                Err(why) => {
                    self.err(f.get("pathPrefix"), &f.path("pathPrefix"), why);
                    false
                }
            });
        let host = self
            .opt_string(&f, "host")
            .filter(|h| match check_authority(h) {
                Ok(()) => true,
                Err(why) => {
                    let msg = format!("invalid host `{h}`: {why}");
                    self.err(f.get("host"), &f.path("host"), msg);
                    false
                }
            });
        RouteRewrite { path_prefix, host }
    }

    /// `routes[].headers`: `request` and `response` rules.
    fn header_rules(&mut self, node: &Node, path: &str) -> (HeaderOps, HeaderOps) {
        let Some(f) = self.map(node, path, Section::RouteHeaders, &[]) else {
            return Default::default();
        };
        let side = |v: &mut Self, key: &str, section: Section| {
            f.get(key)
                .map(|n| v.header_ops(n, &f.path(key), section))
                .unwrap_or_default()
        };
        (
            side(self, "request", Section::RouteRequestHeaders),
            side(self, "response", Section::RouteResponseHeaders),
        )
    }

    /// One side's `set`, `add` and `remove`.
    fn header_ops(&mut self, node: &Node, path: &str, section: Section) -> HeaderOps {
        let Some(f) = self.map(node, path, section, &[]) else {
            return HeaderOps::default();
        };
        let mut ops = HeaderOps::default();
        // Where each name was first used, so a clash names the other place.
        let mut named: Vec<(http::HeaderName, String)> = Vec::new();
        for key in ["set", "add"] {
            let Some(n) = f.get(key) else { continue };
            let kpath = f.path(key);
            let Value::Map(entries) = &n.value else {
                self.err(
                    Some(n),
                    &kpath,
                    format!(
                        "expected a mapping of header names to values, found {}",
                        n.value.type_name()
                    ),
                );
                continue;
            };
            for (k, v) in entries {
                let Value::Str(name_text) = &k.value else {
                    self.err(Some(k), &kpath, "header names must be strings");
                    continue;
                };
                let npath = join(&kpath, name_text);
                let Some(name) = self.rule_header_name(k, &npath) else {
                    continue;
                };
                let value = match &v.value {
                    Value::Str(s) => self.header_value(v, &npath, s),
                    other => {
                        self.err(
                            Some(v),
                            &npath,
                            format!(
                                "expected a string value, found {}; quote numbers and booleans (\"1\")",
                                other.type_name()
                            ),
                        );
                        None
                    }
                };
                if let Some((_, first)) = named
                    .iter()
                    .find(|(h, p)| *h == name && p.starts_with(&kpath))
                {
                    let msg = format!("`{name}` is already set here (at {first}); header names are case-insensitive");
                    self.err(Some(k), &npath, msg);
                    continue;
                }
                named.push((name.clone(), npath));
                if let Some(value) = value {
                    if key == "set" {
                        ops.set.push((name, value));
                    } else {
                        ops.add.push((name, value));
                    }
                }
            }
        }
        if let Some(n) = f.get("remove") {
            let rpath = f.path("remove");
            for (i, item) in self.seq(n, &rpath).iter().enumerate() {
                let ipath = index(&rpath, i);
                let Some(name) = self.rule_header_name(item, &ipath) else {
                    continue;
                };
                if let Some((_, first)) = named.iter().find(|(h, _)| *h == name) {
                    let msg = if first.contains("remove") {
                        format!("`{name}` is listed twice")
                    } else {
                        format!("`{name}` is also set at {first}; remove runs first, so removing it does nothing")
                    };
                    self.err(Some(item), &ipath, msg);
                    continue;
                }
                named.push((name.clone(), ipath));
                ops.remove.push(name);
            }
        }
        ops
    }

    /// A header name a rule may change: valid, and not one the gateway or HTTP framing
    /// owns.
    fn rule_header_name(&mut self, node: &Node, path: &str) -> Option<http::HeaderName> {
        let name = self.header_name(node, path)?;
        let why = match name.as_str() {
            "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "te"
            | "upgrade" | "trailer" => Some("is a hop-by-hop header, which the gateway removes"),
            "host" => Some("cannot be changed by header rules; use rewrite.host"),
            "content-length" => Some("frames the body; the gateway keeps it right"),
            "x-request-id" => Some("is the gateway's request id"),
            _ => None,
        };
        match why {
            Some(why) => {
                self.err(Some(node), path, format!("`{name}` {why}"));
                None
            }
            None => Some(name),
        }
    }

    /// `match.methods`: HTTP method tokens, case-sensitive as HTTP defines them.
    fn methods(&mut self, node: &Node, path: &str) -> Option<Vec<http::Method>> {
        let items = self.seq(node, path);
        if items.is_empty() && matches!(node.value, Value::Seq(_)) {
            self.err(
                Some(node),
                path,
                "methods must name at least one method; leave it out to match any method",
            );
            return None;
        }
        let mut out: Vec<http::Method> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ipath = index(path, i);
            let Some(name) = self.string(item, &ipath) else {
                continue;
            };
            let standard = [
                "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT",
            ];
            if let Some(upper) = standard
                .iter()
                .find(|m| m.eq_ignore_ascii_case(&name) && **m != name)
            {
                self.err(
                    Some(item),
                    &ipath,
                    format!("methods are case-sensitive; write `{upper}`, not `{name}`"),
                );
                continue;
            }
            match http::Method::from_bytes(name.as_bytes()) {
                Ok(m) if out.contains(&m) => {
                    self.err(Some(item), &ipath, format!("`{name}` is listed twice"))
                }
                Ok(m) => out.push(m),
                Err(_) => self.err(
                    Some(item),
                    &ipath,
                    format!("`{name}` is not an HTTP method (a token such as GET or POST)"),
                ),
            }
        }
        Some(out)
    }

    /// `match.headers`: a list of `{name, value}` or `{name, present: true}`.
    fn header_matches(&mut self, node: &Node, path: &str) -> Vec<HeaderMatch> {
        let mut out: Vec<HeaderMatch> = Vec::new();
        for (i, item) in self.seq(node, path).iter().enumerate() {
            let ipath = index(path, i);
            let Some(hf) = self.map(item, &ipath, Section::RouteMatchHeader, &[]) else {
                continue;
            };
            let name = self
                .require(&hf, "name")
                .and_then(|n| self.header_name(n, &hf.path("name")));
            let value = hf.get("value").and_then(|n| {
                let vpath = hf.path("value");
                let v = self.string(n, &vpath)?;
                self.header_value(n, &vpath, &v)
            });
            let present = f_bool(&hf, "present");
            match (hf.get("value"), hf.get("present"), present) {
                (Some(_), Some(p), _) => self.err(
                    Some(p),
                    &hf.path("present"),
                    "give either `value` (an exact value) or `present: true`, not both",
                ),
                (None, None, _) => self.err(
                    Some(item),
                    &ipath,
                    "a header condition needs `value` (an exact value) or `present: true`",
                ),
                (None, Some(p), Some(false)) => self.err(
                    Some(p),
                    &hf.path("present"),
                    "`present: false` is not supported; a condition matches a header that is there",
                ),
                (None, Some(p), None) => self.err(
                    Some(p),
                    &hf.path("present"),
                    format!("expected true, found {}", p.value.type_name()),
                ),
                _ => {}
            }
            let Some(name) = name else { continue };
            if name == http::header::HOST {
                self.err(
                    hf.get("name"),
                    &hf.path("name"),
                    "match the host with `match.host` (HTTP/2 carries it in :authority)",
                );
                continue;
            }
            if out.iter().any(|m| m.name == name) {
                self.err(
                    hf.get("name"),
                    &hf.path("name"),
                    format!("`{name}` has a condition already; one condition per header"),
                );
                continue;
            }
            if hf.get("value").is_some() && value.is_none() {
                continue;
            }
            out.push(HeaderMatch { name, value });
        }
        out
    }

    /// A header name as a configuration names it: a valid HTTP field name, compared
    /// case-insensitively (stored lower-case).
    fn header_name(&mut self, node: &Node, path: &str) -> Option<http::HeaderName> {
        let name = self.string(node, path)?;
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                self.err(
                    Some(node),
                    path,
                    format!(
                        "invalid header name `{name}`; names are tokens such as x-request-tag \
                         (letters, digits and !#$%&'*+-.^_`|~)"
                    ),
                );
                None
            }
        }
    }

    /// A header value: visible ASCII, spaces and tabs, no control characters.
    fn header_value(&mut self, node: &Node, path: &str, v: &str) -> Option<http::HeaderValue> {
        let ok = !v.starts_with([' ', '\t']) && !v.ends_with([' ', '\t']);
        match http::HeaderValue::from_str(v) {
            Ok(h) if ok => Some(h),
            Ok(_) => {
                self.err(
                    Some(node),
                    path,
                    "a header value cannot start or end with whitespace (it would be trimmed)",
                );
                None
            }
            Err(_) => {
                self.err(
                    Some(node),
                    path,
                    "invalid header value: no control characters (line breaks, NUL) or non-ASCII text",
                );
                None
            }
        }
    }
}

/// A boolean key's value, if it is one.
fn f_bool(f: &Fields<'_>, key: &str) -> Option<bool> {
    match f.get(key) {
        Some(Node {
            value: Value::Bool(b),
            ..
        }) => Some(*b),
        _ => None,
    }
}

/// The value of `key` in a mapping node, or the node itself when absent (for positions).
fn child<'n>(node: &'n Node, key: &str) -> &'n Node {
    match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == key))
            .map_or(node, |(_, v)| v),
        _ => node,
    }
}

/// Whether two listen addresses cannot both be bound: the same address, or the same
/// port where one side is the unspecified address of the same family.
fn clashes(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

/// Parses a CIDR network (`10.0.0.0/8`, `2001:db8::/32`) or a bare IP address, which
/// means that one address (/32 or /128). Host bits are kept; the caller decides.
pub fn parse_network(s: &str) -> Option<IpNet> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(IpNet::from(ip));
    }
    s.parse::<IpNet>().ok()
}

/// What an upstream timeout of `0s` would do.
const UPSTREAM_ZERO: &str = "every request would fail at once; use a long value such as 1h \
                             instead";

/// `"200"` or `"200-399"`.
fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = match s.split_once('-') {
        Some((lo, hi)) => (lo.trim(), hi.trim()),
        None => (s.trim(), s.trim()),
    };
    Some((lo.parse().ok()?, hi.parse().ok()?))
}

/// A duration for a message, as the file writes it (`1s`, `250ms`).
pub(crate) fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A number as durations and sizes write it: digits, optionally a fraction (`1.5`).
/// Returns (whole part, fraction digits, rest of the text).
fn number(s: &str) -> Option<(u64, &str, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let whole = s[..digits].parse().ok()?;
    let rest = &s[digits..];
    match rest.strip_prefix('.') {
        Some(after) => {
            let frac = after.bytes().take_while(u8::is_ascii_digit).count();
            if frac == 0 {
                return None;
            }
            Some((whole, &after[..frac], &after[frac..]))
        }
        None => Some((whole, "", rest)),
    }
}

/// `whole.frac × unit`, exactly, or None if that is not a whole multiple of `quantum` or
/// overflows.
fn scaled(whole: u64, frac: &str, unit: u128, quantum: u128) -> Option<u128> {
    let mut total = u128::from(whole).checked_mul(unit)?;
    if !frac.is_empty() {
        let digits: u128 = frac.parse().ok()?;
        let scale = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
        let part = digits.checked_mul(unit)?;
        if part % scale != 0 {
            return None;
        }
        total = total.checked_add(part / scale)?;
    }
    (total % quantum == 0).then_some(total)
}

/// The one grammar of durations: one or more `<number><unit>` with no space between them
/// (`250ms`, `5s`, `1.5s`, `1m30s`, `1h`), units `ms`, `s`, `m`, `h`, to the millisecond.
/// The error says what is wrong, for the validator's message.
pub fn duration_grammar(s: &str) -> Result<Duration, String> {
    const MS: u128 = 1_000_000;
    let found = format!("found `{s}`");
    if s.trim().is_empty() {
        return Err("found an empty string".into());
    }
    if s.contains(char::is_whitespace) {
        return Err(format!(
            "{found}: write it without spaces, such as \"{}\"",
            s.split_whitespace().collect::<String>()
        ));
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let Some((whole, frac, after)) = number(rest) else {
            return Err(found);
        };
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let nanos: u128 = match &after[..unit_len] {
            "ms" => MS,
            "s" => 1_000 * MS,
            "m" => 60_000 * MS,
            "h" => 3_600_000 * MS,
            "" => return Err(format!("{found}: a number needs a unit (ms, s, m or h)")),
            other => return Err(format!("{found}: `{other}` is not a unit (ms, s, m or h)")),
        };
        let Some(part) = scaled(whole, frac, nanos, MS) else {
            return Err(format!("{found}: durations are whole milliseconds"));
        };
        total = total.checked_add(part).ok_or_else(|| found.clone())?;
        rest = &after[unit_len..];
    }
    let ms = u64::try_from(total / MS).map_err(|_| found.clone())?;
    Ok(Duration::from_millis(ms))
}

/// Parses a duration ([`duration_grammar`]); `0s` is zero.
pub fn parse_duration(s: &str) -> Option<Duration> {
    duration_grammar(s).ok()
}

/// The one grammar of sizes: a number of bytes, or `<number><unit>` with no space between
/// them, units `B`, `KiB`, `MiB`, `GiB` (also `Ki`, `Mi`, `Gi`), `KB`/`kB`, `MB`, `GB`; a
/// fraction (`1.5MiB`) when it makes whole bytes.
pub fn size_grammar(s: &str) -> Result<u64, String> {
    let found = format!("found `{s}`");
    if s.contains(char::is_whitespace) {
        return Err(format!(
            "{found}: write it without spaces, such as \"{}\"",
            s.split_whitespace().collect::<String>()
        ));
    }
    let Some((whole, frac, unit)) = number(s) else {
        return Err(found);
    };
    let mult: u128 = match unit {
        "" | "B" => 1,
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "{found}: `{other}` is not a unit (B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    let bytes = scaled(whole, frac, mult, 1)
        .ok_or_else(|| format!("{found}: that is not a whole number of bytes"))?;
    u64::try_from(bytes).map_err(|_| format!("{found}: too large"))
}

/// Parses a size ([`size_grammar`]).
pub fn parse_size(s: &str) -> Option<u64> {
    size_grammar(s).ok()
}

/// Whether the access log at `path` could be opened for appending (created if missing)
/// by this process, checked without creating or changing anything.
fn check_writable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(format!("{} is a directory, not a file", path.display())),
        Ok(_) => {
            can_write(path, false).map_err(|e| format!("cannot write to {}: {e}", path.display()))
        }
        Err(missing) => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            match std::fs::metadata(dir) {
                Ok(m) if !m.is_dir() => Err(format!("{} is not a directory", dir.display())),
                Ok(_) if missing.kind() == std::io::ErrorKind::NotFound => can_write(dir, true)
                    .map_err(|e| format!("cannot create {}: {e}", path.display())),
                Ok(_) => Err(format!("cannot open {}: {missing}", path.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
                    "cannot create {}: the directory {} does not exist",
                    path.display(),
                    dir.display()
                )),
                Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(format!(
                    "cannot create {}: a part of {} is not a directory",
                    path.display(),
                    dir.display()
                )),
                Err(e) => Err(format!("cannot create {}: {e}", path.display())),
            }
        }
    }
}

/// Whether this process may write `path` (a file), or create files in it (a folder), as
/// the kernel decides for the effective user: access(2), which changes nothing.
#[cfg(unix)]
fn can_write(path: &Path, folder: bool) -> std::io::Result<()> {
    use rustix::fs::{Access, AtFlags, CWD};
    let mode = if folder {
        Access::WRITE_OK | Access::EXEC_OK
    } else {
        Access::WRITE_OK
    };
    rustix::fs::accessat(CWD, path, mode, AtFlags::EACCESS).map_err(std::io::Error::from)
}

/// Elsewhere, the read-only attribute is all there is to go by.
#[cfg(not(unix))]
fn can_write(path: &Path, _folder: bool) -> std::io::Result<()> {
    if std::fs::metadata(path)?.permissions().readonly() {
        return Err(std::io::ErrorKind::PermissionDenied.into());
    }
    Ok(())
}

fn parse_host_match(h: &str) -> Result<HostMatch, String> {
    let lower = h.to_ascii_lowercase();
    let (wild, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !valid {
        return Err(format!(
            "invalid host `{h}`; expected a host name such as api.example.com or *.example.com (no port)"
        ));
    }
    Ok(if wild {
        HostMatch::Wildcard(name.to_string())
    } else {
        HostMatch::Exact(name.to_string())
    })
}

fn check_prefix(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("pathPrefix `{p}` must start with /"));
    }
    if p.bytes()
        .any(|b| b.is_ascii_control() || b == b'?' || b == b'#' || b == b' ')
    {
        return Err(format!(
            "pathPrefix `{p}` must not contain a query, fragment, space or control character"
        ));
    }
    if crate::path::normalize_path(p).as_deref() != Some(p) {
        return Err(format!(
            "pathPrefix `{p}` is not normalised (dot-segments or encoded unreserved characters); requests are matched after normalisation"
        ));
    }
    Ok(())
}

/// A host as `Host` and `:authority` carry it: a DNS name, an IPv4 address or a bracketed
/// IPv6 address, with an optional port.
fn check_authority(a: &str) -> Result<(), &'static str> {
    let (host, port) = match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, Some(p)),
        _ => (a, None),
    };
    if let Some(p) = port {
        if !matches!(p.parse::<u16>(), Ok(n) if n > 0) {
            return Err("port must be 1..=65535");
        }
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| "expected an IPv6 address inside [ ]");
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| !l.is_empty() && l.len() <= 63)
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if valid {
        Ok(())
    } else {
        Err("expected a host name or IP address, with an optional :port")
    }
}

fn check_endpoint_address(a: &str) -> Result<(), &'static str> {
    if let Ok(addr) = a.parse::<SocketAddr>() {
        return if addr.port() == 0 {
            Err("the port must be from 1 to 65535")
        } else {
            Ok(())
        };
    }
    let (host, port) = a.rsplit_once(':').ok_or("expected host:port")?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err("the port must be from 1 to 65535"),
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| !l.is_empty() && l.len() <= 63)
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if valid {
        Ok(())
    } else {
        Err("expected ip:port or dns-name:port")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("16384"), Some(16384));
        assert_eq!(parse_size("lots"), None);
    }

    #[test]
    fn host_matches_are_lower_cased_and_checked() {
        assert_eq!(
            parse_host_match("API.example.com"),
            Ok(HostMatch::Exact("api.example.com".into()))
        );
        assert_eq!(
            parse_host_match("*.Example.com"),
            Ok(HostMatch::Wildcard("example.com".into()))
        );
        assert!(parse_host_match("example.com:80").is_err());
        assert!(parse_host_match("*").is_err());
    }
}
