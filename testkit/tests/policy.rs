//! The one skip policy holds across the workspace: no test is ignored but through
//! `#[testkit::needs]`/`#[testkit::host]` (deploy/test.sh runs no ignored test, so a bare
//! `#[ignore]` would never run in CI), and no test returns early before doing anything (the
//! old `if !root { eprintln!(..); return }`, which libtest counts as a pass).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            // Build output, fuzz crates (built by cargo-fuzz, not cargo test), this crate (its
            // own tests spell the forbidden patterns) and hidden directories.
            if !["target", "fuzz", "testkit"].contains(&name.as_str()) && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// `file:line: what` for each breach of the policy in `text`.
fn breaches(file: &str, text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("#[ignore") {
            found.push(format!(
                "{file}:{}: bare #[ignore]: use #[testkit::needs(..)] or #[testkit::host(..)]",
                i + 1
            ));
        }
        let is_test = *line == "#[test]" || line.starts_with("#[tokio::test");
        if !is_test {
            continue;
        }
        let Some(body) = (i..lines.len().min(i + 8))
            .find(|&j| lines[j].starts_with("fn ") || lines[j].starts_with("async fn "))
        else {
            continue;
        };
        // An early return among the first statements of a test: a skip in disguise.
        if let Some(j) = (body + 1..lines.len().min(body + 7)).find(|&j| lines[j] == "return;") {
            found.push(format!(
                "{file}:{}: a test that returns early passes having tested nothing: \
                 use #[testkit::needs(..)] or #[testkit::host(..)]",
                j + 1
            ));
        }
    }
    found
}

#[test]
fn no_test_skips_outside_testkit() {
    let root = testkit::guest::workspace_root();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(
        files.len() > 50,
        "found only {} Rust files under {}",
        files.len(),
        root.display()
    );
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let name = f.strip_prefix(&root).unwrap().display().to_string();
        found.extend(breaches(&name, &text));
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_scan_finds_the_old_skip_idioms() {
    let old = "#[test]\nfn t() {\n    if !nix::unistd::geteuid().is_root() {\n        \
               eprintln!(\"not root\");\n        return;\n    }\n    work();\n}\n\
               #[tokio::test]\n#[ignore = \"needs python\"]\nasync fn u() {}\n";
    let found = breaches("x.rs", old);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with("x.rs:5: a test that returns early"),
        "{found:?}"
    );
    assert!(found[1].starts_with("x.rs:10: bare #[ignore]"), "{found:?}");
    let new = "#[testkit::needs(root)]\n#[test]\nfn t() {\n    work();\n}\n";
    assert!(breaches("x.rs", new).is_empty());
}
