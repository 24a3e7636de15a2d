#![allow(clippy::unwrap_used)]
//! gRPC through the gateway with real tonic peers, over TLS (ALPN h2) and over h2c: the
//! four call shapes, metadata and trailers, big messages, deadlines, and the statuses the
//! gateway itself answers with.
//!
//! There is no protoc here, so the message is a hand-derived `prost::Message` and the
//! client and server glue is written out the way tonic's generated code does it.

mod support;

use bytes::Bytes;
use http::Request;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tonic::codegen::{http as thttp, BoxFuture, Context, Poll, Service};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status, Streaming};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(bytes = "vec", tag = "2")]
    pub blob: Vec<u8>,
    /// Server-streaming: how many replies; unary: how long to wait before answering (ms).
    #[prost(uint64, tag = "3")]
    pub count: u64,
    /// Server-streaming: bytes per reply; also the pause between replies (ms) when `text`
    /// is "slow".
    #[prost(uint64, tag = "4")]
    pub size: u64,
}

const LIMIT: usize = 64 << 20;
type Codec = ProstCodec<Msg, Msg>;
type MsgStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Msg, Status>> + Send>>;

// ---- the upstream service -----------------------------------------------------------

#[derive(Clone)]
struct Echo;

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

struct Unary;
impl tonic::server::UnaryService<Msg> for Unary {
    type Response = Msg;
    type Future = BoxFuture<tonic::Response<Msg>, Status>;
    fn call(&mut self, req: tonic::Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let meta = req.metadata().get("x-test-meta").cloned();
            let msg = req.into_inner();
            if msg.count > 0 {
                tokio::time::sleep(Duration::from_millis(msg.count)).await;
            }
            if msg.text == "fail" {
                let mut trailers = tonic::metadata::MetadataMap::new();
                trailers.insert("x-trailer-meta", "kept".parse().unwrap());
                return Err(Status::with_metadata(
                    Code::FailedPrecondition,
                    "custom failure: präcondition",
                    trailers,
                ));
            }
            let mut resp = tonic::Response::new(Msg {
                text: format!("echo {}", msg.text),
                blob: msg.blob,
                ..Msg::default()
            });
            if let Some(m) = meta {
                resp.metadata_mut().insert("x-echo-meta", m);
            }
            Ok(resp)
        })
    }
}

struct ClientStream;
impl tonic::server::ClientStreamingService<Msg> for ClientStream {
    type Response = Msg;
    type Future = BoxFuture<tonic::Response<Msg>, Status>;
    fn call(&mut self, req: tonic::Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let mut stream = req.into_inner();
            let (mut n, mut bytes) = (0usize, 0usize);
            while let Some(m) = stream.message().await? {
                n += 1;
                bytes += m.blob.len();
            }
            Ok(tonic::Response::new(Msg {
                text: format!("{n} messages, {bytes} bytes"),
                ..Msg::default()
            }))
        })
    }
}

struct ServerStream;
impl tonic::server::ServerStreamingService<Msg> for ServerStream {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFuture<tonic::Response<MsgStream>, Status>;
    fn call(&mut self, req: tonic::Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let m = req.into_inner();
            let slow = m.text == "slow";
            let stream = futures_util::stream::unfold(0u64, move |i| async move {
                if i >= m.count {
                    return None;
                }
                if slow {
                    tokio::time::sleep(Duration::from_millis(m.size)).await;
                }
                let blob = if slow {
                    Vec::new()
                } else {
                    vec![b'z'; m.size as usize]
                };
                let reply = Msg {
                    text: i.to_string(),
                    blob,
                    ..Msg::default()
                };
                Some((Ok(reply), i + 1))
            });
            Ok(tonic::Response::new(Box::pin(stream) as MsgStream))
        })
    }
}

struct Bidi;
impl tonic::server::StreamingService<Msg> for Bidi {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFuture<tonic::Response<MsgStream>, Status>;
    fn call(&mut self, req: tonic::Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let input = req.into_inner();
            let stream = futures_util::stream::unfold(input, |mut input| async move {
                match input.message().await {
                    Ok(Some(m)) if m.text == "ticks" => {
                        // Many replies to one message, while the client stays quiet.
                        let ticks = futures_util::stream::iter(0..m.count).then(move |i| {
                            let pause = m.size;
                            async move {
                                tokio::time::sleep(Duration::from_millis(pause)).await;
                                Ok(Msg {
                                    text: format!("tick {i}"),
                                    ..Msg::default()
                                })
                            }
                        });
                        Some((ticks.boxed(), input))
                    }
                    Ok(Some(m)) => {
                        let reply = Ok(Msg {
                            text: format!("echo {}", m.text),
                            ..Msg::default()
                        });
                        Some((futures_util::stream::iter([reply]).boxed(), input))
                    }
                    Ok(None) => None,
                    Err(e) => Some((futures_util::stream::iter([Err(e)]).boxed(), input)),
                }
            })
            .flatten();
            Ok(tonic::Response::new(Box::pin(stream) as MsgStream))
        })
    }
}

use futures_util::StreamExt as _;

impl Service<thttp::Request<tonic::body::Body>> for Echo {
    type Response = thttp::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: thttp::Request<tonic::body::Body>) -> Self::Future {
        let grpc = || {
            tonic::server::Grpc::new(Codec::default())
                .max_decoding_message_size(LIMIT)
                .max_encoding_message_size(LIMIT)
        };
        match req.uri().path() {
            "/test.Echo/Unary" => Box::pin(async move { Ok(grpc().unary(Unary, req).await) }),
            "/test.Echo/ClientStream" => {
                Box::pin(async move { Ok(grpc().client_streaming(ClientStream, req).await) })
            }
            "/test.Echo/ServerStream" => {
                Box::pin(async move { Ok(grpc().server_streaming(ServerStream, req).await) })
            }
            "/test.Echo/Bidi" => Box::pin(async move { Ok(grpc().streaming(Bidi, req).await) }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// A tonic service on 127.0.0.1:0, served over h2c by hyper as tonic's own server does.
async fn grpc_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
                    Echo.call(req.map(tonic::body::Body::new))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .http2_only()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    (addr, task)
}

// ---- the gateway and clients ----------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Transport {
    H2c,
    Tls,
}

struct Setup {
    gw: Gateway,
    ca: TestCa,
    _upstream: tokio::task::JoinHandle<()>,
}

/// A gateway with a plaintext listener (`h2c`, the first) and a TLS one (`tls`) in front
/// of the tonic upstream; `extra` is appended to the route.
async fn setup(extra_route: &str, upstream: Option<SocketAddr>) -> Setup {
    let (addr, task) = grpc_upstream().await;
    let upstream = upstream.unwrap_or(addr);
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.leaf(dir.path(), "grpc", &["grpc.example.com"]);
    let gw = Gateway::start_in(
        dir,
        &format!(
            r#"
accessLog: {{ path: "{{dir}}/access.log" }}
listeners:
  - name: h2c
    address: 127.0.0.1:0
    timeouts: {{ read: 400ms }}
    limits: {{ maxRequestBody: 16MiB }}
  - name: tls
    address: 127.0.0.1:0
    timeouts: {{ read: 400ms }}
    limits: {{ maxRequestBody: 16MiB }}
    tls:
      certificates: [{{ cert: grpc.pem, key: grpc.key }}]
routes:
  - name: echo
    match: {{ pathPrefix: /test.Echo/ }}
    cluster: grpc
{extra_route}
clusters:
  - name: grpc
    protocol: http2
    timeouts: {{ read: 400ms }}
    endpoints: [{{ address: "{upstream}" }}]
"#
        ),
    )
    .await;
    Setup {
        gw,
        ca,
        _upstream: task,
    }
}

impl Setup {
    fn addr(&self, t: Transport) -> SocketAddr {
        let name = match t {
            Transport::H2c => "h2c",
            Transport::Tls => "tls",
        };
        self.gw.running.as_ref().unwrap().addr(name).unwrap()
    }

    async fn client(&self, t: Transport) -> tonic::client::Grpc<Channel> {
        let addr = self.addr(t);
        let endpoint = match t {
            Transport::H2c => Endpoint::from_shared(format!("http://{addr}")).unwrap(),
            Transport::Tls => Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .origin(
                    format!("https://grpc.example.com:{}", addr.port())
                        .parse()
                        .unwrap(),
                )
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(self.ca.pem()))
                        .domain_name("grpc.example.com"),
                )
                .unwrap(),
        };
        let channel = endpoint.connect().await.unwrap();
        tonic::client::Grpc::new(channel)
            .max_decoding_message_size(LIMIT)
            .max_encoding_message_size(LIMIT)
    }
}

fn path(p: &'static str) -> http::uri::PathAndQuery {
    http::uri::PathAndQuery::from_static(p)
}

async fn unary(
    c: &mut tonic::client::Grpc<Channel>,
    p: &'static str,
    req: tonic::Request<Msg>,
) -> Result<tonic::Response<Msg>, Status> {
    c.ready().await.unwrap();
    c.unary(req, path(p), Codec::default()).await
}

fn msg(text: &str) -> Msg {
    Msg {
        text: text.into(),
        ..Msg::default()
    }
}

const BOTH: [Transport; 2] = [Transport::H2c, Transport::Tls];

// ---- tests ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_call_shapes_pass_through_over_h2c_and_tls_with_big_messages() {
    let s = setup("", None).await;
    for t in BOTH {
        let mut c = s.client(t).await;

        let big = vec![7u8; (4 << 20) + 123];
        let mut m = msg("hi");
        m.blob = big.clone();
        let got = unary(&mut c, "/test.Echo/Unary", tonic::Request::new(m))
            .await
            .unwrap();
        assert_eq!(got.get_ref().text, "echo hi", "{t:?}");
        assert!(got.get_ref().blob == big, "{t:?}: 4 MiB+ each way");

        let outbound = futures_util::stream::iter((0..10).map(|_| Msg {
            blob: vec![1; 1 << 20],
            ..Msg::default()
        }));
        c.ready().await.unwrap();
        let got = c
            .client_streaming(
                tonic::Request::new(outbound),
                path("/test.Echo/ClientStream"),
                Codec::default(),
            )
            .await
            .unwrap();
        assert_eq!(got.get_ref().text, "10 messages, 10485760 bytes", "{t:?}");

        c.ready().await.unwrap();
        let req = Msg {
            count: 3,
            size: (4 << 20) + 1,
            ..Msg::default()
        };
        let mut stream = c
            .server_streaming(
                tonic::Request::new(req),
                path("/test.Echo/ServerStream"),
                Codec::default(),
            )
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        while let Some(m) = stream.message().await.unwrap() {
            assert_eq!(m.blob.len(), (4 << 20) + 1);
            n += 1;
        }
        assert_eq!(n, 3, "{t:?}");

        // Bidi, one message at a time: each reply comes before the next request is sent.
        let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
        let outbound =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        c.ready().await.unwrap();
        let mut replies = c
            .streaming(
                tonic::Request::new(outbound),
                path("/test.Echo/Bidi"),
                Codec::default(),
            )
            .await
            .unwrap()
            .into_inner();
        for i in 0..5 {
            tx.send(msg(&format!("m{i}"))).await.unwrap();
            let reply = replies.message().await.unwrap().unwrap();
            assert_eq!(reply.text, format!("echo m{i}"), "{t:?}");
        }
        drop(tx);
        assert!(replies.message().await.unwrap().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_statuses_messages_and_trailers_pass_through_unchanged() {
    let s = setup("", None).await;
    for t in BOTH {
        let mut c = s.client(t).await;
        let mut req = tonic::Request::new(msg("x"));
        req.metadata_mut()
            .insert("x-test-meta", "from-client".parse().unwrap());
        let got = unary(&mut c, "/test.Echo/Unary", req).await.unwrap();
        assert_eq!(got.metadata().get("x-echo-meta").unwrap(), "from-client");

        let err = unary(&mut c, "/test.Echo/Unary", tonic::Request::new(msg("fail")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{t:?}");
        assert_eq!(err.message(), "custom failure: präcondition");
        assert_eq!(err.metadata().get("x-trailer-meta").unwrap(), "kept");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_deadline_gives_deadline_exceeded() {
    let s = setup(
        "  - name: slow\n    match: { pathPrefix: /test.Echo/Unary }\n    cluster: grpc\n    timeouts: { request: 300ms, read: 10s }",
        None,
    )
    .await;
    for t in BOTH {
        let mut c = s.client(t).await;
        let started = std::time::Instant::now();
        let mut m = msg("slow");
        m.count = 5000;
        let err = unary(&mut c, "/test.Echo/Unary", tonic::Request::new(m))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{t:?}: {err:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    let log = s.gw.access_log(2).await;
    assert!(log
        .iter()
        .all(|l| l["error"] == "request_timeout" && l["status"] == 200));
}

/// A gRPC request written by hand (so no client library enforces the deadline itself).
fn raw_grpc(path: &str, timeout: Option<&str>) -> Request<Body> {
    let mut frame = vec![0u8];
    let body = prost::Message::encode_to_vec(&Msg {
        count: 5000,
        ..Msg::default()
    });
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    let mut b = Request::post(format!("http://grpc.example.com{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = timeout {
        b = b.header("grpc-timeout", t);
    }
    b.body(full(Bytes::from(frame))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_enforced_by_the_gateway_and_answered_trailers_only() {
    let s = setup("", None).await;
    let mut h2 = H2::connect(s.addr(Transport::H2c)).await;
    // The upstream would answer after 5 s; the cluster read timeout is 400 ms; 150m wins.
    let got = h2.send(raw_grpc("/test.Echo/Unary", Some("150m"))).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("grpc-status"), Some("4"), "{got:?}");
    assert_eq!(got.header("content-type"), Some("application/grpc"));
    assert!(got.body.is_empty(), "trailers-only");
    // request_timeout, not upstream_timeout: the gRPC deadline fired, not `read`.
    let log = s.gw.access_log(1).await;
    assert_eq!(log[0]["error"], "request_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_unimplemented_and_a_dead_upstream_is_unavailable() {
    let dead = closed_port().await;
    let s = setup("", Some(dead)).await;
    for t in BOTH {
        let mut c = s.client(t).await;
        let err = unary(&mut c, "/other.Service/Call", tonic::Request::new(msg("x")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented, "{t:?}: {err:?}");
        let err = unary(&mut c, "/test.Echo/Unary", tonic::Request::new(msg("x")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{t:?}: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_max_request_body_is_resource_exhausted() {
    let s = setup("", None).await;
    for t in BOTH {
        let mut c = s.client(t).await;
        let mut m = msg("big");
        m.blob = vec![0; 17 << 20];
        let err = unary(&mut c, "/test.Echo/Unary", tonic::Request::new(m))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{t:?}: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_outlive_every_inactivity_timeout_while_data_flows_either_way() {
    // Listener read and cluster read are 400 ms; these streams last about 1.5 s.
    let s = setup("", None).await;
    for t in BOTH {
        let mut c = s.client(t).await;
        c.ready().await.unwrap();
        let req = Msg {
            text: "slow".into(),
            count: 10,
            size: 150,
            ..Msg::default()
        };
        let mut stream = c
            .server_streaming(
                tonic::Request::new(req),
                path("/test.Echo/ServerStream"),
                Codec::default(),
            )
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        while let Some(_m) = stream.message().await.unwrap() {
            n += 1;
        }
        assert_eq!(n, 10, "{t:?}");

        // Bidi: the client sends one message and then stays quiet (its stream open)
        // while the server streams replies for longer than the listener's read timeout.
        let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
        let outbound =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        c.ready().await.unwrap();
        let mut replies = c
            .streaming(
                tonic::Request::new(outbound),
                path("/test.Echo/Bidi"),
                Codec::default(),
            )
            .await
            .unwrap()
            .into_inner();
        tx.send(Msg {
            text: "ticks".into(),
            count: 10,
            size: 150,
            ..Msg::default()
        })
        .await
        .unwrap();
        for i in 0..10 {
            let reply = replies.message().await.unwrap().unwrap();
            assert_eq!(reply.text, format!("tick {i}"), "{t:?}");
        }
        drop(tx);
        assert!(replies.message().await.unwrap().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_midstream_ends_the_call_with_a_status_not_a_reset() {
    let s = setup("", None).await;
    for t in BOTH {
        let mut c = s.client(t).await;
        c.ready().await.unwrap();
        // Replies every 1 s: the cluster's 400 ms read timeout cuts the stream after
        // the headers, and the client is told DEADLINE_EXCEEDED in a trailer.
        let req = Msg {
            text: "slow".into(),
            count: 3,
            size: 1000,
            ..Msg::default()
        };
        let mut stream = c
            .server_streaming(
                tonic::Request::new(req),
                path("/test.Echo/ServerStream"),
                Codec::default(),
            )
            .await
            .unwrap()
            .into_inner();
        let err = stream.message().await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{t:?}: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_h2_grpc_response_keeps_its_trailers() {
    let s = setup("", None).await;
    let mut h2 = H2::connect(s.addr(Transport::H2c)).await;
    let mut frame = vec![0u8];
    let body = prost::Message::encode_to_vec(&msg("fail"));
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    let req = Request::post("http://grpc.example.com/test.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(Bytes::from(frame)))
        .unwrap();
    let got = h2.send(req).await;
    assert_eq!(got.status, 200);
    // tonic answers an error as trailers-only: the status sits in the headers.
    let status = got.header("grpc-status").map(str::to_string).or_else(|| {
        got.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.to_str().unwrap().to_string())
    });
    assert_eq!(status.as_deref(), Some("9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidi_stream_survives_ten_reloads_over_h2c_and_tls() {
    let s = setup("", None).await;
    let running = s.gw.running.as_ref().unwrap();
    for t in [Transport::H2c, Transport::Tls] {
        let mut c = s.client(t).await;
        let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
        let outbound =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        c.ready().await.unwrap();
        let mut replies = c
            .streaming(
                tonic::Request::new(outbound),
                path("/test.Echo/Bidi"),
                Codec::default(),
            )
            .await
            .unwrap()
            .into_inner();
        for i in 0..10 {
            tx.send(msg(&format!("before reload {i}"))).await.unwrap();
            let reply = replies.message().await.unwrap().unwrap();
            assert_eq!(reply.text, format!("echo before reload {i}"), "{t:?}");
            running.reload().await.expect("reload applied");
        }
        tx.send(msg("after ten")).await.unwrap();
        let reply = replies.message().await.unwrap().unwrap();
        assert_eq!(reply.text, "echo after ten", "{t:?}");
        // A new call on the same channel, on the newest configuration.
        let got = unary(
            &mut c,
            "/test.Echo/Unary",
            tonic::Request::new(msg("new call")),
        )
        .await
        .unwrap();
        assert_eq!(got.into_inner().text, "echo new call");
        drop(tx);
        assert!(replies.message().await.unwrap().is_none(), "{t:?}");
    }
}
