//! The executors the agent runs jobs with: the container executor always, the VM executor
//! when this runner accepts `vm` jobs. Leftovers of a killed agent (sandboxes, cgroups,
//! mounts) are reconciled before the first job.

use std::sync::Arc;

use anyhow::Context as _;
use executors::container::{ContainerConfig, ContainerExecutor};
use executors::image::ImageStore;
use executors::ImageProvider;

use crate::cmd::Context;
use crate::config::Config;
use crate::jobrun::Executors;

pub fn build(ctx: &Context, cfg: &Config, isolations: &[String]) -> anyhow::Result<Executors> {
    let store =
        ImageStore::open(ctx.paths.images(), cfg.registries.clone()).with_context(|| {
            format!(
                "cannot open the image store in {}",
                ctx.paths.images().display()
            )
        })?;
    let images: Arc<dyn ImageProvider> = Arc::new(store);
    let mut c = ContainerConfig::new(ctx.paths.state().join("agent-containers"), images.clone());
    // `image: host` steps must not see the runner's own token and spool.
    c.masked_paths = vec![ctx.paths.data_dir.clone(), ctx.paths.config_file.clone()];
    let container = ContainerExecutor::new(c).context("cannot start the container executor")?;
    let cleaned = container
        .reconcile()
        .context("cannot clean up sandboxes left by a previous agent")?;
    if !cleaned.is_empty() {
        tracing::info!(sandboxes = ?cleaned, "removed sandboxes a previous agent left behind");
    }
    let vm = if isolations.iter().any(|i| i == "vm") {
        let vcfg = cfg.vm.to_vm_config(&ctx.paths.data_dir)?;
        match executors::vm::VmExecutor::new(vcfg, images) {
            Ok(v) => Some(Arc::new(v) as Arc<dyn executors::Executor>),
            Err(e) => {
                // Jobs with VM steps then fail with a clear reason in their log.
                tracing::warn!(error = %e, "the VM executor is unavailable on this host");
                None
            }
        }
    } else {
        None
    };
    Ok(Executors {
        container: Arc::new(container),
        vm,
    })
}
