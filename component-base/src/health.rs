//! Whether a component running inside another process is still up: `rkube up` runs the
//! scheduler and the controller-manager as tasks of its one process, and its apiserver
//! answers `kubectl get componentstatuses` from this instead of probing their ports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Shared between a component's task (which holds it up) and whoever reports on it.
#[derive(Clone, Debug, Default)]
pub struct Running(Arc<AtomicBool>);

impl Running {
    /// Whether the component's task is running now.
    pub fn is_running(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Marks the component running until the guard is dropped, as it is when the
    /// component's task ends (returns, fails or panics).
    pub fn hold(&self) -> RunningGuard {
        self.0.store(true, Ordering::Release);
        RunningGuard(self.0.clone())
    }
}

/// See [`Running::hold`].
#[derive(Debug)]
pub struct RunningGuard(Arc<AtomicBool>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_while_held() {
        let running = Running::default();
        assert!(!running.is_running(), "not running before its task starts");
        let guard = running.hold();
        assert!(running.clone().is_running());
        drop(guard);
        assert!(!running.is_running(), "not running once its task ended");
    }
}
