//! Load balancing, step 3 of the request path: route → endpoint index.
//!
//! Tables are built with the snapshot; picking is one atomic increment.

pub mod wrr;

pub use wrr::Wrr;
