//! The warm pool: VMs booted ahead of time up to the agent's `Hello`, each handed to exactly
//! one step and then killed. The pool follows the most recent VM shape (image disk, size,
//! network): a step of another shape boots cold and re-targets the pool.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::hypervisor::VmSpec;
use super::session::ReadyVm;
use super::Inner;

pub struct Pool {
    size: usize,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    shape: Option<VmSpec>,
    ready: Vec<ReadyVm>,
    booting: usize,
}

impl Pool {
    pub fn new(size: usize) -> Pool {
        Pool {
            size,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ready VM of exactly this shape, if the pool has one.
    pub fn take(&self, spec: &VmSpec) -> Option<ReadyVm> {
        let mut s = self.lock();
        if s.shape.as_ref() == Some(spec) {
            s.ready.pop()
        } else {
            None
        }
    }

    /// Start boots until the pool (re-targeted to `spec`) is full again. Returns at once.
    pub fn refill(self: &Arc<Self>, inner: &Arc<Inner>, spec: &VmSpec) {
        if self.size == 0 {
            return;
        }
        let missing = {
            let mut s = self.lock();
            if s.shape.as_ref() != Some(spec) {
                s.shape = Some(spec.clone());
                s.ready.clear(); // Dropping a ReadyVm kills its VM.
            }
            let missing = self.size.saturating_sub(s.ready.len() + s.booting);
            s.booting += missing;
            missing
        };
        for _ in 0..missing {
            let pool = Arc::downgrade(self);
            let inner = inner.clone();
            let spec = spec.clone();
            tokio::spawn(async move { boot_one(pool, inner, spec).await });
        }
    }

    /// Re-target to `spec` and wait until the pool is full.
    pub async fn fill(self: &Arc<Self>, inner: &Arc<Inner>, spec: VmSpec) {
        self.refill(inner, &spec);
        self.wait_full(inner.cfg.boot_timeout).await;
    }

    /// Wait until every slot holds a ready VM; false on timeout.
    pub async fn wait_full(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            {
                let s = self.lock();
                if s.ready.len() >= self.size {
                    return true;
                }
                if s.booting == 0 {
                    return false;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }
}

async fn boot_one(pool: Weak<Pool>, inner: Arc<Inner>, spec: VmSpec) {
    let result = inner.boot(&spec, &CancellationToken::new()).await;
    // The executor is gone: the VM (if any) is dropped, which kills it.
    let Some(pool) = pool.upgrade() else { return };
    {
        let mut s = pool.lock();
        s.booting = s.booting.saturating_sub(1);
        match result {
            Ok(vm) if s.shape.as_ref() == Some(&spec) => s.ready.push(vm),
            Ok(_) => {} // Re-targeted meanwhile: drop (kill) it.
            Err(e) => tracing::warn!("warm pool: VM did not boot: {e}"),
        }
    }
    pool.changed.notify_waiters();
}
