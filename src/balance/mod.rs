//! Load balancing, step 3 of the request path: route → endpoint index.
//!
//! Tables are built with the snapshot; picking is one atomic increment.

pub mod health;
pub mod wrr;

pub use health::{Balancer, EndpointHealth, EndpointView};
pub use wrr::Wrr;
