//! Paths and hosts as the request path reads them, before routing: request-path
//! normalisation (what is matched is what is forwarded) and host port stripping. The bottom
//! layer: shared by config validation (prefixes must be normalised), TLS (421 checks) and
//! the router, and imports nothing from the crate.

use std::borrow::Cow;

/// `example.com:8080` → `example.com`; `[::1]:8080` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Normalises a request path (no query): percent-encoded unreserved characters are
/// decoded, dot-segments removed (RFC 3986 §5.2.4, never above `/`). `%2F` and `%5C`
/// and other reserved encodings stay as they are. Returns None for a path that must be
/// refused: not starting with `/`, a bad percent escape, or a control byte (raw or
/// encoded), so that no path reaching an upstream carries one.
pub fn normalize_path(path: &str) -> Option<Cow<'_, str>> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return None;
    }
    let mut needs_work = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            0..=0x20 | 0x7f => return None,
            b'%' => needs_work = true,
            b'.' if bytes[i - 1] == b'/' => needs_work = true,
            _ => {}
        }
    }
    if !needs_work {
        return Some(Cow::Borrowed(path));
    }
    let decoded = if path.contains('%') {
        Cow::Owned(decode_unreserved(path)?)
    } else {
        Cow::Borrowed(path)
    };
    let out = remove_dot_segments(&decoded);
    if out == path {
        Some(Cow::Borrowed(path))
    } else {
        Some(Cow::Owned(out))
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_unreserved(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            let c = hi << 4 | lo;
            if c < 0x20 || c == 0x7f {
                return None;
            }
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(c));
            } else {
                // Keep reserved and non-ASCII escapes, with upper-case hex (RFC 3986 §6.2.2.1).
                out.push('%');
                out.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                out.push(char::from(bytes[i + 2].to_ascii_uppercase()));
            }
            i += 3;
        } else {
            // Safe: `path` is a str and we copy whole runs of non-'%' bytes below.
            let run = bytes[i..]
                .iter()
                .position(|&b| b == b'%')
                .map_or(bytes.len(), |p| i + p);
            out.push_str(&path[i..run]);
            i = run;
        }
    }
    Some(out)
}

/// RFC 3986 §5.2.4 on an absolute path, building the output in one string.
fn remove_dot_segments(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            "." => {}
            ".." => {
                let keep = out.rfind('/').unwrap_or(0);
                out.truncate(keep);
            }
            s => {
                out.push('/');
                out.push_str(s);
                continue;
            }
        }
        // A trailing "." or ".." leaves the path ending in '/'.
        if last {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_removed_and_never_climb_above_root() {
        let n = |p: &str| normalize_path(p).map(|c| c.into_owned());
        assert_eq!(n("/a/../b").as_deref(), Some("/b"));
        assert_eq!(n("/../../etc/passwd").as_deref(), Some("/etc/passwd"));
        assert_eq!(n("/a/b/..").as_deref(), Some("/a/"));
        assert_eq!(n("/a/./b/.").as_deref(), Some("/a/b/"));
        assert_eq!(n("/%2e%2e/x").as_deref(), Some("/x"));
        assert_eq!(n("/%7Euser").as_deref(), Some("/~user"));
        assert_eq!(n("/a%2Fb").as_deref(), Some("/a%2Fb"));
        assert_eq!(n("/a%5cb").as_deref(), Some("/a%5Cb"));
        assert_eq!(n("/a//b").as_deref(), Some("/a//b"));
        assert_eq!(n("/.hidden").as_deref(), Some("/.hidden"));
        assert_eq!(n("/"), Some("/".into()));
        assert_eq!(n("/a%00b"), None);
        assert_eq!(n("/a%zz"), None);
        assert_eq!(n("/a%2"), None);
        assert_eq!(n("relative"), None);
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("example.com"), "example.com");
    }
}
