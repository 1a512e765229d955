//! From a planned step (the pipeline's view) to a `StepSpec` (the executor's view).

use std::collections::BTreeMap;
use std::time::Duration;

use executors::{ImageSpec, Network, PreparedJob, Resources, Shell, StepSpec};
use pipelines::{Image, PlannedStep};

/// The executor's spec for `step`: its env plus the secrets it names (a secret wins over a
/// plain variable of the same name), and a timeout no longer than what is left of the job.
pub(super) fn step_spec(
    step: &PlannedStep,
    secrets: &BTreeMap<String, String>,
    job_time_left: Duration,
) -> StepSpec {
    let mut env = step.env.clone();
    for name in &step.secrets {
        if let Some(value) = secrets.get(name) {
            env.insert(name.clone(), value.clone());
        }
    }
    StepSpec {
        name: step.name.clone(),
        image: match &step.image {
            Image::Host => ImageSpec::Host,
            Image::Oci(r) => ImageSpec::Oci(r.clone()),
        },
        script: step.run.clone(),
        shell: match step.shell {
            pipelines::Shell::Sh => Shell::Sh,
            pipelines::Shell::Bash => Shell::Bash,
        },
        env,
        workdir: step.workdir.clone(),
        timeout: step.timeout.min(job_time_left),
        network: match step.network {
            pipelines::Network::None => Network::None,
            pipelines::Network::Host => Network::Host,
            pipelines::Network::Bridge => Network::Bridge,
        },
        resources: Resources {
            cpus: step.resources.cpus,
            memory: step.resources.memory,
            pids: step.resources.pids,
        },
    }
}

/// The header's sandbox line: the backend's own description and the image.
pub(super) fn sandbox_line(job: &PreparedJob, step: &PlannedStep) -> String {
    let image = match &step.image {
        Image::Host => "host".to_string(),
        Image::Oci(r) => r.clone(),
    };
    format!("{}, image {image}", job.description)
}

/// A valid hostname (RFC 1123 label) from a job name: `Build (arch=amd64)` ->
/// `build-arch-amd64`.
pub fn hostname_for(job: &str) -> String {
    let mut out = String::with_capacity(job.len());
    for c in job.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut out: String = out.trim_matches('-').chars().take(63).collect();
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        "job".to_string()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipelines::{Isolation, Resources as PlanResources};

    fn step() -> PlannedStep {
        PlannedStep {
            name: "deploy".into(),
            run: "echo hi".into(),
            shell: pipelines::Shell::Bash,
            image: Image::Oci("127.0.0.1:5000/busybox:latest".into()),
            isolation: Isolation::Container,
            env: BTreeMap::from([("A".into(), "1".into()), ("TOKEN".into(), "plain".into())]),
            workdir: "/workspace".into(),
            timeout: Duration::from_secs(600),
            network: pipelines::Network::Bridge,
            resources: PlanResources {
                cpus: Some(1.5),
                memory: Some(512 << 20),
                pids: Some(64),
            },
            continue_on_error: false,
            secrets: vec!["TOKEN".into()],
        }
    }

    #[test]
    fn maps_every_field_and_only_named_secrets() {
        let secrets = BTreeMap::from([
            ("TOKEN".to_string(), "s3cret-value".to_string()),
            ("OTHER".to_string(), "not-for-this-step".to_string()),
        ]);
        let spec = step_spec(&step(), &secrets, Duration::from_secs(3600));
        assert_eq!(spec.name, "deploy");
        assert_eq!(spec.script, "echo hi");
        assert_eq!(
            spec.image,
            ImageSpec::Oci("127.0.0.1:5000/busybox:latest".into())
        );
        assert_eq!(spec.shell, Shell::Bash);
        assert_eq!(spec.network, Network::Bridge);
        assert_eq!(spec.workdir, "/workspace");
        assert_eq!(spec.timeout, Duration::from_secs(600));
        assert_eq!(spec.resources.cpus, Some(1.5));
        assert_eq!(spec.resources.memory, Some(512 << 20));
        assert_eq!(spec.resources.pids, Some(64));
        assert_eq!(spec.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(
            spec.env.get("TOKEN").map(String::as_str),
            Some("s3cret-value")
        );
        assert!(!spec.env.contains_key("OTHER"));
    }

    #[test]
    fn step_timeout_is_capped_by_what_is_left_of_the_job() {
        let spec = step_spec(&step(), &BTreeMap::new(), Duration::from_secs(5));
        assert_eq!(spec.timeout, Duration::from_secs(5));
    }

    #[test]
    fn host_image_maps_to_host() {
        let mut s = step();
        s.image = Image::Host;
        let spec = step_spec(&s, &BTreeMap::new(), Duration::from_secs(5));
        assert_eq!(spec.image, ImageSpec::Host);
    }

    #[test]
    fn hostnames_are_valid_labels() {
        assert_eq!(hostname_for("build"), "build");
        assert_eq!(hostname_for("Build (arch=amd64)"), "build-arch-amd64");
        assert_eq!(hostname_for("__"), "job");
        let long = hostname_for(&"a-".repeat(100));
        assert!(long.len() <= 63 && !long.ends_with('-'), "{long}");
    }
}
