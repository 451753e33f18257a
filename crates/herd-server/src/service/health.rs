//! Server lifecycle as health probes see it: live while the process answers; ready once the
//! pinned models are preloaded, and not ready again as soon as shutdown begins, so load
//! balancers and Kubernetes stop sending new requests before the listener closes.

use std::sync::atomic::{AtomicBool, Ordering};

/// Shared by the health routes, the preload task and the shutdown signal.
#[derive(Debug, Default)]
pub struct Health {
    started: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    /// Not ready until [`Health::mark_started`].
    pub fn starting() -> Health {
        Health::default()
    }

    /// Start-up work (pinned preloads) is done.
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    /// Shutdown began: readiness turns false for good.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_live(&self) -> bool {
        true
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Ready for new requests: started and not draining.
    pub fn is_ready(&self) -> bool {
        self.is_started() && !self.is_draining()
    }
}

#[cfg(test)]
mod tests {
    use super::Health;

    #[test]
    fn ready_only_between_start_and_drain() {
        let h = Health::starting();
        assert!(h.is_live());
        assert!(!h.is_ready(), "not ready before the preloads finished");
        h.mark_started();
        assert!(h.is_ready());
        h.begin_drain();
        assert!(!h.is_ready(), "not ready once shutdown began");
        h.mark_started();
        assert!(!h.is_ready(), "a drain is never undone");
        assert!(h.is_live());
    }
}
