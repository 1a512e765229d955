//! `runner validate`: check a pipeline file and report every problem, each with its place in
//! the file, the key path, and what would be valid.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use pipelines::{Diagnostic, Diagnostics};

use super::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pipeline files
    #[arg(value_name = "FILE", default_value = ".runner.yml")]
    pub files: Vec<PathBuf>,
    /// Print the problems as a JSON array (file, line, column, path, message, hint)
    #[arg(long)]
    pub json: bool,
}

pub async fn run(_ctx: &Context, args: Args) -> anyhow::Result<u8> {
    let mut all: Vec<Diagnostic> = Vec::new();
    for file in &args.files {
        match pipelines::validate_file(file) {
            Ok(v) if !args.json => {
                let jobs = &v.pipeline.jobs;
                let instances: usize = jobs.iter().map(|j| j.matrix.len().max(1)).sum();
                let steps: usize = jobs
                    .iter()
                    .map(|j| j.steps.len() * j.matrix.len().max(1))
                    .sum();
                println!(
                    "{}: ok: {} {}, {} with the matrix expanded, {} {}",
                    file.display(),
                    jobs.len(),
                    plural(jobs.len(), "job"),
                    instances,
                    steps,
                    plural(steps, "step"),
                );
            }
            Ok(_) => {}
            Err(diags) => {
                if !args.json {
                    report(file, &diags);
                }
                all.extend(diags.0);
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(if all.is_empty() { 0 } else { 2 })
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

/// Print diagnostics to stderr, each with the line it points at.
pub fn report(file: &Path, diags: &Diagnostics) {
    let source = std::fs::read_to_string(file).unwrap_or_default();
    eprint!("{}", render(&source, diags));
}

/// Each diagnostic as `error: file:line:col: path: message`, the source line with a caret
/// under the column, and the hint; then a count.
pub fn render(source: &str, diags: &Diagnostics) -> String {
    // Lines as YAML counts them: \r\n, \r and \n each end one.
    let source = source.replace("\r\n", "\n").replace('\r', "\n");
    let lines: Vec<&str> = source.lines().collect();
    let mut out = String::new();
    for d in &diags.0 {
        let _ = writeln!(out, "error: {}", headline(d));
        if let Some(text) = d.line.checked_sub(1).and_then(|i| lines.get(i)) {
            let number = d.line.to_string();
            let pad = " ".repeat(number.len());
            // Tabs would shift the caret; show them as one space as they are counted.
            let shown: String = text
                .chars()
                .map(|c| if c == '\t' { ' ' } else { c })
                .collect();
            let _ = writeln!(out, " {number} | {shown}");
            let caret = " ".repeat(d.column.saturating_sub(1).min(shown.chars().count()));
            let _ = writeln!(out, " {pad} | {caret}^");
        }
        if let Some(hint) = &d.hint {
            let _ = writeln!(out, "  = hint: {hint}");
        }
    }
    let n = diags.0.len();
    let file = diags.0.first().map(|d| d.file.as_str()).unwrap_or("");
    let _ = writeln!(out, "{n} {} in {file}", plural(n, "problem"));
    out
}

fn headline(d: &Diagnostic) -> String {
    let mut s = format!("{}:{}:{}: ", d.file, d.line, d.column);
    if !d.path.is_empty() {
        s.push_str(&d.path);
        s.push_str(": ");
    }
    s.push_str(&d.message);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_points_at_the_column() {
        let diags = Diagnostics(vec![Diagnostic {
            file: "f.yml".into(),
            line: 2,
            column: 5,
            path: "a.b".into(),
            message: "bad".into(),
            hint: Some("do this".into()),
        }]);
        let out = render("a:\n  b: x\n", &diags);
        assert_eq!(
            out,
            "error: f.yml:2:5: a.b: bad\n 2 |   b: x\n   |     ^\n  = hint: do this\n1 problem in f.yml\n"
        );
    }
}
