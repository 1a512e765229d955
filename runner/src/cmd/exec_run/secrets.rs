//! Secret values for `runner exec`: `--secret NAME=VALUE`, `--secret NAME` (value taken from
//! the environment, so it stays out of shell history; read by the argument parser) and
//! `--secrets-file FILE`.
//!
//! The file is dotenv-style: `NAME=value`, optional `export `, `#` comments, `'single'`
//! (literal) and `"double"` quotes (escapes `\n \r \t \" \\ \$`; both may span lines). There is
//! deliberately no `$VAR` expansion: secrets are full of `$` and must arrive byte for byte,
//! which is why this is not `dotenvy` (it expands variables in unquoted and double-quoted
//! values).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context as _};

/// Secrets from the file first, then `--secret` flags (already split into name and value,
/// the environment read for a bare NAME), later ones winning.
pub fn collect(
    flags: &[(String, String)],
    file: Option<&Path>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read secrets file {}", file.display()))?;
        out.extend(parse_dotenv(&text, file)?);
    }
    for (name, value) in flags {
        check_name(name).with_context(|| format!("--secret {name}=..."))?;
        out.insert(name.clone(), value.clone());
    }
    Ok(out)
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        bail!(
            "invalid secret name '{name}': use letters, digits and '_', not starting with a digit"
        );
    }
    Ok(())
}

/// Parse dotenv text; errors name `file:line`.
pub fn parse_dotenv(text: &str, file: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let at = || format!("{}:{}", file.display(), i + 1);
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, rest)) = line.split_once('=') else {
            bail!("{}: expected NAME=VALUE", at());
        };
        let name = name.trim();
        check_name(name).with_context(at)?;
        let rest = rest.trim_start();
        let value = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let mut body = rest[1..].to_string();
                let mut end = find_closing(&body, q);
                while end.is_none() {
                    let Some((_, next)) = lines.next() else {
                        bail!("{}: unterminated {q} quote in the value of {name}", at());
                    };
                    body.push('\n');
                    body.push_str(next);
                    end = find_closing(&body, q);
                }
                let end = end.unwrap_or(body.len());
                let tail = body[end + 1..].trim();
                if !(tail.is_empty() || tail.starts_with('#')) {
                    bail!(
                        "{}: unexpected text after the closing quote of {name}",
                        at()
                    );
                }
                if q == '"' {
                    unescape(&body[..end])
                } else {
                    body[..end].to_string()
                }
            }
            _ => match rest.find(" #") {
                Some(c) => rest[..c].trim_end().to_string(),
                None => rest.trim_end().to_string(),
            },
        };
        out.push((name.to_string(), value));
    }
    Ok(out)
}

/// Byte offset of the closing quote `q` in `s`, skipping backslash escapes in `"`.
fn find_closing(s: &str, q: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' && q == '"' {
            escaped = true;
        } else if c == q {
            return Some(i);
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some(c @ ('"' | '\\' | '$')) => out.push(c),
            Some(c) => {
                out.push('\\');
                out.push(c);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Vec<(String, String)>> {
        parse_dotenv(text, Path::new("s.env"))
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn parses_the_usual_forms_without_expansion() {
        let text = "# comment\n\nA=plain value # trailing comment\nexport B=x$HOME#y\n\
                    C='lit $X \\n'\nD=\"tab\\there \\\"q\\\" \\$Y\"\n  E = spaced\nF=\n";
        assert_eq!(
            parse(text).unwrap(),
            pairs(&[
                ("A", "plain value"),
                ("B", "x$HOME#y"),
                ("C", "lit $X \\n"),
                ("D", "tab\there \"q\" $Y"),
                ("E", "spaced"),
                ("F", ""),
            ])
        );
    }

    #[test]
    fn quoted_values_may_span_lines() {
        let text = "KEY=\"-----BEGIN KEY-----\nabc\n-----END KEY-----\"\nNEXT='a\nb'\n";
        assert_eq!(
            parse(text).unwrap(),
            pairs(&[
                ("KEY", "-----BEGIN KEY-----\nabc\n-----END KEY-----"),
                ("NEXT", "a\nb"),
            ])
        );
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let e = parse("A=1\nnot a pair\n").unwrap_err().to_string();
        assert_eq!(e, "s.env:2: expected NAME=VALUE");
        let e = format!("{:#}", parse("A=1\n\nB=\"open\n").unwrap_err());
        assert!(e.contains("s.env:3") && e.contains("unterminated"), "{e}");
        let e = format!("{:#}", parse("1A=x\n").unwrap_err());
        assert!(
            e.contains("s.env:1") && e.contains("invalid secret name"),
            "{e}"
        );
        let e = format!("{:#}", parse("A='x' y\n").unwrap_err());
        assert!(e.contains("after the closing quote"), "{e}");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.env");
        std::fs::write(&f, "TOKEN=from-file\nOTHER=other-value\n").unwrap();
        let flags = [("TOKEN".to_string(), "from-flag".to_string())];
        let got = collect(&flags, Some(&f)).unwrap();
        assert_eq!(got["TOKEN"], "from-flag");
        assert_eq!(got["OTHER"], "other-value");
        let bad = [("bad-name".to_string(), "x".to_string())];
        let e = collect(&bad, None).unwrap_err();
        assert!(format!("{e:#}").contains("invalid secret name"), "{e:#}");
        let e = collect(&[], Some(&dir.path().join("missing.env"))).unwrap_err();
        assert!(format!("{e:#}").contains("missing.env"), "{e:#}");
    }
}
