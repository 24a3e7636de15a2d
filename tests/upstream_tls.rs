//! TLS and mTLS towards upstreams, with certificates made by rcgen at test time and
//! upstreams built on rustls: CA bundles, serverName overrides, client certificates, a
//! wrong CA answering 502 `upstream_tls_error`, and HTTP/2 (gRPC-shaped) over ALPN h2.
#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use support::*;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS names or IPs), with its key.
    fn leaf(
        &self,
        cn: &str,
        names: &[&str],
    ) -> (
        CertificateDer<'static>,
        PrivateKeyDer<'static>,
        String,
        String,
    ) {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert.der().clone(), der, cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A TLS upstream. It answers with `tls-ok`, says in `x-client-cn` whether (and who) the
/// client presented a certificate, and on `/grpc` answers like a gRPC server: a framed
/// message and trailers with grpc-status 0.
async fn tls_upstream(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<&Ca>,
) -> SocketAddr {
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let der = rustls_pki_types_from_pem(&ca.pem);
            roots.add(der).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(rustls::crypto::ring::default_provider()),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(vec![cert], key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let cn = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| {
                        // The test client's CN is plain ASCII; find it in the DER.
                        let der = c.as_ref();
                        let needle = b"gateway-client";
                        if der.windows(needle.len()).any(|w| w == needle) {
                            "gateway-client"
                        } else {
                            "other"
                        }
                    })
                    .unwrap_or("none");
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let proto = format!("{:?}", req.version());
                    if req.uri().path() == "/grpc" {
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        trailers.insert("grpc-message", "ok".parse().unwrap());
                        let frames: Vec<Result<Frame<Bytes>, Infallible>> =
                            vec![Ok(Frame::data(body)), Ok(Frame::trailers(trailers))];
                        let mut r = Response::new(
                            StreamBody::new(futures_util::stream::iter(frames)).boxed(),
                        );
                        r.headers_mut()
                            .insert("content-type", "application/grpc".parse().unwrap());
                        r.headers_mut().insert("x-proto", proto.parse().unwrap());
                        return Ok::<_, Infallible>(r);
                    }
                    let mut r = Response::new(
                        Full::new(Bytes::from_static(b"tls-ok"))
                            .map_err(|e| match e {})
                            .boxed(),
                    );
                    r.headers_mut().insert("x-client-cn", cn.parse().unwrap());
                    r.headers_mut().insert("x-proto", proto.parse().unwrap());
                    Ok(r)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

fn rustls_pki_types_from_pem(pem: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn gateway_yaml(upstream: SocketAddr, security: &str, protocol: &str) -> String {
    format!(
        r#"
accessLog: {{ path: "{{dir}}/access.log" }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes: [{{ name: r, cluster: up }}]
clusters:
  - name: up
    protocol: {protocol}
    endpoints: [{{ address: "{upstream}" }}]
    security: {security}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_bundle_works_and_verifies_the_endpoint_ip() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test-ca");
    let (cert, key, _, _) = ca.leaf("upstream", &["127.0.0.1"]);
    let up = tls_upstream(cert, key, None).await;
    let ca_path = write(dir.path(), "ca.pem", &ca.pem);
    let gw = Gateway::start(&gateway_yaml(
        up,
        &format!("{{ mode: tls, caBundle: \"{}\" }}", ca_path.display()),
        "http1",
    ))
    .await;
    let got = get(gw.addr, "h", "/").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.text(), "tls-ok");
    assert_eq!(got.header("x-client-cn"), Some("none"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_gives_502_upstream_tls_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("real-ca");
    let other = Ca::new("other-ca");
    let (cert, key, _, _) = ca.leaf("upstream", &["127.0.0.1"]);
    let up = tls_upstream(cert, key, None).await;
    let wrong = write(dir.path(), "wrong.pem", &other.pem);
    let gw = Gateway::start(&gateway_yaml(
        up,
        &format!("{{ mode: tls, caBundle: \"{}\" }}", wrong.display()),
        "http1",
    ))
    .await;
    let got = get(gw.addr, "h", "/").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.json()["error"]["code"], "upstream_unavailable");
    let log = gw.access_log(1).await;
    assert_eq!(log[0]["error"], "upstream_tls_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_name_overrides_sni_and_the_verified_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test-ca");
    // The certificate names only api.internal, not the IP the endpoint is dialled on.
    let (cert, key, _, _) = ca.leaf("upstream", &["api.internal"]);
    let up = tls_upstream(cert, key, None).await;
    let ca_path = write(dir.path(), "ca.pem", &ca.pem);
    let without = Gateway::start(&gateway_yaml(
        up,
        &format!("{{ mode: tls, caBundle: \"{}\" }}", ca_path.display()),
        "http1",
    ))
    .await;
    assert_eq!(
        get(without.addr, "h", "/").await.status,
        502,
        "the IP is not in the certificate"
    );
    let with = Gateway::start(&gateway_yaml(
        up,
        &format!(
            "{{ mode: tls, caBundle: \"{}\", serverName: api.internal }}",
            ca_path.display()
        ),
        "http1",
    ))
    .await;
    let got = get(with.addr, "h", "/").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "tls-ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_presents_the_gateway_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test-ca");
    let (cert, key, _, _) = ca.leaf("upstream", &["127.0.0.1"]);
    let up = tls_upstream(cert, key, Some(&ca)).await;
    let (_, _, client_pem, client_key_pem) = ca.leaf("gateway-client", &["gateway.internal"]);
    let ca_path = write(dir.path(), "ca.pem", &ca.pem);
    let cert_path = write(dir.path(), "gw.pem", &client_pem);
    let key_path = write(dir.path(), "gw.key", &client_key_pem);
    // Plain TLS is refused by an upstream that requires a client certificate.
    let tls_only = Gateway::start(&gateway_yaml(
        up,
        &format!("{{ mode: tls, caBundle: \"{}\" }}", ca_path.display()),
        "http1",
    ))
    .await;
    assert_eq!(get(tls_only.addr, "h", "/").await.status, 502);
    let gw = Gateway::start(&gateway_yaml(
        up,
        &format!(
            "{{ mode: mtls, caBundle: \"{}\", clientCert: \"{}\", clientKey: \"{}\" }}",
            ca_path.display(),
            cert_path.display(),
            key_path.display()
        ),
        "http1",
    ))
    .await;
    let got = get(gw.addr, "h", "/").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-client-cn"), Some("gateway-client"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_without_a_client_certificate_or_with_a_mismatched_key_fails_validation() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test-ca");
    let (_, _, a_pem, _) = ca.leaf("a", &["a.internal"]);
    let (_, _, _, b_key) = ca.leaf("b", &["b.internal"]);
    let a = write(dir.path(), "a.pem", &a_pem);
    let bk = write(dir.path(), "b.key", &b_key);
    let ca_path = write(dir.path(), "ca.pem", &ca.pem);
    let path = dir.path().join("gw.yaml");
    let no_cert = gateway_yaml(
        "127.0.0.1:9".parse().unwrap(),
        &format!("{{ mode: mtls, caBundle: \"{}\" }}", ca_path.display()),
        "http1",
    );
    let err = gateway::config::load_str(&path, &no_cert).unwrap_err();
    assert!(
        err.errors
            .iter()
            .any(|e| e.path == "clusters[0].security.clientCert"),
        "{err}"
    );
    let mismatched = gateway_yaml(
        "127.0.0.1:9".parse().unwrap(),
        &format!(
            "{{ mode: mtls, clientCert: \"{}\", clientKey: \"{}\" }}",
            a.display(),
            bk.display()
        ),
        "http1",
    );
    let err = gateway::config::load_str(&path, &mismatched).unwrap_err();
    let e = err
        .errors
        .iter()
        .find(|e| e.path == "clusters[0].security.clientCert")
        .unwrap();
    assert!(e.message.contains("does not match"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_shaped_http2_reaches_a_tls_upstream_over_alpn_h2_with_trailers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test-ca");
    let (cert, key, _, _) = ca.leaf("upstream", &["127.0.0.1"]);
    let up = tls_upstream(cert, key, None).await;
    let ca_path = write(dir.path(), "ca.pem", &ca.pem);
    let gw = Gateway::start(&gateway_yaml(
        up,
        &format!("{{ mode: tls, caBundle: \"{}\" }}", ca_path.display()),
        "http2",
    ))
    .await;
    let mut c = H2::connect(gw.addr).await;
    // A gRPC frame: uncompressed flag, 4-byte length, payload.
    let msg = b"\x00\x00\x00\x00\x05hello".to_vec();
    let got = c
        .send(
            Request::post("http://svc.internal/grpc")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(full(msg.clone()))
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.header("x-proto"),
        Some("HTTP/2.0"),
        "the upstream leg is HTTP/2"
    );
    assert_eq!(got.body.as_ref(), msg.as_slice());
    let t = got.trailers.expect("trailers");
    assert_eq!(t["grpc-status"], "0");
    assert_eq!(t["grpc-message"], "ok");
}
