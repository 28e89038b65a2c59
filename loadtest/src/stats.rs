//! Latency recording: one overall histogram and one per second of the run, fed in batches by the socket tasks. In
//! a worker process (see `scenario::spread`) the recorder only forwards: it keeps the samples until the worker
//! sends them to the process that reports.

use std::sync::Mutex;
use std::time::Instant;

use hdrhistogram::Histogram;

/// Highest latency recorded, in µs (60 s); larger values are clamped so nothing is dropped silently.
const MAX_MICROS: u64 = 60_000_000;

/// Latencies of delivered events.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    inner: Mutex<Histograms>,
    /// Set in a worker process: samples wait here for [`Recorder::take_forwarded`] instead of being recorded.
    forward: Option<Mutex<Vec<(Instant, u64)>>>,
}

#[derive(Debug)]
struct Histograms {
    overall: Histogram<u64>,
    per_second: Vec<Histogram<u64>>,
}

fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, sigfig).expect("valid histogram bounds")
}

/// One second of the run: when, and the latency quantiles of events received in it (ms).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SecondStats {
    /// Seconds since the recorder started.
    pub second: u64,
    /// Events received in this second.
    pub count: u64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Worst.
    pub max_ms: f64,
}

/// Latency quantiles of a whole run (ms).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Quantiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Worst.
    pub max_ms: f64,
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

impl Recorder {
    /// An empty recorder whose second 0 starts now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            inner: Mutex::new(Histograms {
                overall: histogram(3),
                per_second: Vec::new(),
            }),
            forward: None,
        }
    }

    /// A recorder that keeps every sample for [`Recorder::take_forwarded`] and records nothing itself. Its owner
    /// must take them regularly: nothing else bounds what it keeps (a worker takes them every 200 ms).
    pub fn forwarding() -> Self {
        Self {
            forward: Some(Mutex::new(Vec::new())),
            ..Self::new()
        }
    }

    /// The samples kept since the last call (always empty unless [`Recorder::forwarding`]).
    pub fn take_forwarded(&self) -> Vec<(Instant, u64)> {
        self.forward.as_ref().map_or_else(Vec::new, |f| {
            std::mem::take(&mut *f.lock().expect("forward lock"))
        })
    }

    /// Records a batch of `(received, latency µs)` samples.
    pub fn record(&self, samples: &[(Instant, u64)]) {
        if let Some(forward) = &self.forward {
            forward
                .lock()
                .expect("forward lock")
                .extend_from_slice(samples);
            return;
        }
        let mut h = self.inner.lock().expect("recorder lock");
        for &(at, micros) in samples {
            let micros = micros.clamp(1, MAX_MICROS);
            h.overall.saturating_record(micros);
            let second = at.saturating_duration_since(self.start).as_secs() as usize;
            if h.per_second.len() <= second {
                h.per_second.resize_with(second + 1, || histogram(2));
            }
            h.per_second[second].saturating_record(micros);
        }
    }

    /// Quantiles over everything recorded.
    pub fn quantiles(&self) -> Quantiles {
        let h = self.inner.lock().expect("recorder lock");
        let o = &h.overall;
        if o.is_empty() {
            return Quantiles::default();
        }
        Quantiles {
            count: o.len(),
            p50_ms: ms(o.value_at_quantile(0.50)),
            p90_ms: ms(o.value_at_quantile(0.90)),
            p99_ms: ms(o.value_at_quantile(0.99)),
            p999_ms: ms(o.value_at_quantile(0.999)),
            max_ms: ms(o.max()),
        }
    }

    /// The 99th percentile of the last complete second, for progress lines.
    pub fn last_second_p99_ms(&self) -> Option<f64> {
        let h = self.inner.lock().expect("recorder lock");
        let now = self.start.elapsed().as_secs() as usize;
        let s = h.per_second.get(now.checked_sub(1)?)?;
        (!s.is_empty()).then(|| ms(s.value_at_quantile(0.99)))
    }

    /// Every second with at least one sample.
    pub fn seconds(&self) -> Vec<SecondStats> {
        let h = self.inner.lock().expect("recorder lock");
        h.per_second
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .map(|(i, s)| SecondStats {
                second: i as u64,
                count: s.len(),
                p50_ms: ms(s.value_at_quantile(0.50)),
                p99_ms: ms(s.value_at_quantile(0.99)),
                max_ms: ms(s.max()),
            })
            .collect()
    }

    /// `(latency ms, fraction of samples at or below it)`, for the CDF plot.
    pub fn cdf(&self) -> Vec<(f64, f64)> {
        let h = self.inner.lock().expect("recorder lock");
        let o = &h.overall;
        if o.is_empty() {
            return Vec::new();
        }
        o.iter_quantiles(4)
            .map(|v| (ms(v.value_iterated_to()), v.quantile_iterated_to()))
            .collect()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// Per-session order and exactly-once check, by the producer's counter `n` (1, 2, 3, ... per session).
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    seen: Vec<u64>,
    /// Distinct `n` received.
    pub distinct: u64,
    /// `n` received more than once.
    pub duplicated: u64,
    /// `n` received after a larger one.
    pub out_of_order: u64,
    max_n: u64,
}

/// What one received `n` was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time, in order.
    New,
    /// First time, but after a larger `n`.
    Late,
    /// Already received.
    Duplicate,
}

impl Tracker {
    /// Records `n` (≥ 1).
    pub fn observe(&mut self, n: u64) -> Seen {
        let (word, bit) = ((n / 64) as usize, n % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicated += 1;
            return Seen::Duplicate;
        }
        self.seen[word] |= 1 << bit;
        self.distinct += 1;
        if n < self.max_n {
            self.out_of_order += 1;
            return Seen::Late;
        }
        self.max_n = n;
        Seen::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_counts_duplicates_and_late_arrivals() {
        let mut t = Tracker::default();
        assert_eq!(t.observe(1), Seen::New);
        assert_eq!(t.observe(3), Seen::New);
        assert_eq!(t.observe(2), Seen::Late);
        assert_eq!(t.observe(3), Seen::Duplicate);
        assert_eq!(t.observe(200), Seen::New);
        assert_eq!((t.distinct, t.duplicated, t.out_of_order), (4, 1, 1));
    }

    #[test]
    fn a_forwarding_recorder_keeps_samples_until_taken_and_records_none() {
        let r = Recorder::forwarding();
        let now = Instant::now();
        r.record(&[(now, 5), (now, 7)]);
        r.record(&[(now, 9)]);
        assert_eq!(r.quantiles().count, 0);
        let taken: Vec<u64> = r.take_forwarded().into_iter().map(|(_, l)| l).collect();
        assert_eq!(taken, [5, 7, 9]);
        assert!(r.take_forwarded().is_empty());
        assert!(Recorder::new().take_forwarded().is_empty());
    }

    #[test]
    fn recorder_quantiles_and_seconds() {
        let r = Recorder::new();
        let now = Instant::now();
        let samples: Vec<_> = (1..=1000).map(|i| (now, i * 10)).collect();
        r.record(&samples);
        let q = r.quantiles();
        assert_eq!(q.count, 1000);
        assert!((q.p50_ms - 5.0).abs() < 0.05, "{q:?}");
        assert!((q.max_ms - 10.0).abs() < 0.05, "{q:?}");
        let secs = r.seconds();
        assert_eq!(secs.len(), 1);
        assert_eq!(secs[0].count, 1000);
        let cdf = r.cdf();
        assert!(cdf.last().is_some_and(|&(_, f)| (f - 1.0).abs() < 1e-9));
    }
}
