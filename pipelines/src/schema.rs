//! A JSON Schema (draft 2020-12) of the pipeline format, for editors (`runner schema`).
//!
//! Hand-built rather than derived (`schemars`) because the parser does not deserialize into
//! structs: it reads a spanned YAML tree. The key lists come from the same tables the parser
//! checks against (`keys.rs`), and a test walks the schema to keep it honest.

use serde_json::{json, Map, Value};

use crate::decode::MAX_RETRY;
use crate::keys;
use crate::matrix::MAX_INSTANCES;

fn object(keys: &[&str], defs: &dyn Fn(&str) -> Value) -> Value {
    let mut props = Map::new();
    for k in keys {
        props.insert((*k).to_string(), defs(k));
    }
    json!({"type": "object", "properties": props, "additionalProperties": false})
}

fn setting(key: &str) -> Value {
    match key {
        "image" => json!({"$ref": "#/$defs/image"}),
        "isolation" => {
            json!({"enum": keys::ISOLATIONS, "description": "container (default) or vm"})
        }
        "timeout" => json!({"$ref": "#/$defs/duration"}),
        "shell" => json!({"enum": keys::SHELLS, "description": "sh (default) or bash"}),
        "workdir" => {
            json!({"type": "string", "pattern": "^/", "description": "absolute path in the sandbox; default /workspace"})
        }
        "network" => {
            json!({"enum": keys::NETWORKS, "description": "none (default), host or bridge"})
        }
        "resources" => object(keys::RESOURCES, &|k| match k {
            "cpus" => json!({"type": "number", "exclusiveMinimum": 0, "maximum": 1024}),
            "memory" => json!({"$ref": "#/$defs/size"}),
            _ => json!({"type": "integer", "minimum": 1, "maximum": 4_194_304}),
        }),
        _ => Value::Null,
    }
}

/// The schema as a JSON value.
pub fn schema() -> Value {
    let job = object(&keys::Level::Job.keys(), &|k| match k {
        "needs" => json!({"oneOf": [
            {"type": "array", "items": {"$ref": "#/$defs/jobName"}, "uniqueItems": true},
            {"$ref": "#/$defs/jobName"}
        ], "description": "jobs that must finish first"}),
        "env" => json!({"$ref": "#/$defs/env"}),
        "matrix" => json!({"$ref": "#/$defs/matrix"}),
        "if" => {
            json!({"type": ["string", "boolean"], "description": "condition, e.g. branch == 'main' && event != 'pull_request'"})
        }
        "allow_failure" => json!({"type": "boolean"}),
        "retry" => json!({"type": "integer", "minimum": 0, "maximum": MAX_RETRY}),
        "steps" => json!({"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/step"}}),
        other => setting(other),
    });
    let mut job = job;
    job["required"] = json!(["steps"]);

    let mut step = object(&keys::Level::Step.keys(), &|k| match k {
        "name" => {
            json!({"type": "string", "minLength": 1, "description": "unique in the job; default `step N`"})
        }
        "run" => {
            json!({"type": "string", "minLength": 1, "description": "commands, run by `shell`"})
        }
        "env" => json!({"$ref": "#/$defs/env"}),
        "continue_on_error" => json!({"type": "boolean"}),
        "secrets" => {
            json!({"type": "array", "uniqueItems": true, "items": {"$ref": "#/$defs/name"},
            "description": "names of secrets the runner provides; values never go in the file"})
        }
        other => setting(other),
    });
    step["required"] = json!(["run"]);

    let matrix_entry = json!({"type": "object", "minProperties": 1,
        "propertyNames": {"$ref": "#/$defs/name"},
        "additionalProperties": {"$ref": "#/$defs/scalar"}});

    let mut top = object(&keys::Level::Pipeline.keys(), &|k| match k {
        "version" => json!({"const": 1}),
        "name" => json!({"type": "string"}),
        "env" => json!({"$ref": "#/$defs/env"}),
        "defaults" => object(keys::SETTINGS, &setting),
        _ => json!({"type": "object", "minProperties": 1,
            "patternProperties": {"^\\.": {"description": "a hidden job: a template for anchors, not run"}},
            "propertyNames": {"anyOf": [{"$ref": "#/$defs/jobName"}, {"pattern": "^\\."}]},
            "additionalProperties": {"$ref": "#/$defs/job"}}),
    });
    top["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    top["$id"] = json!("https://github.com/runner/runner/docs/pipeline.schema.json");
    top["title"] = json!("runner pipeline, version 1");
    top["required"] = json!(["jobs"]);
    top["patternProperties"] =
        json!({"^\\.": {"description": "a template for YAML anchors; not read itself"}});
    top["$defs"] = json!({
        "name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "jobName": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"},
        "scalar": {"type": ["string", "number", "boolean"]},
        "env": {"type": "object", "propertyNames": {"$ref": "#/$defs/name"},
            "additionalProperties": {"$ref": "#/$defs/scalar"}},
        "image": {"type": "string", "minLength": 1,
            "description": "`host` (the host's root filesystem, read-only under a throwaway layer; the default) or an OCI image reference; in a job or step, `${{ matrix.KEY }}` is replaced per matrix instance"},
        "duration": {"type": "string", "pattern": "^\\s*([0-9]+\\s*h(\\s*[0-9]+\\s*m)?(\\s*[0-9]+\\s*s)?|[0-9]+\\s*m(\\s*[0-9]+\\s*s)?|[0-9]+\\s*s)\\s*$",
            "description": "e.g. 90s, 10m, 1h30m (at most 7 days)"},
        "size": {"type": "string", "pattern": "^\\s*[0-9.]+\\s*(B|b|[KkMmGgTt]|[KMGT]i|[KMGT]iB|kB|KB|MB|GB|TB)$",
            "description": "e.g. 512MiB, 1G (powers of 1024), 100MB (powers of 1000)"},
        "matrix": {"type": "object", "minProperties": 1,
            "description": format!("axes of values; the product makes at most {MAX_INSTANCES} jobs"),
            "properties": {
                "include": {"type": "array", "items": matrix_entry},
                "exclude": {"type": "array", "items": matrix_entry}
            },
            "propertyNames": {"$ref": "#/$defs/name"},
            "additionalProperties": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/scalar"}}},
        "job": job,
        "step": {"oneOf": [step, {"type": "string", "minLength": 1, "description": "shorthand for {run: ...}"}]},
    });
    top
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(v: &Value) -> Vec<String> {
        let mut k: Vec<String> = v["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        k.sort();
        k
    }

    fn sorted(level: keys::Level) -> Vec<String> {
        let mut k: Vec<String> = level.keys().iter().map(|s| s.to_string()).collect();
        k.sort();
        k
    }

    #[test]
    fn every_level_lists_exactly_the_keys_the_parser_accepts() {
        let s = schema();
        assert_eq!(props(&s), sorted(keys::Level::Pipeline));
        assert_eq!(
            props(&s["properties"]["defaults"]),
            sorted(keys::Level::Defaults)
        );
        assert_eq!(props(&s["$defs"]["job"]), sorted(keys::Level::Job));
        assert_eq!(
            props(&s["$defs"]["step"]["oneOf"][0]),
            sorted(keys::Level::Step)
        );
        assert_eq!(
            props(&s["$defs"]["job"]["properties"]["resources"]),
            sorted(keys::Level::Resources)
        );
        // No key is left without a definition.
        let text = s.to_string();
        assert!(!text.contains("null"), "a key has no schema: {text}");
    }
}
