//! `runner exec` of a pipeline file, the way a developer runs it: the fixture behind the
//! end-to-end tests that write a pipeline, run it and assert on the exit code and output.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::{wait_with_limit, Run};

/// No `runner exec` in a test should come near this; it stops a hung run from hanging the suite.
pub const LIMIT: Duration = Duration::from_secs(50);

/// A source tree holding `pipeline` as `.runner.yml`.
pub fn pipeline_dir(pipeline: &str) -> tempfile::TempDir {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join(".runner.yml"), pipeline).unwrap();
    src
}

/// A checkout with a pipeline (`src`) and a data dir of its own (`data`), run with the `runner`
/// binary at `bin` (an integration test passes `env!("CARGO_BIN_EXE_runner")`). Each project
/// has its own directories, so tests run in parallel safely. Running steps needs root.
pub struct Project {
    pub src: tempfile::TempDir,
    pub data: tempfile::TempDir,
    pub bin: &'static str,
}

impl Project {
    pub fn new(bin: &'static str, pipeline: &str) -> Project {
        crate::require(&[crate::Need::Root]);
        Project {
            src: pipeline_dir(pipeline),
            data: tempfile::tempdir().unwrap(),
            bin,
        }
    }

    /// Writes `text` to `name` in the checkout.
    pub fn write(&self, name: &str, text: &str) -> &Project {
        std::fs::write(self.src.path().join(name), text).unwrap();
        self
    }

    pub fn path(&self) -> &Path {
        self.src.path()
    }

    /// `runner --data-dir <data> exec <args>` in the checkout, output piped, no stdin.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin);
        c.arg("--data-dir")
            .arg(self.data.path())
            .arg("exec")
            .args(args)
            .current_dir(self.src.path())
            .env_remove("NO_COLOR")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs `runner exec <args>` to the end (at most [`LIMIT`]).
    pub fn exec(&self, args: &[&str]) -> Run {
        let child = self.command(args).spawn().expect("start runner");
        Run::from(wait_with_limit(child, LIMIT))
    }
}
