//! The runner agent (`runner run`).
