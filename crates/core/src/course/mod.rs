//! Courses: the pure decision logic, the actor that wraps it, and the registry that finds, starts,
//! bounds and stops actors.

mod actor;
mod catalog;
mod context;
mod decision;
mod instance;
mod loads;
mod registry;

pub use actor::CourseHandle;
pub use catalog::Catalog;
pub use context::{ActorContext, RestartPolicy};
pub use decision::{CourseState, DEFAULT_ENTRIES_LIMIT};
pub use loads::Loads;
pub use registry::{Close, Registry, RegistryConfig};
