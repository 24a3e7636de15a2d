//! TLS step, between accept and the HTTP server: a listener's rustls server config, the
//! certificate chosen by SNI, and the server names each certificate covers (which decide
//! the 421 check in `http::proxy`). Built with the snapshot, never on the request path.

use crate::certs::ServerNames;
use crate::config::model::{ListenerTls, TlsVersion};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// TLS 1.2 sessions remembered for resumption by session id (TLS 1.3 and TLS 1.2 clients
/// that support tickets resume statelessly with tickets instead). About 100 bytes each.
const SESSION_CACHE_SIZE: usize = 4096;

/// Picks a certificate by SNI: an exact name beats a wildcard; with no SNI, or a name no
/// certificate has, the first certificate.
#[derive(Debug)]
pub(crate) struct SniResolver {
    certs: Vec<Arc<CertifiedKey>>,
    names: Vec<Arc<ServerNames>>,
    exact: HashMap<Box<str>, usize>,
    wildcard: HashMap<Box<str>, usize>,
}

impl SniResolver {
    /// `certs` in file order; when two certificates claim a name, the first keeps it.
    pub(crate) fn new(certs: Vec<(Arc<CertifiedKey>, ServerNames)>) -> Self {
        let mut r = SniResolver {
            certs: Vec::with_capacity(certs.len()),
            names: Vec::with_capacity(certs.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for (i, (key, names)) in certs.into_iter().enumerate() {
            for e in names.exact() {
                r.exact.entry(e.clone()).or_insert(i);
            }
            for w in names.wildcard() {
                r.wildcard.entry(w.clone()).or_insert(i);
            }
            r.certs.push(key);
            r.names.push(Arc::new(names));
        }
        r
    }

    /// The index of the certificate served for `sni`.
    pub(crate) fn pick(&self, sni: Option<&str>) -> usize {
        let Some(sni) = sni else { return 0 };
        let mut buf = [0u8; 256];
        let Some(name) = lower(sni.trim_end_matches('.'), &mut buf) else {
            return 0;
        };
        if let Some(&i) = self.exact.get(name) {
            return i;
        }
        match name.split_once('.') {
            Some((label, rest)) if !label.is_empty() => {
                self.wildcard.get(rest).copied().unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// The server names of the certificate served for `sni`.
    pub(crate) fn names_for(&self, sni: Option<&str>) -> &Arc<ServerNames> {
        &self.names[self.pick(sni)]
    }
}

/// Lower-cases a host name into `buf` without allocating; None if it does not fit.
fn lower<'b>(s: &str, buf: &'b mut [u8; 256]) -> Option<&'b str> {
    let out = buf.get_mut(..s.len())?;
    out.copy_from_slice(s.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certs.get(self.pick(hello.server_name())).cloned()
    }
}

/// A TLS listener's server side, built once per snapshot.
pub(crate) struct TlsServer {
    pub acceptor: TlsAcceptor,
    pub resolver: Arc<SniResolver>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("resolver", &self.resolver)
            .finish_non_exhaustive()
    }
}

/// What a finished handshake tells the rest of the connection.
#[derive(Debug, Clone)]
pub(crate) struct Handshake {
    pub version: &'static str,
    pub sni: Option<Arc<str>>,
    /// True when ALPN chose `h2`.
    pub h2: bool,
    /// The names of the certificate that was served.
    pub names: Arc<ServerNames>,
}

/// Only AEAD suites with forward secrecy (ECDHE key exchange; TLS 1.3 suites always have
/// both), AES-GCM first: it is the fastest where the CPU has AES instructions.
fn cipher_suites() -> Vec<rustls::SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite::*;
    vec![
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
}

/// Session-ticket keys and the TLS 1.2 session cache are process-wide, so resumption keeps
/// working across configuration reloads. rustls rotates ticket keys every 6 hours.
type Resumption = (Arc<dyn ProducesTickets>, Arc<dyn StoresServerSessions>);

fn resumption() -> Result<Resumption, String> {
    static TICKETER: OnceLock<Arc<dyn ProducesTickets>> = OnceLock::new();
    static CACHE: OnceLock<Arc<dyn StoresServerSessions>> = OnceLock::new();
    let ticketer = match TICKETER.get() {
        Some(t) => t.clone(),
        None => {
            let t = rustls::crypto::ring::Ticketer::new()
                .map_err(|e| format!("cannot create session-ticket keys: {e}"))?;
            TICKETER.get_or_init(|| t).clone()
        }
    };
    let cache = CACHE
        .get_or_init(|| rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_SIZE))
        .clone();
    Ok((ticketer, cache))
}

impl TlsServer {
    /// Builds the server config from the certificates validation loaded (no file is read
    /// here).
    pub(crate) fn build(cfg: &ListenerTls) -> Result<TlsServer, String> {
        let certs = cfg
            .certificates
            .iter()
            .map(|c| (c.loaded.key.clone(), c.loaded.names.clone()))
            .collect();
        let resolver = Arc::new(SniResolver::new(certs));
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = cipher_suites();
        let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version {
            TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::V1_3 => &[&rustls::version::TLS13],
        };
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .map_err(|e| format!("TLS settings rejected: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = cfg.alpn.iter().map(|a| a.id().to_vec()).collect();
        config.ignore_client_order = true;
        let (ticketer, cache) = resumption()?;
        config.ticketer = ticketer;
        config.session_storage = cache;
        Ok(TlsServer {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
        })
    }

    /// Runs the handshake within `timeout`. Errors are for the log.
    pub(crate) async fn accept<IO>(
        &self,
        io: IO,
        timeout: Duration,
    ) -> Result<(TlsStream<IO>, Handshake), String>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = match tokio::time::timeout(timeout, self.acceptor.accept(io)).await {
            Err(_) => return Err("handshake timed out".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(s)) => s,
        };
        let conn = stream.get_ref().1;
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
            _ => "1.3",
        };
        let sni = conn.server_name();
        let hs = Handshake {
            version,
            sni: sni.map(Arc::from),
            h2: conn.alpn_protocol() == Some(b"h2"),
            names: self.resolver.names_for(sni).clone(),
        };
        Ok((stream, hs))
    }
}
