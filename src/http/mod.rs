//! HTTP: the protocol step (`server`, with `h2guard` against HTTP/2 abuse), the
//! per-request proxy logic (`proxy`, with `grpc` for deadlines), the gateway's own
//! header handling (`headers`), what routes do to requests and responses (`rules`), and
//! the streaming bodies that carry timeouts and accounting (`body`).

pub(crate) mod body;
pub(crate) mod grpc;
pub mod h2guard;
pub mod headers;
pub(crate) mod proxy;
pub(crate) mod response;
pub mod rules;
pub(crate) mod server;
pub mod sniff;
