//! Courses: the pure decision logic, the actor that wraps it, and the registry that finds, starts,
//! bounds and stops actors.

mod actor;
mod catalog;
mod decision;
mod registry;

pub use actor::{ActorContext, CourseTicket, RestartPolicy, submit};
pub use catalog::Catalog;
pub use decision::{CourseSnapshot, CourseState, Decision, Effect};
pub use registry::{Close, Registry, RegistryConfig, Routed};
