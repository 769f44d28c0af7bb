//! Tests that load the machine on purpose (the bomb attacks) run alone: every gateway a test
//! starts holds a share of this gate, and a test that must be alone waits until no other
//! gateway runs, then keeps new ones from starting until it ends. Sharing never waits on a
//! *waiting* exclusive holder, so a test that starts a second gateway cannot deadlock.

use std::sync::Mutex;

use tokio::sync::Notify;

struct Gate {
    sharing: usize,
    alone: bool,
}

static GATE: Mutex<Gate> = Mutex::new(Gate {
    sharing: 0,
    alone: false,
});
static CHANGED: Notify = Notify::const_new();

/// What a gateway holds while it runs.
pub enum Hold {
    Shared,
    Alone,
}

fn gate() -> std::sync::MutexGuard<'static, Gate> {
    GATE.lock().unwrap_or_else(|e| e.into_inner())
}

pub async fn acquire(alone: bool) -> Hold {
    loop {
        // Registered before the gate is read, so a release in between is not missed.
        let changed = CHANGED.notified();
        if let Some(hold) = try_acquire(alone) {
            return hold;
        }
        changed.await;
    }
}

fn try_acquire(alone: bool) -> Option<Hold> {
    let mut gate = gate();
    if alone && gate.sharing == 0 && !gate.alone {
        gate.alone = true;
        return Some(Hold::Alone);
    }
    if !alone && !gate.alone {
        gate.sharing += 1;
        return Some(Hold::Shared);
    }
    None
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut gate = gate();
        match self {
            Hold::Shared => gate.sharing -= 1,
            Hold::Alone => gate.alone = false,
        }
        drop(gate);
        CHANGED.notify_waiters();
    }
}
