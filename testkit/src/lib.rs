//! Shared test support for the whole workspace (a dev-dependency of every crate with tests).
//!
//! # One skip policy
//! A test that needs something of the machine says so with an attribute above `#[test]` (or
//! `#[tokio::test]`):
//!
//! ```text
//! #[testkit::needs(root)]
//! #[tokio::test]
//! async fn a_step_runs_in_a_sandbox() { ... }
//! ```
//!
//! - Where the need is missing, the test is marked `#[ignore = "needs root ...: running as uid
//!   1000"]` when it is compiled: `cargo test` lists it as `ignored, <reason>` and counts it in
//!   the summary's "N ignored". libtest has no run-time skip; the mark is made from the same
//!   probe the test repeats when it starts (see `testkit-macros`).
//! - In strict mode ([`strict`]: `RUNNER_TEST_STRICT=1`, which deploy/test.sh sets, or `CI` set
//!   as CI services do) nothing is marked: the test runs and fails, saying what is missing.
//! - The check when the test starts ([`require`]) is the authority either way: a test never
//!   passes without its need, whichever way it came to run (`--include-ignored`, a binary
//!   built by another user).
//! - `#[testkit::host(hardware_kvm)]` and friends are different: a host of another *kind* is
//!   not a missing capability, so those tests are ignored there in strict mode too; each has a
//!   counterpart test that runs on the other kind of host.
//!
//! Never `if !root { eprintln!(..); return }`: libtest hides the message and counts a pass.
//! `tests/policy.rs` here fails the suite on a bare `#[ignore]` or such an early return.

mod probe;

pub mod exec;
pub mod guest;
pub mod leftovers;
pub mod process;

pub use probe::{kernel_dir, kvm_kind, strict, Host, Need};
pub use testkit_macros::{host, needs};

/// Fails the test (panics) unless every need is met, saying what is missing. Called first thing
/// by `#[testkit::needs]`; fixtures call it too.
#[track_caller]
pub fn require(needs: &[Need<'_>]) {
    let missing: Vec<String> = needs
        .iter()
        .filter_map(|n| {
            n.check()
                .err()
                .map(|why| format!("needs {}: {why}", n.describe()))
        })
        .collect();
    if !missing.is_empty() {
        panic!("this test {}; {}", missing.join("; "), why_it_ran());
    }
}

/// Fails the test unless this host is of every kind given. Called by `#[testkit::host]`.
#[track_caller]
pub fn require_host(hosts: &[Host]) {
    let wrong: Vec<String> = hosts
        .iter()
        .filter_map(|h| {
            h.check()
                .err()
                .map(|why| format!("is only for {}: {why}", h.describe()))
        })
        .collect();
    if !wrong.is_empty() {
        panic!("this test {}; {}", wrong.join("; "), why_it_ran());
    }
}

fn why_it_ran() -> &'static str {
    if strict() {
        "strict mode (RUNNER_TEST_STRICT=1 or CI) fails a test that cannot run here"
    } else {
        "it ran although it could not (--include-ignored, or built by another user or on \
         another host): it fails rather than pass untested"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_fails_with_the_reason_when_a_need_is_missing() {
        let err = std::panic::catch_unwind(|| {
            require(&[Need::PythonModule("testkit_no_such_module")]);
        })
        .unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("needs the Python module testkit_no_such_module")
                && msg.contains("python3 cannot import testkit_no_such_module"),
            "{msg}"
        );
        // A need that is met passes.
        require(&[Need::PythonModule("sys")]);
    }

    #[test]
    fn exactly_one_kvm_kind_applies() {
        let hw = Host::HardwareKvm.check().is_ok();
        let no = Host::NoHardwareKvm.check().is_ok();
        assert_ne!(hw, no, "{}", kvm_kind());
        if Host::PvmKvm.check().is_ok() {
            assert!(no);
        }
    }

    #[test]
    fn strict_mode_reads_runner_test_strict_then_ci() {
        assert!(!probe::strict_given(None, None));
        assert!(probe::strict_given(None, Some("true")));
        assert!(probe::strict_given(None, Some("1")));
        assert!(!probe::strict_given(None, Some("false")));
        assert!(!probe::strict_given(None, Some("")));
        assert!(probe::strict_given(Some("1"), None));
        // RUNNER_TEST_STRICT decides over CI, both ways.
        assert!(!probe::strict_given(Some("0"), Some("true")));
        assert!(probe::strict_given(Some("yes"), Some("false")));
    }
}
