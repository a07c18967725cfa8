//! Packetization-layer path MTU discovery in the style of RFC 8899 (DPLPMTUD), as a pure state machine:
//! [`Pmtud::next`] says which probe size to send next and how long to wait before it; the caller sends a
//! DF probe of that size to the peer's responder ([`crate::probe`]) and reports whether it was answered
//! with [`Pmtud::observe`]. Nothing here relies on ICMP "fragmentation needed", which networks drop.
//!
//! - **Search**: is the smallest size (`lo`) answered at all (else the path is down, not narrow)? then is
//!   the largest (`hi`, the local link) answered? else binary search between the two.
//! - **Confirm** (RFC 8899's SEARCH_COMPLETE): the found size is probed every [`CONFIRM_EVERY`]. When it
//!   is lost [`MAX_PROBES`] times in a row while `lo` still passes (black hole detection), the path
//!   shrank: search downwards and lower the MTU.
//! - **Raise** (RFC 8899's PMTU_RAISE_TIMER, here [`RAISE_EVERY`] rather than 600 s, so a path that grew
//!   back is used within seconds): probe `hi` again; if it passes, search upwards.
//!
//! A size counts as lost only after [`MAX_PROBES`] unanswered probes, so one dropped packet never lowers
//! the MTU. The path MTU never goes below `lo` (a path down keeps its last MTU).

use std::time::Duration;

/// How often the found path MTU is confirmed with a probe of exactly that size.
pub const CONFIRM_EVERY: Duration = Duration::from_millis(500);
/// How often a larger path MTU is tried while below the local link's.
pub const RAISE_EVERY: Duration = Duration::from_secs(10);
/// Unanswered probes of one size before that size counts as not fitting (RFC 8899's MAX_PROBES).
pub const MAX_PROBES: u8 = 3;

/// Where the search stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Is `lo` answered? `was`: the path MTU before this search, if any.
    CheckLow { was: Option<u32> },
    /// `good` passes; is `hi` answered?
    TryTop { good: u32, was: Option<u32> },
    /// `good` passes, `bad` does not: probing their middle.
    Bisect { good: u32, bad: u32, was: Option<u32> },
    /// The path MTU is `pmtu`; probing it now and then.
    Confirm { pmtu: u32 },
}

/// What an answered or lost probe led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still searching, or nothing changed.
    Pending,
    /// A search ended: the path MTU is `to` (it was `from`, `None` at the first search).
    Settled {
        /// The path MTU before.
        from: Option<u32>,
        /// The path MTU now.
        to: u32,
    },
    /// Not even `lo` is answered: the peer or the path is down. The last path MTU is kept.
    NoAnswer {
        /// The path MTU kept (`None` when none was ever found).
        kept: Option<u32>,
    },
}

/// The machine. `lo..=hi` bounds every answer: `lo` the family's minimum, `hi` the local link MTU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pmtud {
    lo: u32,
    hi: u32,
    phase: Phase,
    /// Unanswered probes of the current size.
    misses: u8,
    /// Confirmations since the last raise attempt (a raise is tried every `RAISE_EVERY`).
    since_raise: Duration,
}

impl Pmtud {
    /// A machine that has found nothing yet: its first probes search `lo..=hi`.
    pub fn new(lo: u32, hi: u32) -> Self {
        Pmtud {
            lo,
            hi: hi.max(lo),
            phase: Phase::CheckLow { was: None },
            misses: 0,
            since_raise: Duration::ZERO,
        }
    }

    /// A machine that starts confirming `pmtu` (found by an earlier search).
    pub fn confirmed(lo: u32, hi: u32, pmtu: u32) -> Self {
        let hi = hi.max(lo);
        Pmtud {
            phase: Phase::Confirm {
                pmtu: pmtu.clamp(lo, hi),
            },
            ..Pmtud::new(lo, hi)
        }
    }

    /// The probes go to another endpoint (the peer's gateway moved): search its path afresh, keeping the
    /// known path MTU meanwhile; only a different one is reported (a path that is the same, or down, is
    /// not a change).
    pub fn new_path(&mut self) {
        self.phase = Phase::CheckLow { was: self.pmtu() };
        self.misses = 0;
        self.since_raise = Duration::ZERO;
    }

    /// The path MTU found, if a search has ended.
    pub fn pmtu(&self) -> Option<u32> {
        match self.phase {
            Phase::Confirm { pmtu } => Some(pmtu),
            Phase::CheckLow { was } | Phase::TryTop { was, .. } | Phase::Bisect { was, .. } => was,
        }
    }

    /// Whether a search is under way (probes follow each other without a pause).
    pub fn searching(&self) -> bool {
        !matches!(self.phase, Phase::Confirm { .. })
    }

    /// The next probe: its size, and how long to wait before sending it. A lost probe is repeated at once;
    /// a confirmation waits [`CONFIRM_EVERY`].
    pub fn next(&self) -> (u32, Duration) {
        let size = match self.phase {
            Phase::CheckLow { .. } => self.lo,
            Phase::TryTop { .. } => self.hi,
            Phase::Bisect { good, bad, .. } => good + (bad - good) / 2,
            Phase::Confirm { pmtu } => pmtu,
        };
        let wait = if self.searching() || self.misses > 0 {
            Duration::ZERO
        } else {
            CONFIRM_EVERY
        };
        (size, wait)
    }

    /// The probe of [`Self::next`]'s size was answered (`true`) or not within its wait.
    pub fn observe(&mut self, answered: bool) -> Outcome {
        if !answered {
            self.misses += 1;
            if self.misses < MAX_PROBES {
                return Outcome::Pending;
            }
        }
        self.misses = 0;
        let settle = |from: Option<u32>, to: u32| -> (Phase, Outcome) {
            (Phase::Confirm { pmtu: to }, Outcome::Settled { from, to })
        };
        let (phase, outcome) = match (self.phase, answered) {
            (Phase::CheckLow { was }, true) => (Phase::TryTop { good: self.lo, was }, Outcome::Pending),
            (Phase::CheckLow { was }, false) => (
                match was {
                    Some(pmtu) => Phase::Confirm { pmtu },
                    None => Phase::CheckLow { was: None },
                },
                Outcome::NoAnswer { kept: was },
            ),
            (Phase::TryTop { was, .. }, true) => settle(was, self.hi),
            (Phase::TryTop { good, was }, false) => self.bisect(good, self.hi, was),
            (Phase::Bisect { good, bad, was }, true) => self.bisect(good + (bad - good) / 2, bad, was),
            (Phase::Bisect { good, bad, was }, false) => self.bisect(good, good + (bad - good) / 2, was),
            (Phase::Confirm { pmtu }, true) => {
                self.since_raise += CONFIRM_EVERY;
                if pmtu < self.hi && self.since_raise >= RAISE_EVERY {
                    // RFC 8899's raise: try the top; the search keeps `pmtu` as known good
                    self.since_raise = Duration::ZERO;
                    (
                        Phase::TryTop {
                            good: pmtu,
                            was: Some(pmtu),
                        },
                        Outcome::Pending,
                    )
                } else {
                    (Phase::Confirm { pmtu }, Outcome::Pending)
                }
            }
            // black hole detection: the confirmed size is lost; is the path alive at all?
            (Phase::Confirm { pmtu }, false) => {
                self.since_raise = Duration::ZERO;
                (Phase::CheckLow { was: Some(pmtu) }, Outcome::Pending)
            }
        };
        self.phase = phase;
        match outcome {
            Outcome::Settled { from, to } if from == Some(to) => Outcome::Pending,
            o => o,
        }
    }

    /// The next bisection step between a passing `good` and a failing `bad`, or the end of the search.
    fn bisect(&self, good: u32, bad: u32, was: Option<u32>) -> (Phase, Outcome) {
        if bad - good > 1 {
            (Phase::Bisect { good, bad, was }, Outcome::Pending)
        } else {
            (
                Phase::Confirm { pmtu: good },
                Outcome::Settled { from: was, to: good },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives `m` against a path that carries sizes up to `path` (`None`: nothing); returns the first
    /// outcome that is not pending and how many probes it took (at most `limit`).
    fn run(m: &mut Pmtud, path: Option<u32>, limit: usize) -> (Outcome, usize) {
        for n in 1..=limit {
            let (size, _) = m.next();
            let o = m.observe(path.is_some_and(|p| size <= p));
            if o != Outcome::Pending {
                return (o, n);
            }
        }
        (Outcome::Pending, limit)
    }

    #[test]
    fn the_first_search_finds_the_path_mtu_from_the_bottom_and_the_top() {
        for path in [576, 577, 1000, 1399, 1400, 1499, 1500] {
            let mut m = Pmtud::new(576, 1500);
            let (o, probes) = run(&mut m, Some(path), 200);
            assert_eq!(o, Outcome::Settled { from: None, to: path }, "path {path}");
            assert_eq!(m.pmtu(), Some(path));
            assert!(!m.searching());
            // lo, hi, then at most ceil(log2(924)) = 10 bisections, each size lost 3 times at worst
            assert!(probes <= 2 + 3 + 10 * 3, "path {path}: {probes} probes");
        }
        // the whole link: two sizes, two answers
        let mut m = Pmtud::new(1280, 1500);
        assert_eq!(
            run(&mut m, Some(9000), 10),
            (Outcome::Settled { from: None, to: 1500 }, 2)
        );
    }

    #[test]
    fn a_silent_peer_is_no_answer_not_a_tiny_mtu() {
        let mut m = Pmtud::new(1280, 1500);
        assert_eq!(run(&mut m, None, 10), (Outcome::NoAnswer { kept: None }, 3));
        assert_eq!(m.pmtu(), None);
        // it keeps asking at the bottom until the peer answers
        assert_eq!(m.next().0, 1280);
        assert_eq!(
            run(&mut m, Some(1500), 10).0,
            Outcome::Settled { from: None, to: 1500 }
        );
    }

    #[test]
    fn one_or_two_lost_probes_change_nothing_three_start_black_hole_detection() {
        let mut m = Pmtud::confirmed(576, 1500, 1500);
        assert_eq!(m.next(), (1500, CONFIRM_EVERY));
        assert_eq!(m.observe(false), Outcome::Pending);
        // a lost confirmation is repeated at once
        assert_eq!(m.next(), (1500, Duration::ZERO));
        assert_eq!(m.observe(false), Outcome::Pending);
        assert_eq!(m.observe(true), Outcome::Pending);
        assert_eq!((m.pmtu(), m.searching()), (Some(1500), false));
        assert_eq!(m.next(), (1500, CONFIRM_EVERY), "the miss count starts over");
        for _ in 0..3 {
            assert_eq!(m.observe(false), Outcome::Pending);
        }
        assert!(m.searching());
        assert_eq!(m.next(), (576, Duration::ZERO), "is the path alive at all?");
        assert_eq!(m.pmtu(), Some(1500), "kept while searching");
    }

    #[test]
    fn a_path_that_shrinks_lowers_the_mtu_and_one_that_dies_keeps_it() {
        let mut m = Pmtud::confirmed(576, 1500, 1500);
        let (o, probes) = run(&mut m, Some(1400), 200);
        assert_eq!(
            o,
            Outcome::Settled {
                from: Some(1500),
                to: 1400
            }
        );
        // 3 lost confirmations, lo, 3 lost tops, <= 10 bisections
        assert!(probes <= 3 + 1 + 3 + 10 * 3, "{probes}");
        // a path that goes down entirely: the MTU is kept, confirmations go on
        let (o, _) = run(&mut m, None, 200);
        assert_eq!(o, Outcome::NoAnswer { kept: Some(1400) });
        assert_eq!((m.pmtu(), m.searching()), (Some(1400), false));
        assert_eq!(m.next(), (1400, CONFIRM_EVERY));
        // and when it comes back as it was, nothing is reported (no change)
        for _ in 0..5 {
            assert_eq!(m.observe(true), Outcome::Pending);
        }
        assert_eq!(m.pmtu(), Some(1400));
    }

    #[test]
    fn a_new_path_is_searched_at_once_and_only_a_different_mtu_is_reported() {
        let mut m = Pmtud::confirmed(576, 1500, 1500);
        // the same MTU on the new path: searched (no pause), nothing reported, confirming again
        m.new_path();
        assert_eq!(m.next(), (576, Duration::ZERO));
        assert_eq!(run(&mut m, Some(1500), 50), (Outcome::Pending, 50));
        assert_eq!((m.pmtu(), m.searching()), (Some(1500), false));
        // a narrower new path: found without waiting for three lost confirmations first
        m.new_path();
        let (o, probes) = run(&mut m, Some(1420), 200);
        assert_eq!(
            o,
            Outcome::Settled {
                from: Some(1500),
                to: 1420
            }
        );
        assert!(probes <= 1 + 3 + 10 * 3, "{probes}");
        // a new path that does not answer keeps the MTU
        m.new_path();
        assert_eq!(run(&mut m, None, 10).0, Outcome::NoAnswer { kept: Some(1420) });
        assert_eq!(m.pmtu(), Some(1420));
    }

    #[test]
    fn a_path_that_grows_back_is_used_after_the_raise_timer() {
        let mut m = Pmtud::confirmed(1280, 1500, 1400);
        let confirms = (RAISE_EVERY.as_millis() / CONFIRM_EVERY.as_millis()) as usize;
        // the path still carries only 1400: each raise attempt costs 3 lost tops, then confirms again
        for _ in 0..confirms - 1 {
            assert_eq!(m.next(), (1400, CONFIRM_EVERY));
            assert_eq!(m.observe(true), Outcome::Pending);
        }
        assert_eq!(m.observe(true), Outcome::Pending);
        assert_eq!(m.next(), (1500, Duration::ZERO), "the raise tries the top");
        let mut probes = 0;
        while m.searching() {
            let (size, _) = m.next();
            assert_eq!(
                m.observe(size <= 1400),
                Outcome::Pending,
                "no change is no outcome"
            );
            probes += 1;
        }
        assert_eq!(m.pmtu(), Some(1400));
        // 3 lost tops, then bisections of 1400..1500, each lost size 3 times
        assert!((3..=3 + 7 * 3).contains(&probes), "{probes}");
        // the path grew to 1500: the next raise finds it
        let (o, probes) = run(&mut m, Some(1500), 100);
        assert_eq!(
            o,
            Outcome::Settled {
                from: Some(1400),
                to: 1500
            }
        );
        assert_eq!(probes, confirms + 1);
        // partly: 1450 is found by bisecting above the known 1400
        let mut m = Pmtud::confirmed(1280, 1500, 1400);
        let (o, _) = run(&mut m, Some(1450), 200);
        assert_eq!(
            o,
            Outcome::Settled {
                from: Some(1400),
                to: 1450
            }
        );
        // at the top there is nothing to raise
        let mut m = Pmtud::confirmed(1280, 1500, 1500);
        for _ in 0..confirms * 3 {
            assert_eq!(m.next().0, 1500);
            assert_eq!(m.observe(true), Outcome::Pending);
        }
    }

    #[test]
    fn answers_stay_within_lo_and_hi() {
        let m = Pmtud::confirmed(1280, 1500, 9000);
        assert_eq!(m.pmtu(), Some(1500));
        let m = Pmtud::confirmed(1280, 1500, 100);
        assert_eq!(m.pmtu(), Some(1280));
        // a local link below the minimum: hi is raised to lo, the search is one size
        let mut m = Pmtud::new(1280, 1000);
        assert_eq!(
            run(&mut m, Some(1280), 10).0,
            Outcome::Settled { from: None, to: 1280 }
        );
    }
}
