//! Integration tests: a real RabbitMQ and a real PostgreSQL (set `AMQP_URL` and `DATABASE_URL`,
//! or run `scripts/test.sh`, which starts private ones). Each test gets its own database and its
//! own exchange and queue names, so tests run in parallel without seeing each other.

mod admin;
mod apply_sets;
mod bad_input;
mod batches;
mod bench_intake;
mod bench_redis;
mod browser;
mod chaos;
mod cli;
mod cluster;
mod crashes;
mod crowd;
mod deadletters;
mod docker;
mod draw;
mod equivalence;
mod gateway;
mod harness;
mod helpers;
mod lanes;
mod operability;
mod restarts;
mod rules;
mod rush;
mod scaling;
mod schema;
mod servers;
mod shutdown;
mod store;
mod waitlist;
