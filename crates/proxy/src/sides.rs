//! Polls only the futures that asked to be polled.
//!
//! A relay waits on several things at once (the client's socket, the upstream's, the drain
//! signal, the token's expiry) in one task. `tokio::select!` polls every branch on every
//! wake-up, so each message read from one socket also paid for a readiness check of the
//! other socket and of the drain signal: about a tenth of relaying a transaction under
//! callgrind. Here each branch gets a waker of its own that marks it before waking the
//! task, and a wake-up polls only the marked branches. Every branch is polled on the first
//! poll, and a branch that returned `Pending` has registered its own waker, so none is
//! forgotten.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Wake, Waker};

/// Which branches were woken, and the task to wake.
struct Hub {
    fired: AtomicU32,
    /// The task's waker as first seen: a tokio task keeps one waker for its whole life, so
    /// this is read without a lock on every wake-up and poll.
    first: OnceLock<Waker>,
    /// Set once the task was polled with another waker; from then on `task` is used.
    moved: AtomicBool,
    task: Mutex<Option<Waker>>,
}

struct Branch {
    hub: Arc<Hub>,
    bit: u32,
}

impl Wake for Branch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let hub = &self.hub;
        hub.fired.fetch_or(self.bit, Ordering::AcqRel);
        if !hub.moved.load(Ordering::Acquire) {
            if let Some(w) = hub.first.get() {
                w.wake_by_ref();
            }
            return;
        }
        let task = hub.task.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = task.as_ref() {
            w.wake_by_ref();
        }
    }
}

/// Up to 32 branches, numbered from 0.
pub(crate) struct Sides {
    hub: Arc<Hub>,
    wakers: Vec<Waker>,
}

impl Sides {
    pub(crate) fn new(branches: u32) -> Sides {
        let branches = branches.min(32);
        let all = if branches == 32 {
            u32::MAX
        } else {
            (1 << branches) - 1
        };
        let hub = Arc::new(Hub {
            fired: AtomicU32::new(all),
            first: OnceLock::new(),
            moved: AtomicBool::new(false),
            task: Mutex::new(None),
        });
        let wakers = (0..branches)
            .map(|i| {
                Waker::from(Arc::new(Branch {
                    hub: Arc::clone(&hub),
                    bit: 1 << i,
                }))
            })
            .collect();
        Sides { hub, wakers }
    }

    /// At the start of the task's poll: remembers its waker and returns the branches to
    /// poll now (each cleared, so a wake-up during their poll marks them again).
    pub(crate) fn begin(&self, cx: &Context<'_>) -> u32 {
        let hub = &self.hub;
        if !hub.moved.load(Ordering::Acquire) {
            let first = hub.first.get_or_init(|| cx.waker().clone());
            if !first.will_wake(cx.waker()) {
                *hub.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
                hub.moved.store(true, Ordering::Release);
            }
        } else {
            let mut task = hub.task.lock().unwrap_or_else(|p| p.into_inner());
            match task.as_ref() {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *task = Some(cx.waker().clone()),
            }
        }
        hub.fired.swap(0, Ordering::AcqRel)
    }

    /// The context to poll branch `i` with.
    pub(crate) fn context(&self, i: usize) -> Context<'_> {
        Context::from_waker(&self.wakers[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A branch: counts its polls, keeps the last waker it was given.
    #[derive(Default)]
    struct Probe {
        polls: usize,
        waker: Option<Waker>,
    }

    impl Probe {
        fn poll(&mut self, cx: &Context<'_>) {
            self.polls += 1;
            self.waker = Some(cx.waker().clone());
        }
        fn wake(&self) {
            self.waker.as_ref().expect("polled once").wake_by_ref();
        }
    }

    #[derive(Default)]
    struct TaskWakes(AtomicUsize);
    impl Wake for TaskWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_all(sides: &Sides, cx: &Context<'_>, probes: &mut [Probe]) {
        let fired = sides.begin(cx);
        for (i, p) in probes.iter_mut().enumerate() {
            if fired & (1 << i) != 0 {
                p.poll(&sides.context(i));
            }
        }
    }

    #[test]
    fn a_wake_up_polls_only_the_woken_branches() {
        let task = Arc::new(TaskWakes::default());
        let waker = Waker::from(Arc::clone(&task));
        let cx = Context::from_waker(&waker);
        let sides = Sides::new(3);
        let mut probes: [Probe; 3] = Default::default();

        poll_all(&sides, &cx, &mut probes);
        assert_eq!(
            probes.iter().map(|p| p.polls).collect::<Vec<_>>(),
            [1, 1, 1]
        );

        probes[1].wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task is woken");
        poll_all(&sides, &cx, &mut probes);
        assert_eq!(
            probes.iter().map(|p| p.polls).collect::<Vec<_>>(),
            [1, 2, 1]
        );

        // Two wake-ups before the next poll: both branches, once each.
        probes[0].wake();
        probes[2].wake();
        poll_all(&sides, &cx, &mut probes);
        assert_eq!(
            probes.iter().map(|p| p.polls).collect::<Vec<_>>(),
            [2, 2, 2]
        );

        // A poll with nothing woken polls nothing.
        poll_all(&sides, &cx, &mut probes);
        assert_eq!(
            probes.iter().map(|p| p.polls).collect::<Vec<_>>(),
            [2, 2, 2]
        );
    }

    /// tokio's cooperative budget makes a resource wake its own task from inside a poll:
    /// the branch must be polled again, not forgotten because its mark was just cleared.
    #[test]
    fn a_wake_up_from_inside_a_poll_is_kept() {
        let task = Arc::new(TaskWakes::default());
        let waker = Waker::from(Arc::clone(&task));
        let cx = Context::from_waker(&waker);
        let sides = Sides::new(2);
        let fired = sides.begin(&cx);
        assert_eq!(fired, 0b11);
        sides.context(1).waker().wake_by_ref(); // during branch 1's poll
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert_eq!(sides.begin(&cx), 0b10, "branch 1 again, branch 0 not");
        assert_eq!(sides.begin(&cx), 0);
    }

    #[test]
    fn a_new_task_waker_replaces_the_old_one() {
        let first = Arc::new(TaskWakes::default());
        let second = Arc::new(TaskWakes::default());
        let sides = Sides::new(1);
        let mut probes: [Probe; 1] = Default::default();
        let w1 = Waker::from(Arc::clone(&first));
        poll_all(&sides, &Context::from_waker(&w1), &mut probes);
        let w2 = Waker::from(Arc::clone(&second));
        poll_all(&sides, &Context::from_waker(&w2), &mut probes);
        probes[0].wake();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
    }
}
