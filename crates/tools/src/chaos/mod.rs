//! Fault injection on real services: a proxy that cuts, refuses and stalls the connections
//! between a worker and its broker or database, and `seatrush chaos`, a rush with faults on a
//! schedule (on clusters, their nodes killed, cut off and restarted through the operator's
//! control commands) and the checks that nothing was lost.

mod cluster;
mod proxy;
mod run;

pub use proxy::Proxy;
pub use run::{ChaosConfig, ChaosReport, Recovery, authority, describe, proxy_for, run, through};
