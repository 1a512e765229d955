//! `if:` conditions: a small expression language checked when the file is validated and
//! evaluated when a plan is made.
//!
//! ```text
//! expr    := or
//! or      := and ('||' and)*
//! and     := unary ('&&' unary)*
//! unary   := '!' unary | compare
//! compare := primary (('==' | '!=') primary)?
//! primary := '(' expr ')' | 'string' | "string" | true | false
//!          | name ('.' name)*                       -- event, branch, vars.X, matrix.X
//!          | function '(' expr (',' expr)* ')'      -- starts_with, ends_with, contains
//! ```
//! Values are strings or booleans; `==` compares their text; a string is true when non-empty.

use std::collections::BTreeMap;

/// A parse or check error: byte offset into the expression and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub offset: usize,
    pub message: String,
    pub hint: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Str(String),
    Bool(bool),
    /// A variable: `event`, `branch`, `vars.NAME` or `matrix.KEY`, as written.
    Var {
        name: String,
        offset: usize,
    },
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Eq(Box<Expr>, Box<Expr>),
    Ne(Box<Expr>, Box<Expr>),
    Call {
        func: Func,
        args: Vec<Expr>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    StartsWith,
    EndsWith,
    Contains,
}

const FUNCS: [(&str, Func); 3] = [
    ("starts_with", Func::StartsWith),
    ("ends_with", Func::EndsWith),
    ("contains", Func::Contains),
];

/// The values an expression can see.
#[derive(Debug, Clone, Default)]
pub struct Scope<'a> {
    pub event: &'a str,
    pub branch: &'a str,
    pub vars: Option<&'a BTreeMap<String, String>>,
    pub matrix: Option<&'a BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Val {
    Str(String),
    Bool(bool),
}

impl Val {
    fn truthy(&self) -> bool {
        match self {
            Val::Bool(b) => *b,
            Val::Str(s) => !s.is_empty(),
        }
    }

    fn text(&self) -> &str {
        match self {
            Val::Bool(true) => "true",
            Val::Bool(false) => "false",
            Val::Str(s) => s,
        }
    }
}

impl Expr {
    /// Evaluate; variables that are not set (an unset `vars.X`) read as the empty string.
    pub fn eval(&self, scope: &Scope<'_>) -> bool {
        self.value(scope).truthy()
    }

    fn value(&self, scope: &Scope<'_>) -> Val {
        match self {
            Expr::Str(s) => Val::Str(s.clone()),
            Expr::Bool(b) => Val::Bool(*b),
            Expr::Var { name, .. } => Val::Str(lookup(name, scope).unwrap_or_default()),
            Expr::Not(e) => Val::Bool(!e.eval(scope)),
            Expr::And(a, b) => Val::Bool(a.eval(scope) && b.eval(scope)),
            Expr::Or(a, b) => Val::Bool(a.eval(scope) || b.eval(scope)),
            Expr::Eq(a, b) => Val::Bool(a.value(scope).text() == b.value(scope).text()),
            Expr::Ne(a, b) => Val::Bool(a.value(scope).text() != b.value(scope).text()),
            Expr::Call { func, args } => {
                let a = args[0].value(scope);
                let b = args[1].value(scope);
                Val::Bool(match func {
                    Func::StartsWith => a.text().starts_with(b.text()),
                    Func::EndsWith => a.text().ends_with(b.text()),
                    Func::Contains => a.text().contains(b.text()),
                })
            }
        }
    }

    /// Every variable the expression reads, with its offset.
    pub fn vars(&self) -> Vec<(&str, usize)> {
        let mut out = Vec::new();
        self.collect_vars(&mut out);
        out
    }

    fn collect_vars<'e>(&'e self, out: &mut Vec<(&'e str, usize)>) {
        match self {
            Expr::Var { name, offset } => out.push((name, *offset)),
            Expr::Not(e) => e.collect_vars(out),
            Expr::And(a, b) | Expr::Or(a, b) | Expr::Eq(a, b) | Expr::Ne(a, b) => {
                a.collect_vars(out);
                b.collect_vars(out);
            }
            Expr::Call { args, .. } => args.iter().for_each(|a| a.collect_vars(out)),
            Expr::Str(_) | Expr::Bool(_) => {}
        }
    }
}

fn lookup(name: &str, scope: &Scope<'_>) -> Option<String> {
    match name {
        "event" => Some(scope.event.to_string()),
        "branch" => Some(scope.branch.to_string()),
        _ => {
            if let Some(key) = name.strip_prefix("vars.") {
                scope.vars.and_then(|v| v.get(key).cloned())
            } else if let Some(key) = name.strip_prefix("matrix.") {
                scope.matrix.and_then(|m| m.get(key).cloned())
            } else {
                None
            }
        }
    }
}

/// Check that every variable is one the expression can see; `matrix_keys` are the job's.
pub fn check_vars(expr: &Expr, matrix_keys: &[String]) -> Vec<ExprError> {
    let mut errors = Vec::new();
    for (name, offset) in expr.vars() {
        if name == "event" || name == "branch" {
            continue;
        }
        if let Some(key) = name.strip_prefix("vars.") {
            if !key.is_empty() && !key.contains('.') {
                continue;
            }
        }
        if let Some(key) = name.strip_prefix("matrix.") {
            if matrix_keys.iter().any(|k| k == key) {
                continue;
            }
            let hint = if matrix_keys.is_empty() {
                "this job has no matrix".to_string()
            } else {
                let keys: Vec<String> = matrix_keys.iter().map(|k| format!("matrix.{k}")).collect();
                format!("this job's matrix has {}", keys.join(", "))
            };
            errors.push(ExprError {
                offset,
                message: format!("unknown variable `{name}`"),
                hint: Some(hint),
            });
            continue;
        }
        let mut known: Vec<String> = vec!["event".into(), "branch".into()];
        known.extend(matrix_keys.iter().map(|k| format!("matrix.{k}")));
        let hint = crate::keys::did_you_mean(name, known.iter().map(String::as_str))
            .map(|s| format!("did you mean `{s}`?"))
            .unwrap_or_else(|| {
                "variables are event, branch, vars.NAME (from --var) and matrix.KEY".into()
            });
        errors.push(ExprError {
            offset,
            message: format!("unknown variable `{name}`"),
            hint: Some(hint),
        });
    }
    errors
}

/// Parse an expression. Nesting is limited so that a hostile `((((...` cannot overflow the stack.
pub fn parse(src: &str) -> Result<Expr, ExprError> {
    // Long chains of `&&` nest as deeply as they are long; no real condition needs more.
    if src.len() > MAX_LEN {
        return Err(ExprError {
            offset: MAX_LEN,
            message: format!("the condition is longer than {MAX_LEN} characters"),
            hint: Some("split the logic over several jobs or variables".into()),
        });
    }
    let tokens = lex(src)?;
    let mut p = P {
        tokens,
        i: 0,
        depth: 0,
        len: src.len(),
    };
    if p.tokens.is_empty() {
        return Err(ExprError {
            offset: 0,
            message: "empty condition".into(),
            hint: Some("e.g. branch == 'main'".into()),
        });
    }
    let e = p.or()?;
    if let Some((tok, off)) = p.tokens.get(p.i) {
        return Err(ExprError {
            offset: *off,
            message: format!("unexpected {}", tok.describe()),
            hint: Some("join conditions with && or ||".into()),
        });
    }
    Ok(e)
}

const MAX_NESTING: usize = 32;
const MAX_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Str(String),
    Ident(String),
    LParen,
    RParen,
    Comma,
    Not,
    And,
    Or,
    Eq,
    Ne,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Str(s) => format!("string '{s}'"),
            Tok::Ident(s) => format!("`{s}`"),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Not => "`!`".into(),
            Tok::And => "`&&`".into(),
            Tok::Or => "`||`".into(),
            Tok::Eq => "`==`".into(),
            Tok::Ne => "`!=`".into(),
        }
    }
}

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ExprError> {
    let mut out = Vec::new();
    let bytes = src.as_bytes();
    let mut i = 0;
    let err = |offset: usize, message: String, hint: Option<&str>| ExprError {
        offset,
        message,
        hint: hint.map(str::to_string),
    };
    while i < bytes.len() {
        let c = bytes[i];
        let two: Option<&[u8]> = bytes.get(i..i + 2);
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push((Tok::LParen, i));
                i += 1;
            }
            b')' => {
                out.push((Tok::RParen, i));
                i += 1;
            }
            b',' => {
                out.push((Tok::Comma, i));
                i += 1;
            }
            b'&' if two == Some(b"&&".as_slice()) => {
                out.push((Tok::And, i));
                i += 2;
            }
            b'|' if two == Some(b"||".as_slice()) => {
                out.push((Tok::Or, i));
                i += 2;
            }
            b'=' if two == Some(b"==".as_slice()) => {
                out.push((Tok::Eq, i));
                i += 2;
            }
            b'!' if two == Some(b"!=".as_slice()) => {
                out.push((Tok::Ne, i));
                i += 2;
            }
            b'!' => {
                out.push((Tok::Not, i));
                i += 1;
            }
            b'=' => {
                return Err(err(
                    i,
                    "`=` is not an operator".into(),
                    Some("compare with =="),
                ));
            }
            b'&' | b'|' => {
                let op = if c == b'&' { "&&" } else { "||" };
                return Err(err(
                    i,
                    format!("`{}` is not an operator", c as char),
                    Some(&format!("did you mean `{op}`?")),
                ));
            }
            b'\'' | b'"' => {
                let end = src[i + 1..].find(c as char).ok_or_else(|| {
                    err(
                        i,
                        "unterminated string".into(),
                        Some("close it with the same quote"),
                    )
                })?;
                out.push((Tok::Str(src[i + 1..i + 1 + end].to_string()), i));
                i += end + 2;
            }
            _ if c.is_ascii_alphabetic() || c == b'_' => {
                let len = src[i..]
                    .bytes()
                    .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
                    .count();
                out.push((Tok::Ident(src[i..i + len].to_string()), i));
                i += len;
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                let hint = if c.is_ascii_digit() {
                    Some("quote literal values: 'text'")
                } else {
                    None
                };
                return Err(err(i, format!("unexpected character `{ch}`"), hint));
            }
        }
    }
    Ok(out)
}

struct P {
    tokens: Vec<(Tok, usize)>,
    i: usize,
    depth: usize,
    len: usize,
}

impl P {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.i).map(|(t, _)| t)
    }

    fn offset(&self) -> usize {
        self.tokens.get(self.i).map(|(_, o)| *o).unwrap_or(self.len)
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.i += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.unary()?;
        while self.peek() == Some(&Tok::And) {
            self.i += 1;
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        if self.peek() == Some(&Tok::Not) {
            self.enter()?;
            self.i += 1;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.compare()
    }

    fn compare(&mut self) -> Result<Expr, ExprError> {
        let left = self.primary()?;
        match self.peek() {
            Some(Tok::Eq) => {
                self.i += 1;
                let right = self.primary()?;
                Ok(Expr::Eq(Box::new(left), Box::new(right)))
            }
            Some(Tok::Ne) => {
                self.i += 1;
                let right = self.primary()?;
                Ok(Expr::Ne(Box::new(left), Box::new(right)))
            }
            _ => Ok(left),
        }
    }

    fn enter(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(ExprError {
                offset: self.offset(),
                message: format!("nested deeper than {MAX_NESTING} levels"),
                hint: None,
            });
        }
        Ok(())
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<(), ExprError> {
        if self.peek() == Some(&tok) {
            self.i += 1;
            return Ok(());
        }
        let found = self
            .peek()
            .map(Tok::describe)
            .unwrap_or_else(|| "the end".into());
        Err(ExprError {
            offset: self.offset(),
            message: format!("expected {what}, found {found}"),
            hint: None,
        })
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let offset = self.offset();
        let Some((tok, _)) = self.tokens.get(self.i).cloned() else {
            return Err(ExprError {
                offset,
                message: "the condition ends too early".into(),
                hint: Some("expected a value after the operator".into()),
            });
        };
        self.i += 1;
        match tok {
            Tok::LParen => {
                self.enter()?;
                let e = self.or()?;
                self.depth -= 1;
                self.expect(Tok::RParen, "`)`")?;
                Ok(e)
            }
            Tok::Str(s) => Ok(Expr::Str(s)),
            Tok::Ident(name) if name == "true" => Ok(Expr::Bool(true)),
            Tok::Ident(name) if name == "false" => Ok(Expr::Bool(false)),
            Tok::Ident(name) if self.peek() == Some(&Tok::LParen) => {
                let func = FUNCS
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, f)| *f)
                    .ok_or_else(|| ExprError {
                        offset,
                        message: format!("unknown function `{name}`"),
                        hint: Some("functions are starts_with, ends_with, contains".into()),
                    })?;
                self.i += 1;
                self.enter()?;
                let mut args = vec![self.or()?];
                while self.peek() == Some(&Tok::Comma) {
                    self.i += 1;
                    args.push(self.or()?);
                }
                self.depth -= 1;
                self.expect(Tok::RParen, "`)`")?;
                if args.len() != 2 {
                    return Err(ExprError {
                        offset,
                        message: format!("`{name}` takes 2 arguments, found {}", args.len()),
                        hint: Some(format!("e.g. {name}(branch, 'release/')")),
                    });
                }
                Ok(Expr::Call { func, args })
            }
            Tok::Ident(name) => {
                if name.ends_with('.') || name.contains("..") {
                    return Err(ExprError {
                        offset,
                        message: format!("`{name}` is not a variable name"),
                        hint: None,
                    });
                }
                Ok(Expr::Var { name, offset })
            }
            other => Err(ExprError {
                offset,
                message: format!("expected a value, found {}", other.describe()),
                hint: Some(
                    "values are 'strings', true, false, event, branch, vars.NAME, matrix.KEY"
                        .into(),
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(src: &str, event: &str, branch: &str) -> bool {
        let vars: BTreeMap<String, String> = [("DEPLOY".to_string(), "yes".to_string())].into();
        let matrix: BTreeMap<String, String> = [("arch".to_string(), "arm64".to_string())].into();
        parse(src).unwrap().eval(&Scope {
            event,
            branch,
            vars: Some(&vars),
            matrix: Some(&matrix),
        })
    }

    #[test]
    fn evaluates_the_issue_example() {
        let e = "branch == 'main' && event != 'pull_request'";
        assert!(eval(e, "push", "main"));
        assert!(!eval(e, "pull_request", "main"));
        assert!(!eval(e, "push", "dev"));
    }

    #[test]
    fn precedence_functions_and_variables() {
        assert!(eval("true || false && false", "", ""));
        assert!(!eval("!(true || false)", "", ""));
        assert!(eval(
            "starts_with(branch, 'release/') || matrix.arch == 'arm64'",
            "",
            "x"
        ));
        assert!(eval("vars.DEPLOY == \"yes\" && !vars.MISSING", "", ""));
        assert!(eval(
            "contains(branch, 'fix') && ends_with(branch, '-2')",
            "",
            "hotfix-2"
        ));
        assert!(eval("true == 'true'", "", ""));
    }

    #[test]
    fn errors_point_at_the_offending_token() {
        let cases = [
            ("branch = 'main'", 7, "`=` is not an operator"),
            ("branch == 'main' &", 17, "`&` is not an operator"),
            ("branch == 'main", 10, "unterminated string"),
            ("branch ==", 9, "ends too early"),
            ("(branch == 'a'", 14, "expected `)`"),
            ("branch 'x'", 7, "unexpected string"),
            ("foo(branch, 'x')", 0, "unknown function `foo`"),
            ("starts_with(branch)", 0, "takes 2 arguments"),
            ("", 0, "empty condition"),
            ("branch == 3", 10, "unexpected character `3`"),
        ];
        for (src, offset, msg) in cases {
            let e = parse(src).unwrap_err();
            assert_eq!(e.offset, offset, "{src}: {e:?}");
            assert!(e.message.contains(msg), "{src}: {e:?}");
        }
    }

    #[test]
    fn unknown_variables_are_caught_with_hints() {
        let e = parse("brnach == 'main' || matrix.os == 'x'").unwrap();
        let errs = check_vars(&e, &["arch".into()]);
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].offset, 0);
        assert_eq!(errs[0].hint.as_deref(), Some("did you mean `branch`?"));
        assert_eq!(errs[1].offset, 20);
        assert!(errs[1].hint.as_deref().unwrap().contains("matrix.arch"));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let src = format!("{}true{}", "(".repeat(40), ")".repeat(40));
        assert!(parse(&src).unwrap_err().message.contains("nested"));
        let nots = format!("{}true", "!".repeat(40));
        assert!(parse(&nots).unwrap_err().message.contains("nested"));
        let long = vec!["true"; 2000].join(" && ");
        assert!(parse(&long).unwrap_err().message.contains("longer than"));
    }
}
