//! Building the executors a runner runs steps with, from its data dir and config: the image
//! store, the container executor (reconciled: what a killed runner left is removed first) and,
//! when wanted and possible, the VM executor. Shared by `runner exec` and the agent.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use executors::container::{ContainerConfig, ContainerExecutor, LocalDirImages};
use executors::image::store::ImageStore;
use executors::vm::VmExecutor;
use executors::ImageProvider;

use super::Executors;
use crate::config::Config;
use crate::paths::Paths;

/// The executors, and what a caller may want to tell the user about them.
pub struct Built {
    pub executors: Executors,
    /// Why there is no VM executor, when one was wanted.
    pub vm_unavailable: Option<String>,
    /// Sandboxes of a previous (killed) runner that were removed.
    pub reconciled: Vec<String>,
}

/// Build the executors. `container_state`: the container executor's state directory, owned
/// by this process alone (reconciling it removes every sandbox recorded there).
/// `want_vm`: also start the VM executor (it prepares a guest initramfs, so it is only built
/// when a step may need it).
pub async fn build(
    paths: &Paths,
    config: &Config,
    container_state: &Path,
    want_vm: bool,
) -> anyhow::Result<Built> {
    let images: Arc<dyn ImageProvider> = Arc::new(
        ImageStore::open(paths.images(), config.registries.clone())
            .with_context(|| format!("cannot open the image store {}", paths.images().display()))?,
    );
    let mut cfg = ContainerConfig::new(container_state, images.clone());
    cfg.scratch = config.container.scratch()?;
    // `image: host` steps must not see the runner's own data (images, other jobs' workspaces,
    // state) nor its config (tokens).
    cfg.masked_paths = vec![paths.data_dir.clone()];
    if let Some(dir) = paths.config_file.parent().filter(|d| d.is_dir()) {
        cfg.masked_paths.push(dir.to_path_buf());
    }
    let container = ContainerExecutor::new(cfg).context("cannot start the container executor")?;
    let reconciled = container
        .reconcile()
        .context("cannot remove the sandboxes a previous runner left")?;
    let (vm, vm_unavailable) = if want_vm {
        let vcfg = config.vm.to_vm_config(&paths.data_dir)?;
        let imgs = images.clone();
        match tokio::task::spawn_blocking(move || VmExecutor::new(vcfg, imgs)).await? {
            Ok(v) => (Some(Arc::new(v) as Arc<dyn executors::Executor>), None),
            Err(e) => (None, Some(e.to_string())),
        }
    } else {
        (None, None)
    };
    Ok(Built {
        executors: Executors {
            container: Arc::new(container),
            vm,
        },
        vm_unavailable,
        reconciled,
    })
}

/// Tear down every sandbox recorded in the container state directory `dir` of a runner that
/// died (processes, cgroups, mounts, veths). Returns their names.
pub fn reconcile_container_state(dir: &Path) -> anyhow::Result<Vec<String>> {
    // Only the state matters here: no image is resolved while reconciling.
    let cfg = ContainerConfig::new(dir, Arc::new(LocalDirImages::new()));
    let exec = ContainerExecutor::new(cfg).context("cannot start the container executor")?;
    exec.reconcile()
        .with_context(|| format!("cannot remove the sandboxes recorded in {}", dir.display()))
}
