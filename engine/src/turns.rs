//! Statements that have run long give way to those that have not.
//!
//! A join that finds nothing to emit gives its thread up only between
//! probe batches (`timeslice.rs`), about a second each for a large build
//! side. That lets a statement needing a few turns on the executor through,
//! but one needing many (its partitions hand batches to each other: a
//! `count(*)` over a million rows takes about a hundred) waited a second
//! per turn: behind two such joins on two cores, 75 s.
//!
//! Each statement on the executor has a [`Turn`]. A statement is *light*
//! from the moment it is submitted until one of its joins holds a thread
//! for [`HEAVY_POLL`] in one poll; that makes it *heavy* for the rest of
//! its run. (Joins of shorter polls yield every timeslice and share the
//! threads at that grain; the threshold keeps ordinary analytic joins,
//! whose hash builds can take tens of milliseconds in one poll, out of
//! this.) While any light statement runs, heavy ones run on at most all
//! threads but one (the executor's *lanes*): before each probe batch a
//! heavy statement's join takes a lane, or sleeps (its thread free for
//! others) until one is free (lanes go in the order asked for), looking
//! every [`STEP`] whether light statements still run. So a light
//! statement finds a thread within one probe batch of a heavy join,
//! however many heavy joins run, and heavy statements keep the lanes when
//! light ones never stop. An executor of one thread has no lanes: there a
//! heavy join waits for at most [`GIVE_WAY_FACTOR`] times its statement's
//! longest poll, then runs one batch. While no light statement runs,
//! nothing changes. For a heavy statement, light ones count as running
//! for as long as its longest poll after they stop (within [`GRACE_MIN`]
//! and [`GRACE_MAX`]): a light statement arriving in that time would wait
//! up to that long for a thread. A statement waiting for its reader (the
//! channel to the client full) is not running, so a slow client does not
//! hold others back.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A join that holds its thread this long in one poll makes its statement
/// heavy.
pub const HEAVY_POLL: Duration = Duration::from_millis(100);

/// How often a join waiting for a lane looks again.
pub const STEP: Duration = Duration::from_millis(10);

/// Without lanes, a heavy join waits for at most this many times its
/// statement's longest poll.
pub const GIVE_WAY_FACTOR: u32 = 4;

/// Without lanes, a heavy join waits for at most this long at a time.
pub const GIVE_WAY_MAX: Duration = Duration::from_secs(60);

/// After the last light statement stopped, a heavy statement keeps to the
/// lanes for as long as its longest poll (a light statement arriving in
/// that time would otherwise wait up to that long for a thread), at least
/// this long: the gap between a statement's planning (GetFlightInfo) and
/// its execution (DoGet) on loopback, or between two batches its client
/// reads.
pub const GRACE_MIN: Duration = Duration::from_millis(5);

/// ... and at most this long.
pub const GRACE_MAX: Duration = Duration::from_secs(1);

/// The statements running on one executor.
#[derive(Debug)]
pub(crate) struct Turns {
    /// Light statements running.
    light: AtomicUsize,
    base: Instant,
    /// When the last light statement stopped running: microseconds since
    /// `base`.
    last_light: AtomicU64,
    /// Lanes heavy joins may take while light statements run, handed out
    /// in the order asked for.
    lanes: Arc<Semaphore>,
    /// How many lanes there are.
    lane_count: usize,
}

impl Turns {
    /// The statements of an executor of `threads` workers: heavy ones may
    /// take all but one while light ones run.
    pub fn new(threads: usize) -> Self {
        Self {
            light: AtomicUsize::new(0),
            base: Instant::now(),
            last_light: AtomicU64::new(0),
            lanes: Arc::new(Semaphore::new(threads.saturating_sub(1))),
            lane_count: threads.saturating_sub(1),
        }
    }

    fn micros(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Light statements running now.
    pub fn light(&self) -> usize {
        self.light.load(Ordering::Relaxed)
    }

    /// Whether a light statement runs, or stopped less than `grace` ago.
    pub fn light_within(&self, grace: Duration) -> bool {
        if self.light() > 0 {
            return true;
        }
        let last = self.last_light.load(Ordering::Relaxed);
        last != 0 && Duration::from_micros(self.micros().saturating_sub(last)) < grace
    }

    fn light_started(&self) {
        self.light.fetch_add(1, Ordering::Relaxed);
    }

    /// A light statement stopped running (`paused`) or turned heavy.
    fn light_stopped(&self, paused: bool) {
        if paused {
            // Noted before the count drops, so that no reader sees neither.
            self.last_light
                .store(self.micros().max(1), Ordering::Relaxed);
        }
        self.light.fetch_sub(1, Ordering::Relaxed);
    }

    /// A lane, if one is free.
    #[cfg(test)]
    fn lane(&self) -> Option<Lane> {
        Arc::clone(&self.lanes).try_acquire_owned().ok()
    }
}

/// A lane taken by a heavy join, given back when dropped.
pub(crate) type Lane = OwnedSemaphorePermit;

/// Where one statement stands.
#[derive(Debug, Default, Clone, Copy)]
struct Standing {
    running: bool,
    heavy: bool,
}

impl Standing {
    fn light(self) -> bool {
        self.running && !self.heavy
    }
}

/// One statement's place among the executor's statements.
#[derive(Debug)]
pub(crate) struct Turn {
    turns: Arc<Turns>,
    standing: Mutex<Standing>,
    /// `standing.heavy`, read without the lock.
    is_heavy: AtomicBool,
    /// The longest poll of its joins, in microseconds.
    longest: AtomicU64,
}

impl Turn {
    /// A statement not yet running.
    pub fn new(turns: Arc<Turns>) -> Self {
        Self {
            turns,
            standing: Mutex::new(Standing::default()),
            is_heavy: AtomicBool::new(false),
            longest: AtomicU64::new(0),
        }
    }

    fn update(&self, change: impl FnOnce(&mut Standing)) {
        let mut standing = self.standing.lock().unwrap_or_else(PoisonError::into_inner);
        let was = standing.light();
        change(&mut standing);
        match (was, standing.light()) {
            (false, true) => self.turns.light_started(),
            (true, false) => self.turns.light_stopped(!standing.running),
            _ => {}
        }
    }

    /// The statement runs (`true`) or waits for its reader (`false`).
    pub fn running(&self, running: bool) {
        self.update(|s| s.running = running);
    }

    /// One of the statement's joins held its thread for `poll` (more than
    /// a timeslice); at [`HEAVY_POLL`] or more the statement is heavy from
    /// now on.
    pub fn ran_long(&self, poll: Duration) {
        let micros = u64::try_from(poll.as_micros()).unwrap_or(u64::MAX);
        self.longest.fetch_max(micros, Ordering::Relaxed);
        tracing::trace!(
            poll_us = micros,
            "a join held its thread for more than a timeslice"
        );
        if poll >= HEAVY_POLL && !self.is_heavy.swap(true, Ordering::Relaxed) {
            tracing::debug!(
                poll_ms = poll.as_millis(),
                "a join held its thread long: its statement gives way to light ones from now on"
            );
            self.update(|s| s.heavy = true);
        }
    }

    /// Whether the statement is heavy.
    pub fn is_heavy(&self) -> bool {
        self.is_heavy.load(Ordering::Relaxed)
    }

    /// Whether light statements are running, or stopped less than the
    /// statement's longest poll ago (within [`GRACE_MIN`] and
    /// [`GRACE_MAX`]), so that a heavy one needs a lane.
    pub fn others_waiting(&self) -> bool {
        let longest = Duration::from_micros(self.longest.load(Ordering::Relaxed));
        self.turns.light_within(longest.clamp(GRACE_MIN, GRACE_MAX))
    }

    /// How long one of its joins waits at most on an executor without
    /// lanes: [`GIVE_WAY_FACTOR`] times its longest poll, at most
    /// [`GIVE_WAY_MAX`].
    pub fn budget(&self) -> Duration {
        let longest = Duration::from_micros(self.longest.load(Ordering::Relaxed));
        (longest * GIVE_WAY_FACTOR).min(GIVE_WAY_MAX)
    }

    /// Marks the statement running until the guard is dropped.
    pub fn run(self: &Arc<Self>) -> Running {
        self.running(true);
        Running(Arc::clone(self))
    }
}

/// Keeps a statement running while it lives (`Turn::run`).
#[derive(Debug)]
pub(crate) struct Running(Arc<Turn>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running(false);
    }
}

/// Waits, asleep, until a lane is free (returned, after a yield) or no
/// light statement runs (`None`). An executor without lanes (one thread)
/// waits for at most the statement's budget, so that its heavy statements
/// go on while light ones never stop; with lanes, those are their share.
pub async fn give_way(turn: Arc<Turn>) -> Option<Lane> {
    let until = (turn.turns.lane_count == 0).then(|| Instant::now() + turn.budget());
    // Asked for once: the place in the queue is kept while it waits.
    let lane = Arc::clone(&turn.turns.lanes).acquire_owned();
    tokio::pin!(lane);
    loop {
        if !turn.others_waiting() {
            return None;
        }
        let step = match until {
            Some(until) => {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                left.min(STEP)
            }
            None => STEP,
        };
        tokio::select! {
            lane = &mut lane => {
                tokio::task::yield_now().await;
                return lane.ok();
            }
            () = tokio::time::sleep(step) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_running_statements_that_have_not_run_long_are_light() {
        let turns = Arc::new(Turns::new(2));
        let a = Arc::new(Turn::new(Arc::clone(&turns)));
        let b = Arc::new(Turn::new(Arc::clone(&turns)));
        assert_eq!(turns.light(), 0);
        let running_a = a.run();
        let running_b = b.run();
        assert_eq!(turns.light(), 2);
        a.ran_long(Duration::from_millis(20));
        assert!(!a.is_heavy(), "a short poll makes no statement heavy");
        a.ran_long(Duration::from_millis(200));
        a.ran_long(Duration::from_millis(10));
        assert!(a.is_heavy() && !b.is_heavy());
        assert_eq!(a.budget(), Duration::from_millis(800));
        assert_eq!(turns.light(), 1);
        assert!(a.others_waiting());
        b.running(false); // waits for its reader
        assert_eq!(turns.light(), 0);
        assert!(a.others_waiting(), "light a moment ago");
        std::thread::sleep(Duration::from_millis(200 + 20)); // a's longest poll
        assert!(!a.others_waiting());
        b.running(true);
        drop(running_b);
        assert_eq!(turns.light(), 0);
        drop(running_a);
        assert_eq!(turns.light(), 0);
    }

    #[tokio::test]
    async fn heavy_joins_leave_a_thread_to_light_statements() {
        // Three threads: two lanes for heavy joins while light ones run.
        let turns = Arc::new(Turns::new(3));
        let heavy = Arc::new(Turn::new(Arc::clone(&turns)));
        let _running = heavy.run();
        heavy.ran_long(Duration::from_secs(60));
        let light = Arc::new(Turn::new(Arc::clone(&turns)));

        // Nobody to give way to: no lane needed, no wait.
        let started = Instant::now();
        assert!(give_way(Arc::clone(&heavy)).await.is_none());
        assert!(started.elapsed() < Duration::from_secs(5));

        // A light statement running: two joins take the two lanes, a third
        // waits until one is given back or the light statement ends.
        let running = light.run();
        let first = give_way(Arc::clone(&heavy)).await.expect("a lane");
        let second = give_way(Arc::clone(&heavy)).await.expect("a lane");
        let third = tokio::spawn(give_way(Arc::clone(&heavy)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!third.is_finished(), "a third join ran beside two");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(30), third)
            .await
            .expect("still waiting after a lane was given back")
            .unwrap();
        assert!(third.is_some());
        let fourth = tokio::spawn(give_way(Arc::clone(&heavy)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!fourth.is_finished(), "a third join ran beside two");
        drop(running);
        let fourth = tokio::time::timeout(Duration::from_secs(30), fourth)
            .await
            .expect("still waiting after the light statement ended")
            .unwrap();
        assert!(fourth.is_none(), "no lane needed once nobody is light");
        drop((second, third));
        assert_eq!(turns.lanes.available_permits(), 2);

        // Lanes go in the order asked for: a join that gave one back and
        // asks again queues behind one already waiting.
        let running = light.run();
        let (first, _second) = (turns.lane(), turns.lane());
        let waiting = tokio::spawn(give_way(Arc::clone(&heavy)));
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(first);
        let again = tokio::spawn(give_way(Arc::clone(&heavy)));
        let waiting = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("the first in line got no lane")
            .unwrap();
        assert!(waiting.is_some());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!again.is_finished(), "a join jumped the queue");
        again.abort();
        drop(running);
    }

    #[tokio::test]
    async fn without_lanes_a_heavy_join_waits_no_longer_than_its_budget() {
        // One thread: no lanes, so heavy statements would never run while
        // light ones go on.
        let turns = Arc::new(Turns::new(1));
        let light = Arc::new(Turn::new(Arc::clone(&turns)));
        let _running = light.run();
        let heavy = Arc::new(Turn::new(Arc::clone(&turns)));
        heavy.ran_long(HEAVY_POLL);
        let started = Instant::now();
        assert!(give_way(heavy).await.is_none());
        assert!(started.elapsed() >= HEAVY_POLL * GIVE_WAY_FACTOR);
    }
}
