//! `runner image`: pull, list, remove, prune and import images in the local store
//! (`<data-dir>/images`). On a terminal a pull shows one progress bar per layer; in CI logs
//! it prints one line per image.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use executors::image::{
    human_size, short, ImageStore, PullEvent, PullOutcome, PullPolicy, PullProgress,
};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Context;
use crate::config::Config;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Fetch an image (always asks the registry what a tag points to)
    Pull(PullArgs),
    /// List stored images
    Ls,
    /// Forget images (by reference or digest); their layers go at the next prune
    Rm {
        #[arg(required = true, value_name = "REF")]
        references: Vec<String>,
    },
    /// Delete layers no stored image uses, and leftovers of interrupted pulls
    Prune,
    /// Import an OCI image layout directory or a `docker save` tarball
    Import(ImportArgs),
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// Image reference: `alpine:3.20`, `ghcr.io/org/img@sha256:...`, `127.0.0.1:5000/x:y`
    pub reference: String,
    /// Print only the final line, even on a terminal
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// OCI layout directory, or a tarball from `docker save` (or of an OCI layout)
    pub path: PathBuf,
    /// Reference to store the image under (default: the name recorded in the archive)
    #[arg(long, value_name = "REF")]
    pub tag: Option<String>,
}

pub async fn run(ctx: &Context, cmd: Command) -> anyhow::Result<u8> {
    let config = Config::load(&ctx.paths.config_file)?;
    let store = ImageStore::open(ctx.paths.images(), config.registries.clone())
        .context("cannot open the image store")?;
    match cmd {
        Command::Pull(a) => pull(&store, a).await,
        Command::Ls => ls(&store),
        Command::Rm { references } => {
            for r in references {
                for gone in store.remove(&r)? {
                    println!("removed {gone}");
                }
            }
            Ok(0)
        }
        Command::Prune => {
            let report = store.prune().await?;
            println!(
                "removed {} unused layers and {} leftovers of interrupted pulls",
                report.layers_removed, report.temp_removed
            );
            if report.layers_in_use > 0 {
                println!(
                    "kept {} layers of removed images that running steps still use",
                    report.layers_in_use
                );
            }
            Ok(0)
        }
        Command::Import(a) => {
            let outs = store.import(&a.path, a.tag.as_deref()).await?;
            for o in outs {
                println!("{}", summary(&o));
            }
            Ok(0)
        }
    }
}

async fn pull(store: &ImageStore, a: PullArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let tty = !a.quiet && std::io::stderr().is_terminal();
    let out = if tty {
        let bars = Bars::new();
        let res = store.pull(&a.reference, PullPolicy::Always, &bars).await;
        bars.finish();
        res
    } else {
        store
            .pull(
                &a.reference,
                PullPolicy::Always,
                &executors::image::NoProgress,
            )
            .await
    }?;
    println!(
        "{} in {:.2} s",
        summary(&out),
        started.elapsed().as_secs_f64()
    );
    Ok(0)
}

fn summary(o: &PullOutcome) -> String {
    format!(
        "{}: {} ({} layers, {} downloaded, {})",
        o.reference,
        o.record.digest,
        o.record.layers.len(),
        o.downloaded.len(),
        human_size(o.record.size())
    )
}

fn ls(store: &ImageStore) -> anyhow::Result<u8> {
    let mut rows = store.list()?;
    rows.sort_by(|a, b| a.reference.cmp(&b.reference));
    println!(
        "{:<50} {:<14} {:>7} {:>10}",
        "REFERENCE", "DIGEST", "LAYERS", "SIZE"
    );
    for r in rows {
        println!(
            "{:<50} {:<14} {:>7} {:>10}",
            r.reference.as_deref().unwrap_or("<none>"),
            short(&r.record.digest),
            r.record.layers.len(),
            human_size(r.record.size())
        );
    }
    Ok(0)
}

/// One indicatif bar per layer, on stderr.
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    fn new() -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn bar(&self, digest: &str, size: u64) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        bars.entry(digest.to_string())
            .or_insert_with(|| {
                let pb = self.multi.add(ProgressBar::new(size));
                pb.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                pb.set_prefix(short(digest).to_string());
                pb.enable_steady_tick(Duration::from_millis(200));
                pb
            })
            .clone()
    }

    fn finish(&self) {
        let bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        for pb in bars.values() {
            if !pb.is_finished() {
                pb.abandon();
            }
        }
    }
}

impl PullProgress for Bars {
    fn event(&self, event: PullEvent) {
        match event {
            PullEvent::Resolved { .. } => {}
            PullEvent::LayerCached { digest, size } => {
                let pb = self.bar(&digest, size);
                pb.set_position(size);
                pb.finish_with_message("already present");
            }
            PullEvent::LayerStarted { digest, size } => {
                self.bar(&digest, size).set_message("downloading");
            }
            PullEvent::LayerProgress { digest, done } => {
                self.bar(&digest, 0).set_position(done);
            }
            PullEvent::LayerDone { digest, stats } => {
                let pb = self.bar(&digest, 0);
                pb.set_position(pb.length().unwrap_or(0));
                pb.finish_with_message(format!(
                    "done, {} files, {}",
                    stats.entries,
                    human_size(stats.bytes)
                ));
            }
        }
    }
}
