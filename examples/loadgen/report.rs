//! The report: the headline figures, the details of every phase, and a Markdown table.

use serde_json::{json, Map, Value};

use super::load::round1;

/// The figures the README table shows; `None` when not measured (the notes say why).
#[derive(Debug, Default, Clone)]
pub struct Figures {
    /// Closed loop: facade answers per second.
    pub calls_per_sec_facade: Option<f64>,
    /// Closed loop: direct answers per second.
    pub calls_per_sec_direct: Option<f64>,
    /// Facade CPU (user + system) per call during the closed loop, microseconds.
    pub facade_cpu_us_per_call: Option<f64>,
    /// Open loop: p50 latency through the facade, microseconds.
    pub p50_facade_us: Option<u64>,
    /// Open loop: p50 latency direct, microseconds.
    pub p50_direct_us: Option<u64>,
    /// Open loop: p99 latency through the facade, microseconds.
    pub p99_facade_us: Option<u64>,
    /// Open loop: p99 latency direct, microseconds.
    pub p99_direct_us: Option<u64>,
    /// VmRSS after the first served call, nothing in flight, KiB.
    pub rss_idle_kib: Option<u64>,
    /// Largest VmRSS while every in-flight call was in flight, KiB.
    pub rss_in_flight_kib: Option<u64>,
    /// Exec to the first call answered OK, milliseconds.
    pub exec_to_first_served_call_ms: Option<f64>,
    /// Callgrind: instructions per call.
    pub instructions_per_call: Option<f64>,
}

/// The settings the table names.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Closed-loop concurrency.
    pub concurrency: usize,
    /// Open-loop rate.
    pub rate: u64,
    /// Calls held in flight for the memory figure.
    pub inflight_calls: u64,
}

/// The whole report.
pub struct Report {
    /// Headline figures.
    pub figures: Figures,
    /// What the table names.
    pub shape: Shape,
    /// Settings, layout, every phase, notes: the JSON beside the figures.
    pub details: Map<String, Value>,
    /// Why figures are missing, and anything else to know when reading them.
    pub notes: Vec<String>,
    /// False when any call of any phase did not answer OK, or the facade did not exit 0.
    pub all_ok: bool,
}

fn difference(a: Option<u64>, b: Option<u64>) -> Option<i64> {
    Some(i64::try_from(a?).ok()? - i64::try_from(b?).ok()?)
}

impl Report {
    /// An empty report for a run of this shape.
    pub fn new(shape: Shape) -> Self {
        Self {
            figures: Figures::default(),
            shape,
            details: Map::new(),
            notes: Vec::new(),
            all_ok: true,
        }
    }

    /// Whether every call answered OK.
    pub fn all_calls_ok(&self) -> bool {
        self.all_ok
    }

    fn ratio(&self) -> Option<f64> {
        let f = &self.figures;
        Some(f.calls_per_sec_facade? / f.calls_per_sec_direct?)
    }

    /// The report as JSON (serde_json sorts the keys): `figures`, the details, `notes`.
    pub fn to_json(&self) -> Value {
        let f = &self.figures;
        let mut out = Map::new();
        out.insert(
            "figures".into(),
            json!({
                "calls_per_sec_facade": f.calls_per_sec_facade.map(round1),
                "calls_per_sec_direct": f.calls_per_sec_direct.map(round1),
                "calls_per_sec_ratio_facade_to_direct": self.ratio().map(|r| (r * 1000.0).round() / 1000.0),
                "facade_cpu_us_per_call": f.facade_cpu_us_per_call.map(round1),
                "open_loop_calls_per_sec": self.shape.rate,
                "p50_us": {"facade": f.p50_facade_us, "direct": f.p50_direct_us,
                           "added": difference(f.p50_facade_us, f.p50_direct_us)},
                "p99_us": {"facade": f.p99_facade_us, "direct": f.p99_direct_us,
                           "added": difference(f.p99_facade_us, f.p99_direct_us)},
                "rss_idle_kib": f.rss_idle_kib,
                "rss_in_flight_kib": f.rss_in_flight_kib,
                "in_flight_calls": self.shape.inflight_calls,
                "exec_to_first_served_call_ms": f.exec_to_first_served_call_ms.map(round1),
                "instructions_per_call": f.instructions_per_call.map(round1),
            }),
        );
        out.extend(self.details.clone());
        out.insert("notes".into(), json!(self.notes));
        out.insert("all_calls_ok".into(), json!(self.all_ok));
        Value::Object(out)
    }

    /// The figures as a Markdown table, as the README shows them.
    pub fn markdown_table(&self) -> String {
        let f = &self.figures;
        let ms =
            |us: Option<u64>| us.map_or("-".to_owned(), |us| format!("{:.2}", us as f64 / 1000.0));
        let added = |a, b| {
            difference(a, b).map_or("-".to_owned(), |us| format!("{:+.2}", us as f64 / 1000.0))
        };
        let mib = |kib: Option<u64>| {
            kib.map_or("-".to_owned(), |kib| {
                format!("{:.1} MiB", kib as f64 / 1024.0)
            })
        };
        let num = |x: Option<f64>| x.map_or("-".to_owned(), thousands);
        let latency = |quantile: &str, facade: Option<u64>, direct: Option<u64>| {
            (
                format!(
                    "{quantile} latency at {} calls/s: facade / direct / added (ms)",
                    thousands(self.shape.rate as f64)
                ),
                format!(
                    "{} / {} / {}",
                    ms(facade),
                    ms(direct),
                    added(facade, direct)
                ),
            )
        };
        let rows = [
            (
                format!(
                    "calls/s, closed loop at concurrency {}: facade / direct",
                    self.shape.concurrency
                ),
                format!(
                    "{} / {} ({})",
                    num(f.calls_per_sec_facade),
                    num(f.calls_per_sec_direct),
                    self.ratio().map_or("-".to_owned(), |r| format!("{r:.2}x"))
                ),
            ),
            (
                "facade CPU per call, on one pinned core".to_owned(),
                f.facade_cpu_us_per_call
                    .map_or("-".to_owned(), |us| format!("{us:.1} µs")),
            ),
            latency("p50", f.p50_facade_us, f.p50_direct_us),
            latency("p99", f.p99_facade_us, f.p99_direct_us),
            (
                format!(
                    "facade RSS: idle / {} distinct calls in flight",
                    thousands(self.shape.inflight_calls as f64)
                ),
                format!("{} / {}", mib(f.rss_idle_kib), mib(f.rss_in_flight_kib)),
            ),
            (
                "exec to first served call".to_owned(),
                f.exec_to_first_served_call_ms
                    .map_or("-".to_owned(), |ms| format!("{ms:.1} ms")),
            ),
            (
                "instructions per call (callgrind, user space)".to_owned(),
                num(f.instructions_per_call),
            ),
        ];
        let mut table = String::from("| figure | value |\n|---|---|\n");
        for (figure, value) in rows {
            table.push_str(&format!("| {figure} | {value} |\n"));
        }
        table
    }
}

/// `x` rounded, with thousands separated by commas: 21,058.
fn thousands(x: f64) -> String {
    let digits = format!("{}", x.round() as i64);
    let (sign, digits) = digits
        .strip_prefix('-')
        .map_or(("", digits.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}
