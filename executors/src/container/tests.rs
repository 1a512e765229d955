//! Steps on real OCI images: pushed to a throwaway `docker-registry` on 127.0.0.1, pulled and
//! unpacked by the image store, run by the container executor over their layers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ContainerConfig, ContainerExecutor};
use crate::executor::{
    Executor, ImageSpec, JobSpec, Network, Resources, Shell, StepResult, StepSpec, Stream,
};
use crate::image::testing::{
    busybox_layer, push, Compression, Layer, LayerBuilder, TestImage, TestRegistry,
};
use crate::image::{ImageStore, RegistryConfig};

async fn run(
    exec: &ContainerExecutor,
    job: &crate::executor::PreparedJob,
    image: &str,
    script: &str,
) -> (StepResult, String) {
    let step = StepSpec {
        name: "oci".into(),
        image: ImageSpec::Oci(image.into()),
        script: script.into(),
        shell: Shell::Sh,
        env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
        workdir: "/src".into(),
        timeout: Duration::from_secs(50),
        network: Network::None,
        resources: Resources::default(),
    };
    let (tx, mut rx) = mpsc::channel::<crate::executor::LogChunk>(16);
    let collect = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(c) = rx.recv().await {
            if c.stream == Stream::Stdout {
                out.extend(c.data);
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let result = exec
        .run_step(job, &step, tx, CancellationToken::new())
        .await
        .unwrap();
    (result, collect.await.unwrap())
}

#[testkit::needs(root)]
#[tokio::test]
async fn steps_run_on_a_pulled_multi_layer_image() {
    // Two layers: busybox, then one that adds /etc/motd and deletes /bin/vi (a whiteout), so
    // the overlay's layer order is visible from inside.
    let mut top = LayerBuilder::new();
    top.dir("etc", 0o755)
        .file("etc/motd", 0o644, b"top layer\n")
        .whiteout("bin/vi");
    let image = TestImage::new(vec![
        Layer::new(busybox_layer().unwrap(), Compression::Gzip),
        Layer::new(top.finish(), Compression::Zstd),
    ]);
    let registry = TestRegistry::start().unwrap();
    push(registry.addr(), "layered:1", &image, None)
        .await
        .unwrap();
    let reference = format!("{}/layered:1", registry.addr());

    let tmp = tempfile::Builder::new()
        .prefix("ctest-oci-")
        .tempdir()
        .unwrap();
    let store = ImageStore::open(tmp.path().join("images"), RegistryConfig::default()).unwrap();
    let exec = ContainerExecutor::new(ContainerConfig::new(
        tmp.path().join("state"),
        Arc::new(store),
    ))
    .unwrap();
    exec.reconcile().unwrap();
    let workspace = tmp.path().join("ws");
    std::fs::create_dir(&workspace).unwrap();
    let job_id = format!("toci{}", std::process::id());
    let job = exec
        .prepare(&JobSpec {
            id: job_id.clone(),
            hostname: "oci-job".into(),
            workspace: workspace.clone(),
        })
        .await
        .unwrap();

    let (first, out) = run(
        &exec,
        &job,
        &reference,
        "echo $$ $(hostname) $GREETING $(pwd); cat /etc/motd; test -e /bin/vi || echo no-vi; \
         echo changed > /etc/motd; echo artifact > built.txt",
    )
    .await;
    assert!(first.success(), "{first:?} {out}");
    assert_eq!(out, "1 oci-job hello /src\ntop layer\nno-vi\n");
    let (second, out) = run(&exec, &job, &reference, "cat /etc/motd built.txt").await;
    assert!(second.success(), "{second:?} {out}");
    assert_eq!(
        out, "top layer\nartifact\n",
        "/etc write survived or workspace lost"
    );
    exec.cleanup(&job).await.unwrap();

    let left: Vec<_> = std::fs::read_dir(tmp.path().join("state/sandboxes"))
        .unwrap()
        .collect();
    assert!(left.is_empty());
    for parent in exec.cgroups.dirs_for("") {
        for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(!name.contains(&job_id), "cgroup left: {name}");
        }
    }
}
