//! Processes the lab starts: each one detached into its own process group, its output in a log file, its
//! PID and start time in a pid file, so `ferry-lab down` stops exactly what `up` started (a recycled PID is
//! never killed).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub use ferry_tunnel::apply::run;

/// The start time of a process in clock ticks since boot (field 22 of `/proc/PID/stat`).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name (field 2) may hold spaces and parentheses: split after its closing parenthesis
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A process the lab started and can stop again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracked {
    /// Name (pid file stem), e.g. `c1-etcd`.
    pub name: String,
    /// PID.
    pub pid: u32,
    /// Start time, to tell it from a later process with the same PID.
    pub start: u64,
}

impl Tracked {
    /// Whether this very process still runs.
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start) && !is_zombie(self.pid)
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(true)
}

/// Where a lab keeps its pid files.
#[derive(Clone, Debug)]
pub struct ProcessTable {
    dir: PathBuf,
}

impl ProcessTable {
    /// A table in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// Starts `cmd` detached (own process group, no stdin, output to `log`) and records it as `name`.
    pub fn spawn(&self, name: &str, mut cmd: Command, log: &Path) -> Result<Tracked> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        let pid = child.id();
        // Not waited on: `up` exits and init adopts it. Read the start time while it surely exists.
        let start = start_time(pid).unwrap_or(0);
        std::fs::write(self.dir.join(format!("{name}.pid")), format!("{pid} {start}\n"))?;
        std::mem::forget(child);
        Ok(Tracked {
            name: name.to_string(),
            pid,
            start,
        })
    }

    /// Every recorded process, running or not.
    pub fn list(&self) -> Vec<Tracked> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
                continue;
            };
            if path.extension().and_then(|s| s.to_str()) != Some("pid") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let mut it = text.split_whitespace().map(|s| s.parse::<u64>().ok());
            if let (Some(Some(pid)), Some(Some(start))) = (it.next(), it.next()) {
                out.push(Tracked {
                    name,
                    pid: pid as u32,
                    start,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Stops one process: SIGTERM to its group, then SIGKILL after `grace`. Removes its pid file.
    pub fn stop(&self, t: &Tracked, grace: Duration) {
        if t.alive() {
            let group = Pid::from_raw(-(t.pid as i32));
            let _ = kill(group, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while t.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if t.alive() {
                let _ = kill(group, Signal::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(2);
                while t.alive() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = std::fs::remove_file(self.dir.join(format!("{}.pid", t.name)));
    }

    /// Stops every recorded process, in reverse order of their names' dependency (kubelets and
    /// schedulers before apiservers before etcd).
    pub fn stop_all(&self) {
        let mut all = self.list();
        all.sort_by_key(|t| stop_rank(&t.name));
        for t in &all {
            self.stop(t, Duration::from_secs(5));
        }
    }
}

fn stop_rank(name: &str) -> u8 {
    match name.rsplit('-').next().unwrap_or("") {
        "kubelet" => 0,
        "scheduler" | "controllermanager" => 1,
        "apiserver" => 2,
        "etcd" => 3,
        _ => 0,
    }
}

/// Waits until `check` returns true (how long it took), or fails with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<Duration> {
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    while Instant::now() < deadline {
        if check() {
            return Ok(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} not ready after {}s", timeout.as_secs())
}

/// `pids` and every process below them (by parent PID, from `/proc`).
pub fn with_descendants(pids: &[u32]) -> Vec<u32> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .nth(1)?
                    .parse::<u32>()
                    .ok()
            });
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let (mut out, mut todo) = (Vec::new(), pids.to_vec());
    while let Some(p) = todo.pop() {
        if !out.contains(&p) {
            out.push(p);
            todo.extend(children.get(&p).into_iter().flatten());
        }
    }
    out
}

/// Runs every thread of `pids` and of the processes below them on `cpus` only; the threads and
/// processes they start later inherit it. Returns how many threads were pinned.
pub fn pin(pids: &[u32], cpus: &[usize]) -> Result<usize> {
    pin_only(&with_descendants(pids), cpus)
}

/// Runs every thread of `pids`, and of no other process, on `cpus` only (a process whose children
/// belong elsewhere, as the bench's own, whose agents are its children). Returns how many threads were
/// pinned.
pub fn pin_only(pids: &[u32], cpus: &[usize]) -> Result<usize> {
    let mut set = nix::sched::CpuSet::new();
    for c in cpus {
        set.set(*c).with_context(|| format!("CPU {c}"))?;
    }
    let mut n = 0;
    for tid in pids.iter().flat_map(|p| threads(*p)) {
        // a thread that ended meanwhile is no error
        if nix::sched::sched_setaffinity(tid, &set).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

/// The threads of process `pid` (none when it is gone).
fn threads(pid: u32) -> impl Iterator<Item = Pid> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse::<i32>().ok())
        .map(Pid::from_raw)
}

/// The CPUs each thread of `pid` may run on, their union (empty when the process is gone).
pub fn affinity(pid: u32) -> Vec<usize> {
    let mut cpus = std::collections::BTreeSet::new();
    for set in threads(pid).filter_map(|t| nix::sched::sched_getaffinity(t).ok()) {
        cpus.extend((0..nix::sched::CpuSet::count()).filter(|c| set.is_set(*c).unwrap_or(false)));
    }
    cpus.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_list_and_stop_a_real_process_and_never_a_recycled_pid() {
        let dir = std::env::temp_dir().join(format!("ferry-procs-{}", std::process::id()));
        let table = ProcessTable::new(&dir).unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let t = table.spawn("c1-etcd", cmd, &dir.join("sleep.log")).unwrap();
        assert!(t.alive());
        assert_eq!(table.list(), vec![t.clone()]);
        // a pid file whose start time does not match is not "alive" and is not signalled
        let impostor = Tracked {
            name: "other".into(),
            pid: t.pid,
            start: t.start + 1,
        };
        assert!(!impostor.alive());
        table.stop_all();
        assert!(!t.alive());
        assert!(table.list().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn run_reports_the_failing_command() {
        let e = run("ip", &["link", "show", "no-such-link-ferry"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`ip link show no-such-link-ferry` failed"), "{e}");
    }

    #[test]
    fn stop_order_is_kubelet_then_scheduler_then_apiserver_then_etcd() {
        let mut v = ["c1-etcd", "c1-apiserver", "c1-kubelet", "c1-scheduler"];
        v.sort_by_key(|n| stop_rank(n));
        assert_eq!(v, ["c1-kubelet", "c1-scheduler", "c1-apiserver", "c1-etcd"]);
    }

    #[test]
    fn pin_takes_the_processes_below_and_pin_only_does_not() {
        // the child keeps the CPUs this test may use, which must hold 0 and 1 to tell the cases apart
        let mine = affinity(std::process::id());
        if !(mine.contains(&0) && mine.contains(&1)) {
            eprintln!("this test runs on CPUs {mine:?}: nothing to tell apart");
            return;
        }
        let mut parent = Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let child = || {
            with_descendants(&[parent.id()])
                .into_iter()
                .find(|p| *p != parent.id())
        };
        wait_until("the child", Duration::from_secs(5), || child().is_some()).unwrap();
        let kid = child().unwrap();
        // the bench's bug: pinning a process with its descendants took the agents it had started
        assert!(pin_only(&[parent.id()], &[0]).unwrap() >= 1);
        assert_eq!(affinity(parent.id()), vec![0]);
        assert_eq!(affinity(kid), mine, "pin_only moved a child");
        assert!(pin(&[parent.id()], &[1]).unwrap() >= 2);
        assert_eq!((affinity(parent.id()), affinity(kid)), (vec![1], vec![1]));
        let _ = kill(Pid::from_raw(kid as i32), Signal::SIGKILL);
        let _ = parent.kill();
        let _ = parent.wait();
    }
}
