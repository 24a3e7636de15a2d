//! Load balancing, step 3 of the request path: route → endpoint index, with the route's
//! rate limit (`ratelimit`) checked before it, and endpoints taken out by passive health
//! (`health`) and the probes of active health (`active`).
//!
//! Tables are built with the snapshot; picking is one atomic increment.

pub(crate) mod active;
pub(crate) mod health;
pub mod ratelimit;
pub mod wrr;

pub(crate) use health::{Balancer, EndpointHealth};
pub use wrr::Wrr;
