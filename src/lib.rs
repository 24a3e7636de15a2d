//! The gateway library: everything `main.rs` wires together, from config file to proxied bytes.
//!
//! Request flow (see `DESIGN.md`): `listener` accepts → `tls` terminates TLS (on TLS
//! listeners) → `http::server` speaks HTTP/1.1 or
//! HTTP/2 → `http::proxy` takes one `state::Snapshot` → `router` picks a route →
//! `balance` picks an endpoint → `upstream` forwards → `telemetry` logs once. Beside it,
//! `l4` relays TCP connections to a cluster's endpoints byte for byte.

pub mod admin;
pub mod balance;
pub mod certs;
pub mod config;
pub mod demo;
pub mod error;
pub mod http;
pub mod l4;
pub mod listener;
pub mod path;
pub mod router;
pub mod runtime;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod util;
pub mod x509;

/// The version reported by `gateway version`, `/status` and the access log.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
