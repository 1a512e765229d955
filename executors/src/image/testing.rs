//! Helpers for tests anywhere in the project (cargo feature `testing`): a throwaway Docker
//! registry (Debian's `docker-registry`) on 127.0.0.1, layer tarballs built in memory, images
//! pushed with `oci-client`, and a ready busybox image.
//!
//! ```text
//! let (registry, reference) = executors::image::testing::serve_busybox().await?;
//! // reference = "127.0.0.1:<port>/busybox:latest"; the registry stops when dropped.
//! ```

use std::error::Error;
use std::fs;
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{
    IMAGE_CONFIG_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE, IMAGE_LAYER_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde_json::json;

use super::verify::Digest;

/// Entry kinds for [`LayerBuilder::raw`] and [`LayerBuilder::device`].
pub use tar::EntryType;

pub type TestResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// The layer media type for zstd (oci-client has no constant for it).
pub const IMAGE_LAYER_ZSTD_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A `docker-registry` serving from a temp dir on a free 127.0.0.1 port; killed on drop.
#[derive(Debug)]
pub struct TestRegistry {
    addr: String,
    dir: tempfile::TempDir,
    child: Child,
}

impl TestRegistry {
    /// An anonymous registry.
    pub fn start() -> TestResult<TestRegistry> {
        Self::launch(None)
    }

    /// A registry requiring HTTP basic auth (htpasswd, bcrypt) for `user`/`password`.
    pub fn start_with_auth(user: &str, password: &str) -> TestResult<TestRegistry> {
        Self::launch(Some((user, password)))
    }

    fn launch(auth: Option<(&str, &str)>) -> TestResult<TestRegistry> {
        if !Path::new(REGISTRY_BIN).exists() {
            return Err(format!(
                "{REGISTRY_BIN} is missing: install Debian's docker-registry (deploy/setup.sh)"
            )
            .into());
        }
        let dir = tempfile::Builder::new()
            .prefix("runner-registry")
            .tempdir()?;
        let mut last_err = String::new();
        // The port is free when picked but could be taken before the registry binds it.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let addr = format!("127.0.0.1:{port}");
            let auth_yaml = match auth {
                Some((user, password)) => {
                    let out = Command::new("htpasswd")
                        .args(["-Bbn", user, password])
                        .output()
                        .map_err(|e| format!("cannot run htpasswd (apache2-utils): {e}"))?;
                    if !out.status.success() {
                        return Err("htpasswd failed".into());
                    }
                    fs::write(dir.path().join("htpasswd"), &out.stdout)?;
                    format!(
                        "auth:\n  htpasswd:\n    realm: runner-test\n    path: {}\n",
                        dir.path().join("htpasswd").display()
                    )
                }
                None => String::new(),
            };
            let config = format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth_yaml}",
                dir.path().join("storage").display()
            );
            let config_path = dir.path().join("config.yml");
            fs::write(&config_path, config)?;
            let log = fs::File::create(dir.path().join("registry.log"))?;
            let mut child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if TcpStream::connect(&addr).is_ok() {
                    return Ok(TestRegistry { addr, dir, child });
                }
                if let Some(status) = child.try_wait()? {
                    last_err = format!(
                        "docker-registry exited ({status}): {}",
                        fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
                    );
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = "docker-registry did not listen within 15 s".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err(last_err.into())
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Where the registry keeps a blob's bytes (to corrupt it in tests).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's log (access log included).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many times a blob was served with GET (from the access log).
    pub fn blob_gets(&self, digest: &str) -> usize {
        let blob = format!("/blobs/{digest}");
        self.log()
            .lines()
            .filter(|l| l.contains("GET /v2/") && l.contains(&blob))
            .filter(|l| l.contains("\" 200 ") || l.contains("\" 307 "))
            .count()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a test layer is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// A layer blob ready to push.
#[derive(Debug, Clone)]
pub struct Layer {
    pub blob: Vec<u8>,
    pub media_type: String,
    /// sha256 of the uncompressed tar.
    pub diff_id: String,
    digest: String,
}

impl Layer {
    pub fn new(tar: Vec<u8>, compression: Compression) -> Layer {
        let diff_id = Digest::of(&tar).to_string();
        let (blob, media_type) = match compression {
            Compression::None => (tar, IMAGE_LAYER_MEDIA_TYPE),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&tar).expect("in-memory gzip");
                (
                    e.finish().expect("in-memory gzip"),
                    IMAGE_LAYER_GZIP_MEDIA_TYPE,
                )
            }
            Compression::Zstd => (
                zstd::encode_all(&tar[..], 3).expect("in-memory zstd"),
                IMAGE_LAYER_ZSTD_MEDIA_TYPE,
            ),
        };
        Layer {
            digest: Digest::of(&blob).to_string(),
            blob,
            media_type: media_type.to_string(),
            diff_id,
        }
    }

    pub fn digest(&self) -> String {
        self.digest.clone()
    }
}

/// An image to push: layers bottom first, and a few config fields.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub layers: Vec<Layer>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// OCI architecture name (`amd64`, `arm64`).
    pub architecture: String,
}

impl TestImage {
    pub fn new(layers: Vec<Layer>) -> TestImage {
        TestImage {
            layers,
            env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
            working_dir: None,
            architecture: "amd64".into(),
        }
    }

    pub fn config_json(&self) -> Vec<u8> {
        let mut config = json!({ "Env": self.env });
        if let Some(w) = &self.working_dir {
            config["WorkingDir"] = json!(w);
        }
        serde_json::to_vec(&json!({
            "architecture": self.architecture,
            "os": "linux",
            "config": config,
            "rootfs": {
                "type": "layers",
                "diff_ids": self.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
        }))
        .expect("serialising JSON values cannot fail")
    }

    pub fn manifest_json(&self) -> Vec<u8> {
        let config = self.config_json();
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_IMAGE_MEDIA_TYPE,
            "config": {
                "mediaType": IMAGE_CONFIG_MEDIA_TYPE,
                "digest": Digest::of(&config).to_string(),
                "size": config.len(),
            },
            "layers": self.layers.iter().map(|l| json!({
                "mediaType": l.media_type,
                "digest": l.digest(),
                "size": l.blob.len(),
            })).collect::<Vec<_>>(),
        }))
        .expect("serialising JSON values cannot fail")
    }

    /// The manifest digest this image will have once pushed.
    pub fn digest(&self) -> String {
        Digest::of(&self.manifest_json()).to_string()
    }
}

fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        use_monolithic_push: true,
        ..Default::default()
    })
}

fn registry_auth(auth: Option<(&str, &str)>) -> RegistryAuth {
    match auth {
        Some((u, p)) => RegistryAuth::Basic(u.into(), p.into()),
        None => RegistryAuth::Anonymous,
    }
}

async fn push_blobs(c: &Client, r: &Reference, image: &TestImage) -> TestResult<()> {
    for l in &image.layers {
        c.push_blob(r, l.blob.clone(), &l.digest()).await?;
    }
    let config = image.config_json();
    let d = Digest::of(&config).to_string();
    c.push_blob(r, config, &d).await?;
    Ok(())
}

/// Push `image` as `<registry>/<repo_tag>`; returns the manifest digest.
pub async fn push(
    registry: &str,
    repo_tag: &str,
    image: &TestImage,
    auth: Option<(&str, &str)>,
) -> TestResult<String> {
    let r: Reference = format!("{registry}/{repo_tag}").parse()?;
    let c = client();
    c.auth(&r, &registry_auth(auth), RegistryOperation::Push)
        .await?;
    push_blobs(&c, &r, image).await?;
    c.push_manifest_raw(
        &r,
        image.manifest_json(),
        http::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE),
    )
    .await?;
    Ok(image.digest())
}

/// Push several single-platform images and an index naming them (by their `architecture`)
/// as `<registry>/<repo_tag>`; returns the index digest.
pub async fn push_index(
    registry: &str,
    repo_tag: &str,
    images: &[TestImage],
) -> TestResult<String> {
    let r: Reference = format!("{registry}/{repo_tag}").parse()?;
    let c = client();
    c.auth(&r, &RegistryAuth::Anonymous, RegistryOperation::Push)
        .await?;
    let mut entries = Vec::new();
    for image in images {
        push_blobs(&c, &r, image).await?;
        let body = image.manifest_json();
        let pinned = r.clone_with_digest(image.digest());
        c.push_manifest_raw(
            &pinned,
            body.clone(),
            http::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE),
        )
        .await?;
        entries.push(json!({
            "mediaType": OCI_IMAGE_MEDIA_TYPE,
            "digest": image.digest(),
            "size": body.len(),
            "platform": { "architecture": image.architecture, "os": "linux" },
        }));
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_IMAGE_INDEX_MEDIA_TYPE,
        "manifests": entries,
    }))?;
    let digest = Digest::of(&index).to_string();
    c.push_manifest_raw(
        &r,
        index,
        http::HeaderValue::from_static(OCI_IMAGE_INDEX_MEDIA_TYPE),
    )
    .await?;
    Ok(digest)
}

/// Builds a layer tarball entry by entry. Times and owners are fixed so the same calls give
/// the same bytes (and digest).
pub struct LayerBuilder {
    b: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

const MTIME: u64 = 1_700_000_000;

impl LayerBuilder {
    pub fn new() -> LayerBuilder {
        LayerBuilder {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(MTIME);
        h.set_size(size);
        h
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0, 0, 0);
        self.b
            .append_data(&mut h, path, io::empty())
            .expect("in-memory tar");
        self
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.file_owned(path, mode, 0, 0, data)
    }

    pub fn file_owned(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        data: &[u8],
    ) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, uid, gid, data.len() as u64);
        self.b
            .append_data(&mut h, path, data)
            .expect("in-memory tar");
        self
    }

    /// A file carrying extended attributes (PAX `SCHILY.xattr.*` records).
    pub fn file_with_xattrs(
        &mut self,
        path: &str,
        mode: u32,
        data: &[u8],
        xattrs: &[(&str, &[u8])],
    ) -> &mut Self {
        let pax: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        self.b
            .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v)))
            .expect("in-memory tar");
        self.file(path, mode, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0, 0, 0);
        self.b
            .append_link(&mut h, path, target)
            .expect("in-memory tar");
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0, 0, 0);
        self.b
            .append_link(&mut h, path, target)
            .expect("in-memory tar");
        self
    }

    pub fn device(
        &mut self,
        path: &str,
        kind: tar::EntryType,
        major: u32,
        minor: u32,
    ) -> &mut Self {
        let mut h = Self::header(kind, 0o666, 0, 0, 0);
        h.set_device_major(major)
            .expect("gnu header has device fields");
        h.set_device_minor(minor)
            .expect("gnu header has device fields");
        self.b
            .append_data(&mut h, path, io::empty())
            .expect("in-memory tar");
        self
    }

    /// Hide `path` of the layers below.
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let p = Path::new(path);
        let name = format!(
            ".wh.{}",
            p.file_name().and_then(|n| n.to_str()).unwrap_or("")
        );
        let full = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => format!("{}/{name}", d.display()),
            _ => name,
        };
        self.file(&full, 0o644, b"")
    }

    /// Hide everything the layers below have in `dir`.
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(
            &format!("{}/.wh..wh..opq", dir.trim_end_matches('/')),
            0o644,
            b"",
        )
    }

    /// An entry written byte for byte, bypassing the `tar` crate's path checks: for building
    /// hostile layers (`../x`, links out of the root).
    pub fn raw(
        &mut self,
        name: &str,
        kind: tar::EntryType,
        link: Option<&str>,
        data: &[u8],
    ) -> &mut Self {
        let mut h = Self::header(kind, 0o644, 0, 0, data.len() as u64);
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            old.linkname = [0; 100];
            old.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        self.b.append(&h, data).expect("in-memory tar");
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().expect("in-memory tar")
    }
}

/// A root filesystem of busybox-static: `/bin/busybox`, a symlink per applet in `/bin`,
/// `/usr/bin/env`, `/etc/passwd` and `/etc/group`, `/tmp`, `/root`, and mount points.
pub fn busybox_layer() -> TestResult<Vec<u8>> {
    let busybox = fs::read("/bin/busybox")
        .map_err(|e| format!("cannot read /bin/busybox (install busybox-static): {e}"))?;
    let list = Command::new("/bin/busybox").arg("--list").output()?;
    let applets = String::from_utf8(list.stdout)?;
    let mut b = LayerBuilder::new();
    for d in ["bin", "dev", "etc", "proc", "sys", "usr", "usr/bin", "var"] {
        b.dir(d, 0o755);
    }
    b.dir("root", 0o700).dir("tmp", 0o1777);
    b.file("bin/busybox", 0o755, &busybox);
    for a in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        b.symlink(&format!("bin/{a}"), "busybox");
    }
    b.symlink("usr/bin/env", "/bin/busybox");
    b.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    b.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n");
    Ok(b.finish())
}

/// The busybox image: one gzip layer from [`busybox_layer`].
pub fn busybox_image() -> TestResult<TestImage> {
    Ok(TestImage::new(vec![Layer::new(
        busybox_layer()?,
        Compression::Gzip,
    )]))
}

/// Start a registry and push the busybox image to it as `busybox:latest`. Returns the
/// registry (keep it alive) and the reference to pull, `127.0.0.1:<port>/busybox:latest`.
pub async fn serve_busybox() -> TestResult<(TestRegistry, String)> {
    let registry = TestRegistry::start()?;
    push(registry.addr(), "busybox:latest", &busybox_image()?, None).await?;
    let reference = format!("{}/busybox:latest", registry.addr());
    Ok((registry, reference))
}
