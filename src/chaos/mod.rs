//! Fault injection on real services, for the chaos tests: a proxy that cuts, refuses and stalls
//! the connections between a worker and its broker or database.

mod proxy;

pub use proxy::Proxy;
