//! seatrush-core: the product's runtime. Course enrollment that survives the flash crowd.
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
//! - [`status`]: who owns which partition, for operators.
//!
//! What this crate must never depend on: the tooling (`seatrush-tools`: the crowd, the rush, the
//! benchmark, chaos, charts, the demo). The compiler enforces it: this crate does not list the
//! tooling crate, or its chart and progress-bar libraries, among its dependencies.

pub mod admin;
pub mod amqp;
pub mod client;
pub mod course;
pub mod domain;
pub mod failpoint;
pub mod pipeline;
pub mod protocol;
pub mod retry;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod worker;
