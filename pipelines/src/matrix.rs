//! Matrix expansion: the product of the axes, minus `exclude`, plus or extended by `include`.
//!
//! - every `exclude` entry names axes only and must remove at least one combination;
//! - an `include` entry whose axis values match existing combinations adds its other keys to
//!   them; one that matches none and names every axis adds a new combination; anything else
//!   (matches nothing and cannot add, or matches and adds nothing) is an error, because it
//!   would silently do nothing.

use crate::keys::did_you_mean;
use crate::model::{Combo, Spanned};
use crate::yaml::Pos;

/// More instances than this is almost surely a mistake, and would flood the runner.
pub const MAX_INSTANCES: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub struct MatrixSpec {
    pub pos: Pos,
    /// Path of the `matrix` key, e.g. `jobs.build.matrix`.
    pub path: String,
    pub axes: Vec<(Spanned<String>, Vec<Spanned<String>>)>,
    pub include: Vec<Entry>,
    pub exclude: Vec<Entry>,
}

/// One `include` or `exclude` item.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub pos: Pos,
    pub path: String,
    pub pairs: Vec<(Spanned<String>, String)>,
}

/// One expanded combination.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// What tells it apart, e.g. `arch=amd64, os=linux` (axis values only when there are axes).
    pub label: String,
    pub values: Combo,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MatrixError {
    pub pos: Pos,
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

pub fn expand(spec: &MatrixSpec) -> Result<Vec<Instance>, Vec<MatrixError>> {
    let mut errors = Vec::new();
    let axis_names: Vec<&str> = spec.axes.iter().map(|(k, _)| k.value.as_str()).collect();

    let total: usize = spec
        .axes
        .iter()
        .map(|(_, v)| v.len())
        .try_fold(1usize, |acc, n| acc.checked_mul(n))
        .unwrap_or(usize::MAX);
    if total > MAX_INSTANCES.saturating_mul(16) {
        return Err(vec![too_many(spec, total)]);
    }

    let mut combos: Vec<Combo> = if spec.axes.is_empty() {
        Vec::new()
    } else {
        let mut acc: Vec<Combo> = vec![Vec::new()];
        for (key, values) in &spec.axes {
            let mut next = Vec::with_capacity(acc.len() * values.len());
            for combo in &acc {
                for v in values {
                    let mut c = combo.clone();
                    c.push((key.value.clone(), v.value.clone()));
                    next.push(c);
                }
            }
            acc = next;
        }
        acc
    };

    for entry in &spec.exclude {
        if !check_keys(spec, entry, &axis_names, &mut errors) {
            continue;
        }
        let before = combos.len();
        combos.retain(|c| !matches(c, &entry.pairs));
        if combos.len() == before {
            errors.push(MatrixError {
                pos: entry.pos,
                path: entry.path.clone(),
                message: "this exclude matches no combination".into(),
                hint: Some(value_hint(spec, &entry.pairs)),
            });
        }
    }

    for entry in &spec.include {
        if spec.axes.is_empty() {
            let combo: Combo = entry
                .pairs
                .iter()
                .map(|(k, v)| (k.value.clone(), v.clone()))
                .collect();
            if combos.contains(&combo) {
                errors.push(MatrixError {
                    pos: entry.pos,
                    path: entry.path.clone(),
                    message: "this include repeats an earlier one".into(),
                    hint: Some("remove it".into()),
                });
            } else {
                combos.push(combo);
            }
            continue;
        }
        let (on_axes, extra): (Vec<_>, Vec<_>) = entry
            .pairs
            .iter()
            .partition(|(k, _)| axis_names.contains(&k.value.as_str()));
        let on_axes: Vec<(Spanned<String>, String)> = on_axes.into_iter().cloned().collect();
        let hits: Vec<usize> = (0..combos.len())
            .filter(|&i| matches(&combos[i], &on_axes))
            .collect();
        if !hits.is_empty() {
            if extra.is_empty() {
                errors.push(MatrixError {
                    pos: entry.pos,
                    path: entry.path.clone(),
                    message: "this include only repeats combinations the axes already make".into(),
                    hint: Some(
                        "add a key that is not an axis to extend them, or name a combination that does not exist yet"
                            .into(),
                    ),
                });
            }
            for i in hits {
                for (k, v) in &extra {
                    set(&mut combos[i], &k.value, v);
                }
            }
        } else if on_axes.len() == axis_names.len() {
            let mut combo: Combo = Vec::new();
            for name in &axis_names {
                if let Some((_, v)) = on_axes.iter().find(|(k, _)| k.value == *name) {
                    combo.push((name.to_string(), v.clone()));
                }
            }
            combo.extend(extra.iter().map(|(k, v)| (k.value.clone(), v.clone())));
            combos.push(combo);
        } else {
            errors.push(MatrixError {
                pos: entry.pos,
                path: entry.path.clone(),
                message: "this include matches no combination".into(),
                hint: Some(format!(
                    "use values that exist, or name every axis ({}) to add a new combination",
                    axis_names.join(", ")
                )),
            });
        }
    }

    if errors.is_empty() && combos.is_empty() {
        errors.push(MatrixError {
            pos: spec.pos,
            path: spec.path.clone(),
            message: "the matrix makes no combinations".into(),
            hint: Some("give at least one axis, e.g. `arch: [amd64, arm64]`".into()),
        });
    }
    if errors.is_empty() && combos.len() > MAX_INSTANCES {
        errors.push(too_many(spec, combos.len()));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(combos
        .into_iter()
        .map(|values| {
            let shown: Vec<String> = values
                .iter()
                .filter(|(k, _)| axis_names.is_empty() || axis_names.contains(&k.as_str()))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            Instance {
                label: shown.join(", "),
                values,
            }
        })
        .collect())
}

fn too_many(spec: &MatrixSpec, n: usize) -> MatrixError {
    MatrixError {
        pos: spec.pos,
        path: spec.path.clone(),
        message: format!("the matrix makes {n} jobs, more than the limit of {MAX_INSTANCES}"),
        hint: Some("use fewer axes or values, or exclude combinations".into()),
    }
}

fn matches(combo: &Combo, pairs: &[(Spanned<String>, String)]) -> bool {
    pairs
        .iter()
        .all(|(k, v)| combo.iter().any(|(ck, cv)| ck == &k.value && cv == v))
}

fn set(combo: &mut Combo, key: &str, value: &str) {
    match combo.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value.to_string(),
        None => combo.push((key.to_string(), value.to_string())),
    }
}

/// Exclude keys must be axes.
fn check_keys(
    spec: &MatrixSpec,
    entry: &Entry,
    axes: &[&str],
    errors: &mut Vec<MatrixError>,
) -> bool {
    let mut ok = true;
    for (k, _) in &entry.pairs {
        if !axes.contains(&k.value.as_str()) {
            ok = false;
            let hint = match did_you_mean(&k.value, axes.iter().copied()) {
                Some(close) => format!("did you mean `{close}`?"),
                None if axes.is_empty() => "exclude needs matrix axes to remove from".into(),
                None => format!("the axes are {}", axes.join(", ")),
            };
            errors.push(MatrixError {
                pos: k.pos,
                path: format!("{}.{}", entry.path, k.value),
                message: format!("`{}` is not a matrix axis", k.value),
                hint: Some(hint),
            });
        }
    }
    let _ = spec;
    ok
}

/// Explain a non-matching entry: name a value that does not exist on its axis.
fn value_hint(spec: &MatrixSpec, pairs: &[(Spanned<String>, String)]) -> String {
    for (k, v) in pairs {
        if let Some((_, values)) = spec.axes.iter().find(|(a, _)| a.value == k.value) {
            if !values.iter().any(|x| &x.value == v) {
                let all: Vec<&str> = values.iter().map(|x| x.value.as_str()).collect();
                return format!(
                    "`{}` has no value `{v}`; it has {}",
                    k.value,
                    all.join(", ")
                );
            }
        }
    }
    "every combination it names is already excluded".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Spanned<String> {
        Spanned {
            value: v.into(),
            pos: Pos::new(1, 1),
        }
    }

    fn spec(
        axes: &[(&str, &[&str])],
        include: &[&[(&str, &str)]],
        exclude: &[&[(&str, &str)]],
    ) -> MatrixSpec {
        let entry = |pairs: &&[(&str, &str)]| Entry {
            pos: Pos::new(2, 1),
            path: "m".into(),
            pairs: pairs.iter().map(|(k, v)| (s(k), v.to_string())).collect(),
        };
        MatrixSpec {
            pos: Pos::new(1, 1),
            path: "jobs.j.matrix".into(),
            axes: axes
                .iter()
                .map(|(k, vs)| (s(k), vs.iter().map(|v| s(v)).collect()))
                .collect(),
            include: include.iter().map(entry).collect(),
            exclude: exclude.iter().map(entry).collect(),
        }
    }

    fn labels(r: &[Instance]) -> Vec<&str> {
        r.iter().map(|i| i.label.as_str()).collect()
    }

    #[test]
    fn product_minus_exclude_plus_include() {
        let m = spec(
            &[("os", &["linux", "mac"]), ("arch", &["amd64", "arm64"])],
            &[
                &[("os", "linux"), ("arch", "riscv64")],
                &[("os", "mac"), ("beta", "yes")],
            ],
            &[&[("os", "mac"), ("arch", "amd64")]],
        );
        let r = expand(&m).unwrap();
        assert_eq!(
            labels(&r),
            [
                "os=linux, arch=amd64",
                "os=linux, arch=arm64",
                "os=mac, arch=arm64",
                "os=linux, arch=riscv64"
            ]
        );
        assert_eq!(
            r[2].values.last().unwrap(),
            &("beta".to_string(), "yes".to_string())
        );
    }

    #[test]
    fn entries_that_do_nothing_are_errors() {
        let m = spec(
            &[("os", &["linux", "mac"]), ("arch", &["amd64"])],
            &[&[("os", "win"), ("x", "1")], &[("os", "linux")]],
            &[&[("os", "bsd")], &[("ach", "amd64")]],
        );
        let errs = expand(&m).unwrap_err();
        let msgs: Vec<&str> = errs.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            msgs,
            [
                "this exclude matches no combination",
                "`ach` is not a matrix axis",
                "this include matches no combination",
                "this include only repeats combinations the axes already make"
            ]
        );
        assert_eq!(
            errs[0].hint.as_deref(),
            Some("`os` has no value `bsd`; it has linux, mac")
        );
        assert_eq!(errs[1].hint.as_deref(), Some("did you mean `arch`?"));
    }

    #[test]
    fn include_only_matrix_and_limits() {
        let m = spec(&[], &[&[("target", "a")], &[("target", "b")]], &[]);
        assert_eq!(labels(&expand(&m).unwrap()), ["target=a", "target=b"]);
        let vals: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = vals.iter().map(String::as_str).collect();
        let big = spec(&[("a", &refs), ("b", &refs)], &[], &[]);
        assert!(expand(&big).unwrap_err()[0].message.contains("400 jobs"));
        let huge = spec(
            &[("a", &refs), ("b", &refs), ("c", &refs), ("d", &refs)],
            &[],
            &[],
        );
        assert!(expand(&huge).unwrap_err()[0]
            .message
            .contains("more than the limit"));
    }
}
