//! Key material from files, the bottom layer under both TLS termination (listeners) and
//! TLS origination (clusters): certificate chains, private keys (checked against their
//! certificate), trust roots and the admin token, each read **once**, by validation, and
//! carried in the checked model to the snapshot. Nothing here is read again when the
//! snapshot is built, so what serves is exactly what was checked.
//!
//! Every piece of material carries a fingerprint of the bytes it was read from, so a
//! reload can tell a rotated certificate from an unchanged one by value.

use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// FNV-1a over bytes: the fingerprint of configuration text and key material. Not a
/// cryptographic hash; it tells "changed" from "unchanged".
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_with(0xcbf2_9ce4_8422_2325, bytes)
}

/// Continues an FNV-1a hash, for fingerprints over several files.
pub fn fnv1a_with(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Reads a whole file, with the error said for humans.
fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// A PEM certificate chain (leaf first) from a file's bytes.
fn parse_certs(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no certificate (expected PEM `CERTIFICATE` blocks)",
            path.display()
        ));
    }
    Ok(certs)
}

/// A PEM private key (PKCS#8, SEC1 or RSA) from a file's bytes.
fn parse_key(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| {
        format!(
            "{} holds no usable private key (PKCS#8, SEC1 or RSA PEM): {e}",
            path.display()
        )
    })
}

/// A certificate chain with its signing key, after checking that the key matches the
/// leaf certificate.
fn certified_key(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, String> {
    let signing = default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let ck = CertifiedKey::new(certs, signing);
    match ck.keys_match() {
        Ok(()) => Ok(Arc::new(ck)),
        // The key's public half could not be derived (some key types): nothing to compare.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(Arc::new(ck)),
        Err(rustls::Error::InconsistentKeys(_)) => {
            Err("the private key does not match the certificate".into())
        }
        Err(e) => Err(format!("cannot check the key against the certificate: {e}")),
    }
}

/// A certificate's server names: exact names and wildcard suffixes (`*.example.com` is
/// kept as `example.com`), lower-cased.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServerNames {
    exact: Vec<Box<str>>,
    wildcard: Vec<Box<str>>,
}

impl ServerNames {
    /// From names as written (`api.example.com`, `*.example.com`).
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut out = ServerNames::default();
        for n in names {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
            match n.strip_prefix("*.") {
                Some(suffix) => out.wildcard.push(suffix.into()),
                None => out.exact.push(n.into()),
            }
        }
        out
    }

    /// Exact names, lower-cased.
    pub fn exact(&self) -> &[Box<str>] {
        &self.exact
    }

    /// Wildcard suffixes (`*.example.com` as `example.com`), lower-cased.
    pub fn wildcard(&self) -> &[Box<str>] {
        &self.wildcard
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// Every name, as written in a certificate (`*.` restored on wildcards).
    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.exact
            .iter()
            .map(|e| e.to_string())
            .chain(self.wildcard.iter().map(|w| format!("*.{w}")))
    }

    /// Whether a request host (any case, port allowed) is one of these names. A wildcard
    /// covers exactly one label.
    pub fn covers(&self, host: &str) -> bool {
        let host = crate::path::strip_port(host).trim_end_matches('.');
        if self.exact.iter().any(|e| e.eq_ignore_ascii_case(host)) {
            return true;
        }
        match host.split_once('.') {
            Some((label, rest)) if !label.is_empty() => {
                self.wildcard.iter().any(|w| w.eq_ignore_ascii_case(rest))
            }
            _ => false,
        }
    }
}

/// A listener certificate read from its files and checked against its key.
#[derive(Debug)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// `serverNames`, or else the certificate's DNS subjectAltNames.
    pub names: ServerNames,
    /// The leaf's notAfter (Unix seconds), when the certificate could be read for it.
    pub not_after: Option<i64>,
    /// Of the certificate and key files' bytes.
    pub fingerprint: u64,
}

/// Which file of a certificate entry is at fault, for the key path of the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertProblem {
    Cert(String),
    Key(String),
}

/// Reads one `tls.certificates[]` entry: the chain, the key, whether they match, and its
/// server names (`server_names` as configured, else the certificate's DNS SANs).
pub fn load_certificate(
    cert: &Path,
    key: &Path,
    server_names: &[String],
) -> Result<LoadedCert, CertProblem> {
    let cert_bytes = read(cert).map_err(CertProblem::Cert)?;
    let certs = parse_certs(cert, &cert_bytes).map_err(CertProblem::Cert)?;
    let info = certs.first().and_then(|leaf| crate::x509::parse(leaf));
    let key_bytes = read(key).map_err(CertProblem::Key)?;
    let key_der = parse_key(key, &key_bytes).map_err(CertProblem::Key)?;
    let signing = certified_key(certs, key_der)
        .map_err(|e| CertProblem::Key(format!("{}: {e}", key.display())))?;
    let names = if server_names.is_empty() {
        ServerNames::new(
            info.iter()
                .flat_map(|i| i.dns_names.iter().map(String::as_str)),
        )
    } else {
        ServerNames::new(server_names.iter().map(String::as_str))
    };
    Ok(LoadedCert {
        key: signing,
        names,
        not_after: info.map(|i| i.not_after),
        fingerprint: fnv1a_with(fnv1a(&cert_bytes), &key_bytes),
    })
}

/// The certificate and key an upstream mTLS client presents.
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Reads an mTLS client certificate and key and checks that they match. The error names
/// the file at fault.
pub fn load_client_identity(cert: &Path, key: &Path) -> Result<(ClientIdentity, u64), String> {
    let cert_bytes = read(cert)?;
    let chain = parse_certs(cert, &cert_bytes)?;
    let key_bytes = read(key)?;
    let key_der = parse_key(key, &key_bytes)?;
    certified_key(chain.clone(), key_der.clone_key())?;
    Ok((
        ClientIdentity {
            chain,
            key: key_der,
        },
        fnv1a_with(fnv1a(&cert_bytes), &key_bytes),
    ))
}

/// Reads a PEM bundle of trust anchors; also returns the fingerprint of its bytes.
pub fn load_roots(path: &Path) -> Result<(rustls::RootCertStore, u64), String> {
    let bytes = read(path)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_certs(path, &bytes)? {
        roots.add(cert).map_err(|e| {
            format!(
                "{}: a certificate is not a usable trust anchor: {e}",
                path.display()
            )
        })?;
    }
    Ok((roots, fnv1a(&bytes)))
}

/// The system's trust roots (for clusters with TLS and no `caBundle`), with the
/// fingerprint of their DER.
pub fn system_roots() -> Result<(rustls::RootCertStore, u64), String> {
    let mut roots = rustls::RootCertStore::empty();
    let mut fingerprint = fnv1a(b"system");
    for cert in rustls_native_certs::load_native_certs().certs {
        fingerprint = fnv1a_with(fingerprint, &cert);
        // A system store may hold certificates rustls cannot use; skip those.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("no caBundle given and no usable system trust roots found".into());
    }
    Ok((roots, fingerprint))
}

/// Everything a cluster's TLS origination needs, read once: trust roots (from `caBundle`
/// or the system) and, for mtls, the client identity.
#[derive(Debug)]
pub struct UpstreamMaterial {
    pub roots: Arc<rustls::RootCertStore>,
    pub identity: Option<ClientIdentity>,
    /// Of every byte read for this material: equal fingerprints mean equal material.
    pub fingerprint: u64,
}

/// A secret read from a file (the admin token): compared in constant time, never shown.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    /// Reads a token file; surrounding whitespace (a trailing newline) is not part of it.
    pub fn load(path: &Path) -> Result<Secret, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err("token file is empty".into());
        }
        Ok(Secret(token.as_bytes().into()))
    }

    /// Compares without an early exit, so timing does not reveal how much of a guess
    /// matched.
    pub fn matches(&self, given: &[u8]) -> bool {
        constant_time_eq(given, &self.0)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        constant_time_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_covers_exactly_one_label_and_ports_are_ignored() {
        let n = ServerNames::new(["api.example.com", "*.example.org"]);
        assert!(n.covers("API.example.com:443"));
        assert!(n.covers("www.example.org"));
        assert!(n.covers("www.example.org."));
        assert!(!n.covers("example.org"));
        assert!(!n.covers("a.b.example.org"));
        assert!(!n.covers(".example.org"));
        assert!(!n.covers("other.com"));
    }

    #[test]
    fn equal_means_same_bytes_and_same_length() {
        assert!(constant_time_eq(b"token", b"token"));
        assert!(!constant_time_eq(b"token", b"toke"));
        assert!(!constant_time_eq(b"token", b"tokem"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
