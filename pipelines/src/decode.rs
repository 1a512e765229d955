//! From the YAML tree to the typed model, reporting every problem with its place and key path
//! instead of stopping at the first.

use std::collections::BTreeMap;

use crate::diagnostic::Diagnostic;
use crate::expr;
use crate::keys::{self, Level};
use crate::matrix::{self, Entry, MatrixSpec};
use crate::model::{Condition, Job, Pipeline, Settings, Spanned, Step};
use crate::plan::{Image, Isolation, Network, Shell};
use crate::template;
use crate::units;
use crate::yaml::{Node, Pos, ScalarKind, Value};

/// `retry:` above this is refused: a job that fails eleven times is broken, not flaky.
pub const MAX_RETRY: u64 = 10;

pub struct Decoder {
    file: String,
    pub diags: Vec<Diagnostic>,
    /// `image` values with `${{ matrix.KEY }}` seen in the job being read, checked against
    /// its matrix once that is known: position, key path, text.
    templates: Vec<(Pos, String, String)>,
    in_defaults: bool,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_job_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl Decoder {
    pub fn new(file: &str) -> Self {
        Decoder {
            file: file.to_string(),
            diags: Vec::new(),
            templates: Vec::new(),
            in_defaults: false,
        }
    }

    pub fn error(
        &mut self,
        pos: Pos,
        path: &str,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.diags.push(Diagnostic {
            file: self.file.clone(),
            line: pos.line,
            column: pos.column,
            path: path.to_string(),
            message: message.into(),
            hint,
        });
    }

    fn expected(&mut self, node: &Node, path: &str, what: &str, hint: Option<String>) {
        self.error(
            node.pos,
            path,
            format!("expected {what}, found {}", node.describe()),
            hint,
        );
    }

    /// The entries of a mapping whose keys are valid at `level`; reports the others.
    fn entries<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        level: Level,
    ) -> Vec<(&'n str, &'n Node, &'n Node)> {
        let Value::Map(map) = &node.value else {
            self.expected(node, path, "a mapping", None);
            return Vec::new();
        };
        let valid = level.keys();
        let mut out = Vec::new();
        for (k, v) in map {
            let key = k.as_scalar().map(|s| s.text.as_str()).unwrap_or_default();
            if valid.contains(&key) {
                out.push((key, k, v));
            } else if level == Level::Pipeline && key.starts_with('.') {
                // A template to anchor (`.base: &base ...`), as in GitLab CI: not read itself.
            } else {
                self.error(
                    k.pos,
                    &join(path, key),
                    format!("unknown key `{key}`"),
                    Some(keys::unknown_key_hint(key, level)),
                );
            }
        }
        out
    }

    /// A string; numbers and booleans are refused where text is meant (`run: 1` is a slip).
    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match node.as_scalar() {
            Some(s) if s.kind() == ScalarKind::Str => Some(s.text.clone()),
            _ => {
                self.expected(node, path, "a string", None);
                None
            }
        }
    }

    /// Any scalar as text (env values, matrix values): `1` and `true` are fine there.
    fn text(&mut self, node: &Node, path: &str) -> Option<String> {
        match node.as_scalar() {
            Some(s) if s.kind() != ScalarKind::Null => Some(s.text.clone()),
            Some(_) => {
                self.error(
                    node.pos,
                    path,
                    "the value is empty (null)",
                    Some("write \"\" for an empty string".into()),
                );
                None
            }
            None => {
                self.expected(node, path, "a single value", None);
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.as_scalar() {
            Some(s) if s.kind() == ScalarKind::Bool => Some(s.text.eq_ignore_ascii_case("true")),
            other => {
                // YAML 1.1 read these as booleans; YAML 1.2, which we follow, reads them as text.
                let hint = other
                    .map(|s| s.text.to_ascii_lowercase())
                    .filter(|t| matches!(t.as_str(), "yes" | "no" | "on" | "off" | "y" | "n"))
                    .map(|t| format!("`{t}` is text in YAML 1.2: write true or false"));
                self.expected(node, path, "true or false", hint);
                None
            }
        }
    }

    fn integer(&mut self, node: &Node, path: &str, min: u64, max: u64) -> Option<u64> {
        let value = node
            .as_scalar()
            .filter(|s| s.kind() == ScalarKind::Int)
            .and_then(|s| s.text.trim_start_matches('+').parse::<u64>().ok());
        match value {
            Some(v) if (min..=max).contains(&v) => Some(v),
            _ => {
                self.error(
                    node.pos,
                    path,
                    format!(
                        "expected a whole number from {min} to {max}, found {}",
                        shown(node)
                    ),
                    None,
                );
                None
            }
        }
    }

    fn one_of<T: Copy>(
        &mut self,
        node: &Node,
        path: &str,
        valid: &[&str],
        values: &[T],
    ) -> Option<T> {
        let text = node
            .as_scalar()
            .filter(|s| s.kind() == ScalarKind::Str)
            .map(|s| s.text.as_str());
        match text.and_then(|t| valid.iter().position(|v| *v == t)) {
            Some(i) => Some(values[i]),
            None => {
                let found = text
                    .map(|t| format!("`{t}`"))
                    .unwrap_or_else(|| node.describe().into());
                self.error(
                    node.pos,
                    path,
                    format!("{found} is not one of {}", valid.join(" | ")),
                    Some(keys::one_of_hint(text.unwrap_or(""), valid)),
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, path: &str) -> Option<std::time::Duration> {
        let scalar = node.as_scalar().filter(|s| s.kind() != ScalarKind::Null);
        let Some(s) = scalar else {
            self.expected(node, path, "a duration", Some(units::DURATION_HINT.into()));
            return None;
        };
        match units::parse_duration(&s.text) {
            Ok(d) => Some(d),
            Err(why) => {
                self.error(
                    node.pos,
                    path,
                    format!("bad duration: {why}"),
                    Some(units::DURATION_HINT.into()),
                );
                None
            }
        }
    }

    fn size(&mut self, node: &Node, path: &str) -> Option<u64> {
        let scalar = node.as_scalar().filter(|s| s.kind() != ScalarKind::Null);
        let Some(s) = scalar else {
            self.expected(node, path, "a size", Some(units::SIZE_HINT.into()));
            return None;
        };
        match units::parse_size(&s.text) {
            Ok(d) => Some(d),
            Err(why) => {
                self.error(
                    node.pos,
                    path,
                    format!("bad size: {why}"),
                    Some(units::SIZE_HINT.into()),
                );
                None
            }
        }
    }

    fn image(&mut self, node: &Node, path: &str) -> Option<Image> {
        let text = self.string(node, path)?;
        if text == "host" {
            return Some(Image::Host);
        }
        let hint =
            Some("an OCI reference such as 127.0.0.1:5000/busybox:latest, or `host`".to_string());
        if template::is_template(&text) {
            if self.in_defaults {
                self.error(
                    node.pos,
                    path,
                    "`${{ matrix... }}` cannot be used in `defaults`",
                    Some("matrix values belong to a job: set this image on the job".into()),
                );
            } else if let Err(why) = template::keys(&text) {
                self.error(node.pos, path, format!("bad image template: {why}"), None);
            } else {
                self.templates
                    .push((node.pos, path.to_string(), text.clone()));
                return Some(Image::Oci(text));
            }
            return None;
        }
        if text.trim() != text || text.is_empty() {
            self.error(
                node.pos,
                path,
                format!("bad image reference `{text}`: empty or surrounded by spaces"),
                hint,
            );
            return None;
        }
        match image_ref::parse(&text) {
            Ok(_) => Some(Image::Oci(text)),
            Err(why) => {
                let hint = if text.contains(char::is_whitespace) {
                    Some("an image reference has no spaces".to_string())
                } else if text.contains(|c: char| c.is_ascii_uppercase()) {
                    Some(
                        "repository names are lowercase, e.g. 127.0.0.1:5000/busybox:latest"
                            .to_string(),
                    )
                } else if text.contains('@') {
                    Some("a digest is `@sha256:` and 64 hex digits".to_string())
                } else {
                    hint
                };
                self.error(
                    node.pos,
                    path,
                    format!("bad image reference `{text}`: {why}"),
                    hint,
                );
                None
            }
        }
    }

    fn env(&mut self, node: &Node, path: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Value::Map(map) = &node.value else {
            if !node.is_null() {
                self.expected(node, path, "a mapping of NAME: value", None);
            }
            return out;
        };
        for (k, v) in map {
            let name = k.as_scalar().map(|s| s.text.clone()).unwrap_or_default();
            let p = join(path, &name);
            if !is_name(&name) {
                self.error(
                    k.pos,
                    &p,
                    format!("`{name}` is not a valid variable name"),
                    Some("use letters, digits and _, not starting with a digit".into()),
                );
                continue;
            }
            if let Some(value) = self.text(v, &p) {
                out.insert(name, value);
            }
        }
        out
    }

    /// Reads a setting shared by defaults, jobs and steps; false when `key` is not one.
    fn setting(&mut self, key: &str, value: &Node, path: &str, out: &mut Settings) -> bool {
        let p = join(path, key);
        match key {
            "image" => out.image = self.image(value, &p),
            "isolation" => {
                out.isolation = self.one_of(
                    value,
                    &p,
                    keys::ISOLATIONS,
                    &[Isolation::Container, Isolation::Vm],
                )
            }
            "timeout" => out.timeout = self.duration(value, &p),
            "shell" => out.shell = self.one_of(value, &p, keys::SHELLS, &[Shell::Sh, Shell::Bash]),
            "workdir" => {
                if let Some(dir) = self.string(value, &p) {
                    if dir.starts_with('/') {
                        out.workdir = Some(dir);
                    } else {
                        self.error(
                            value.pos,
                            &p,
                            format!("`{dir}` is not an absolute path"),
                            Some("e.g. /workspace or /workspace/sub".into()),
                        );
                    }
                }
            }
            "network" => {
                out.network = self.one_of(
                    value,
                    &p,
                    keys::NETWORKS,
                    &[Network::None, Network::Host, Network::Bridge],
                )
            }
            "resources" => {
                for (k, _, v) in self.entries(value, &p, Level::Resources) {
                    let rp = join(&p, k);
                    match k {
                        "cpus" => out.resources.cpus = self.cpus(v, &rp),
                        "memory" => out.resources.memory = self.size(v, &rp),
                        "pids" => out.resources.pids = self.integer(v, &rp, 1, 4_194_304),
                        _ => {}
                    }
                }
            }
            _ => return false,
        }
        true
    }

    fn cpus(&mut self, node: &Node, path: &str) -> Option<f64> {
        let n = node
            .as_scalar()
            .filter(|s| matches!(s.kind(), ScalarKind::Int | ScalarKind::Float))
            .and_then(|s| s.text.parse::<f64>().ok())
            .filter(|n| n.is_finite() && *n > 0.0 && *n <= 1024.0);
        if n.is_none() {
            self.error(
                node.pos,
                path,
                format!("expected a number of CPUs above 0, found {}", shown(node)),
                Some("e.g. cpus: 2 or cpus: 0.5".into()),
            );
        }
        n
    }

    pub fn pipeline(&mut self, root: &Node) -> Option<Pipeline> {
        if !matches!(root.value, Value::Map(_)) {
            self.expected(root, "", "a mapping with `jobs:` at the top", None);
            return None;
        }
        let mut p = Pipeline {
            name: None,
            env: BTreeMap::new(),
            defaults: Settings::default(),
            jobs: Vec::new(),
            jobs_pos: root.pos,
        };
        let mut saw_jobs = false;
        for (key, _, value) in self.entries(root, "", Level::Pipeline) {
            match key {
                "version" => {
                    let ok = value.as_scalar().is_some_and(|s| s.text == "1");
                    if !ok {
                        self.error(
                            value.pos,
                            key,
                            format!("unsupported version {}", shown(value)),
                            Some("this runner reads version 1".into()),
                        );
                    }
                }
                "name" => p.name = self.string(value, key),
                "env" => p.env = self.env(value, key),
                "defaults" => {
                    self.in_defaults = true;
                    for (k, _, v) in self.entries(value, key, Level::Defaults) {
                        self.setting(k, v, key, &mut p.defaults);
                    }
                    self.in_defaults = false;
                }
                "jobs" => {
                    saw_jobs = true;
                    p.jobs_pos = value.pos;
                    p.jobs = self.jobs(value);
                }
                _ => {}
            }
        }
        if !saw_jobs {
            self.error(
                root.pos,
                "",
                "the pipeline has no `jobs:`",
                Some("add `jobs:` with at least one job that has `steps:`".into()),
            );
        }
        Some(p)
    }

    fn jobs(&mut self, node: &Node) -> Vec<Job> {
        let Value::Map(map) = &node.value else {
            self.expected(node, "jobs", "a mapping of job names to jobs", None);
            return Vec::new();
        };
        let hidden = |k: &Node| k.as_scalar().is_some_and(|s| s.text.starts_with('.'));
        if map.iter().all(|(k, _)| hidden(k)) {
            self.error(
                node.pos,
                "jobs",
                "`jobs` is empty",
                Some("add at least one job (names starting with `.` are templates)".into()),
            );
        }
        let mut jobs = Vec::new();
        for (k, v) in map {
            let name = k.as_scalar().map(|s| s.text.clone()).unwrap_or_default();
            if hidden(k) {
                // A hidden job, as in GitLab CI: a template for anchors, or a job switched off.
                continue;
            }
            let path = join("jobs", &name);
            if !is_job_name(&name) {
                self.error(
                    k.pos,
                    &path,
                    format!("`{name}` is not a valid job name"),
                    Some(
                        "use letters, digits, `-`, `_` and `.`, starting with a letter or digit"
                            .into(),
                    ),
                );
            }
            let name = Spanned {
                value: name,
                pos: k.pos,
            };
            if let Some(job) = self.job(name, v, &path) {
                jobs.push(job);
            }
        }
        jobs
    }

    fn job(&mut self, name: Spanned<String>, node: &Node, path: &str) -> Option<Job> {
        if !matches!(node.value, Value::Map(_)) {
            self.expected(node, path, "a job (a mapping with `steps:`)", None);
            return None;
        }
        let mut job = Job {
            name,
            needs: Vec::new(),
            env: BTreeMap::new(),
            matrix: Vec::new(),
            condition: None,
            allow_failure: false,
            retry: 0,
            settings: Settings::default(),
            steps: Vec::new(),
        };
        let mut condition_node = None;
        let mut saw_steps = false;
        for (key, _, value) in self.entries(node, path, Level::Job) {
            if self.setting(key, value, path, &mut job.settings) {
                continue;
            }
            let p = join(path, key);
            match key {
                "needs" => job.needs = self.needs(value, &p),
                "env" => job.env = self.env(value, &p),
                "matrix" => {
                    if let Some(spec) = self.matrix(value, &p) {
                        match matrix::expand(&spec) {
                            Ok(instances) => job.matrix = instances,
                            Err(errs) => {
                                for e in errs {
                                    self.error(e.pos, &e.path, e.message, e.hint);
                                }
                            }
                        }
                    }
                }
                "if" => condition_node = Some((value, p)),
                "allow_failure" => job.allow_failure = self.boolean(value, &p).unwrap_or(false),
                "retry" => job.retry = self.integer(value, &p, 0, MAX_RETRY).unwrap_or(0) as u32,
                "steps" => {
                    saw_steps = true;
                    job.steps = self.steps(value, &p);
                }
                _ => {}
            }
        }
        if !saw_steps {
            self.error(
                node.pos,
                path,
                "the job has no `steps:`",
                Some("add `steps:` with at least one `- run: ...`".into()),
            );
        }
        if let Some((value, p)) = condition_node {
            job.condition = self.condition(value, &p, &job);
        }
        self.check_templates(&job);
        Some(job)
    }

    /// Every matrix instance of `job` must turn each image template into a valid reference.
    fn check_templates(&mut self, job: &Job) {
        for (pos, path, text) in std::mem::take(&mut self.templates) {
            if job.matrix.is_empty() {
                self.error(
                    pos,
                    &path,
                    "`${{ matrix... }}` needs a matrix on this job",
                    None,
                );
                continue;
            }
            let keys = template::keys(&text).unwrap_or_default();
            for inst in &job.matrix {
                let values: BTreeMap<String, String> = inst.values.iter().cloned().collect();
                if let Some(missing) = keys.iter().find(|k| !values.contains_key(*k)) {
                    self.error(
                        pos,
                        &path,
                        format!("the matrix instance ({}) has no `{missing}`", inst.label),
                        Some("give every combination that key, e.g. as an axis".into()),
                    );
                    break;
                }
                let image = template::substitute(&text, &values);
                if let Err(why) = image_ref::parse(&image) {
                    self.error(
                        pos,
                        &path,
                        format!("bad image reference `{image}` for ({}): {why}", inst.label),
                        Some("an OCI reference such as 127.0.0.1:5000/busybox:latest".into()),
                    );
                    break;
                }
            }
        }
    }

    fn needs(&mut self, node: &Node, path: &str) -> Vec<Spanned<String>> {
        let items: Vec<&Node> = match &node.value {
            Value::Seq(items) => items.iter().collect(),
            Value::Scalar(_) if node.is_null() => Vec::new(),
            Value::Scalar(_) => vec![node],
            Value::Map(_) => {
                self.expected(node, path, "a list of job names", None);
                return Vec::new();
            }
        };
        let mut out: Vec<Spanned<String>> = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let p = format!("{path}[{i}]");
            let Some(name) = self.text(item, &p) else {
                continue;
            };
            if let Some(first) = out.iter().find(|n| n.value == name) {
                let line = first.pos.line;
                self.error(
                    item.pos,
                    &p,
                    format!("`{name}` is listed twice"),
                    Some(format!("first at line {line}")),
                );
                continue;
            }
            out.push(Spanned {
                value: name,
                pos: item.pos,
            });
        }
        out
    }

    fn condition(&mut self, node: &Node, path: &str, job: &Job) -> Option<Condition> {
        let scalar = node
            .as_scalar()
            .filter(|s| matches!(s.kind(), ScalarKind::Str | ScalarKind::Bool));
        let Some(scalar) = scalar else {
            self.expected(
                node,
                path,
                "a condition",
                Some("e.g. if: \"branch == 'main'\"".into()),
            );
            return None;
        };
        let source = scalar.text.clone();
        let matrix_keys: Vec<String> = {
            let mut keys: Vec<String> = Vec::new();
            for inst in &job.matrix {
                for (k, _) in &inst.values {
                    if !keys.contains(k) {
                        keys.push(k.clone());
                    }
                }
            }
            keys
        };
        let at = |offset: usize| offset_pos(scalar, node.pos, &source, offset);
        match expr::parse(&source) {
            Ok(e) => {
                let errors = expr::check_vars(&e, &matrix_keys);
                if errors.is_empty() {
                    return Some(Condition { source, expr: e });
                }
                for err in errors {
                    self.error(
                        at(err.offset),
                        path,
                        format!("bad condition: {}", err.message),
                        err.hint,
                    );
                }
                None
            }
            Err(err) => {
                self.error(
                    at(err.offset),
                    path,
                    format!("bad condition: {}", err.message),
                    err.hint,
                );
                None
            }
        }
    }

    fn matrix(&mut self, node: &Node, path: &str) -> Option<MatrixSpec> {
        let Value::Map(map) = &node.value else {
            self.expected(
                node,
                path,
                "a mapping of axes to lists of values",
                Some("e.g. matrix: {arch: [amd64, arm64]}".into()),
            );
            return None;
        };
        let mut spec = MatrixSpec {
            pos: node.pos,
            path: path.to_string(),
            axes: Vec::new(),
            include: Vec::new(),
            exclude: Vec::new(),
        };
        let errors_before = self.diags.len();
        for (k, v) in map {
            let key = k.as_scalar().map(|s| s.text.clone()).unwrap_or_default();
            let p = join(path, &key);
            if key == "include" || key == "exclude" {
                let entries = self.matrix_entries(v, &p);
                if key == "include" {
                    spec.include = entries;
                } else {
                    spec.exclude = entries;
                }
                continue;
            }
            if !is_name(&key) {
                self.error(
                    k.pos,
                    &p,
                    format!("`{key}` is not a valid matrix key"),
                    Some("use letters, digits and _; `include` and `exclude` are the only other keys".into()),
                );
                continue;
            }
            let Value::Seq(items) = &v.value else {
                self.expected(
                    v,
                    &p,
                    "a list of values",
                    Some(format!("e.g. {key}: [a, b]")),
                );
                continue;
            };
            if items.is_empty() {
                self.error(v.pos, &p, "an axis needs at least one value", None);
                continue;
            }
            let mut values: Vec<Spanned<String>> = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let ip = format!("{p}[{i}]");
                let Some(text) = self.text(item, &ip) else {
                    continue;
                };
                if values.iter().any(|x| x.value == text) {
                    self.error(item.pos, &ip, format!("`{text}` is listed twice"), None);
                    continue;
                }
                values.push(Spanned {
                    value: text,
                    pos: item.pos,
                });
            }
            spec.axes.push((
                Spanned {
                    value: key,
                    pos: k.pos,
                },
                values,
            ));
        }
        (self.diags.len() == errors_before).then_some(spec)
    }

    fn matrix_entries(&mut self, node: &Node, path: &str) -> Vec<Entry> {
        let Value::Seq(items) = &node.value else {
            self.expected(
                node,
                path,
                "a list of mappings",
                Some("e.g. - {arch: amd64, os: linux}".into()),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let Value::Map(map) = &item.value else {
                self.expected(item, &p, "a mapping of matrix keys to values", None);
                continue;
            };
            if map.is_empty() {
                self.error(
                    item.pos,
                    &p,
                    "an empty entry matches everything",
                    Some("name at least one key".into()),
                );
                continue;
            }
            let mut pairs = Vec::new();
            for (k, v) in map {
                let key = k.as_scalar().map(|s| s.text.clone()).unwrap_or_default();
                if !is_name(&key) {
                    self.error(
                        k.pos,
                        &join(&p, &key),
                        format!("`{key}` is not a valid matrix key"),
                        None,
                    );
                    continue;
                }
                if let Some(value) = self.text(v, &join(&p, &key)) {
                    pairs.push((
                        Spanned {
                            value: key,
                            pos: k.pos,
                        },
                        value,
                    ));
                }
            }
            out.push(Entry {
                pos: item.pos,
                path: p,
                pairs,
            });
        }
        out
    }

    fn steps(&mut self, node: &Node, path: &str) -> Vec<Step> {
        let Value::Seq(items) = &node.value else {
            self.expected(
                node,
                path,
                "a list of steps",
                Some("e.g. steps: [{run: make}]".into()),
            );
            return Vec::new();
        };
        if items.is_empty() {
            self.error(
                node.pos,
                path,
                "`steps` is empty",
                Some("a job needs at least one step, e.g. `- run: make`".into()),
            );
        }
        let mut steps: Vec<Step> = Vec::new();
        let mut seen: Vec<(String, Pos)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let Some((step, name_pos)) = self.step(item, &p, i) else {
                continue;
            };
            if let Some((_, first)) = seen.iter().find(|(n, _)| *n == step.name) {
                let line = first.line;
                self.error(
                    name_pos,
                    &join(&p, "name"),
                    format!("duplicate step name `{}`", step.name),
                    Some(format!(
                        "first used at line {line}; step names must be unique in a job"
                    )),
                );
            }
            seen.push((step.name.clone(), name_pos));
            steps.push(step);
        }
        steps
    }

    /// A step is a mapping, or a string as shorthand for `run:`.
    fn step(&mut self, node: &Node, path: &str, index: usize) -> Option<(Step, Pos)> {
        let mut step = Step {
            name: format!("step {}", index + 1),
            run: String::new(),
            settings: Settings::default(),
            env: BTreeMap::new(),
            continue_on_error: false,
            secrets: Vec::new(),
            secrets_at: Vec::new(),
        };
        let mut name_pos = node.pos;
        if let Some(s) = node.as_scalar().filter(|s| s.kind() == ScalarKind::Str) {
            step.run = s.text.clone();
            return Some((step, name_pos));
        }
        if !matches!(node.value, Value::Map(_)) {
            self.expected(
                node,
                path,
                "a step (a mapping with `run:`, or a command string)",
                None,
            );
            return None;
        }
        let mut saw_run = false;
        for (key, _, value) in self.entries(node, path, Level::Step) {
            if self.setting(key, value, path, &mut step.settings) {
                continue;
            }
            let p = join(path, key);
            match key {
                "name" => {
                    if let Some(name) = self.string(value, &p) {
                        if name.trim().is_empty() {
                            self.error(value.pos, &p, "the step name is empty", None);
                        }
                        step.name = name;
                        name_pos = value.pos;
                    }
                }
                "run" => {
                    saw_run = true;
                    if let Some(run) = self.string(value, &p) {
                        if run.trim().is_empty() {
                            self.error(
                                value.pos,
                                &p,
                                "`run` is empty",
                                Some("write the commands to run".into()),
                            );
                        }
                        step.run = run;
                    }
                }
                "env" => step.env = self.env(value, &p),
                "continue_on_error" => {
                    step.continue_on_error = self.boolean(value, &p).unwrap_or(false)
                }
                "secrets" => {
                    let found = self.secrets(value, &p);
                    step.secrets = found.iter().map(|(n, _, _)| n.clone()).collect();
                    step.secrets_at = found.into_iter().map(|(_, pos, p)| (pos, p)).collect();
                }
                _ => {}
            }
        }
        if !saw_run {
            self.error(
                node.pos,
                path,
                "the step has no `run:`",
                Some("add `run:` with the commands".into()),
            );
        }
        Some((step, name_pos))
    }

    fn secrets(&mut self, node: &Node, path: &str) -> Vec<(String, Pos, String)> {
        let Value::Seq(items) = &node.value else {
            self.expected(
                node,
                path,
                "a list of secret names",
                Some(
                    "values never go in the file: list names, e.g. secrets: [DEPLOY_TOKEN]".into(),
                ),
            );
            return Vec::new();
        };
        let mut out: Vec<(String, Pos, String)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let Some(name) = self.string(item, &p) else {
                continue;
            };
            if !is_name(&name) {
                self.error(
                    item.pos,
                    &p,
                    format!("`{name}` is not a valid secret name"),
                    Some("use letters, digits and _, e.g. DEPLOY_TOKEN".into()),
                );
            } else if out.iter().any(|(n, _, _)| *n == name) {
                self.error(item.pos, &p, format!("`{name}` is listed twice"), None);
            } else {
                out.push((name, item.pos, p));
            }
        }
        out
    }
}

/// How a scalar was written, for messages; containers by kind.
fn shown(node: &Node) -> String {
    match node.as_scalar() {
        Some(s) if s.kind() != ScalarKind::Null => format!("`{}`", s.text),
        _ => node.describe().to_string(),
    }
}

/// Where byte `offset` of a scalar's text is in the file. Exact for single-line plain and quoted
/// scalars (escapes aside); for block scalars it points at the line inside the block.
fn offset_pos(scalar: &crate::yaml::Scalar, node_pos: Pos, text: &str, offset: usize) -> Pos {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let newlines = before.matches('\n').count();
    if newlines == 0 && (scalar.plain || scalar.text_pos != node_pos) {
        return Pos::new(
            scalar.text_pos.line,
            scalar.text_pos.column + before.chars().count(),
        );
    }
    if !scalar.plain && scalar.text_pos == node_pos {
        // A block scalar: content starts on the line after the indicator.
        let col = before.rsplit('\n').next().unwrap_or("").chars().count();
        return Pos::new(node_pos.line + 1 + newlines, col + 1);
    }
    Pos::new(scalar.text_pos.line + newlines, 1)
}
