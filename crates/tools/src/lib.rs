//! seatrush-tools: what is built around the product to exercise and measure it, never linked
//! into a worker that runs without it.
//!
//! - [`load`]: a flash crowd of requests with answer collection (used by the rush, the bench,
//!   the demo and the tests).
//! - [`rush`]: the seeds' opening day against real worker processes, with its report.
//! - [`bench`]: the same burst through the broker alone, a naive Postgres design and seatrush.
//! - [`chaos`]: a rush with faults on a schedule, and the proof that nothing was lost.
//! - [`demo`]: a narrated rush on two workers.
//! - [`soak`]: a steady load for minutes, watching memory, latency and queues.
//! - [`charts`] and [`stats`]: the benchmark's SVG charts and latency summaries.
//!
//! It depends on `seatrush-core` and uses only its public interface; nothing in the core
//! depends on it.

pub mod bench;
pub mod chaos;
pub mod charts;
pub mod cpu;
pub mod demo;
pub mod load;
pub mod rush;
pub mod soak;
pub mod stats;
