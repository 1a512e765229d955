//! Running a program under test: a time limit so a hang fails the test instead of the suite,
//! and its output in one value that prints whole when an assertion about it fails.

use std::io::Read as _;
use std::process::{Child, Output};
use std::time::{Duration, Instant};

/// What a finished program did. `Display` prints all of it: pass the value to an assertion's
/// message (`assert_eq!(r.code, Some(0), "{r}")`) and a failure shows the whole story.
#[derive(Debug, Clone)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Waits for `child` (spawned with piped stdout and stderr) at most `limit`; past that, kills
/// it and fails the test with what it printed so far.
pub fn wait_with_limit(mut child: Child, limit: Duration) -> Output {
    let mut stdout = child.stdout.take().expect("stdout piped");
    let mut stderr = child.stderr.take().expect("stderr piped");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the process did not finish within {limit:?}; stdout so far:\n{}",
                String::from_utf8_lossy(&out.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Byte offset of `needle` in `text`; fails the test if it is not there.
#[track_caller]
pub fn position(text: &str, needle: &str) -> usize {
    text.find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in output:\n{text}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sh(script: &str) -> Child {
        Command::new("sh")
            .args(["-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_finished_program_gives_its_code_and_both_streams() {
        let r = Run::from(wait_with_limit(
            sh("echo out; echo err >&2; exit 3"),
            Duration::from_secs(20),
        ));
        assert_eq!(
            (r.code, r.stdout.as_str(), r.stderr.as_str()),
            (Some(3), "out\n", "err\n")
        );
        assert_eq!(
            r.to_string(),
            "exit Some(3)\n--- stdout\nout\n--- stderr\nerr\n"
        );
    }

    #[test]
    fn a_hang_fails_the_test_and_the_program_is_killed() {
        let marker = format!("{}", 7000 + std::process::id() % 997);
        let child = sh(&format!("echo started; exec sleep {marker}"));
        let err = std::panic::catch_unwind(|| wait_with_limit(child, Duration::from_millis(300)))
            .unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("did not finish") && msg.contains("started"),
            "{msg}"
        );
        assert!(crate::leftovers::processes_with_arg(&marker).is_empty());
    }
}
