//! `/metrics` read as Prometheus reads it: fetched over HTTP and parsed with a real
//! text-format parser, not matched with string searches.

use std::net::SocketAddr;

use prometheus_parse::{Scrape, Value};

/// One scrape of a server's `/metrics`.
pub struct Metrics {
    pub text: String,
    scrape: Scrape,
}

impl Metrics {
    pub async fn scrape(admin: SocketAddr) -> Self {
        let response = reqwest::get(format!("http://{admin}/metrics"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let text = response.text().await.unwrap();
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{text}"));
        Self { text, scrape }
    }

    /// The samples of `name` whose labels include all of `labels`.
    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a prometheus_parse::Sample> + 'a {
        self.scrape.samples.iter().filter(move |s| {
            s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    /// The sum of the counter or gauge samples of `name` with these labels; 0 if none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels)
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                other => panic!("{name} is not a counter or gauge: {other:?}"),
            })
            .sum()
    }

    /// Whether there is a sample of `name` with these labels.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }

    /// The number of observations of the histogram `name` with these labels (its `+Inf`
    /// bucket), summed over the matching series.
    pub fn observations(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels)
            .map(|s| match &s.value {
                Value::Histogram(buckets) => buckets
                    .iter()
                    .find(|b| b.less_than.is_infinite())
                    .map_or(0.0, |b| b.count),
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .sum()
    }

    /// The metric names, for messages.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .scrape
            .samples
            .iter()
            .map(|s| s.metric.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}
