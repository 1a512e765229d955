//! Pipeline YAML: model, validation with precise locations, and planning.
#![forbid(unsafe_code)]

pub mod plan;

pub use plan::{Image, Isolation, Network, Plan, PlannedJob, PlannedStep, Resources, Shell};
