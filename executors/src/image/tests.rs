//! End-to-end: a real `docker-registry` on 127.0.0.1, images built here and pushed with
//! oci-client, pulled back through the store.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use super::testing::{
    busybox_layer, push, push_index, Compression, Layer, LayerBuilder, TestImage, TestRegistry,
};
use super::*;
use crate::executor::ImageProvider;

fn store(dir: &Path) -> ImageStore {
    ImageStore::open(dir.join("images"), RegistryConfig::default()).unwrap()
}

/// Everything under a store directory, to prove a failed pull kept nothing.
fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Three layers: busybox (gzip); a zstd layer with a hard link, symlinks, a whiteout and an
/// opaque dir; an uncompressed layer.
fn featureful_image() -> TestImage {
    let base = Layer::new(busybox_layer().unwrap(), Compression::Gzip);
    let mut b = LayerBuilder::new();
    b.dir("data", 0o755)
        .file("data/one", 0o644, b"one")
        .file("data/two", 0o644, b"two")
        .dir("keep", 0o755)
        .file("keep/old", 0o644, b"old");
    let mid_base = b.finish();
    let mut b = LayerBuilder::new();
    b.file_owned("srv/app", 0o750, 123, 456, b"#!/bin/sh\necho app\n")
        .hardlink("srv/app-hardlink", "srv/app")
        .symlink("srv/latest", "app")
        .symlink("srv/abs", "/srv/app")
        .whiteout("etc/group")
        .whiteout("data/one")
        .dir("keep", 0o755)
        .opaque("keep")
        .file("keep/new", 0o644, b"new");
    let mid = b.finish();
    let mut b = LayerBuilder::new();
    b.file("etc/motd", 0o644, b"hello from the top layer\n");
    let top = b.finish();
    let mut image = TestImage::new(vec![
        base,
        Layer::new(mid_base, Compression::Gzip),
        Layer::new(mid, Compression::Zstd),
        Layer::new(top, Compression::None),
    ]);
    image.working_dir = Some("/srv".into());
    image.env.push("GREETING=hi".into());
    image
}

/// Mount the layers read-only with overlayfs (as the container executor will) and return
/// the mount point; unmounted by the guard.
struct Overlay {
    dir: tempfile::TempDir,
}

impl Overlay {
    fn mount(layers: &[std::path::PathBuf]) -> Overlay {
        let dir = tempfile::tempdir().unwrap();
        let lower: Vec<String> = layers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        nix::mount::mount(
            Some("overlay"),
            dir.path(),
            Some("overlay"),
            nix::mount::MsFlags::MS_RDONLY,
            Some(format!("lowerdir={}", lower.join(":")).as_str()),
        )
        .expect("mount overlay of the pulled layers");
        Overlay { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test]
async fn pull_layers_with_whiteouts_links_and_zstd_then_run_busybox() {
    let registry = TestRegistry::start().unwrap();
    let image = featureful_image();
    let digest = push(registry.addr(), "feat:v1", &image, None)
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let reference = format!("{}/feat:v1", registry.addr());

    let out = s
        .pull(&reference, PullPolicy::Always, &NoProgress)
        .await
        .unwrap();
    assert_eq!(out.record.digest, digest);
    assert_eq!(out.downloaded.len(), 4);
    assert_eq!(out.record.working_dir.as_deref(), Some("/srv"));
    assert!(out.record.env.contains(&"GREETING=hi".to_string()));

    let layers = s.layer_dirs(&out.record);
    let mid = &layers[2];
    let app = fs::metadata(mid.join("srv/app")).unwrap();
    assert_eq!(
        (app.uid(), app.gid(), app.mode() & 0o7777),
        (123, 456, 0o750)
    );
    assert_eq!(
        fs::metadata(mid.join("srv/app-hardlink")).unwrap().ino(),
        app.ino()
    );
    assert_eq!(
        fs::read_link(mid.join("srv/latest")).unwrap(),
        Path::new("app")
    );
    assert!(fs::symlink_metadata(mid.join("etc/group"))
        .unwrap()
        .file_type()
        .is_char_device());

    // The merged view is what a step sees.
    let ov = Overlay::mount(&layers);
    let root = ov.path();
    assert!(
        !root.join("etc/group").exists(),
        "whiteout hides the lower file"
    );
    assert!(root.join("etc/passwd").exists());
    assert!(!root.join("data/one").exists());
    assert_eq!(fs::read(root.join("data/two")).unwrap(), b"two");
    assert!(
        !root.join("keep/old").exists(),
        "opaque dir hides lower contents"
    );
    assert_eq!(fs::read(root.join("keep/new")).unwrap(), b"new");
    assert_eq!(
        fs::read(root.join("srv/abs")).unwrap_or_default(),
        b"",
        "absolute link not followed on the host"
    );
    // Run the image's own busybox with the merged tree as its root (chroot in the child).
    let new_root = root.to_path_buf();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "cat /etc/motd; /srv/latest"]);
    // SAFETY: the closure runs in the forked child before exec and only makes the two
    // async-signal-safe syscalls chroot(2) and chdir(2); nix passes the (short, temp dir)
    // path through a stack buffer, so nothing is allocated after the fork.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        cmd.pre_exec(move || {
            nix::unistd::chroot(new_root.as_path())?;
            nix::unistd::chdir("/")?;
            Ok(())
        });
    }
    let run = cmd.output().unwrap();
    assert!(run.status.success(), "{run:?}");
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "hello from the top layer\napp\n"
    );
    drop(ov);

    // Warm: the default policy does not touch the registry, `Always` asks only for the tag.
    let warm = s
        .pull(&reference, PullPolicy::IfNotPresent, &NoProgress)
        .await
        .unwrap();
    assert!(!warm.contacted_registry && warm.downloaded.is_empty());
    let again = s
        .pull(&reference, PullPolicy::Always, &NoProgress)
        .await
        .unwrap();
    assert!(again.contacted_registry && again.downloaded.is_empty());

    // Through the trait the executors use, with a digest reference, after the registry is
    // gone: no network needed.
    let pinned = format!("{}/feat@{digest}", registry.addr());
    drop(registry);
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let resolved = ImageProvider::resolve(&s, &pinned, &tx).await.unwrap();
    assert_eq!(resolved.layers, layers);
    assert_eq!(resolved.working_dir.as_deref(), Some("/srv"));
}

#[tokio::test]
async fn corrupt_blob_is_refused_and_nothing_is_kept() {
    let registry = TestRegistry::start().unwrap();
    let image = featureful_image();
    push(registry.addr(), "bad:v1", &image, None).await.unwrap();
    // Flip one byte in the middle of the gzip layer: same size, different content.
    let victim = registry.blob_path(&image.layers[1].digest());
    let mut bytes = fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&victim, bytes).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let err = s
        .pull(
            &format!("{}/bad:v1", registry.addr()),
            PullPolicy::Always,
            &NoProgress,
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Verify { .. }), "{msg}");
    assert!(
        msg.contains("corrupt") && msg.contains(&image.layers[1].digest()),
        "{msg}"
    );
    let root = tmp.path().join("images");
    assert!(!s.layer_dir(&image.layers[1].digest()).exists());
    assert!(entries(&root.join("tmp")).is_empty());
    assert!(entries(&root.join("refs")).is_empty());
    assert!(entries(&root.join("manifests")).is_empty());
}

#[tokio::test]
async fn hostile_layer_from_a_registry_is_refused() {
    let registry = TestRegistry::start().unwrap();
    let mut b = LayerBuilder::new();
    b.file("ok", 0o644, b"fine")
        .raw("../../escape", tar::EntryType::Regular, None, b"pwned");
    let dotdot = TestImage::new(vec![Layer::new(b.finish(), Compression::Gzip)]);
    push(registry.addr(), "hostile:dotdot", &dotdot, None)
        .await
        .unwrap();
    let mut b = LayerBuilder::new();
    b.symlink("etc", "/etc")
        .raw("etc/cron.d/pwn", tar::EntryType::Regular, None, b"pwned");
    let through = TestImage::new(vec![Layer::new(b.finish(), Compression::Zstd)]);
    push(registry.addr(), "hostile:symlink", &through, None)
        .await
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    for (tag, needle) in [("dotdot", ".."), ("symlink", "symlink")] {
        let err = s
            .pull(
                &format!("{}/hostile:{tag}", registry.addr()),
                PullPolicy::Always,
                &NoProgress,
            )
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("hostile") && msg.contains(needle), "{msg}");
    }
    assert!(!Path::new("/etc/cron.d/pwn").exists());
    let root = tmp.path().join("images");
    assert!(entries(&root.join("layers")).is_empty());
    assert!(entries(&root.join("tmp")).is_empty());
}

#[tokio::test]
async fn auth_registry_needs_credentials() {
    let registry = TestRegistry::start_with_auth("ci", "pa55word").unwrap();
    let image = TestImage::new(vec![Layer::new(
        busybox_layer().unwrap(),
        Compression::Gzip,
    )]);
    push(
        registry.addr(),
        "private:v1",
        &image,
        Some(("ci", "pa55word")),
    )
    .await
    .unwrap();
    let reference = format!("{}/private:v1", registry.addr());
    let tmp = tempfile::tempdir().unwrap();

    // No credentials anywhere (an empty docker config, so the host's is not read).
    let empty = tmp.path().join("docker.json");
    fs::write(&empty, "{}").unwrap();
    let anon = ImageStore::open(
        tmp.path().join("images"),
        RegistryConfig {
            docker_config: Some(empty.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let msg = anon
        .pull(&reference, PullPolicy::Always, &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("refused access") && msg.contains("credentials"),
        "{msg}"
    );

    // Wrong password: says whose credentials were rejected.
    let mut cfg = RegistryConfig {
        docker_config: Some(empty),
        ..Default::default()
    };
    cfg.credentials.insert(
        registry.addr().to_string(),
        Credential {
            username: Some("ci".into()),
            password: Some("wrong".into()),
            ..Default::default()
        },
    );
    let wrong = ImageStore::open(tmp.path().join("images"), cfg.clone()).unwrap();
    let msg = wrong
        .pull(&reference, PullPolicy::Always, &NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("rejected"), "{msg}");

    cfg.credentials.get_mut(registry.addr()).unwrap().password = Some("pa55word".into());
    let good = ImageStore::open(tmp.path().join("images"), cfg).unwrap();
    let out = good
        .pull(&reference, PullPolicy::Always, &NoProgress)
        .await
        .unwrap();
    assert_eq!(out.record.digest, image.digest());
    assert_eq!(out.downloaded.len(), 1);
}

#[tokio::test]
async fn index_picks_linux_amd64() {
    let registry = TestRegistry::start().unwrap();
    let arch_image = |arch: &str| {
        let mut b = LayerBuilder::new();
        b.file("arch", 0o644, arch.as_bytes());
        let mut i = TestImage::new(vec![Layer::new(b.finish(), Compression::Gzip)]);
        i.architecture = arch.into();
        i
    };
    // arm64 first, so "take the first entry" would be caught.
    let images = [
        arch_image("arm64"),
        arch_image("amd64"),
        arch_image("s390x"),
    ];
    let index_digest = push_index(registry.addr(), "multi:v1", &images)
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let out = s
        .pull(
            &format!("{}/multi:v1", registry.addr()),
            PullPolicy::Always,
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(out.record.architecture, "amd64");
    assert_eq!(out.record.digest, images[1].digest());
    let dir = s.layer_dir(&out.record.layers[0].digest);
    assert_eq!(fs::read(dir.join("arch")).unwrap(), b"amd64");
    // The index digest works as a reference too, offline once stored.
    let by_index = s
        .pull(
            &format!("{}/multi@{index_digest}", registry.addr()),
            PullPolicy::Always,
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(by_index.record.digest, images[1].digest());
}

#[tokio::test]
async fn concurrent_pulls_download_each_layer_once() {
    let registry = TestRegistry::start().unwrap();
    let image = featureful_image();
    push(registry.addr(), "conc:v1", &image, None)
        .await
        .unwrap();
    let reference = format!("{}/conc:v1", registry.addr());
    let tmp = tempfile::tempdir().unwrap();
    // Separate store handles (as separate jobs or processes would have) on one directory.
    let (a, b, c) = (store(tmp.path()), store(tmp.path()), store(tmp.path()));
    let (ra, rb, rc) = tokio::join!(
        a.pull(&reference, PullPolicy::Always, &NoProgress),
        b.pull(&reference, PullPolicy::Always, &NoProgress),
        c.pull(&reference, PullPolicy::Always, &NoProgress),
    );
    let outs = [ra.unwrap(), rb.unwrap(), rc.unwrap()];
    let downloaded: usize = outs.iter().map(|o| o.downloaded.len()).sum();
    assert_eq!(
        downloaded,
        image.layers.len(),
        "each layer unpacked by exactly one pull"
    );
    for l in &image.layers {
        assert_eq!(
            registry.blob_gets(&l.digest()),
            1,
            "{}\n{}",
            l.digest(),
            registry.log()
        );
    }
}

/// `image rm` then `prune` while a step still uses the image: its layers stay until the step
/// lets go (deleting under a mounted overlay is undefined), then go.
#[tokio::test]
async fn prune_keeps_layers_a_running_step_holds() {
    let registry = TestRegistry::start().unwrap();
    let mut b = LayerBuilder::new();
    b.file("only-here", 0o644, b"x");
    let image = TestImage::new(vec![Layer::new(b.finish(), Compression::Gzip)]);
    push(registry.addr(), "held:v1", &image, None)
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let r = format!("{}/held:v1", registry.addr());
    s.pull(&r, PullPolicy::Always, &NoProgress).await.unwrap();
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let resolved = crate::ImageProvider::resolve(&s, &r, &tx).await.unwrap();
    let layer = s.layer_dir(&image.layers[0].digest());
    assert_eq!(resolved.layers, vec![layer.clone()]);

    s.remove(&r).unwrap();
    let report = s.prune().await.unwrap();
    assert_eq!((report.layers_removed, report.layers_in_use), (0, 1));
    assert!(
        layer.join("only-here").exists(),
        "pruned under a running step"
    );

    drop(resolved);
    let report = s.prune().await.unwrap();
    assert_eq!((report.layers_removed, report.layers_in_use), (1, 0));
    assert!(!layer.exists());
}

#[tokio::test]
async fn rm_and_prune_keep_shared_layers() {
    let registry = TestRegistry::start().unwrap();
    let base = Layer::new(busybox_layer().unwrap(), Compression::Gzip);
    let extra = |name: &str| {
        let mut b = LayerBuilder::new();
        b.file(name, 0o644, name.as_bytes());
        Layer::new(b.finish(), Compression::Gzip)
    };
    let one = TestImage::new(vec![base.clone(), extra("one")]);
    let two = TestImage::new(vec![base.clone(), extra("two")]);
    push(registry.addr(), "one:v1", &one, None).await.unwrap();
    push(registry.addr(), "two:v1", &two, None).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let r1 = format!("{}/one:v1", registry.addr());
    let r2 = format!("{}/two:v1", registry.addr());
    s.pull(&r1, PullPolicy::Always, &NoProgress).await.unwrap();
    let second = s.pull(&r2, PullPolicy::Always, &NoProgress).await.unwrap();
    assert_eq!(
        second.reused,
        vec![base.digest()],
        "shared base layer reused"
    );
    assert_eq!(s.list().unwrap().len(), 2);

    // Debris of a pull killed mid-way is never trusted and is pruned.
    let debris = tmp
        .path()
        .join("images/tmp")
        .join(format!("sha256-{}", "0".repeat(64)));
    fs::create_dir_all(debris.join("half")).unwrap();

    s.remove(&r1).unwrap();
    assert!(s.remove(&r1).is_err(), "removing twice is an error");
    let report = s.prune().await.unwrap();
    assert_eq!(report.layers_removed, 1);
    assert_eq!(report.temp_removed, 1);
    assert!(s.layer_dir(&base.digest()).exists());
    assert!(!s.layer_dir(&one.layers[1].digest()).exists());
    assert!(s.lookup(&r2).unwrap().is_some());
    assert!(s.lookup(&r1).unwrap().is_none());
    let never = s
        .pull(&r1, PullPolicy::Never, &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(never, StoreError::NotPresent(_)), "{never}");
    let ls = s.list().unwrap();
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0].reference.as_deref(), Some(r2.as_str()));
}
