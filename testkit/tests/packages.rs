//! A fresh machine passes the suite: every program the code or the tests run comes from a
//! package `deploy/setup.sh` installs, or from one Debian marks Essential (on every Debian
//! system by definition). Found by reading the sources, mapped to packages by dpkg itself:
//!
//! - `Command::new("prog")` anywhere in the workspace, and `Command::new(CONST)` where `CONST`
//!   is a string constant of the same file;
//! - the commands of shell scripts run with `sh -c`/`bash -c` from Rust, when the script is a
//!   literal or a `let` of the same file built from literals (`format!`);
//! - the commands of the scripts CI runs: `.ci/run` and the scripts under `deploy/` that
//!   `deploy/test.sh` calls;
//! - programs run through a variable, listed in [`DYNAMIC`] with where they come from.
//!
//! A program that is nowhere on this machine fails too: install it from a package and add
//! that package to `deploy/setup.sh`. Not covered: scripts that steps of `image: host`
//! pipelines run (those use the host's coreutils, which is Essential) and scripts run inside
//! busybox images (busybox's applets, not the host's programs).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Programs run through a variable: (program, a literal in the sources that names it, why).
const DYNAMIC: &[(&str, &str, &str)] = &[
    (
        "qemu-system-x86_64",
        "executors/src/vm/mod.rs",
        "[vm] qemu: the QEMU backend's default binary",
    ),
    ("sh", "executors/src/vm/mod.rs", "steps' `shell: sh`"),
    ("bash", "executors/src/vm/mod.rs", "steps' `shell: bash`"),
    (
        "docker-registry",
        "executors/src/image/testing.rs",
        "the image tests' local registry (REGISTRY_BIN)",
    ),
];

/// Programs that are deliberately not from a Debian package, with the reason.
const NOT_FROM_PACKAGES: &[(&str, &str)] = &[
    (
        "cargo",
        "the Rust toolchain comes from rustup (deploy/setup.sh checks for it)",
    ),
    ("rustc", "the Rust toolchain comes from rustup"),
    ("rustup", "the Rust toolchain comes from rustup"),
    (
        "kubectl",
        "optional: deploy/tests/deploy.sh renders the Kubernetes manifests with it only where \
         it is installed (Debian 12 has no kubectl package) and says so where it is not",
    ),
];

/// The scripts CI runs: `.ci/run`, `deploy/test.sh` and what it calls.
const SCRIPTS: &[&str] = &[
    ".ci/run",
    "deploy/test.sh",
    "deploy/setup.sh",
    "deploy/setup-vm-kernel.sh",
    "deploy/fuzz.sh",
    "deploy/tests/deploy.sh",
    "deploy/install.sh",
];

/// Where executables are looked up, as in root's PATH.
const PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// One place a program is run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Use {
    program: String,
    at: String,
    /// From a literal `Command::new`: it must exist. Script command words that exist nowhere
    /// are taken for functions or words, not programs.
    certain: bool,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// The Rust string literal starting at `s[0]` (`"..."` or `r#"..."#`): its value and length.
fn literal(s: &str) -> Option<(String, usize)> {
    if let Some(rest) = s.strip_prefix("r#\"") {
        let end = rest.find("\"#")?;
        return Some((rest[..end].to_string(), end + 5));
    }
    let rest = s.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, i + 2)),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                '\n' => {
                    // A line continuation: skip the next line's leading blanks.
                    while chars.clone().next().is_some_and(|(_, c)| c == ' ') {
                        chars.next();
                    }
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// Every string literal in `s`, concatenated with newlines (a script built from pieces).
fn literals_in(s: &str) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        if rest.starts_with('"') || rest.starts_with("r#\"") {
            if let Some((v, n)) = literal(rest) {
                out.push_str(&v);
                out.push('\n');
                i += n;
                continue;
            }
        }
        i += rest.chars().next().map_or(1, char::len_utf8);
    }
    out
}

/// The expression of the last `let name = ...;` before `before` in `text`.
fn let_value<'a>(text: &'a str, name: &str, before: usize) -> Option<&'a str> {
    let start = text[..before].rfind(&format!("let {name} = "))?;
    let expr = &text[start..];
    let mut depth = 0i32;
    let mut i = 0;
    while i < expr.len() {
        let rest = &expr[i..];
        if rest.starts_with('"') || rest.starts_with("r#\"") {
            i += literal(rest).map_or(1, |(_, n)| n);
            continue;
        }
        match rest.as_bytes()[0] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            b';' if depth == 0 => return Some(&expr[..i]),
            _ => {}
        }
        i += rest.chars().next().map_or(1, char::len_utf8);
    }
    None
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

/// Programs a Rust source runs.
fn rust_uses(file: &str, text: &str) -> Vec<Use> {
    let mut uses = Vec::new();
    for (at, _) in text.match_indices("Command::new(") {
        let arg = text[at + "Command::new(".len()..].trim_start();
        let program = if let Some((v, _)) = literal(arg) {
            Some(v)
        } else {
            // `Command::new(NAME)` with `const NAME: &str = "...";` in the file.
            let name: String = arg
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let is_const = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit());
            is_const
                .then(|| text.find(&format!("const {name}: &str = ")))
                .flatten()
                .and_then(|d| literal(text[d..].split_once("= ")?.1))
                .map(|(v, _)| v)
        };
        if let Some(program) = program {
            uses.push(Use {
                program,
                at: format!("{file}:{}", line_of(text, at)),
                certain: true,
            });
        }
    }
    // `sh -c SCRIPT` / `bash -c SCRIPT`: the script's commands.
    for (at, _) in text.match_indices("\"-c\"") {
        let since = text[..at].rfind("Command::new(").unwrap_or(0);
        let head = &text[since..at];
        if !["\"sh\"", "\"bash\"", "\"/bin/sh\"", "\"/bin/bash\""]
            .iter()
            .any(|s| head.contains(s))
        {
            continue;
        }
        let after = text[at + 4..].trim_start();
        let after = after
            .strip_prefix(',')
            .or_else(|| after.strip_prefix(").arg("))
            .unwrap_or(after)
            .trim_start();
        let script = if let Some((v, _)) = literal(after) {
            v
        } else {
            let name: String = after
                .trim_start_matches('&')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            match let_value(text, &name, at) {
                Some(expr) => literals_in(expr),
                None => continue,
            }
        };
        for program in command_words(&script) {
            uses.push(Use {
                program,
                at: format!("{file}:{} (sh -c)", line_of(text, at)),
                certain: false,
            });
        }
    }
    uses
}

/// First words of the simple commands of a shell script: a heuristic (no real parser), which
/// is why a word that is no program on this machine is not counted.
fn command_words(script: &str) -> BTreeSet<String> {
    // Words that come before a command, and builtins and keywords that are no program.
    const BEFORE: &[&str] = &[
        "if", "then", "else", "elif", "do", "while", "until", "!", "time", "{", "exec", "command",
    ];
    const NOT_PROGRAMS: &[&str] = &[
        "fi", "done", "esac", "}", "function", "local", "export", "return", "set", "shift",
        "unset", "cd", "echo", "printf", "read", "trap", "wait", "eval", "source", ".", "exit",
        "declare", "readonly", "true", "false", "test", "[", "[[", "]]", "kill", "break",
        "continue", "builtin", "type", "hash", "ulimit", "umask", "let", "getopts", "pwd",
    ];
    let functions: BTreeSet<&str> = script
        .lines()
        .filter_map(|l| l.trim().split_once("()").map(|(n, _)| n.trim()))
        .collect();
    let mut words = BTreeSet::new();
    for line in script.lines() {
        // Comments: `#` at the start of a word.
        let line = match line.find(" #") {
            Some(i) => &line[..i],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        for seg in line.split(['(', ')', ';', '|', '&', '`']) {
            // `for NAME in WORDS`, `case WORD in`: no command in that part.
            if matches!(
                seg.split_whitespace().next(),
                Some("for" | "case" | "select")
            ) {
                continue;
            }
            let mut ws = seg.split_whitespace().skip_while(|w| {
                BEFORE.contains(w)
                    || w.split_once('=').is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    })
            });
            let Some(w) = ws.next() else { continue };
            let w = w.trim_matches(['"', '\'']);
            let plausible = w
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '/')
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._+-/".contains(c));
            if plausible && !functions.contains(w) && !NOT_PROGRAMS.contains(&w) {
                words.insert(w.to_string());
            }
        }
    }
    words
}

/// Where `program` is: itself if absolute, else the first match in [`PATH`].
fn locate(program: &str) -> Option<PathBuf> {
    let p = Path::new(program);
    if p.is_absolute() {
        return std::fs::metadata(p)
            .is_ok_and(|m| m.is_file())
            .then(|| p.to_path_buf());
    }
    if program.contains('/') {
        return None;
    }
    PATH.iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
}

/// The path itself, where its symlinks lead, and both under the other name of usr-merged
/// directories (`/bin/ip` is `/usr/bin/ip`; dpkg knows only the one the package ships).
fn dpkg_names(path: &Path) -> Vec<String> {
    let mut paths = vec![path.to_path_buf()];
    if let Ok(real) = path.canonicalize() {
        paths.push(real);
    }
    let mut out = Vec::new();
    for p in paths {
        let s = p.display().to_string();
        for (a, b) in [
            ("/usr/bin/", "/bin/"),
            ("/usr/sbin/", "/sbin/"),
            ("/bin/", "/usr/bin/"),
            ("/sbin/", "/usr/sbin/"),
        ] {
            if let Some(rest) = s.strip_prefix(a) {
                out.push(format!("{b}{rest}"));
            }
        }
        out.push(s);
    }
    out
}

/// Package(s) owning each path, from one `dpkg-query -S` over all of them.
fn owners(paths: &BTreeSet<String>) -> BTreeMap<String, Vec<String>> {
    let out = Command::new("dpkg-query")
        .arg("-S")
        .args(paths)
        .output()
        .expect("dpkg-query (dpkg is Essential)");
    let mut map = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with("diversion ") {
            continue;
        }
        let Some((pkgs, path)) = line.split_once(": ") else {
            continue;
        };
        let pkgs = pkgs
            .split(", ")
            .map(|p| p.split(':').next().unwrap().to_string())
            .collect();
        map.insert(path.to_string(), pkgs);
    }
    map
}

fn essential_packages() -> BTreeSet<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package}\t${Essential}\n"])
        .output()
        .expect("dpkg-query");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix("\tyes"))
        .map(str::to_string)
        .collect()
}

/// The `packages=( ... )` list of deploy/setup.sh.
fn setup_packages(setup: &str) -> BTreeSet<String> {
    let start = setup
        .find("packages=(")
        .expect("deploy/setup.sh has packages=(")
        + "packages=(".len();
    let mut out = BTreeSet::new();
    for line in setup[start..].lines() {
        let line = line.split('#').next().unwrap().trim();
        if line == ")" {
            break;
        }
        out.extend(line.split_whitespace().map(str::to_string));
    }
    out
}

fn all_uses(root: &Path) -> Vec<Use> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let mut uses = Vec::new();
    for f in &files {
        let name = f.strip_prefix(root).unwrap().display().to_string();
        if name == "testkit/tests/packages.rs" {
            continue; // this file spells the patterns it looks for
        }
        let text = std::fs::read_to_string(f).unwrap();
        uses.extend(rust_uses(&name, &text));
    }
    for script in SCRIPTS {
        let text =
            std::fs::read_to_string(root.join(script)).unwrap_or_else(|e| panic!("{script}: {e}"));
        for program in command_words(&text) {
            uses.push(Use {
                program,
                at: script.to_string(),
                certain: false,
            });
        }
    }
    for (program, file, why) in DYNAMIC {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            text.contains(&format!("\"{program}")) || text.contains(&format!("/{program}\"")),
            "DYNAMIC names {program} in {file}, which no longer mentions it: update the list"
        );
        uses.push(Use {
            program: program.to_string(),
            at: format!("{file} ({why})"),
            certain: true,
        });
    }
    uses.sort();
    uses.dedup();
    uses
}

/// What is wrong with `uses` given the packages setup.sh installs and the Essential ones.
fn problems(uses: &[Use], setup: &BTreeSet<String>, essential: &BTreeSet<String>) -> Vec<String> {
    let exempt: BTreeMap<&str, &str> = NOT_FROM_PACKAGES.iter().copied().collect();
    let located: Vec<(&Use, Option<PathBuf>)> = uses
        .iter()
        .filter(|u| !exempt.contains_key(u.program.as_str()))
        .map(|u| (u, locate(&u.program)))
        .collect();
    let names: BTreeSet<String> = located
        .iter()
        .filter_map(|(_, p)| p.as_deref())
        .flat_map(dpkg_names)
        .collect();
    let owners = owners(&names);
    let mut found = Vec::new();
    for (u, path) in located {
        let Some(path) = path else {
            if u.certain {
                found.push(format!(
                    "{}: `{}` is not on this machine: install it from a Debian package and \
                     add the package to deploy/setup.sh",
                    u.at, u.program
                ));
            }
            continue;
        };
        let pkgs: BTreeSet<&String> = dpkg_names(&path)
            .iter()
            .filter_map(|n| owners.get(n))
            .flatten()
            .collect();
        if pkgs.is_empty() {
            found.push(format!(
                "{}: `{}` ({}) belongs to no Debian package (installed by hand?): use one \
                 from a package that deploy/setup.sh installs",
                u.at,
                u.program,
                path.display()
            ));
        } else if !pkgs
            .iter()
            .any(|p| setup.contains(*p) || essential.contains(*p))
        {
            let list: Vec<&str> = pkgs.iter().map(|p| p.as_str()).collect();
            found.push(format!(
                "{}: `{}` comes from {}, which deploy/setup.sh does not install and Debian \
                 does not mark Essential: add it to deploy/setup.sh",
                u.at,
                u.program,
                list.join(" or ")
            ));
        }
    }
    found
}

#[test]
fn every_program_run_comes_from_setup_sh_or_an_essential_package() {
    let root = testkit::guest::workspace_root();
    let uses = all_uses(&root);
    // The scan sees what it should: a sample of programs run today, each one way.
    for want in [
        "ip",
        "cpio",
        "skopeo",
        "awk",
        "systemd-analyze",
        "qemu-system-x86_64",
    ] {
        assert!(
            uses.iter().any(|u| u.program == want),
            "the scan missed {want}: {uses:#?}"
        );
    }
    let setup = setup_packages(&std::fs::read_to_string(root.join("deploy/setup.sh")).unwrap());
    let found = problems(&uses, &setup, &essential_packages());
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The check catches what it is for: deploy/setup.sh without cpio (as it was until the initramfs
/// tests failed on a fresh machine), and a `Command::new` of a program no package provides.
#[test]
fn the_check_fails_without_cpio_in_setup_sh_and_on_an_unknown_program() {
    let root = testkit::guest::workspace_root();
    let mut uses = all_uses(&root);
    let mut setup = setup_packages(&std::fs::read_to_string(root.join("deploy/setup.sh")).unwrap());
    assert!(setup.remove("cpio"), "deploy/setup.sh installs cpio");
    uses.extend(rust_uses(
        "new.rs",
        "fn f() { Command::new(\"runner-no-such-program\").status(); }",
    ));
    let found = problems(&uses, &setup, &essential_packages());
    assert!(
        found
            .iter()
            .any(|f| f.contains("`cpio` comes from cpio") && f.contains("vmm/tests/linux.rs")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("new.rs:1: `runner-no-such-program` is not on this machine")),
        "{found:#?}"
    );
}

#[test]
fn scripts_are_read_for_their_commands() {
    let words = command_words(
        "set -u; for m in $(awk '$9 == 1 {print $5}' f); do umount $m; done\n\
         # a comment: make install\n\
         helper() { x; }\n\
         FOO=1 sudo -n true && helper | sort -u >out; if ! grep -q x y; then exit 1; fi\n",
    );
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    assert_eq!(words, ["awk", "grep", "sort", "sudo", "umount", "x"]);
    let uses = rust_uses(
        "t.rs",
        "const BIN: &str = \"/usr/bin/docker-registry\";\n\
         fn f() {\n\
             Command::new(BIN);\n\
             let script = format!(\"umount {x}; \\\n  cpio -i\");\n\
             Command::new(\"unshare\").args([\"-m\", \"sh\", \"-c\", &script]);\n\
             Command::new(\"python3\").arg(\"-c\").arg(\"import yaml\");\n\
         }\n",
    );
    let got: Vec<(&str, &str)> = uses
        .iter()
        .map(|u| (u.program.as_str(), u.at.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("/usr/bin/docker-registry", "t.rs:3"),
            ("unshare", "t.rs:6"),
            ("python3", "t.rs:7"),
            ("cpio", "t.rs:6 (sh -c)"),
            ("umount", "t.rs:6 (sh -c)"),
        ]
    );
}
