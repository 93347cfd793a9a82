//! The load generator (`examples/loadgen`) in a short run against the real binary and the
//! emulator: every phase but callgrind, a few hundred calls. It checks that the report is
//! complete and that every call answered OK, never how fast anything was: the figures depend
//! on the machine.

#[allow(dead_code)]
#[path = "../examples/loadgen/main.rs"]
mod loadgen;

use clap::Parser;
use serde_json::{json, Value};

#[test]
fn a_short_run_reports_every_figure_and_every_call_answers_ok() {
    let work_dir =
        std::env::temp_dir().join(format!("msstore-loadgen-smoke-{}", std::process::id()));
    let options = loadgen::options::Options::parse_from([
        "loadgen",
        "--facade-bin",
        env!("CARGO_BIN_EXE_msstore-facade"),
        "--calls",
        "300",
        "--warmup-calls",
        "50",
        "--concurrency",
        "4",
        "--rate",
        "200",
        "--open-duration",
        "1s",
        "--inflight-calls",
        "50",
        "--inflight-delay",
        "500ms",
        "--work-dir",
        work_dir.to_str().expect("a UTF-8 temporary directory"),
    ]);

    let report = loadgen::run::run(&options).expect("the load generator runs");
    let text = serde_json::to_string_pretty(&report.to_json()).expect("the report prints");
    let json: Value = serde_json::from_str(&text).expect("the report is JSON");

    assert_eq!(json["all_calls_ok"], true, "{text}");
    let figures = &json["figures"];
    for figure in [
        "calls_per_sec_facade",
        "calls_per_sec_direct",
        "calls_per_sec_ratio_facade_to_direct",
        "facade_cpu_us_per_call",
        "rss_idle_kib",
        "rss_in_flight_kib",
        "exec_to_first_served_call_ms",
    ] {
        assert!(figures[figure].is_number(), "{figure} in {text}");
    }
    for percentile in ["p50_us", "p99_us"] {
        for of in ["facade", "direct", "added"] {
            assert!(
                figures[percentile][of].is_number(),
                "{percentile}.{of} in {text}"
            );
        }
    }
    assert!(
        figures["instructions_per_call"].is_null(),
        "not asked for: {text}"
    );

    let outcomes = |phase: &str, target: &str| json[phase][target]["outcomes"].clone();
    assert_eq!(outcomes("closed_loop", "facade"), json!({"OK": 300}));
    assert_eq!(outcomes("closed_loop", "direct"), json!({"HTTP 200": 300}));
    assert_eq!(outcomes("open_loop", "facade"), json!({"OK": 200}));
    assert_eq!(outcomes("open_loop", "direct"), json!({"HTTP 200": 200}));
    assert_eq!(outcomes("in_flight", "facade"), json!({"OK": 50}));
    assert!(json["in_flight"]["rss_samples_with_all_in_flight"].as_u64() > Some(0));

    // Distinct ids: no call was merged with another, each reached the upstream once.
    let metrics = &json["facade_metrics"];
    assert_eq!(metrics["coalesced_calls"], 0, "{text}");
    assert_eq!(
        metrics["business_store_requests_200"],
        metrics["license_rpcs_ok"]
    );
    assert!(
        json["facade_exit_on_sigterm"]
            .as_str()
            .is_some_and(|exit| exit.contains("exit status: 0")),
        "{text}"
    );

    let table = report.markdown_table();
    assert_eq!(
        table.lines().count(),
        9,
        "header, rule, seven figures:\n{table}"
    );
    let _ = std::fs::remove_dir_all(&work_dir);
}
