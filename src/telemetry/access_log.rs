//! Access log: one JSON object per line, formatted when a request ends and handed to the
//! process's writer thread (`LogSink`) through a bounded channel. A full channel drops the
//! line and counts it; the request path never waits on log I/O.

use crate::config::model::{AccessLog as AccessLogConfig, LogField as Field, LogTarget};
use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines that may wait for the writer before new ones are dropped.
const CHANNEL_CAPACITY: usize = 16 * 1024;

/// What one HTTP request contributes to its log line.
#[derive(Debug)]
pub(crate) struct Entry {
    pub ts: SystemTime,
    pub request_id: http::HeaderValue,
    pub client_addr: SocketAddr,
    pub listener: Arc<str>,
    pub tls: Option<&'static str>,
    pub sni: Option<Arc<str>>,
    pub version: http::Version,
    pub method: http::Method,
    pub host: Option<String>,
    pub path: Option<http::uri::PathAndQuery>,
    /// Whether the request went upstream (then `upstreamPath` is not null).
    pub sent_upstream: bool,
    /// The path and query sent upstream when it differs from `path` (a rewrite, or
    /// normalisation); None when it is `path` itself, which then costs neither bytes nor
    /// an allocation. Boxed, and the flag above fits in padding: the entry travels with
    /// every response and is copied several times per request, so each byte of it
    /// counts (measured: 16 more bytes here cost ~280 instructions per request).
    pub upstream_path: Option<Box<http::uri::PathAndQuery>>,
    pub status: u16,
    pub route: Option<Arc<str>>,
    pub cluster: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub error: Option<&'static str>,
    pub user_agent: Option<http::HeaderValue>,
}

impl Entry {
    /// Appends this entry as one JSON object (no newline) with `fields` in order.
    pub(crate) fn write_json(&self, fields: &[Field], out: &mut String) {
        let fields = if fields.is_empty() {
            &Field::ALL[..]
        } else {
            fields
        };
        out.push('{');
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            out.push_str(f.name());
            out.push_str("\":");
            match f {
                Field::Ts => {
                    out.push('"');
                    rfc3339_millis(self.ts, out);
                    out.push('"');
                }
                Field::RequestId => json_bytes(self.request_id.as_bytes(), out),
                Field::ClientAddr => {
                    let _ = write!(out, "\"{}\"", self.client_addr);
                }
                Field::Listener => json_str(&self.listener, out),
                Field::Tls => opt(self.tls.map(str::as_bytes), out),
                Field::Sni => opt(self.sni.as_deref().map(str::as_bytes), out),
                Field::Protocol => json_str(protocol_name(self.version), out),
                Field::Method => json_str(self.method.as_str(), out),
                Field::Host => opt(self.host.as_deref().map(str::as_bytes), out),
                Field::Path => opt(self.path.as_ref().map(|p| p.as_str().as_bytes()), out),
                Field::UpstreamPath => {
                    let sent = match (self.sent_upstream, &self.upstream_path) {
                        (false, _) => None,
                        (true, None) => self.path.as_ref(),
                        (true, Some(p)) => Some(&**p),
                    };
                    opt(sent.map(|p| p.as_str().as_bytes()), out)
                }
                Field::Status => {
                    let _ = write!(out, "{}", self.status);
                }
                Field::Route => opt(self.route.as_deref().map(str::as_bytes), out),
                Field::Cluster => opt(self.cluster.as_deref().map(str::as_bytes), out),
                Field::Upstream => opt(self.upstream.as_deref().map(str::as_bytes), out),
                Field::BytesIn => {
                    let _ = write!(out, "{}", self.bytes_in);
                }
                Field::BytesOut => {
                    let _ = write!(out, "{}", self.bytes_out);
                }
                Field::DurationMs => {
                    let _ = write!(out, "{:.3}", self.duration_ms);
                }
                Field::UpstreamMs => match self.upstream_ms {
                    Some(ms) => {
                        let _ = write!(out, "{ms:.3}");
                    }
                    None => out.push_str("null"),
                },
                Field::Error => opt(self.error.map(str::as_bytes), out),
                Field::UserAgent => opt(self.user_agent.as_ref().map(|v| v.as_bytes()), out),
            }
        }
        out.push('}');
    }
}

/// What one L4 (TCP passthrough) connection contributes to its log line.
#[derive(Debug)]
pub(crate) struct L4Entry {
    pub ts: SystemTime,
    pub client_addr: SocketAddr,
    pub listener: Arc<str>,
    pub cluster: Arc<str>,
    /// The endpoint connected to (or last tried); None when no connect was attempted.
    pub upstream: Option<Arc<str>>,
    /// Bytes read from the client (and relayed upstream).
    pub bytes_in: u64,
    /// Bytes written to the client.
    pub bytes_out: u64,
    pub duration_ms: f64,
    pub error: Option<&'static str>,
}

impl L4Entry {
    /// Appends this entry as one JSON object (no newline) with `fields` in order; fields
    /// that L4 connections do not have are skipped (see [`AccessLogger::start`]).
    pub(crate) fn write_json(&self, fields: &[Field], out: &mut String) {
        out.push('{');
        let mut first = true;
        for f in fields {
            if !f.applies_to_l4() {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            out.push('"');
            out.push_str(f.name());
            out.push_str("\":");
            match f {
                Field::Ts => {
                    out.push('"');
                    rfc3339_millis(self.ts, out);
                    out.push('"');
                }
                Field::ClientAddr => {
                    let _ = write!(out, "\"{}\"", self.client_addr);
                }
                Field::Listener => json_str(&self.listener, out),
                Field::Cluster => json_str(&self.cluster, out),
                Field::Upstream => opt(self.upstream.as_deref().map(str::as_bytes), out),
                Field::BytesIn => {
                    let _ = write!(out, "{}", self.bytes_in);
                }
                Field::BytesOut => {
                    let _ = write!(out, "{}", self.bytes_out);
                }
                Field::DurationMs => {
                    let _ = write!(out, "{:.3}", self.duration_ms);
                }
                Field::Error => opt(self.error.map(str::as_bytes), out),
                _ => out.push_str("null"),
            }
        }
        out.push('}');
    }
}

pub(crate) fn protocol_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn opt(v: Option<&[u8]>, out: &mut String) {
    match v {
        Some(b) => json_bytes(b, out),
        None => out.push_str("null"),
    }
}

fn json_str(s: &str, out: &mut String) {
    json_bytes(s.as_bytes(), out)
}

/// Writes bytes as a JSON string. Header values may hold any byte except control
/// characters; bytes that are not valid UTF-8 become U+FFFD.
pub(crate) fn json_bytes(b: &[u8], out: &mut String) {
    out.push('"');
    for chunk in String::from_utf8_lossy(b).chars() {
        match chunk {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `2026-11-25T17:58:03.123Z`.
pub(crate) fn rfc3339_millis(t: SystemTime, out: &mut String) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    );
}

/// The access-log settings of one snapshot (sampling, field selection) and the process's
/// sink the lines go to. Building one has no side effect: the sink's output is opened and
/// its writer started only when a snapshot is committed (see [`LogSink::switch`]).
#[derive(Debug)]
pub(crate) struct AccessLogger {
    sink: Arc<LogSink>,
    sample_rate: f64,
    always_log_errors: bool,
    fields: Box<[Field]>,
    /// `fields` restricted to those L4 lines have (all of them when `fields` is empty).
    /// A selection with none of them gives L4 lines that are empty objects (`validate`
    /// warns about that).
    l4_fields: Box<[Field]>,
}

impl AccessLogger {
    /// The logger of a configuration whose lines go to `sink`.
    pub(crate) fn new(cfg: &AccessLogConfig, sink: Arc<LogSink>) -> Arc<AccessLogger> {
        let l4_fields = if cfg.fields.is_empty() {
            Field::L4.to_vec()
        } else {
            cfg.fields
                .iter()
                .copied()
                .filter(|f| f.applies_to_l4())
                .collect()
        };
        Arc::new(AccessLogger {
            sink,
            sample_rate: cfg.sample_rate,
            always_log_errors: cfg.always_log_errors,
            fields: cfg.fields.clone().into_boxed_slice(),
            l4_fields: l4_fields.into_boxed_slice(),
        })
    }

    /// Whether a request with this outcome is logged: errors bypass sampling when
    /// `alwaysLogErrors` is set.
    pub(crate) fn sampled(&self, is_error: bool) -> bool {
        if is_error && self.always_log_errors {
            return true;
        }
        if self.sample_rate >= 1.0 {
            return true;
        }
        if self.sample_rate <= 0.0 {
            return false;
        }
        // Top 53 bits as a uniform float in [0, 1).
        ((crate::util::random_u64() >> 11) as f64 / (1u64 << 53) as f64) < self.sample_rate
    }

    pub(crate) fn log(&self, entry: &Entry) {
        let mut line = String::with_capacity(512);
        entry.write_json(&self.fields, &mut line);
        self.sink.send(line);
    }

    /// Writes the line of one L4 connection. Sampling is the caller's decision, as for
    /// requests: `if logger.sampled(entry.error.is_some()) { logger.log_l4(&entry) }`.
    pub(crate) fn log_l4(&self, entry: &L4Entry) {
        let mut line = String::with_capacity(256);
        entry.write_json(&self.l4_fields, &mut line);
        self.sink.send(line);
    }
}

/// An opened access-log output, ready to be switched to.
pub(crate) struct Output {
    target: LogTarget,
    out: Box<dyn Write + Send>,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Output {
    /// Opens a target: stdout, stderr, or a file (created if missing, appended to).
    pub(crate) fn open(target: &LogTarget) -> io::Result<Output> {
        let out: Box<dyn Write + Send> = match target {
            LogTarget::Stdout => Box::new(io::stdout()),
            LogTarget::Stderr => Box::new(io::stderr()),
            LogTarget::File(p) => Box::new(open_file(p)?),
        };
        Ok(Output {
            target: target.clone(),
            out,
        })
    }
}

fn open_file(path: &std::path::Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

enum Msg {
    Line(String),
    /// Write to this output from now on (None: close the current one).
    Switch(Option<Output>),
    /// Open the current file target again (after logrotate moved it).
    Reopen,
}

/// The process's access-log writer: one thread, fed through a bounded channel, writing to
/// one output that a committed configuration can switch and SIGUSR1 can reopen. It
/// outlives snapshots; a full channel drops the line and counts it, so the request path
/// never waits on log I/O.
#[derive(Debug)]
pub(crate) struct LogSink {
    tx: SyncSender<Msg>,
    /// The receiving end, until the writer thread takes it.
    rx: Mutex<Option<Receiver<Msg>>>,
    /// What the writer writes to; None before the first switch and after a close.
    target: Mutex<Option<LogTarget>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Line(_) => "Line",
            Msg::Switch(_) => "Switch",
            Msg::Reopen => "Reopen",
        })
    }
}

impl LogSink {
    /// A sink with no output and no writer yet.
    pub(crate) fn new() -> Arc<LogSink> {
        let (tx, rx) = sync_channel(CHANNEL_CAPACITY);
        Arc::new(LogSink {
            tx,
            rx: Mutex::new(Some(rx)),
            target: Mutex::new(None),
        })
    }

    /// What the writer currently writes to.
    pub(crate) fn target(&self) -> Option<LogTarget> {
        self.target.lock().ok().and_then(|t| t.clone())
    }

    /// Makes `out` the output (the commit of a configuration whose target differs from
    /// the running one); the first call starts the writer thread.
    pub(crate) fn switch(&self, out: Option<Output>) -> io::Result<()> {
        let target = out.as_ref().map(|o| o.target.clone());
        let rx = self.rx.lock().ok().and_then(|mut rx| rx.take());
        if let Some(rx) = rx {
            std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || writer(rx, out))?;
        } else if self.tx.send(Msg::Switch(out)).is_err() {
            return Err(io::Error::other("the access-log writer has stopped"));
        }
        if let Ok(mut t) = self.target.lock() {
            *t = target;
        }
        Ok(())
    }

    /// Reopens a file output (SIGUSR1, after logrotate moved the file). Lines queued
    /// before go to the old file, lines after to the new one.
    pub(crate) fn reopen(&self) {
        if matches!(self.target().as_ref(), Some(LogTarget::File(_))) {
            let _ = self.tx.send(Msg::Reopen);
        }
    }

    fn send(&self, mut line: String) {
        line.push('\n');
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                super::metrics::ACCESS_LOG_DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn writer(rx: Receiver<Msg>, out: Option<Output>) {
    let buffered = |o: Output| (o.target, io::BufWriter::with_capacity(64 * 1024, o.out));
    let mut out = out.map(buffered);
    loop {
        let msg = match rx.try_recv() {
            Ok(msg) => msg,
            Err(TryRecvError::Empty) => {
                // Nothing queued: flush what we have, then wait.
                if let Some((target, w)) = &mut out {
                    if let Err(e) = w.flush() {
                        tracing::error!(target = %target, error = %e, "cannot write the access log");
                    }
                }
                match rx.recv() {
                    Ok(msg) => msg,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        match msg {
            Msg::Line(line) => {
                if let Some((_, w)) = &mut out {
                    // A failing write (disk full) drops the line; the next ones try again.
                    let _ = w.write_all(line.as_bytes());
                }
            }
            Msg::Switch(next) => {
                if let Some((_, mut w)) = out.take() {
                    let _ = w.flush();
                }
                out = next.map(buffered);
            }
            Msg::Reopen => {
                if let Some((LogTarget::File(path), w)) = &mut out {
                    let _ = w.flush();
                    match open_file(path) {
                        Ok(file) => {
                            *w = io::BufWriter::with_capacity(64 * 1024, Box::new(file));
                            tracing::info!(file = %path.display(), "access log reopened");
                        }
                        Err(e) => tracing::error!(
                            file = %path.display(),
                            error = %e,
                            "cannot reopen the access log; still writing to the old file"
                        ),
                    }
                }
            }
        }
    }
    if let Some((_, mut w)) = out {
        let _ = w.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc_with_millis() {
        let mut s = String::new();
        rfc3339_millis(
            UNIX_EPOCH + Duration::from_millis(1_795_629_483_123),
            &mut s,
        );
        assert_eq!(s, "2026-11-25T17:58:03.123Z");
        s.clear();
        rfc3339_millis(UNIX_EPOCH + Duration::from_secs(951_782_400), &mut s);
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn l4_lines_carry_only_the_l4_fields_in_the_order_asked() {
        let entry = L4Entry {
            ts: UNIX_EPOCH + Duration::from_millis(1_795_629_483_123),
            client_addr: "127.0.0.1:5000".parse().expect("literal address"),
            listener: "pg".into(),
            cluster: "db".into(),
            upstream: None,
            bytes_in: 3,
            bytes_out: 4,
            duration_ms: 1.5,
            error: Some("denied"),
        };
        let mut s = String::new();
        entry.write_json(&Field::L4, &mut s);
        assert_eq!(
            s,
            r#"{"ts":"2026-11-25T17:58:03.123Z","clientAddr":"127.0.0.1:5000","listener":"pg","cluster":"db","upstream":null,"bytesIn":3,"bytesOut":4,"durationMs":1.500,"error":"denied"}"#
        );
        s.clear();
        entry.write_json(&[Field::Error, Field::Status, Field::BytesIn], &mut s);
        assert_eq!(s, r#"{"error":"denied","bytesIn":3}"#);
    }

    #[test]
    fn strings_are_escaped() {
        let mut s = String::new();
        json_bytes(b"a\"b\\c\x01", &mut s);
        assert_eq!(s, r#""a\"b\\c\u0001""#);
    }
}
