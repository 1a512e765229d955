//! `${{ matrix.KEY }}` in an `image`, so each matrix instance can pick its own image
//! (`image: 127.0.0.1:5000/rust:${{ matrix.rust }}`), as GitHub Actions authors write it.
//! Only matrix values: they are known when the file is validated, so every instance's image
//! reference is checked before anything runs.

use std::collections::BTreeMap;

/// Whether `text` uses a template at all.
pub fn is_template(text: &str) -> bool {
    text.contains("${{")
}

/// The matrix keys `text` reads, or what is wrong with the template.
pub fn keys(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        let after = &rest[start + 3..];
        let end = after
            .find("}}")
            .ok_or_else(|| "`${{` is not closed with `}}`".to_string())?;
        let inner = after[..end].trim();
        let key = inner
            .strip_prefix("matrix.")
            .filter(|k| crate::decode::is_name(k))
            .ok_or_else(|| {
                format!("`${{{{ {inner} }}}}`: only `${{{{ matrix.KEY }}}}` can be used here")
            })?;
        out.push(key.to_string());
        rest = &after[end + 2..];
    }
    Ok(out)
}

/// `text` with every `${{ matrix.KEY }}` replaced by the instance's value. Call only on a
/// template `keys` accepted, with values for all its keys.
pub fn substitute(text: &str, matrix: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let Some(end) = after.find("}}") else { break };
        let key = after[..end].trim().trim_start_matches("matrix.");
        out.push_str(matrix.get(key).map(String::as_str).unwrap_or(""));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_substitution() {
        let t = "127.0.0.1:5000/${{ matrix.img }}:${{matrix.tag}}";
        assert!(is_template(t));
        assert_eq!(keys(t), Ok(vec!["img".to_string(), "tag".to_string()]));
        let m = BTreeMap::from([
            ("img".to_string(), "rust".to_string()),
            ("tag".to_string(), "1.85".to_string()),
        ]);
        assert_eq!(substitute(t, &m), "127.0.0.1:5000/rust:1.85");
        assert!(keys("a:${{ env.X }}")
            .unwrap_err()
            .contains("only `${{ matrix.KEY }}`"));
        assert!(keys("a:${{ matrix.x").unwrap_err().contains("not closed"));
    }
}
