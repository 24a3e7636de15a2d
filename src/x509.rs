//! Beside config loading (before any request): the two facts the gateway reads from an
//! X.509 certificate itself — its DNS subjectAltNames, which are a TLS listener's default
//! server names, and its notAfter, for the expiry warning of `gateway validate`.
//!
//! A minimal DER reader rather than the `x509-parser` crate: these two fields sit at fixed
//! places in `tbsCertificate`, and reading them takes about a hundred lines. `x509-parser`
//! would add 22 crates to the normal build (itself and 21 it pulls in that nothing else
//! uses: asn1-rs, der-parser, nom, oid-registry, time, num-bigint, three proc-macro
//! crates, …; counted from Cargo.lock) for no other use. rustls and webpki, which do
//! verify certificates, are already there.
//! The reader never panics on malformed input: anything it cannot follow is `None`.

/// What the gateway needs from a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// `dNSName` entries of subjectAltName, lower-cased, as written (wildcards kept).
    pub dns_names: Vec<String>,
    /// `notAfter`, in seconds since the Unix epoch.
    pub not_after: i64,
}

/// OID 2.5.29.17, subjectAltName, as DER content bytes.
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];

const SEQUENCE: u8 = 0x30;

/// Splits one DER TLV off `input`: (tag, content, rest). Single-byte tags only, which
/// covers every field read here.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Reads the subjectAltName DNS names and notAfter of a DER certificate.
pub fn parse(der: &[u8]) -> Option<CertInfo> {
    let (SEQUENCE, cert, _) = tlv(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after; // [0] version
    }
    let (_serial, _, r) = tlv(rest)?;
    let (_sig_alg, _, r) = tlv(r)?;
    let (_issuer, _, r) = tlv(r)?;
    let (SEQUENCE, validity, r) = tlv(r)? else {
        return None;
    };
    let (_, _, v) = tlv(validity)?; // notBefore
    let (time_tag, not_after, _) = tlv(v)?;
    let not_after = parse_time(time_tag, not_after)?;
    let (_subject, _, r) = tlv(r)?;
    let (_spki, _, mut r) = tlv(r)?;
    let mut dns_names = Vec::new();
    while !r.is_empty() {
        let (tag, content, next) = tlv(r)?;
        r = next;
        if tag != 0xa3 {
            continue; // [1]/[2] unique ids
        }
        let (SEQUENCE, mut exts, _) = tlv(content)? else {
            return None;
        };
        while !exts.is_empty() {
            let (_, ext, next) = tlv(exts)?;
            exts = next;
            let (0x06, oid, mut e) = tlv(ext)? else {
                return None;
            };
            if oid != SAN_OID {
                continue;
            }
            let (tag, _, after) = tlv(e)?;
            if tag == 0x01 {
                e = after; // critical
            }
            let (0x04, value, _) = tlv(e)? else {
                return None;
            };
            let (SEQUENCE, mut names, _) = tlv(value)? else {
                return None;
            };
            while !names.is_empty() {
                let (tag, name, next) = tlv(names)?;
                names = next;
                // [2] IMPLICIT IA5String: dNSName.
                if tag == 0x82 {
                    if let Ok(s) = std::str::from_utf8(name) {
                        dns_names.push(s.to_ascii_lowercase());
                    }
                }
            }
        }
    }
    Some(CertInfo {
        dns_names,
        not_after,
    })
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as Unix seconds.
fn parse_time(tag: u8, text: &[u8]) -> Option<i64> {
    let (year, rest) = match (tag, text.len()) {
        (0x17, 13) => {
            let yy = digits(&text[..2])?;
            // RFC 5280: UTCTime years 50..99 are 19xx, 00..49 are 20xx.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (0x18, 15) => (digits(&text[..4])?, &text[4..]),
        _ => return None,
    };
    if rest.last() != Some(&b'Z') {
        return None;
    }
    let month = digits(&rest[0..2])?;
    let day = digits(&rest[2..4])?;
    let hour = digits(&rest[4..6])?;
    let minute = digits(&rest[6..8])?;
    let second = digits(&rest[8..10])?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC`, for messages.
pub fn format_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Inverse of `days_from_civil` (Howard Hinnant's civil_from_days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_convert_to_unix_seconds() {
        assert_eq!(parse_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(parse_time(0x18, b"20000301000000Z"), Some(951_868_800));
        assert_eq!(parse_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(parse_time(0x17, b"4912312359Z"), None);
        assert_eq!(format_time(951_868_800), "2000-03-01 00:00:00 UTC");
        assert_eq!(format_time(2_524_607_999), "2049-12-31 23:59:59 UTC");
    }

    #[test]
    fn truncated_or_garbage_input_is_none_not_a_panic() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[0x30, 0x82, 0xff]), None);
        assert_eq!(parse(&[0x30, 0x03, 0x30, 0x01, 0x00]), None);
        for n in 0..64 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let _ = parse(&junk);
        }
    }
}
