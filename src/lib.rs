//! The gateway library: everything `main.rs` wires together, from config file to proxied bytes.
//!
//! Request flow (see `docs/architecture.md`): `listener` accepts → `tls` terminates TLS
//! (on TLS listeners) → `http::server` speaks HTTP/1.1 or HTTP/2 → `http::proxy` takes one
//! `state::Snapshot` → `router` picks a route → `balance` picks an endpoint → `upstream`
//! forwards → `telemetry` logs once. Beside it, `l4` relays TCP connections to a cluster's
//! endpoints byte for byte.
//!
//! Layers point one way (enforced by `tests/layers.rs`): foundation (`error`, `util`,
//! `x509`, `certs`, `path`, `version`, `notify`) → `config` → runtime pieces (`router`,
//! `balance`, `upstream`, `tls`, `telemetry`, the `http` pieces) → `state` → serving
//! (`listener`, `http::server`, `http::proxy`, `l4`, `admin`) → process (`runtime`, `demo`).
//! What tests, benches and the fuzz targets drive is public; the rest is crate-private.

pub mod admin;
pub mod balance;
pub mod certs;
pub mod config;
pub mod demo;
pub(crate) mod error;
pub mod http;
pub(crate) mod l4;
pub(crate) mod listener;
pub mod notify;
pub mod path;
pub(crate) mod registry;
pub(crate) mod reload;
pub mod router;
pub mod runtime;
pub(crate) mod state;
pub(crate) mod telemetry;
pub(crate) mod tls;
pub(crate) mod upstream;
pub(crate) mod util;
pub mod version;
pub(crate) mod watch;
pub mod x509;

/// The version reported by `gateway version`, `/status` and the access log.
pub const VERSION: &str = version::VERSION;
