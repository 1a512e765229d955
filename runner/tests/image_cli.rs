//! `runner image ...` end to end: the real binary against a real `docker-registry`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use executors::image::testing::{
    busybox_image, busybox_layer, push, Compression, EntryType, Layer, LayerBuilder, TestImage,
    TestRegistry,
};

fn runner(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runner"))
        .arg("--data-dir")
        .arg(data)
        .arg("--config")
        .arg(data.join("config.toml"))
        .args(args)
        .env("DOCKER_CONFIG", data.join("no-docker"))
        .output()
        .expect("run the runner binary")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn pull_ls_rm_prune() {
    let registry = TestRegistry::start().unwrap();
    let image = busybox_image().unwrap();
    let digest = push(registry.addr(), "busybox:latest", &image, None)
        .await
        .unwrap();
    let mut b = LayerBuilder::new();
    b.raw("../../outside", EntryType::Regular, None, b"x");
    let hostile = TestImage::new(vec![Layer::new(b.finish(), Compression::Gzip)]);
    push(registry.addr(), "hostile:v1", &hostile, None)
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let reference = format!("{}/busybox:latest", registry.addr());

    let o = runner(d, &["image", "pull", &reference]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&digest) && out.contains("1 downloaded"),
        "{}",
        text(&o)
    );
    assert!(
        o.stderr.is_empty(),
        "no progress bars off a terminal: {}",
        text(&o)
    );

    let o = runner(d, &["image", "pull", &reference]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("0 downloaded"));

    // On a terminal: one progress bar per layer (`script` gives the pull a pty).
    let tty_data = d.join("tty");
    let cmd = format!(
        "{} --data-dir {} image pull {reference}",
        env!("CARGO_BIN_EXE_runner"),
        tty_data.display()
    );
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("DOCKER_CONFIG", d.join("no-docker"))
        .output()
        .expect("run script(1) from util-linux");
    let shown = String::from_utf8_lossy(&o.stdout);
    let layer = image.layers[0].digest();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        shown.contains(&layer["sha256:".len().."sha256:".len() + 12]) && shown.contains("done"),
        "{shown}"
    );

    let o = runner(d, &["image", "ls"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&reference),
        "{}",
        text(&o)
    );

    let o = runner(
        d,
        &["image", "pull", &format!("{}/hostile:v1", registry.addr())],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("hostile") && err.lines().count() == 1,
        "{}",
        text(&o)
    );

    let o = runner(
        d,
        &["image", "pull", &format!("{}/nope:v1", registry.addr())],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not found"),
        "{}",
        text(&o)
    );

    let o = runner(d, &["image", "pull", "Not A Ref"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("invalid image reference"),
        "{}",
        text(&o)
    );

    let o = runner(d, &["image", "rm", &reference]);
    assert!(o.status.success(), "{}", text(&o));
    let o = runner(d, &["image", "prune"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("removed 1 unused layers"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read_dir(d.join("images/layers")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn killed_pull_leaves_nothing_trusted() {
    let registry = TestRegistry::start().unwrap();
    // Incompressible and big enough that the pull is still running when it is killed.
    let mut noise = vec![0u8; 64 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in noise.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let mut b = LayerBuilder::new();
    b.file("noise", 0o644, &noise);
    let image = TestImage::new(vec![Layer::new(b.finish(), Compression::None)]);
    push(registry.addr(), "big:v1", &image, None).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let reference = format!("{}/big:v1", registry.addr());

    let mut child = Command::new(env!("CARGO_BIN_EXE_runner"))
        .arg("--data-dir")
        .arg(d)
        .args(["image", "pull", &reference])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill -9 as soon as a layer is being unpacked.
    let deadline = Instant::now() + Duration::from_secs(30);
    let tmp = d.join("images/tmp");
    loop {
        let busy = std::fs::read_dir(&tmp)
            .map(|r| r.flatten().any(|e| e.path().join("noise").exists()))
            .unwrap_or(false);
        if busy || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(status.code().is_none(), "the pull was killed, not finished");
    assert_eq!(
        std::fs::read_dir(d.join("images/layers")).unwrap().count(),
        0
    );
    assert_eq!(std::fs::read_dir(d.join("images/refs")).unwrap().count(), 0);

    let o = runner(d, &["image", "pull", &reference]);
    assert!(o.status.success(), "{}", text(&o));
    let layer = d
        .join("images/layers")
        .join(image.layers[0].digest().replace(':', "-"));
    assert_eq!(std::fs::read(layer.join("noise")).unwrap(), noise);
    let o = runner(d, &["image", "prune"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("0 unused layers"),
        "{}",
        text(&o)
    );
}

#[tokio::test]
async fn import_docker_save_and_oci_layout() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();

    // A `docker save` archive: manifest.json, the config, one uncompressed layer tar.
    let layer = busybox_layer().unwrap();
    let image = TestImage::new(vec![Layer::new(layer.clone(), Compression::None)]);
    let config = image.config_json();
    let manifest =
        r#"[{"Config":"config.json","RepoTags":["saved/busybox:1"],"Layers":["abc/layer.tar"]}]"#;
    let mut b = LayerBuilder::new();
    b.file("manifest.json", 0o644, manifest.as_bytes())
        .file("config.json", 0o644, &config)
        .dir("abc", 0o755)
        .file("abc/layer.tar", 0o644, &layer);
    let archive = d.join("saved.tar");
    std::fs::write(&archive, b.finish()).unwrap();
    let o = runner(d, &["image", "import", archive.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("docker.io/saved/busybox:1"),
        "{}",
        text(&o)
    );
    let o = runner(d, &["image", "ls"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("docker.io/saved/busybox:1"));

    // An OCI layout written by skopeo from a registry image; no name inside, so --tag.
    let registry = TestRegistry::start().unwrap();
    let mut extra = LayerBuilder::new();
    extra.file("etc/motd", 0o644, b"oci layout\n");
    let two = TestImage::new(vec![
        Layer::new(busybox_layer().unwrap(), Compression::Gzip),
        Layer::new(extra.finish(), Compression::Zstd),
    ]);
    push(registry.addr(), "two:v1", &two, None).await.unwrap();
    let layout = d.join("layout");
    let sk = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{}/two:v1", registry.addr()))
        .arg(format!("oci:{}:v1", layout.display()))
        .output()
        .expect("run skopeo (deploy/setup.sh installs it)");
    assert!(sk.status.success(), "{}", text(&sk));
    let o = runner(
        d,
        &[
            "image",
            "import",
            layout.to_str().unwrap(),
            "--tag",
            "local/two:v1",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let motd = d
        .join("images/layers")
        .join(two.layers[1].digest().replace(':', "-"))
        .join("etc/motd");
    assert_eq!(std::fs::read(motd).unwrap(), b"oci layout\n");

    // Garbage is refused with a reason.
    std::fs::write(d.join("junk.tar"), b"not a tar at all").unwrap();
    let o = runner(
        d,
        &["image", "import", d.join("junk.tar").to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[tokio::test]
async fn two_processes_pulling_at_once_download_once() {
    let registry = TestRegistry::start().unwrap();
    let mut extra = LayerBuilder::new();
    extra.file("etc/motd", 0o644, b"two processes\n");
    let image = TestImage::new(vec![
        Layer::new(busybox_layer().unwrap(), Compression::Gzip),
        Layer::new(extra.finish(), Compression::Zstd),
    ]);
    push(registry.addr(), "shared:v1", &image, None)
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let reference = format!("{}/shared:v1", registry.addr());
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_runner"))
            .arg("--data-dir")
            .arg(d)
            .args(["image", "pull", &reference])
            .env("DOCKER_CONFIG", d.join("no-docker"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    for l in &image.layers {
        assert_eq!(registry.blob_gets(&l.digest()), 1, "{}", registry.log());
    }
}
