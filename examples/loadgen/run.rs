//! One run: start the upstream (the emulator by default) and the facade, run the phases in
//! order, and gather the report.
//!
//! Order: exec to first served call; idle RSS; the in-flight burst (RSS); warm-up; closed loop
//! facade then direct (throughput, CPU per call); open loop facade then direct (latency);
//! then, with `--instructions`, a second facade under callgrind.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::callgrind;
use super::children::{clock_ticks_per_second, cpu_ticks, memory_kib, start_emulator};
use super::facade::{self, Facade, FacadeSpec};
use super::load::{closed_loop, hold_in_flight, open_loop, round1, Phase};
use super::options::Options;
use super::pinning::Layout;
use super::report::{Report, Shape};
use super::target::{CallIds, DirectTarget, Target};
use super::upstream::{Upstream, UpstreamKind};
use super::Fallible;

/// Runs everything `options` asks for and returns the report.
pub fn run(options: &Options) -> Fallible<Report> {
    let layout = Layout::plan(options.facade_core)?;
    layout.pin_self()?;
    let work_dir = match &options.work_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("msstore-loadgen-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(layout.loadgen_threads())
        .enable_all()
        .build()?;
    runtime.block_on(Run::new(options, layout, work_dir)?.go())
}

/// The binary to measure: `--facade-bin`, else `msstore-facade` beside `examples/`.
fn facade_bin(options: &Options) -> Fallible<PathBuf> {
    let bin = match &options.facade_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .ok_or("cannot tell where this example lives")?
            .join("msstore-facade"),
    };
    if !bin.is_file() {
        return Err(format!(
            "no facade binary at {} (cargo build --release, or --facade-bin)",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

struct Run<'a> {
    options: &'a Options,
    layout: Layout,
    work_dir: PathBuf,
    bin: PathBuf,
    http: reqwest::Client,
    ids: CallIds,
    report: Report,
}

/// CPU ticks of the processes that matter, at one moment.
struct CpuSample {
    facade: u64,
    emulator: Option<u64>,
    loadgen: u64,
}

impl CpuSample {
    fn take(facade: u32, emulator: Option<u32>) -> Fallible<Self> {
        Ok(Self {
            facade: cpu_ticks(facade)?,
            emulator: emulator.map(cpu_ticks).transpose()?,
            loadgen: cpu_ticks(std::process::id())?,
        })
    }

    /// Microseconds of CPU per call of each process between `self` and `later`.
    fn per_call(&self, later: &CpuSample, calls: u64) -> Value {
        let us_per_tick = 1e6 / clock_ticks_per_second() as f64;
        let per_call = |a: u64, b: u64| round1((b - a) as f64 * us_per_tick / calls.max(1) as f64);
        json!({
            "facade": per_call(self.facade, later.facade),
            "emulator": self.emulator.zip(later.emulator).map(|(a, b)| per_call(a, b)),
            "loadgen": per_call(self.loadgen, later.loadgen),
        })
    }
}

impl<'a> Run<'a> {
    fn new(options: &'a Options, layout: Layout, work_dir: PathBuf) -> Fallible<Self> {
        let report = Report::new(Shape {
            concurrency: options.concurrency,
            rate: options.rate,
            inflight_calls: options.inflight_calls,
        });
        Ok(Self {
            bin: facade_bin(options)?,
            http: reqwest::Client::builder().no_proxy().build()?,
            ids: CallIds::new(
                &options.product_id,
                &options.sku_id,
                &options.content_prefix,
            ),
            options,
            layout,
            work_dir,
            report,
        })
    }

    async fn go(mut self) -> Fallible<Report> {
        let mut emulator = match &self.options.upstream_url {
            Some(_) => None,
            None => Some(start_emulator(
                &self.bin,
                &self.layout,
                &self.options.log_filter,
                &self.work_dir,
            )?),
        };
        let upstream = Arc::new(match (&self.options.upstream_url, &emulator) {
            (Some(url), _) => Upstream::from_url_and_env(url)?,
            (None, Some(emulator)) => Upstream::from_emulator(&emulator.exports)?,
            (None, None) => unreachable!("the emulator was started"),
        });
        self.describe(&upstream);
        let emulator_pid = emulator.as_ref().map(|e| e.process.pid());
        if self.options.load_phases() {
            self.load_phases(&upstream, emulator_pid).await?;
        }
        if self.options.count_instructions() {
            self.instructions(&upstream).await;
        } else {
            self.report
                .notes
                .push("instructions_per_call: not measured: not asked for (--instructions)".into());
        }
        if let Some(emulator) = &mut emulator {
            emulator.process.stop(Duration::from_secs(30))?;
        }
        Ok(self.report)
    }

    fn spec(&self) -> FacadeSpec<'_> {
        FacadeSpec {
            bin: &self.bin,
            log_filter: &self.options.log_filter,
            extra_env: &self.options.facade_env,
            work_dir: &self.work_dir,
        }
    }

    fn describe(&mut self, upstream: &Upstream) {
        let o = self.options;
        let pinned = self.layout.pinned.as_ref();
        self.report.details.insert(
            "settings".into(),
            json!({
                "facade_bin": self.bin.display().to_string(),
                "closed_loop": {"concurrency": o.concurrency, "calls": o.calls, "warmup_calls": o.warmup_calls},
                "open_loop": {"calls_per_sec": o.rate, "duration_s": o.open_duration.as_secs_f64()},
                "in_flight": {"calls": o.inflight_calls},
                "callgrind": {"warmup_calls": o.callgrind_warmup_calls, "counted_calls": o.callgrind_calls,
                              "concurrency": 1},
                "ids": {"product_id": o.product_id, "sku_id": o.sku_id,
                        "content_id": format!("{}-<phase>-<n>, distinct within a phase", o.content_prefix)},
                "log_filter": o.log_filter,
                "facade_env": o.facade_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
                "work_dir": self.work_dir.display().to_string(),
            }),
        );
        self.report.details.insert(
            "machine".into(),
            json!({
                "allowed_cores": self.layout.allowed,
                "facade_core": pinned.map(|p| p.facade),
                "loadgen_and_emulator_cores": pinned.map(|p| p.others.clone()),
                "not_pinned_because": self.layout.not_pinned_because,
                "clock_ticks_per_sec": clock_ticks_per_second(),
                "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned()),
            }),
        );
        if let Some(reason) = &self.layout.not_pinned_because {
            self.report.notes.push(format!("nothing pinned: {reason}"));
        }
        self.report.details.insert(
            "upstream".into(),
            json!({
                "kind": match upstream.kind { UpstreamKind::Emulator => "emulator", UpstreamKind::Url => "url" },
                "business_store_url": upstream.business_store_url,
                "authority_host": upstream.authority_host,
            }),
        );
    }

    fn phase(&mut self, group: &str, phase: &Phase) {
        self.report.all_ok &= phase.recorder.all_ok();
        let entry = self
            .report
            .details
            .entry(group.to_owned())
            .or_insert_with(|| json!({}));
        entry[phase.target] = phase.to_json();
    }

    async fn load_phases(
        &mut self,
        upstream: &Arc<Upstream>,
        emulator_pid: Option<u32>,
    ) -> Fallible<()> {
        let o = self.options;
        let patience = Duration::from_secs(60);
        let mut facade = facade::start(
            &self.spec(),
            &self.layout,
            upstream,
            &[],
            &self.ids.phase("first"),
            patience,
        )
        .await?;
        let pid = facade.process.pid();
        self.report.figures.exec_to_first_served_call_ms =
            Some(facade.exec_to_first_served_call.as_secs_f64() * 1000.0);
        // Idle: served one call (so it holds its token and an upstream connection), then rests.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.report.figures.rss_idle_kib = Some(memory_kib(pid, "VmRSS")?);

        let via_facade = Target::facade(facade.channel.clone());
        let token = upstream.token(&self.http).await?;
        let direct = Target::Direct(Arc::new(DirectTarget::new(
            self.http.clone(),
            upstream.clone(),
            &token,
        )));

        self.in_flight(&via_facade, upstream.kind, pid).await?;

        for target in [&via_facade, &direct] {
            let warm = closed_loop(
                target,
                &self.ids.phase("warm"),
                o.warmup_calls,
                o.concurrency,
            )
            .await;
            self.phase("warmup", &warm);
        }

        let (mut cpu, mut facade_busy) = (json!({}), None);
        for target in [&via_facade, &direct] {
            let before = CpuSample::take(pid, emulator_pid)?;
            let phase =
                closed_loop(target, &self.ids.phase("closed"), o.calls, o.concurrency).await;
            let after = CpuSample::take(pid, emulator_pid)?;
            cpu[target.name()] = before.per_call(&after, phase.recorder.calls());
            match target {
                Target::Facade(_) => {
                    let facade_us = cpu["facade"]["facade"].as_f64();
                    self.report.figures.calls_per_sec_facade = Some(phase.calls_per_sec());
                    self.report.figures.facade_cpu_us_per_call = facade_us;
                    // Below 100: the facade's core was not the bottleneck of the closed loop.
                    facade_busy = facade_us.map(|us| round1(us * phase.calls_per_sec() / 1e4));
                }
                Target::Direct(_) => {
                    self.report.figures.calls_per_sec_direct = Some(phase.calls_per_sec())
                }
            }
            self.phase("closed_loop", &phase);
        }
        self.report.details["closed_loop"]["cpu_us_per_call"] = cpu;
        self.report.details["closed_loop"]["facade_core_busy_percent"] = json!(facade_busy);

        for target in [&via_facade, &direct] {
            let phase = open_loop(target, &self.ids.phase("open"), o.rate, o.open_duration).await;
            let (p50, p99) = (
                Some(phase.recorder.quantile_us(0.5)),
                Some(phase.recorder.quantile_us(0.99)),
            );
            let f = &mut self.report.figures;
            match target {
                Target::Facade(_) => (f.p50_facade_us, f.p99_facade_us) = (p50, p99),
                Target::Direct(_) => (f.p50_direct_us, f.p99_direct_us) = (p50, p99),
            }
            self.phase("open_loop", &phase);
        }

        self.finish(&mut facade).await
    }

    /// The in-flight burst: needs an upstream that holds calls, i.e. the emulator's
    /// `MAGIC-SLOW-<ms>` product id or `--inflight-product-id`.
    async fn in_flight(
        &mut self,
        via_facade: &Target,
        kind: UpstreamKind,
        pid: u32,
    ) -> Fallible<()> {
        let o = self.options;
        let product = match (&o.inflight_product_id, kind) {
            (Some(product), _) => product.clone(),
            (None, UpstreamKind::Emulator) => {
                format!("MAGIC-SLOW-{}", o.inflight_delay.as_millis())
            }
            (None, UpstreamKind::Url) => {
                self.report.notes.push(
                    "rss_in_flight_kib: not measured: --upstream-url without --inflight-product-id \
                     (a product id the upstream answers slowly)"
                        .into(),
                );
                return Ok(());
            }
        };
        if o.inflight_calls == 0 {
            self.report
                .notes
                .push("rss_in_flight_kib: not measured: --inflight-calls 0".into());
            return Ok(());
        }
        let ids = self.ids.phase("inflight").with_product(&product);
        let held = hold_in_flight(via_facade, &ids, o.inflight_calls, pid).await?;
        self.report.figures.rss_in_flight_kib = held.peak_rss_kib;
        if held.peak_rss_kib.is_none() {
            self.report.notes.push(format!(
                "rss_in_flight_kib: the {} calls were never all in flight at a sample (upstream too fast?)",
                o.inflight_calls
            ));
        }
        self.phase("in_flight", &held.phase);
        self.report.details["in_flight"]["product_id"] = json!(product);
        self.report.details["in_flight"]["rss_samples_with_all_in_flight"] = json!(held.samples);
        self.report.details["in_flight"]["slow_upstream"] = json!(match kind {
            UpstreamKind::Emulator =>
                "the emulator's MAGIC-SLOW-<ms> product id: it waits, then answers as usual",
            UpstreamKind::Url => "the upstream, with --inflight-product-id",
        });
        Ok(())
    }

    /// Memory after the load, the facade's own counters, and its exit on SIGTERM.
    async fn finish(&mut self, facade: &mut Facade) -> Fallible<()> {
        let pid = facade.process.pid();
        let memory = json!({
            "rss_after_load_kib": memory_kib(pid, "VmRSS")?,
            "peak_rss_kib": memory_kib(pid, "VmHWM")?,
        });
        self.report.details.insert("facade_memory".into(), memory);
        let metrics = facade.metrics(&self.http).await?;
        if metrics["coalesced_calls"].as_u64() != Some(0) {
            self.report
                .notes
                .push("the facade coalesced some calls: the ids were not distinct".into());
        }
        self.report.details.insert("facade_metrics".into(), metrics);
        let exit = facade.process.stop(Duration::from_secs(30))?;
        self.report.all_ok &= exit.success();
        self.report
            .details
            .insert("facade_exit_on_sigterm".into(), json!(exit.to_string()));
        Ok(())
    }

    async fn instructions(&mut self, upstream: &Upstream) {
        let o = self.options;
        let counts = (o.callgrind_warmup_calls, o.callgrind_calls);
        match callgrind::count(&self.spec(), &self.layout, upstream, &self.ids, counts).await {
            Ok(counted) => {
                self.report.figures.instructions_per_call = Some(counted.per_call());
                self.report.all_ok &=
                    counted.warmup.recorder.all_ok() && counted.counted.recorder.all_ok();
                let details = json!({
                    "instructions": counted.instructions,
                    "counted_calls": counted.counted.to_json(),
                    "warmup_calls": counted.warmup.to_json(),
                    "exec_to_first_served_call_ms": round1(counted.startup.as_secs_f64() * 1000.0),
                });
                self.report.details.insert("callgrind".into(), details);
            }
            Err(error) => {
                self.report
                    .notes
                    .push(format!("instructions_per_call: not measured: {error}"));
                self.report
                    .details
                    .insert("callgrind".into(), json!({"error": error.to_string()}));
            }
        }
    }
}
