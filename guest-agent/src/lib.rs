//! The guest side of the runner's VM executor.
//!
//! The binary (`src/main.rs`) is PID 1 of a throwaway VM: it mounts the image root, waits for
//! one step from the host, runs it and powers off. This library holds what both ends share:
//! the framed, versioned [`protocol`] over the host channel.

pub mod protocol;
