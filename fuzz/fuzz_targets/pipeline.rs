//! The pipeline parser, validator and planner on arbitrary text: no panic, and every
//! diagnostic points at a real place in the input (file:line:column, as `runner validate`
//! prints it). The first byte picks the plan options, so `--job`, `--isolation`, events and
//! variables are reached too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipelines::{plan_str, validate_str, Diagnostics, Isolation, PlanOptions};

fn options(selector: u8) -> PlanOptions {
    let mut o = PlanOptions::default();
    if selector & 1 != 0 {
        o.event = "pull_request".into();
    }
    if selector & 2 != 0 {
        o.branch = "main".into();
    }
    if selector & 4 != 0 {
        o.vars.insert("CI".into(), "true".into());
    }
    if selector & 8 != 0 {
        o.jobs = vec!["build".into()];
    }
    if selector & 16 != 0 {
        o.jobs.push("test (os=linux)".into());
    }
    if selector & 32 != 0 {
        o.isolation = Some(if selector & 64 != 0 {
            Isolation::Vm
        } else {
            Isolation::Container
        });
    }
    o
}

/// Every problem has a line within the input (or just past its end) and a column.
fn check_places(src: &str, errors: &Diagnostics) {
    // YAML counts \r\n, \r and \n as line breaks.
    let lines = src
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .lines()
        .count();
    assert!(!errors.0.is_empty(), "an error without a diagnostic");
    for e in &errors.0 {
        assert!(
            e.line >= 1 && e.line <= lines + 1,
            "line {} of {lines}: {e}",
            e.line
        );
        assert!(e.column >= 1, "{e}");
        assert_eq!(e.file, "fuzz.yml");
    }
    let _ = errors.to_string();
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(src) = std::str::from_utf8(rest) else {
        return;
    };
    match validate_str(src, "fuzz.yml") {
        Ok(_) => {}
        Err(e) => check_places(src, &e),
    }
    match plan_str(src, "fuzz.yml", &options(selector)) {
        Ok(plan) => {
            // What the coordinator stores and `runner exec --dry-run --json` prints.
            let json = serde_json::to_string(&plan).expect("a plan serialises");
            let _: pipelines::Plan = serde_json::from_str(&json).expect("a plan reads back");
        }
        Err(e) => check_places(src, &e),
    }
});
