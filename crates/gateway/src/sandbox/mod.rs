//! The operating-system boundary between tenants: a bubblewrap sandbox per run, its resource
//! limits, and the security levels that decide what the model may do inside it.

pub mod bwrap;
pub mod cgroup;
pub mod level;
pub mod limits;
pub mod masking;
pub mod net;
pub mod relay;
pub mod seccomp;
pub mod usage;

pub use bwrap::{Bwrap, Mounts, SandboxError};
pub use level::{LevelError, LevelPolicy, SecurityLevel, ToolPolicy};
pub use limits::Limits;
