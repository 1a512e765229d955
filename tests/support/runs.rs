//! Where `runner exec` keeps live runs (the runtime dir, `/run/runner` by default for root),
//! for tests that check a run left nothing behind.

use std::path::{Path, PathBuf};

/// Run directories in the default runtime dir that belong to the data dir `data`: each names
/// its data dir's `exec` directory in its `data-dir` file.
pub fn runs_of(data: &Path) -> Vec<PathBuf> {
    let want = std::path::absolute(data.join("exec")).unwrap();
    let want = want.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/run/runner/exec")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|run| std::fs::read(run.join("data-dir")).is_ok_and(|d| d == want))
        .collect()
}
