//! A YAML tree in which every node remembers where it was written.
//!
//! Built from `saphyr-parser`'s event stream rather than a ready-made document type because we
//! need three things the document types drop: the position of every key (not only values),
//! duplicate keys (a map type silently keeps one), and whether a scalar was quoted (`"1"` is a
//! string, `1` a number). Anchors, aliases and `<<` merge keys are resolved here, with limits on
//! depth and size so that hostile input cannot exhaust the stack or memory.

use std::collections::HashMap;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, Span, Tag};

/// Nesting deeper than this is refused: no pipeline needs it, and dropping or cloning a deeper
/// tree recurses.
pub const MAX_DEPTH: usize = 64;
/// Nodes after alias expansion; stops "billion laughs" documents.
pub const MAX_NODES: usize = 200_000;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub fn new(line: usize, column: usize) -> Self {
        Pos { line, column }
    }

    fn from_marker(m: &Marker) -> Self {
        Pos {
            line: m.line().max(1),
            column: m.col() + 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(Scalar),
    Seq(Vec<Node>),
    /// Entries in file order; keys are unique (duplicates are reported while building).
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub text: String,
    /// Written without quotes or block indicators, so `true`, `12` and `~` keep their YAML
    /// meaning; a quoted or block scalar is always a string.
    pub plain: bool,
    /// Where the text itself starts (after an opening quote), for pointing inside it.
    pub text_pos: Pos,
}

/// What a plain scalar means under the YAML 1.2 core schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarKind {
    Null,
    Bool,
    Int,
    Float,
    Str,
}

impl Scalar {
    pub fn kind(&self) -> ScalarKind {
        if !self.plain {
            return ScalarKind::Str;
        }
        let t = self.text.as_str();
        match t {
            "" | "~" | "null" | "Null" | "NULL" => ScalarKind::Null,
            "true" | "True" | "TRUE" | "false" | "False" | "FALSE" => ScalarKind::Bool,
            ".inf" | ".Inf" | ".INF" | "-.inf" | "-.Inf" | "-.INF" | "+.inf" | ".nan" | ".NaN"
            | ".NAN" => ScalarKind::Float,
            _ if is_int(t) => ScalarKind::Int,
            _ if t.parse::<f64>().is_ok() && t.bytes().any(|b| b.is_ascii_digit()) => {
                ScalarKind::Float
            }
            _ => ScalarKind::Str,
        }
    }
}

fn is_int(t: &str) -> bool {
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if let Some(hex) = digits.strip_prefix("0x") {
        return !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    if let Some(oct) = digits.strip_prefix("0o") {
        return !oct.is_empty() && oct.bytes().all(|b| (b'0'..=b'7').contains(&b));
    }
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

impl Node {
    /// How a value of this node is named in "expected X, found Y" messages.
    pub fn describe(&self) -> &'static str {
        match &self.value {
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
            Value::Scalar(s) => match s.kind() {
                ScalarKind::Null => "nothing (null)",
                ScalarKind::Bool => "a boolean",
                ScalarKind::Int | ScalarKind::Float => "a number",
                ScalarKind::Str => "a string",
            },
        }
    }

    pub fn as_scalar(&self) -> Option<&Scalar> {
        match &self.value {
            Value::Scalar(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar(s) if s.kind() == ScalarKind::Null)
    }

    fn count(&self) -> usize {
        match &self.value {
            Value::Scalar(_) => 1,
            Value::Seq(items) => 1 + items.iter().map(Node::count).sum::<usize>(),
            Value::Map(entries) => {
                1 + entries
                    .iter()
                    .map(|(k, v)| k.count() + v.count())
                    .sum::<usize>()
            }
        }
    }

    fn depth(&self) -> usize {
        match &self.value {
            Value::Scalar(_) => 1,
            Value::Seq(items) => 1 + items.iter().map(Node::depth).max().unwrap_or(0),
            Value::Map(entries) => {
                1 + entries
                    .iter()
                    .map(|(k, v)| k.depth().max(v.depth()))
                    .max()
                    .unwrap_or(0)
            }
        }
    }
}

/// A problem found while reading the YAML itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
    pub hint: Option<String>,
}

impl YamlError {
    fn new(pos: Pos, message: impl Into<String>) -> Self {
        YamlError {
            pos,
            message: message.into(),
            hint: None,
        }
    }
}

/// Parse one YAML document. `Ok(None)` for an empty file. Syntax errors stop the parse (the
/// scanner cannot resynchronise), so they come alone; duplicate keys are all reported.
#[cfg(test)]
pub fn parse(source: &str) -> Result<Option<Node>, Vec<YamlError>> {
    let (root, errors) = parse_lenient(source);
    if errors.is_empty() {
        Ok(root)
    } else {
        Err(errors)
    }
}

/// Like `parse`, but problems that leave a usable tree (duplicate keys, unsupported tags) come
/// with the tree, so that the rest of the file can still be checked. The tree is `None` after
/// a syntax error, or for an empty file.
pub fn parse_lenient(source: &str) -> (Option<Node>, Vec<YamlError>) {
    let mut builder = Builder::default();
    for event in Parser::new_from_str(source) {
        match event {
            Ok((ev, span)) => {
                if let Err(e) = builder.event(ev, span) {
                    builder.errors.push(e);
                    return (None, builder.errors);
                }
            }
            Err(e) => {
                let pos = Pos::from_marker(e.marker());
                builder.errors.push(YamlError {
                    pos,
                    message: format!("YAML syntax error: {}", e.info()),
                    hint: Some(
                        "check indentation, quoting and that `key: value` has a space after the colon"
                            .into(),
                    ),
                });
                return (None, builder.errors);
            }
        }
    }
    (builder.root, builder.errors)
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    documents: usize,
    nodes: usize,
    errors: Vec<YamlError>,
}

impl Builder {
    fn event(&mut self, ev: Event<'_>, span: Span) -> Result<(), YamlError> {
        let pos = Pos::from_marker(&span.start);
        match ev {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(YamlError {
                        pos,
                        message: "a pipeline file holds one YAML document, found a second".into(),
                        hint: Some("remove the `---` line or split the file".into()),
                    });
                }
            }
            Event::Alias(id) => {
                let node = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| YamlError::new(pos, "alias to an unknown anchor"))?;
                self.nodes += node.count();
                self.check_size(pos)?;
                if self.stack.len() + node.depth() > MAX_DEPTH {
                    return Err(self.too_deep(pos));
                }
                self.push(node)?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                // `!!str 12` is the string "12"; `!!int '3'` the number 3.
                self.check_tag(
                    tag.as_deref(),
                    pos,
                    &["str", "int", "float", "bool", "null"],
                );
                let core = tag.as_ref().map(|t| t.suffix.as_str());
                let plain = match core {
                    Some("str") => false,
                    Some(_) => true,
                    None => style == ScalarStyle::Plain,
                };
                let quoted = matches!(style, ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted);
                let text_pos = if quoted {
                    Pos::new(pos.line, pos.column + 1)
                } else {
                    pos
                };
                let node = Node {
                    pos,
                    value: Value::Scalar(Scalar {
                        text: text.into_owned(),
                        plain,
                        text_pos,
                    }),
                };
                self.nodes += 1;
                self.check_size(pos)?;
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push(node)?;
            }
            Event::SequenceStart(anchor, tag) => {
                self.check_tag(tag.as_deref(), pos, &["seq"]);
                self.open(pos)?;
                self.stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, tag) => {
                self.check_tag(tag.as_deref(), pos, &["map"]);
                self.open(pos)?;
                self.stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                });
            }
            Event::SequenceEnd => match self.stack.pop() {
                Some(Frame::Seq { pos, anchor, items }) => {
                    let node = Node {
                        pos,
                        value: Value::Seq(items),
                    };
                    self.finish(node, anchor)?;
                }
                _ => return Err(YamlError::new(pos, "unbalanced sequence end")),
            },
            Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Map {
                    pos,
                    anchor,
                    entries,
                    ..
                }) => {
                    let entries = self.merge_and_dedupe(entries);
                    let node = Node {
                        pos,
                        value: Value::Map(entries),
                    };
                    self.finish(node, anchor)?;
                }
                _ => return Err(YamlError::new(pos, "unbalanced mapping end")),
            },
        }
        Ok(())
    }

    /// Only the core schema's own tags mean something here; any other tag would be silently
    /// dropped, so it is an error.
    fn check_tag(&mut self, tag: Option<&Tag>, pos: Pos, allowed: &[&str]) {
        let Some(tag) = tag else { return };
        if tag.handle == "tag:yaml.org,2002:" && allowed.contains(&tag.suffix.as_str()) {
            return;
        }
        let shown = if tag.handle == "tag:yaml.org,2002:" {
            format!("!!{}", tag.suffix)
        } else {
            format!("{}{}", tag.handle, tag.suffix)
        };
        let hint = if tag.suffix == "reference" {
            "GitLab's !reference has no equivalent here: use anchors (&name, *name) and `<<` merge keys"
        } else {
            "remove the tag; values are typed by how they are written"
        };
        self.errors.push(YamlError {
            pos,
            message: format!("YAML tag `{shown}` is not supported here"),
            hint: Some(hint.into()),
        });
    }

    fn open(&mut self, pos: Pos) -> Result<(), YamlError> {
        self.nodes += 1;
        self.check_size(pos)?;
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.too_deep(pos));
        }
        Ok(())
    }

    fn too_deep(&self, pos: Pos) -> YamlError {
        YamlError::new(pos, format!("nested deeper than {MAX_DEPTH} levels"))
    }

    fn check_size(&self, pos: Pos) -> Result<(), YamlError> {
        if self.nodes > MAX_NODES {
            return Err(YamlError::new(
                pos,
                format!("the document is too large (more than {MAX_NODES} values after expanding aliases)"),
            ));
        }
        Ok(())
    }

    fn finish(&mut self, node: Node, anchor: usize) -> Result<(), YamlError> {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        self.push(node)
    }

    fn push(&mut self, node: Node) -> Result<(), YamlError> {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    if !matches!(node.value, Value::Scalar(_)) {
                        return Err(YamlError {
                            pos: node.pos,
                            message: "a mapping key must be a plain value, not a list or mapping"
                                .into(),
                            hint: None,
                        });
                    }
                    *key = Some(node);
                }
                Some(k) => entries.push((k, node)),
            },
        }
        Ok(())
    }

    /// Apply `<<` merge keys (explicit keys win) and report duplicate keys.
    fn merge_and_dedupe(&mut self, entries: Vec<(Node, Node)>) -> Vec<(Node, Node)> {
        let mut out: Vec<(Node, Node)> = Vec::with_capacity(entries.len());
        let mut merged: Vec<(Node, Node)> = Vec::new();
        for (k, v) in entries {
            let key_text = k.as_scalar().map(|s| s.text.clone()).unwrap_or_default();
            if key_text == "<<" && k.as_scalar().is_some_and(|s| s.plain) {
                match v.value {
                    Value::Map(m) => merged.extend(m),
                    Value::Seq(maps) => {
                        for m in maps {
                            match m.value {
                                Value::Map(m) => merged.extend(m),
                                _ => self.errors.push(YamlError::new(
                                    m.pos,
                                    "`<<` merges mappings; this is not a mapping",
                                )),
                            }
                        }
                    }
                    _ => self.errors.push(YamlError::new(
                        v.pos,
                        "`<<` merges a mapping or a list of mappings",
                    )),
                }
                continue;
            }
            if let Some((first, _)) = out.iter().find(|(o, _)| key_text_of(o) == key_text) {
                self.errors.push(YamlError {
                    pos: k.pos,
                    message: format!("duplicate key `{key_text}`"),
                    hint: Some(format!(
                        "it is already set at line {}; keep one",
                        first.pos.line
                    )),
                });
                continue;
            }
            out.push((k, v));
        }
        for (k, v) in merged {
            let text = key_text_of(&k);
            if !out.iter().any(|(o, _)| key_text_of(o) == text) {
                out.push((k, v));
            }
        }
        out
    }
}

fn key_text_of(n: &Node) -> &str {
    n.as_scalar().map(|s| s.text.as_str()).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(n: &Node) -> &Vec<(Node, Node)> {
        match &n.value {
            Value::Map(m) => m,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn positions_are_one_based_for_keys_and_values() {
        let root = parse("a: 1\nb:\n  c: 'x'\n").unwrap().unwrap();
        let m = map(&root);
        assert_eq!(m[0].0.pos, Pos::new(1, 1));
        assert_eq!(m[0].1.pos, Pos::new(1, 4));
        let inner = map(&m[1].1);
        assert_eq!(inner[0].0.pos, Pos::new(3, 3));
        assert_eq!(inner[0].1.pos, Pos::new(3, 6));
        let s = inner[0].1.as_scalar().unwrap();
        assert!(!s.plain);
        assert_eq!(s.text_pos, Pos::new(3, 7));
    }

    #[test]
    fn scalar_kinds_follow_the_core_schema() {
        let kinds: Vec<ScalarKind> = ["~", "true", "12", "-3", "0x1f", "1.5", "abc", "1h"]
            .iter()
            .map(|t| {
                Scalar {
                    text: t.to_string(),
                    plain: true,
                    text_pos: Pos::default(),
                }
                .kind()
            })
            .collect();
        use ScalarKind::*;
        assert_eq!(kinds, [Null, Bool, Int, Int, Int, Float, Str, Str]);
    }

    #[test]
    fn duplicate_keys_are_reported_with_both_lines() {
        let errs = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].pos, Pos::new(3, 1));
        assert!(errs[0].message.contains("duplicate key `a`"));
        assert!(errs[0].hint.as_deref().unwrap().contains("line 1"));
    }

    #[test]
    fn merge_keys_and_aliases_resolve() {
        let root = parse("base: &b {x: 1, y: 2}\nj:\n  <<: *b\n  y: 3\n")
            .unwrap()
            .unwrap();
        let j = map(&map(&root)[1].1);
        let keys: Vec<&str> = j.iter().map(|(k, _)| key_text_of(k)).collect();
        assert_eq!(keys, ["y", "x"]);
        assert_eq!(j[0].1.as_scalar().unwrap().text, "3");
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let errs = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.starts_with("YAML syntax error"));
        assert!(errs[0].pos.line >= 1);
    }

    #[test]
    fn deep_nesting_and_alias_bombs_are_refused() {
        let deep = "[".repeat(10_000);
        assert!(parse(&deep).is_err());
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..8 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("b{}", i - 1)
            };
            bomb.push_str(&format!(
                "b{i}: &b{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let errs = parse(&bomb).unwrap_err();
        assert!(errs[0].message.contains("too large"), "{errs:?}");
    }

    #[test]
    fn core_tags_type_values_and_other_tags_are_errors() {
        let root = parse("a: !!str 12\nb: !!int '3'\n").unwrap().unwrap();
        let m = map(&root);
        assert_eq!(m[0].1.as_scalar().unwrap().kind(), ScalarKind::Str);
        assert_eq!(m[1].1.as_scalar().unwrap().kind(), ScalarKind::Int);
        let errs = parse("a: !reference [x, y]\nb: !custom {c: 1}\nd: !!seq 1\n").unwrap_err();
        let msgs: Vec<&str> = errs.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            msgs,
            [
                "YAML tag `!reference` is not supported here",
                "YAML tag `!custom` is not supported here",
                "YAML tag `!!seq` is not supported here"
            ]
        );
        assert_eq!(errs[0].pos, Pos::new(1, 4));
        assert!(errs[0].hint.as_deref().unwrap().contains("anchors"));
    }

    #[test]
    fn empty_and_multi_document_input() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("# only a comment\n").unwrap(), None);
        let errs = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(errs[0].message.contains("second"));
    }
}
