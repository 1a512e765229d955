//! Sandbox backends behind one [`Executor`] trait.
//!
//! The runner turns a planned step into a [`StepSpec`] and hands it to an executor; the
//! executor knows nothing of YAML, coordinators or terminals. Output comes back while the step
//! runs, as ordered [`LogChunk`]s on a channel, and the outcome as a [`StepResult`].

pub mod container;
pub mod executor;
pub mod image;
pub mod procfs;
pub mod vm;

pub use executor::{
    Executor, ExecutorError, ImageProvider, ImageSpec, JobSpec, LayerLease, LogChunk, Network,
    PreparedJob, ResolvedImage, Resources, Shell, StepResult, StepSpec, Stream,
};
