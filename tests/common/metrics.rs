//! The admin server's `/metrics`, `/healthz` and `/readyz`, and a strict Prometheus text parser.

use super::harness::Facade;

impl Facade {
    /// GETs `path` on the admin server: (HTTP status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let response = reqwest::Client::new()
            .get(format!("http://{}{path}", self.admin_addr))
            .send()
            .await
            .expect("admin server answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("admin body is text"))
    }

    /// The facade's metrics, parsed from `/metrics`.
    pub async fn metrics(&self) -> Metrics {
        let (status, text) = self.admin_get("/metrics").await;
        assert_eq!(status, 200, "{text}");
        Metrics::parse(&text)
    }
}

/// Samples of a Prometheus text exposition: `name{labels}` -> value.
#[derive(Debug, Clone)]
pub struct Metrics(pub std::collections::BTreeMap<String, f64>);

impl Metrics {
    /// Parses Prometheus text format 0.0.4, panicking on any line that is not a comment, a
    /// blank line or a `name{label="value",...} number` sample.
    pub fn parse(text: &str) -> Self {
        let mut samples = std::collections::BTreeMap::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                other => other
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value: {line}")),
            };
            let name_end = series.find('{').unwrap_or(series.len());
            let name = &series[..name_end];
            assert!(
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
                "bad metric name: {line}"
            );
            if name_end < series.len() {
                let labels = &series[name_end..];
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels: {line}"
                );
                for pair in labels[1..labels.len() - 1].split("\",") {
                    let (key, value) = pair.split_once("=\"").expect("label is key=\"value\"");
                    assert!(
                        !key.is_empty() && !value.ends_with('\\'),
                        "bad label: {line}"
                    );
                }
            }
            assert!(
                samples.insert(series.to_owned(), value).is_none(),
                "duplicate series: {line}"
            );
        }
        Self(samples)
    }

    /// The value of the series named exactly `series` (`name{a="b",...}`), 0 when absent.
    pub fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// The sum over every series of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                series.split('{').next() == Some(name)
                    && labels
                        .iter()
                        .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, value)| value)
            .sum()
    }
}
