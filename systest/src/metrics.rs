//! A scraped Prometheus `/metrics` page.

/// One scrape of a Prometheus text page.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    series: Vec<(String, f64)>,
}

impl Metrics {
    /// Scrapes `<base>/metrics`.
    pub async fn scrape(base: &str) -> anyhow::Result<Self> {
        let text = reqwest::get(format!("{base}/metrics"))
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Self::parse(&text))
    }

    /// Parses the text format: `name{labels} value` lines.
    pub fn parse(text: &str) -> Self {
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect();
        Self { series }
    }

    /// The sum over every series of `name` carrying all `labels` (0 when there is none).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series_value(name, labels).unwrap_or(0.0)
    }

    /// Like [`Metrics::get`], but `None` when no series matches (a metric never recorded).
    pub fn series_value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matched = false;
        let sum = self
            .series
            .iter()
            .filter(|(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series, ""));
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| {
                matched = true;
                v
            })
            .sum();
        matched.then_some(sum)
    }
}
