//! The keys each level of a pipeline accepts, and the hints given for a key that is not one.
//! The decoder and the JSON Schema both read these tables, so they cannot drift apart.

/// Top level.
pub const PIPELINE: &[&str] = &["version", "name", "env", "defaults", "jobs"];
/// Settings a job and a step inherit from `defaults`.
pub const SETTINGS: &[&str] = &[
    "image",
    "isolation",
    "timeout",
    "shell",
    "workdir",
    "network",
    "resources",
];
/// Keys of a job besides the settings.
pub const JOB_OWN: &[&str] = &[
    "needs",
    "env",
    "matrix",
    "if",
    "allow_failure",
    "retry",
    "steps",
];
/// Keys of a step besides the settings.
pub const STEP_OWN: &[&str] = &["name", "run", "env", "continue_on_error", "secrets"];
pub const RESOURCES: &[&str] = &["cpus", "memory", "pids"];

pub const ISOLATIONS: &[&str] = &["container", "vm"];
pub const SHELLS: &[&str] = &["sh", "bash"];
pub const NETWORKS: &[&str] = &["none", "host", "bridge"];

/// Where a key is read, for "belongs to a job, not a step" hints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Pipeline,
    Defaults,
    Job,
    Step,
    Resources,
}

impl Level {
    pub fn keys(self) -> Vec<&'static str> {
        match self {
            Level::Pipeline => PIPELINE.to_vec(),
            Level::Defaults => SETTINGS.to_vec(),
            Level::Job => JOB_OWN.iter().chain(SETTINGS).copied().collect(),
            Level::Step => STEP_OWN.iter().chain(SETTINGS).copied().collect(),
            Level::Resources => RESOURCES.to_vec(),
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Level::Pipeline => "the top level",
            Level::Defaults => "`defaults`",
            Level::Job => "a job",
            Level::Step => "a step",
            Level::Resources => "`resources`",
        }
    }
}

/// Keys from other CI systems, and what to write here instead.
const FOREIGN: &[(&str, &str)] = &[
    ("script", "write the commands in `steps:` as `- run: ...`"),
    ("commands", "write the commands in `steps:` as `- run: ...`"),
    ("before_script", "add a first step to `steps:`"),
    ("variables", "use `env:`"),
    ("environment", "use `env:`"),
    ("depends_on", "use `needs:`"),
    ("dependencies", "use `needs:`"),
    (
        "runs-on",
        "use `image:` (an OCI image or `host`) and `isolation:`",
    ),
    ("container", "use `image:`"),
    (
        "services",
        "services are not supported yet; start them in a step",
    ),
    ("stage", "order jobs with `needs:`"),
    ("stages", "order jobs with `needs:`"),
    (
        "on",
        "triggers are chosen when a run is started (`--event`); use `if:` on a job",
    ),
    ("rules", "use `if:`"),
    ("only", "use `if:`"),
    ("except", "use `if:`"),
    ("when", "use `if:`"),
    (
        "timeout-minutes",
        "use `timeout:` with a unit, e.g. `timeout: 30m`",
    ),
    (
        "timeout_in_minutes",
        "use `timeout:` with a unit, e.g. `timeout: 30m`",
    ),
    ("working-directory", "use `workdir:`"),
    ("working_directory", "use `workdir:`"),
    (
        "uses",
        "actions are not supported; write the commands in `run:`",
    ),
    (
        "with",
        "actions are not supported; write the commands in `run:`",
    ),
    ("strategy", "use `matrix:` directly on the job"),
];

/// The closest known key, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let normal = word.to_ascii_lowercase().replace('-', "_");
    let mut best: Option<(&str, f64)> = None;
    for c in candidates {
        if normal == c {
            return Some(c);
        }
        let score = strsim::jaro_winkler(&normal, c);
        let edits = strsim::damerau_levenshtein(&normal, c);
        // Short keys need a near-exact match; longer ones tolerate a slip or two.
        let close = edits <= 1 || (edits <= 2 && c.len() >= 5) || score >= 0.9;
        if close && best.is_none_or(|(_, s)| score > s) {
            best = Some((c, score));
        }
    }
    best.map(|(c, _)| c)
}

/// The hint for `key`, which is not valid at `level`.
pub fn unknown_key_hint(key: &str, level: Level) -> String {
    let keys = level.keys();
    if let Some(close) = did_you_mean(key, keys.iter().copied()) {
        return format!("did you mean `{close}`?");
    }
    for other in [Level::Job, Level::Step, Level::Pipeline, Level::Resources] {
        if other != level && other.keys().contains(&key) {
            return format!("`{key}` belongs to {}, not {}", other.noun(), level.noun());
        }
    }
    if let Some((_, advice)) = FOREIGN.iter().find(|(k, _)| *k == key) {
        return advice.to_string();
    }
    format!("valid keys here: {}", keys.join(", "))
}

/// "expected one of a, b, c", with a "did you mean" when a value is close to a valid one.
pub fn one_of_hint(value: &str, valid: &[&str]) -> String {
    match did_you_mean(value, valid.iter().copied()) {
        Some(close) if close != value => {
            format!("did you mean `{close}`? valid: {}", valid.join(" | "))
        }
        _ => format!("valid: {}", valid.join(" | ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_the_intended_key() {
        assert_eq!(did_you_mean("stpes", Level::Job.keys()), Some("steps"));
        assert_eq!(did_you_mean("neds", Level::Job.keys()), Some("needs"));
        assert_eq!(
            did_you_mean("continue-on-error", Level::Step.keys()),
            Some("continue_on_error")
        );
        assert_eq!(did_you_mean("imgae", Level::Step.keys()), Some("image"));
        assert_eq!(did_you_mean("zzz", Level::Step.keys()), None);
    }

    #[test]
    fn misplaced_and_foreign_keys_are_explained() {
        assert_eq!(
            unknown_key_hint("needs", Level::Step),
            "`needs` belongs to a job, not a step"
        );
        assert_eq!(
            unknown_key_hint("script", Level::Job),
            "write the commands in `steps:` as `- run: ...`"
        );
        assert!(unknown_key_hint("qqqq", Level::Resources).starts_with("valid keys here: cpus"));
    }
}
