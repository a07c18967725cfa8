//! The process's metrics: one prometheus-client [`Registry`] per process, which the modules of a binary
//! register into ([`register`]) and the admin server renders ([`render`]). Counters are counters
//! (`_total`), durations histograms. [`reconciled`] times one reconcile of a named controller into
//! `ferry_controller_reconciles_total{controller,result}` and
//! `ferry_controller_reconcile_duration_seconds{controller}`; every controller of ferry is run through it.

use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

pub use prometheus_client;

/// Label pairs of a metric family.
pub type Labels = Vec<(String, String)>;

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Registry::with_prefix("ferry")))
}

/// Registers `metric` as `ferry_<name>` (a counter's `_total` is added by the encoder).
pub fn register(name: &str, help: &str, metric: impl Metric) {
    registry().lock().expect("lock").register(name, help, metric);
}

/// A counter family registered on first use, held in the caller's `cell` (one `static` per metric).
pub type CounterCell = OnceLock<
    prometheus_client::metrics::family::Family<Labels, prometheus_client::metrics::counter::Counter>,
>;

/// Adds one to `ferry_<name>_total{labels}`, registering the family in `cell` the first time.
pub fn count(cell: &'static CounterCell, name: &str, help: &str, labels: &[(&str, &str)]) {
    cell.get_or_init(|| {
        let f = prometheus_client::metrics::family::Family::default();
        register(name, help, f.clone());
        f
    })
    .get_or_create(
        &labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
    .inc();
}

/// Every registered metric, in the Prometheus text format.
pub fn render() -> String {
    let mut out = String::new();
    encode(&mut out, &registry().lock().expect("lock")).expect("writing to a String");
    out
}

/// Buckets for reconcile durations and lags: 1 ms to about 33 s.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16)
}

struct Controllers {
    reconciles: Family<Labels, Counter>,
    durations: Family<Labels, Histogram>,
}

fn controllers() -> &'static Controllers {
    static C: OnceLock<Controllers> = OnceLock::new();
    C.get_or_init(|| {
        let c = Controllers {
            reconciles: Family::default(),
            durations: Family::new_with_constructor(|| Histogram::new(duration_buckets())),
        };
        register(
            "controller_reconciles",
            "reconciles by controller and result (ok, error)",
            c.reconciles.clone(),
        );
        register(
            "controller_reconcile_duration_seconds",
            "how long one reconcile took, by controller",
            c.durations.clone(),
        );
        c
    })
}

/// Runs one reconcile of `controller`, counting it by result and timing it.
pub async fn reconciled<T, E>(
    controller: &'static str,
    reconcile: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let start = Instant::now();
    let r = reconcile.await;
    let c = controllers();
    let result = if r.is_ok() { "ok" } else { "error" };
    c.reconciles
        .get_or_create(&vec![
            ("controller".to_string(), controller.to_string()),
            ("result".to_string(), result.to_string()),
        ])
        .inc();
    c.durations
        .get_or_create(&vec![("controller".to_string(), controller.to_string())])
        .observe(start.elapsed().as_secs_f64());
    r
}

/// The value of the sample `name{labels}` in a text exposition (for tests and checks): labels given as
/// `k="v"` pairs, in any order, must all be on the line.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        (n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reconciles_are_counted_by_result_and_timed_and_rendered_under_ferry() {
        let ok: Result<(), ()> = reconciled("test-ctl", async { Ok(()) }).await;
        assert!(ok.is_ok());
        for _ in 0..2 {
            let _: Result<(), &str> = reconciled("test-ctl", async { Err("no") }).await;
        }
        let text = render();
        let ctl = ("controller", "test-ctl");
        assert_eq!(
            sample(
                &text,
                "ferry_controller_reconciles_total",
                &[ctl, ("result", "ok")]
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "ferry_controller_reconciles_total",
                &[("result", "error"), ctl]
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "ferry_controller_reconcile_duration_seconds_count", &[ctl]),
            Some(3.0)
        );
        assert!(
            text.contains("# TYPE ferry_controller_reconciles counter"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE ferry_controller_reconcile_duration_seconds histogram"),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "ferry_controller_reconciles_total",
                &[("controller", "other")]
            ),
            None
        );
    }
}
