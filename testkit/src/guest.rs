//! What the VM tests boot: the guest agent built from this tree, and a busybox image layer.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The guest agent built from this tree (static musl, release: what deploy/setup-vm-kernel.sh
/// installs), built at most once per test process. Cargo's own lock serialises test processes
/// that build it at the same time.
pub fn agent() -> &'static Path {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT.get_or_init(|| {
        let root = workspace_root();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "guest-agent"])
            .args(["--target", "x86_64-unknown-linux-musl", "--release"])
            .current_dir(&root)
            .status()
            .expect("run cargo to build the guest agent");
        assert!(status.success(), "building the guest agent failed");
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join("x86_64-unknown-linux-musl/release/guest-agent")
    })
}

/// The guest kernel directory (see [`crate::kernel_dir`]), which must hold `boot/`.
pub fn kernel_dir() -> PathBuf {
    let dir = crate::kernel_dir();
    assert!(
        dir.join("boot").is_dir(),
        "no guest kernel in {}: run deploy/setup-vm-kernel.sh (deploy/setup.sh does)",
        dir.display()
    );
    dir
}

/// The workspace this crate is part of.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ sits in the workspace root")
        .to_path_buf()
}

/// A one-layer busybox image in `dir/layer`, as the image store would unpack it: the static
/// busybox with a link per applet, the usual top-level directories and root in /etc/passwd.
pub fn busybox_layer(dir: &Path) -> PathBuf {
    let layer = dir.join("layer");
    for d in ["bin", "etc", "tmp", "root", "proc", "sys", "dev", "usr/bin"] {
        std::fs::create_dir_all(layer.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", layer.join("bin/busybox"))
        .expect("/bin/busybox (busybox-static) is installed by deploy/setup.sh");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let _ = std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet));
    }
    std::fs::write(layer.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    layer
}
