//! The gRPC echo service of the soak's upstream nodes and what its clients need: one
//! message type, a unary and a bidi-streaming method. There is no protoc on these
//! machines, so the message is a hand-derived `prost::Message` and the server glue is
//! written out the way tonic's generated code does it (as in tests/grpc.rs).

use futures_util::StreamExt;
use http::{Request, Response};
use hyper::body::Incoming;
use std::pin::Pin;
use tonic::codegen::BoxFuture;
use tonic::{Status, Streaming};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(bytes = "vec", tag = "2")]
    pub blob: Vec<u8>,
}

pub type Codec = ProstCodec<Msg, Msg>;
pub const UNARY: &str = "/soak.Echo/Unary";
pub const BIDI: &str = "/soak.Echo/Bidi";

type MsgStream = Pin<Box<dyn futures_util::Stream<Item = Result<Msg, Status>> + Send>>;

fn echo(m: Msg) -> Msg {
    Msg {
        text: format!("echo {}", m.text),
        blob: m.blob,
    }
}

struct Unary;
impl tonic::server::UnaryService<Msg> for Unary {
    type Response = Msg;
    type Future = BoxFuture<tonic::Response<Msg>, Status>;
    fn call(&mut self, req: tonic::Request<Msg>) -> Self::Future {
        Box::pin(async move { Ok(tonic::Response::new(echo(req.into_inner()))) })
    }
}

struct Bidi;
impl tonic::server::StreamingService<Msg> for Bidi {
    type Response = Msg;
    type ResponseStream = MsgStream;
    type Future = BoxFuture<tonic::Response<MsgStream>, Status>;
    fn call(&mut self, req: tonic::Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let replies = req.into_inner().map(|m| m.map(echo));
            Ok(tonic::Response::new(Box::pin(replies) as MsgStream))
        })
    }
}

/// Serves one gRPC request that arrived on a node's HTTP/2 connection.
pub async fn serve(req: Request<Incoming>) -> Response<tonic::body::Body> {
    let req = req.map(tonic::body::Body::new);
    let mut grpc = tonic::server::Grpc::new(Codec::default());
    match req.uri().path() {
        UNARY => grpc.unary(Unary, req).await,
        BIDI => grpc.streaming(Bidi, req).await,
        _ => Status::unimplemented("no such method").into_http(),
    }
}
