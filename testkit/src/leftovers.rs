//! Finding what a test's sandboxes may have left on the host: processes, cgroups, mounts.
//! Scope each search to what the test made (its marker, its temp dir, its runner's pid): other
//! engineers' and CI's runs share the machine.

use std::path::{Path, PathBuf};

/// Pids of processes (other than this one) with `arg` as one of their arguments.
pub fn processes_with_arg(arg: &str) -> Vec<i32> {
    processes_where(|args| args.split(|&b| b == 0).any(|a| a == arg.as_bytes()))
}

/// Pids of processes whose command line contains `needle` anywhere, except cargo's (which may
/// carry a test's name or path in its own arguments).
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    processes_where(|args| {
        let cmdline = String::from_utf8_lossy(args).replace('\0', " ");
        cmdline.contains(needle) && !cmdline.contains("cargo")
    })
}

fn processes_where(pred: impl Fn(&[u8]) -> bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if pid != me && pred(&cmdline) {
            found.push(pid);
        }
    }
    found
}

/// Cgroups (v1 or v2, anywhere under /sys/fs/cgroup) of sandboxes that the runner with `pid`
/// made: the container executor names them `rnr-<job>-<pid in hex>-<n>`.
pub fn sandbox_cgroups(pid: i32) -> Vec<PathBuf> {
    let tag = format!("-{pid:x}-");
    let mut found = Vec::new();
    let mut stack = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("rnr-") && name.contains(&tag) {
                found.push(e.path());
            } else if depth < 8 {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    found
}

/// Lines of this process's mountinfo that mention `path` (canonicalised when it exists).
pub fn mounts_mentioning(path: &Path) -> Vec<String> {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let text = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&text))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_found_by_its_argument_and_not_after_it_is_gone() {
        let marker = format!("{}", 8000 + std::process::id() % 997);
        let mut child = std::process::Command::new("sleep")
            .arg(&marker)
            .spawn()
            .unwrap();
        assert_eq!(processes_with_arg(&marker), vec![child.id() as i32]);
        assert_eq!(processes_mentioning(&marker), vec![child.id() as i32]);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(processes_with_arg(&marker).is_empty());
    }
}
