//! SVG charts for the benchmark report: latency distribution and throughput over time.
//!
//! Each chart compares the designs under test (typically "broker ceiling", "naive Postgres" and
//! "seatrush") with one line per design. Colors are assigned by the series' position in the
//! slice, so passing the designs in the same order to both charts keeps each design's color the
//! same across the report.
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use plotters::prelude::*;

/// One design's measurements.
pub struct Series<'a> {
    pub name: &'a str,
    /// Per request: time from issue to final answer.
    pub latencies: &'a [Duration],
    /// Per request: when its final answer arrived, from the start of the run.
    pub completions: &'a [Duration],
}

/// Width and height of every chart, in pixels.
const SIZE: (u32, u32) = (800, 480);

/// Most points drawn per series on the latency chart. Every point becomes a coordinate pair in
/// the SVG text, so drawing one per request would make files for 100k-request runs several
/// megabytes without any visible gain at 800 pixels wide.
const MAX_CDF_POINTS: usize = 500;

/// Width of one throughput bucket. Short enough to show stalls and bursts, long enough that each
/// bucket holds many answers at benchmark rates.
const BUCKET: Duration = Duration::from_millis(100);

/// Most throughput buckets accepted (about 28 hours of run time at 100 ms per bucket). A
/// completion time beyond this is almost certainly a bogus measurement, and honoring it would
/// allocate a huge bucket vector and produce an unreadable chart.
const MAX_BUCKETS: u128 = 1_000_000;

/// Smallest latency axis span, in milliseconds, so that all-zero samples still give a
/// non-empty range.
const MIN_LATENCY_SPAN_MS: f64 = 1.0;

/// Smallest throughput value axis span, in requests per second: one answer per bucket. It keeps
/// the axis non-empty for runs with no answers and its tick labels whole numbers.
const MIN_RATE_SPAN: f64 = 10.0;

/// Line colors, picked to be distinguishable from each other (the first five of the common
/// "tab10" palette). Series beyond the palette's length reuse colors from the start.
const PALETTE: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
];

/// One line to draw: its legend name, color and points in chart coordinates.
struct Line<'a> {
    name: &'a str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// Everything about a chart except its lines.
struct Layout<'a> {
    title: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    x_range: Range<f64>,
    y_range: Range<f64>,
    legend: SeriesLabelPosition,
}

/// Cumulative distribution of latencies (x: milliseconds, y: share of requests answered, 0..100 %), one line per series.
///
/// Series without latencies are left out of the chart and its legend. Each line starts at zero
/// percent at the fastest request and ends at 100 percent at the slowest one.
pub fn latency_chart(series: &[Series<'_>], path: &Path) -> anyhow::Result<()> {
    let mut lines = Vec::new();
    let mut max_ms: f64 = 0.0;
    for (index, s) in series.iter().enumerate() {
        let mut ms: Vec<f64> = s.latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        if ms.is_empty() {
            continue;
        }
        ms.sort_by(f64::total_cmp);
        max_ms = ms.iter().copied().fold(max_ms, f64::max);
        lines.push(Line {
            name: s.name,
            color: color(index),
            points: cdf_points(&ms),
        });
    }
    // A little headroom keeps the slowest request's vertical step off the plot's right border.
    let x_end = (max_ms * 1.05).max(MIN_LATENCY_SPAN_MS);
    let layout = Layout {
        title: "Latency distribution",
        x_desc: "Latency from issue to final answer (ms)",
        y_desc: "Requests answered (%)",
        x_range: 0.0..x_end,
        y_range: 0.0..100.0,
        legend: SeriesLabelPosition::LowerRight,
    };
    draw(&layout, &lines, path)
        .with_context(|| format!("writing latency chart to {}", path.display()))
}

/// Throughput over time (x: seconds from start, y: requests answered per second, in buckets of 100 ms, scaled to per-second), one line per series.
///
/// Each bucket's point sits at its middle. A series' line ends at its last answer's bucket
/// rather than running on at zero until the slowest design finishes, so a design that finished
/// early is not drawn as if it had stalled. Series without completions are left out of the chart
/// and its legend.
pub fn throughput_chart(series: &[Series<'_>], path: &Path) -> anyhow::Result<()> {
    let per_second = Duration::from_secs(1).as_secs_f64() / BUCKET.as_secs_f64();
    let bucket_secs = BUCKET.as_secs_f64();
    let mut lines = Vec::new();
    let mut bucket_count = 1usize;
    let mut max_rate: f64 = 0.0;
    for (index, s) in series.iter().enumerate() {
        let counts = bucket_counts(s.completions).with_context(|| {
            format!(
                "bucketing completion times of {:?} for the throughput chart",
                s.name
            )
        })?;
        if counts.is_empty() {
            continue;
        }
        bucket_count = bucket_count.max(counts.len());
        let rates: Vec<f64> = counts.iter().map(|&n| n as f64 * per_second).collect();
        let points = throughput_points(&rates, bucket_secs);
        max_rate = points
            .iter()
            .map(|&(_, rate)| rate)
            .fold(max_rate, f64::max);
        lines.push(Line {
            name: s.name,
            color: color(index),
            points,
        });
    }
    // Headroom above the peak leaves space for the legend in the upper right corner, so it does
    // not cover the lines during steady state.
    let y_end = (max_rate * 1.3).max(MIN_RATE_SPAN);
    let layout = Layout {
        title: "Throughput over time",
        x_desc: "Time from start of run (s)",
        y_desc: "Requests answered per second (100 ms buckets)",
        x_range: 0.0..bucket_count as f64 * bucket_secs,
        y_range: 0.0..y_end,
        legend: SeriesLabelPosition::UpperRight,
    };
    draw(&layout, &lines, path)
        .with_context(|| format!("writing throughput chart to {}", path.display()))
}

/// The color of the series at `index` in the caller's slice.
fn color(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

/// Points of the cumulative distribution of sorted `ms`, down-sampled to at most
/// [`MAX_CDF_POINTS`] quantiles plus a starting point at zero percent. Empty when `ms` is.
///
/// The kept quantiles are evenly spaced in rank and always include the slowest sample, so the
/// line still reaches 100 percent at the true maximum latency.
fn cdf_points(ms: &[f64]) -> Vec<(f64, f64)> {
    let Some(&fastest) = ms.first() else {
        return Vec::new();
    };
    let n = ms.len();
    let kept = n.min(MAX_CDF_POINTS);
    let mut points = Vec::with_capacity(kept + 1);
    points.push((fastest, 0.0));
    for k in 1..=kept {
        // The k-th kept rank (1-based) out of n; for k == kept this is n itself.
        let rank = k * n / kept;
        points.push((ms[rank - 1], rank as f64 * 100.0 / n as f64));
    }
    points
}

/// Points for per-bucket `rates`, empty when there are none: one at the middle of each bucket, plus the first
/// and last rate held out to the outer edges of their buckets.
///
/// The edge points make the line cover exactly the time the buckets span, and give a run that
/// fits in one bucket a visible horizontal segment instead of a single point, which a line
/// cannot draw.
fn throughput_points(rates: &[f64], bucket_secs: f64) -> Vec<(f64, f64)> {
    let (Some(&first), Some(&last)) = (rates.first(), rates.last()) else {
        return Vec::new();
    };
    let mut points = Vec::with_capacity(rates.len() + 2);
    points.push((0.0, first));
    points.extend(
        rates
            .iter()
            .enumerate()
            .map(|(i, &rate)| ((i as f64 + 0.5) * bucket_secs, rate)),
    );
    points.push((rates.len() as f64 * bucket_secs, last));
    points
}

/// Number of completions in each [`BUCKET`]-long interval from the start of the run, up to and
/// including the bucket of the latest completion. Empty when there are no completions.
fn bucket_counts(completions: &[Duration]) -> anyhow::Result<Vec<u64>> {
    let width = BUCKET.as_nanos();
    let Some(latest) = completions.iter().max() else {
        return Ok(Vec::new());
    };
    let buckets = latest.as_nanos() / width + 1;
    if buckets > MAX_BUCKETS {
        bail!(
            "latest completion at {latest:?} needs {buckets} buckets of {BUCKET:?}, more than the \
             {MAX_BUCKETS} allowed"
        );
    }
    // Both conversions are in range: `buckets` was just checked against MAX_BUCKETS.
    let mut counts = vec![0u64; buckets as usize];
    for c in completions {
        counts[(c.as_nanos() / width) as usize] += 1;
    }
    Ok(counts)
}

/// Values over time (x: minutes), one line per named series, from zero up.
pub fn timeline_chart(
    title: &str,
    y_desc: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    path: &Path,
) -> anyhow::Result<()> {
    let x_end = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(0.0f64, f64::max)
        .max(0.1);
    let y_end = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.1;
    let lines: Vec<Line<'_>> = series
        .iter()
        .enumerate()
        .map(|(i, (name, points))| Line {
            name,
            color: color(i),
            points: points.clone(),
        })
        .collect();
    let layout = Layout {
        title,
        x_desc: "minutes",
        y_desc,
        x_range: 0.0..x_end,
        y_range: 0.0..y_end,
        legend: SeriesLabelPosition::LowerRight,
    };
    draw(&layout, &lines, path)
}

/// Draws `lines` on a chart described by `layout` and writes it as SVG to `path`.
fn draw(layout: &Layout<'_>, lines: &[Line<'_>], path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).context("filling the background")?;
    let mut chart = ChartBuilder::on(&root)
        .caption(layout.title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(layout.x_range.clone(), layout.y_range.clone())
        .context("laying out the chart")?;
    chart
        .configure_mesh()
        .x_desc(layout.x_desc)
        .y_desc(layout.y_desc)
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 13))
        // Both value axes (percent and requests per second) are read as whole numbers.
        .y_label_formatter(&|y| format!("{y:.0}"))
        // Only the labelled grid lines: the unlabelled ones between them add clutter and bytes.
        .max_light_lines(0)
        .draw()
        .context("drawing axes and grid")?;
    for line in lines {
        let style = line.color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), style))
            .with_context(|| format!("drawing the line for {:?}", line.name))?
            .label(line.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    if !lines.is_empty() {
        chart
            .configure_series_labels()
            .position(layout.legend.clone())
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .context("drawing the legend")?;
    }
    root.present().context("writing the SVG file")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};

    /// A chart-writing function, so both charts can be checked by one loop.
    type Chart = fn(&[Series<'_>], &Path) -> anyhow::Result<()>;

    /// Both charts with a tag for their file names and assertion messages.
    const CHARTS: [(&str, Chart); 2] =
        [("latency", latency_chart), ("throughput", throughput_chart)];

    /// A path in the temp directory that no other test or concurrent run uses: the process id
    /// separates runs, the counter separates tests running in parallel within one run, and the
    /// clock guards against a reused process id finding a file left by a crashed run.
    fn temp_svg(tag: &str) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!(
            "seatrush-charts-{tag}-{}-{n}-{nanos}.svg",
            std::process::id()
        ))
    }

    /// Deterministic, spread-out samples: `n` latencies with a long tail and completions spread
    /// over about ten seconds.
    fn samples(n: usize, scale_us: u64) -> (Vec<Duration>, Vec<Duration>) {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ scale_us;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            state >> 33
        };
        let latencies = (0..n)
            .map(|_| {
                let u = (next() % 10_000) as f64 / 10_000.0;
                // Roughly exponential: most requests are fast, a few are slow.
                Duration::from_micros((-(1.0 - u).ln() * scale_us as f64) as u64)
            })
            .collect();
        let completions = (0..n)
            .map(|_| Duration::from_micros(next() % 10_000_000))
            .collect();
        (latencies, completions)
    }

    fn read(path: &Path) -> String {
        let text = std::fs::read_to_string(path).expect("chart file is readable");
        std::fs::remove_file(path).expect("chart file can be removed");
        text
    }

    #[test]
    fn three_series_one_empty_large_input() {
        let n = 100_000;
        let (ceiling_lat, ceiling_done) = samples(n, 2_000);
        let (seatrush_lat, seatrush_done) = samples(n, 8_000);
        let series = [
            Series {
                name: "broker ceiling",
                latencies: &ceiling_lat,
                completions: &ceiling_done,
            },
            Series {
                name: "naive Postgres",
                latencies: &[],
                completions: &[],
            },
            Series {
                name: "seatrush",
                latencies: &seatrush_lat,
                completions: &seatrush_done,
            },
        ];
        for (tag, chart) in CHARTS {
            let path = temp_svg(tag);
            chart(&series, &path).expect("chart is written");
            assert!(path.exists(), "{tag} chart file exists");
            let size = std::fs::metadata(&path).expect("chart metadata").len();
            let text = read(&path);
            assert!(text.starts_with("<svg"), "{tag} chart starts with <svg");
            assert!(
                text.contains("broker ceiling"),
                "{tag} chart names broker ceiling"
            );
            assert!(text.contains("seatrush"), "{tag} chart names seatrush");
            assert!(
                !text.contains("naive Postgres"),
                "{tag} chart leaves out the empty series"
            );
            assert!(size < 200 * 1024, "{tag} chart is {size} bytes");
        }
    }

    #[test]
    fn single_zero_duration_sample() {
        let zero = [Duration::ZERO];
        let series = [Series {
            name: "seatrush",
            latencies: &zero,
            completions: &zero,
        }];
        for (tag, chart) in CHARTS {
            let path = temp_svg(tag);
            chart(&series, &path).expect("chart is written");
            let text = read(&path);
            assert!(text.starts_with("<svg"), "{tag} chart starts with <svg");
            assert!(text.contains("seatrush"), "{tag} chart names seatrush");
        }
    }

    #[test]
    fn no_series_at_all() {
        for (tag, chart) in CHARTS {
            let path = temp_svg(tag);
            chart(&[], &path).expect("chart is written");
            assert!(
                read(&path).starts_with("<svg"),
                "{tag} chart starts with <svg"
            );
        }
    }

    #[test]
    fn cdf_is_down_sampled_and_reaches_the_maximum() {
        let ms: Vec<f64> = (0..100_000).map(f64::from).collect();
        let points = cdf_points(&ms);
        assert_eq!(points.len(), MAX_CDF_POINTS + 1);
        assert_eq!(points[0], (0.0, 0.0));
        assert_eq!(points[points.len() - 1], (99_999.0, 100.0));
        assert!(
            points
                .windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1)
        );

        assert_eq!(cdf_points(&[3.0]), vec![(3.0, 0.0), (3.0, 100.0)]);
        assert!(cdf_points(&[]).is_empty());
    }

    #[test]
    fn throughput_line_spans_its_buckets() {
        assert_eq!(
            throughput_points(&[10.0], 0.1),
            vec![(0.0, 10.0), (0.05, 10.0), (0.1, 10.0)]
        );
        assert!(throughput_points(&[], 0.1).is_empty());
    }

    #[test]
    fn unsorted_completions_are_bucketed() {
        let ms = Duration::from_millis;
        let counts = bucket_counts(&[ms(250), ms(0), ms(99), ms(100), ms(250)]).expect("buckets");
        assert_eq!(counts, vec![2, 1, 2]);
        assert!(bucket_counts(&[]).expect("buckets").is_empty());
    }

    #[test]
    fn absurd_completion_time_is_an_error() {
        assert!(bucket_counts(&[Duration::from_secs(10 * 24 * 3600)]).is_err());
    }

    #[test]
    fn unwritable_path_is_an_error() {
        let path = std::env::temp_dir()
            .join("seatrush-charts-no-such-dir")
            .join("chart.svg");
        let zero = [Duration::ZERO];
        let series = [Series {
            name: "seatrush",
            latencies: &zero,
            completions: &zero,
        }];
        let err = latency_chart(&series, &path).expect_err("missing directory fails");
        assert!(format!("{err:#}").contains("latency chart"), "{err:#}");
    }
}
