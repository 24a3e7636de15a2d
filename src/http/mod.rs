//! HTTP: the protocol step (`server`), the per-request proxy logic (`proxy`), header
//! rules (`headers`) and the streaming bodies that carry timeouts and accounting (`body`).

pub mod body;
pub mod headers;
pub mod proxy;
pub mod server;
pub mod sniff;
