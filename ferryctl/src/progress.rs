//! Progress of a wait, on stderr: on a terminal one line rewritten in place with a spinner, the object
//! waited for, its state and the seconds so far; otherwise (CI, a pipe) one plain line each time the state
//! changes. A wait that runs out names the object and its last state. [`Lines`] decides what is printed
//! (pure); [`wait`] looks again on each change a watch reports, and prints.

use std::future::Future;
use std::io::IsTerminal;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Result, bail};
use futures::{Stream, StreamExt};
use kube::runtime::{WatchStreamExt, watcher};

/// How often a terminal's line is redrawn.
pub const SPIN: Duration = Duration::from_millis(500);

const SPINNER: [char; 4] = ['|', '/', '-', '\\'];

/// What a wait is still waiting for: an object and its state, e.g. `Node ferry-c2` / `Ready=False
/// (ProviderUnreachable)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// The object, kind and name.
    pub object: String,
    /// Its last state.
    pub state: String,
}

impl Waiting {
    /// Waiting for `object` in `state`.
    pub fn new(object: impl Into<String>, state: impl Into<String>) -> Self {
        Self {
            object: object.into(),
            state: state.into(),
        }
    }
}

/// What to print as a wait goes on (pure): on a terminal every call gives the line to draw in place; else
/// only a change of what is waited for gives a line.
#[derive(Debug)]
pub struct Lines {
    what: String,
    tty: bool,
    last: Option<Waiting>,
    frame: usize,
}

impl Lines {
    /// For a wait described as `what` (e.g. `unpeer provider-c2`), on a terminal or not.
    pub fn new(what: impl Into<String>, tty: bool) -> Self {
        Self {
            what: what.into(),
            tty,
            last: None,
            frame: 0,
        }
    }

    /// The line for `w` after `elapsed`, if one is printed now.
    pub fn waiting(&mut self, w: &Waiting, elapsed: Duration) -> Option<String> {
        let changed = self.last.as_ref() != Some(w);
        self.last = Some(w.clone());
        let text = format!("{}: waiting for {}: {}", self.what, w.object, w.state);
        if self.tty {
            self.frame += 1;
            let spin = SPINNER[self.frame % SPINNER.len()];
            Some(format!("\r\x1b[2K{spin} {text} ({:.0} s)", elapsed.as_secs_f64()))
        } else {
            changed.then(|| format!("{text} ({:.1} s)\n", elapsed.as_secs_f64()))
        }
    }

    /// The last line, when the wait is over.
    pub fn done(&self, msg: &str, elapsed: Duration) -> String {
        let clear = if self.tty { "\r\x1b[2K" } else { "" };
        format!("{clear}{}: {msg} ({:.1} s)\n", self.what, elapsed.as_secs_f64())
    }

    /// The error when the wait ran out after `limit`: the object and its last state.
    pub fn timed_out(&self, limit: Duration) -> String {
        match &self.last {
            Some(w) => format!(
                "{}: gave up after {} s waiting for {}; its last state: {}",
                self.what,
                limit.as_secs(),
                w.object,
                w.state
            ),
            None => format!("{}: gave up after {} s", self.what, limit.as_secs()),
        }
    }
}

/// Runs `check` until it returns `Ok(None)` (done) or `limit` passes, showing what it waits for on
/// stderr; `done` is said at the end. `check` returns what is still awaited. It runs at the start and
/// again whenever `wake` yields: a watch of every object it reads ([`changes`]), so that only a change
/// can end the wait (the items ready at once count as one). No timer looks again; a watch that ends is an
/// error. On a terminal the line's spinner and seconds are redrawn every [`SPIN`] (no API call).
pub async fn wait<F, Fut, W>(what: &str, limit: Duration, done: &str, wake: W, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<Waiting>>>,
    W: Stream<Item = ()>,
{
    let mut lines = Lines::new(what, std::io::stderr().is_terminal());
    let start = Instant::now();
    let deadline = start + limit;
    let wake = wake.ready_chunks(1024);
    futures::pin_mut!(wake);
    loop {
        let w = match check().await? {
            None => {
                eprint!("{}", lines.done(done, start.elapsed()));
                return Ok(());
            }
            Some(w) => w,
        };
        if let Some(l) = lines.waiting(&w, start.elapsed()) {
            eprint!("{l}");
        }
        if start.elapsed() >= limit {
            if lines.tty {
                eprintln!();
            }
            bail!(lines.timed_out(limit));
        }
        loop {
            tokio::select! {
                woke = wake.next() => {
                    if woke.is_none() {
                        bail!("{what}: the watch of {} ended", w.object);
                    }
                    break;
                }
                // the last look, which reports the state the wait ran out in
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tokio::time::sleep(SPIN), if lines.tty => {
                    if let Some(l) = lines.waiting(&w, start.elapsed()) {
                        eprint!("{l}");
                    }
                }
            }
        }
    }
}

/// A wake-up for [`wait`] on every change of the objects of `api` that `cfg` selects (a watch, its
/// errors backed off; an error wakes too, so the check reports what it sees).
pub fn changes<K>(api: kube::Api<K>, cfg: watcher::Config) -> impl Stream<Item = ()> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    watcher(api, cfg).default_backoff().map(|_| ())
}

/// [`changes`] of the one object of `api` named `name`.
pub fn changes_of<K>(api: kube::Api<K>, name: &str) -> impl Stream<Item = ()> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    changes(
        api,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn without_a_terminal_a_line_is_printed_only_when_what_is_awaited_changes() {
        let mut l = Lines::new("unpeer provider-c2", false);
        let node = Waiting::new("Node ferry-provider-c2", "exists, 3 pods on it");
        assert_eq!(
            l.waiting(&node, s(1)).unwrap(),
            "unpeer provider-c2: waiting for Node ferry-provider-c2: exists, 3 pods on it (1.0 s)\n"
        );
        assert_eq!(l.waiting(&node, s(2)), None);
        let fewer = Waiting::new("Node ferry-provider-c2", "exists, 1 pod on it");
        assert!(l.waiting(&fewer, s(3)).unwrap().contains("1 pod on it"));
        assert_eq!(l.done("done", s(4)), "unpeer provider-c2: done (4.0 s)\n");
    }

    #[test]
    fn on_a_terminal_every_look_redraws_one_line_with_a_spinner() {
        let mut l = Lines::new("drain tenant c1", true);
        let w = Waiting::new("pods of tenant c1", "4 left");
        let a = l.waiting(&w, s(1)).unwrap();
        let b = l.waiting(&w, s(2)).unwrap();
        assert!(a.starts_with("\r\x1b[2K") && !a.ends_with('\n'), "{a:?}");
        assert_ne!(
            a.chars().nth(5),
            b.chars().nth(5),
            "the spinner turns: {a:?} {b:?}"
        );
        assert!(
            l.done("drained", s(3))
                .starts_with("\r\x1b[2Kdrain tenant c1: drained")
        );
    }

    #[test]
    fn running_out_names_the_object_and_its_last_state() {
        let mut l = Lines::new("unpeer provider-c2", false);
        assert_eq!(l.timed_out(s(60)), "unpeer provider-c2: gave up after 60 s");
        l.waiting(
            &Waiting::new(
                "ForeignCluster provider-c2",
                "being deleted (finalizers: ferry.dev/peering)",
            ),
            s(1),
        );
        assert_eq!(
            l.timed_out(s(60)),
            "unpeer provider-c2: gave up after 60 s waiting for ForeignCluster provider-c2; its last state: being deleted (finalizers: ferry.dev/peering)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wait_returns_when_nothing_is_awaited_and_fails_naming_it_after_the_limit() {
        let mut left = 2;
        wait("t", s(10), "done", futures::stream::repeat(()), || {
            left -= 1;
            let w = (left > 0).then(|| Waiting::new("x", format!("{left} left")));
            async move { Ok(w) }
        })
        .await
        .unwrap();
        let e = wait(
            "t",
            Duration::from_millis(10),
            "done",
            futures::stream::pending(),
            || async { Ok(Some(Waiting::new("Node n", "NotReady"))) },
        )
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "t: gave up after 0 s waiting for Node n; its last state: NotReady"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_seen_by_the_watch_ends_the_wait_at_once_and_nothing_else_looks_again() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        // the object turns ready at 1.2 s and its watch says so: the wait ends then
        let ready = std::sync::Arc::new(AtomicBool::new(false));
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let flip = ready.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            flip.store(true, Ordering::SeqCst);
            // three events at once are one look
            for _ in 0..3 {
                tx.unbounded_send(()).unwrap();
            }
        });
        let looks = AtomicUsize::new(0);
        let start = Instant::now();
        wait("t", s(60), "done", rx, || {
            looks.fetch_add(1, Ordering::SeqCst);
            let w = (!ready.load(Ordering::SeqCst)).then(|| Waiting::new("x", "not yet"));
            async move { Ok(w) }
        })
        .await
        .unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(1200));
        assert_eq!(looks.load(Ordering::SeqCst), 2);
        // no change seen: one look at the start and one at the limit, none between
        let looks = AtomicUsize::new(0);
        let start = Instant::now();
        let e = wait("t", s(12), "done", futures::stream::pending(), || {
            looks.fetch_add(1, Ordering::SeqCst);
            async { Ok(Some(Waiting::new("x", "not yet"))) }
        })
        .await;
        assert!(e.is_err());
        assert_eq!(start.elapsed(), s(12));
        assert_eq!(looks.load(Ordering::SeqCst), 2);
        // a watch that ended is an error naming what was awaited, not a silent wait to the limit
        let start = Instant::now();
        let e = wait("t", s(60), "done", futures::stream::empty(), || async {
            Ok(Some(Waiting::new("Node n", "NotReady")))
        })
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(e, "t: the watch of Node n ended");
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
