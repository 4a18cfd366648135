//! seatrush: course enrollment that survives the flash crowd.
//!
//! Requests arrive over RabbitMQ, partitioned by course through a consistent-hash exchange. A
//! worker owns partitions (leased in Postgres, fenced by epoch) and runs one supervised actor per
//! course that decides at once from in-memory seat counters. Decisions are group-committed to
//! Postgres; only then are final answers published and deliveries acked.
//!
//! Components, in the order a request meets them:
//! - [`amqp`]: the broker edge (topology, consuming, publishing with confirms). Only it knows lapin.
//! - [`protocol`]: the wire contract; turns a message into a domain [`domain::Request`].
//! - [`worker`]: the worker lifecycle, intake, group commit and finalizer.
//! - [`course`]: course actors, their registry and supervisor, and the pure decision logic.
//! - [`store`]: Postgres. Only it speaks SQL.
//! - [`client`]: what producers and operators use: publish a request and await its answers.
//! - [`admin`]: course creation, changes through the course actor, CSV import.
//! - [`load`]: a flash crowd of requests with answer collection, used by the demo and tests.

pub mod admin;
pub mod amqp;
pub mod bench;
pub mod chaos;
pub mod charts;
pub mod client;
pub mod course;
pub mod demo;
pub mod domain;
pub mod failpoint;
pub mod load;
pub mod pipeline;
pub mod protocol;
pub mod retry;
pub mod rush;
pub mod stats;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod worker;
