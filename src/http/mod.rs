//! HTTP: the protocol step (`server`, with `h2guard` against HTTP/2 abuse), the
//! per-request proxy logic (`proxy`, with `grpc` for deadlines), header rules (`headers`)
//! and the streaming bodies that carry timeouts and accounting (`body`).

pub(crate) mod body;
pub(crate) mod grpc;
pub mod h2guard;
pub mod headers;
pub(crate) mod proxy;
pub(crate) mod response;
pub(crate) mod server;
pub mod sniff;
