//! `runner exec` with a VM step between two container steps, end to end: the real binary, a
//! real registry on 127.0.0.1, real QEMU with the Debian cloud kernel (from
//! `deploy/setup-vm-kernel.sh`) and the guest agent built from this tree.

#[path = "support/runs.rs"]
mod runs;

use std::path::{Path, PathBuf};
use std::process::Command;

use executors::image::testing::serve_busybox;

/// A runner config whose `[vm]` section points at the guest kernel and a fresh guest agent.
fn vm_config(dir: &Path) -> PathBuf {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[vm]\nkernel_dir = {:?}\nagent = {:?}\nmemory_mib = 256\n",
            testkit::guest::kernel_dir().display().to_string(),
            testkit::guest::agent().display().to_string()
        ),
    )
    .unwrap();
    config
}

/// `runner exec PIPELINE` with its own data dir and config, and no Docker credentials.
fn exec_cmd(data: &Path, config: &Path, pipeline: &Path, tmp: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
    c.arg("--data-dir")
        .arg(data)
        .arg("--config")
        .arg(config)
        .arg("exec")
        .arg(pipeline)
        .env("DOCKER_CONFIG", tmp.join("no-docker"));
    c
}

fn qemu_running_for(dir: &Path) -> bool {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        cmd.contains("qemu-system") && cmd.contains(&needle)
    })
}

#[testkit::needs(root, guest_kernel)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_vm_container_job_through_runner_exec() {
    let (_registry, image) = serve_busybox().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = vm_config(tmp.path());
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("from-source.txt"), "checked out\n").unwrap();
    std::fs::write(
        src.join("pipeline.yml"),
        format!(
            "name: mixed\n\
             defaults:\n  image: {image}\n  isolation: container\n  timeout: 2m\n\
             jobs:\n  j:\n    steps:\n\
             \x20     - name: c1\n        run: cat from-source.txt; echo one > step1.txt; uname -r > c-kernel\n\
             \x20     - name: v\n        isolation: vm\n        run: cat step1.txt; uname -r > vm-kernel; echo two > step2.txt; echo junk > /etc/outside\n\
             \x20     - name: c2\n        run: cat step2.txt; test ! -e /etc/outside && echo outside-gone; cmp -s c-kernel vm-kernel || echo kernels-differ\n"
        ),
    )
    .unwrap();
    let out = exec_cmd(&data, &config, &src.join("pipeline.yml"), tmp.path())
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("vm (qemu, "),
        "the step header names the backend: {text}"
    );
    for want in [
        "checked out",
        "one",
        "two",
        "outside-gone",
        "kernels-differ",
    ] {
        assert!(text.contains(want), "missing {want:?}: {text}");
    }
    assert!(!qemu_running_for(tmp.path()), "QEMU left behind");
    // The job's workspace copy is gone; the source tree is untouched.
    assert!(!src.join("step1.txt").exists());
    let left: Vec<_> = std::fs::read_dir(data.join("exec"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let runs = runs::runs_of(&data);
    assert!(runs.is_empty(), "run directories left: {runs:?}");
}

/// Ctrl-C while a VM step runs: `runner exec` exits 130, and neither QEMU nor the job's
/// workspace survives it.
#[testkit::needs(root, guest_kernel)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_a_vm_step_leaves_no_qemu_and_no_workspace() {
    use std::io::{BufRead as _, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let (_registry, image) = serve_busybox().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = vm_config(tmp.path());
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("pipeline.yml"),
        format!(
            "name: cancel\n\
             jobs:\n  j:\n    steps:\n\
             \x20     - name: v\n        image: {image}\n        isolation: vm\n        run: echo vm-step-started; sleep 120\n"
        ),
    )
    .unwrap();
    let mut child = exec_cmd(&data, &config, &src.join("pipeline.yml"), tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Under TCG the guest takes a few seconds to boot; wait for the step's own output.
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) if line.contains("vm-step-started") => break,
            Ok(line) => seen.push(line),
            Err(_) => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the VM step never started: {seen:?}"
        );
    }
    assert!(qemu_running_for(tmp.path()), "the step runs in QEMU");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "runner exec did not stop after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(!qemu_running_for(tmp.path()), "QEMU left behind");
    let left: Vec<_> = std::fs::read_dir(data.join("exec"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let runs = runs::runs_of(&data);
    assert!(runs.is_empty(), "run directories left: {runs:?}");
}
