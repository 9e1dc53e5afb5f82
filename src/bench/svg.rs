//! The benchmark as a picture: where the time goes (stacked bars of median phases, one bar per
//! runtime) and how it spreads (a box and every run as a dot, one row per measure).
//!
//! Hand-written SVG 1.1: rectangles, lines, circles and text, no scripts, no fonts beyond the
//! generic `sans-serif`.

use std::fmt::Write;
use std::time::Duration;

use super::results::{Results, Runtime, AGENT_READY};
use super::stats::{ms, percentile};

const WIDTH: f64 = 960.0;
const MARGIN: f64 = 24.0;
/// Room for the row labels on the left.
const PLOT_LEFT: f64 = 190.0;
/// Room for the total on the right of the longest bar.
const PLOT_RIGHT: f64 = WIDTH - 80.0;
const BAR_HEIGHT: f64 = 26.0;
const BAR_GAP: f64 = 12.0;
const ROW_HEIGHT: f64 = 30.0;
/// A segment narrower than this gets no label inside.
const MIN_LABELLED_SEGMENT: f64 = 30.0;

/// Phase colours, in the order of moat's phases (Okabe and Ito's colour-blind-safe set, then
/// Tol's).
const PALETTE: [&str; 12] = [
    "#0072b2", "#56b4e9", "#009e73", "#f0e442", "#e69f00", "#d55e00", "#cc79a7", "#332288",
    "#88ccee", "#44aa99", "#882255", "#117733",
];
/// The last stretch of a bar: from the runtime's last phase to its exit, seen by the benchmark.
const TO_EXIT_COLOUR: &str = "#d9d9d9";
const TO_EXIT: &str = "exit seen by bench";
const INK: &str = "#222222";
const GREY: &str = "#666666";
const GRID: &str = "#e6e6e6";
const BOX_FILL: &str = "#cfe3f3";
const MEDIAN: &str = "#0b3d66";
const DOT: &str = "#d55e00";

/// How a piece of text looks.
#[derive(Clone, Copy)]
struct Font {
    size: f64,
    anchor: &'static str,
    bold: bool,
    fill: &'static str,
}

impl Font {
    const fn new(size: f64, anchor: &'static str) -> Self {
        Self {
            size,
            anchor,
            bold: false,
            fill: INK,
        }
    }

    const fn bold(self) -> Self {
        Self { bold: true, ..self }
    }

    const fn fill(self, fill: &'static str) -> Self {
        Self { fill, ..self }
    }
}

const TITLE: Font = Font::new(18.0, "start").bold();
const NOTE: Font = Font::new(12.0, "start").fill(GREY);
const HEADING: Font = Font::new(14.0, "start").bold();
const ROW_LABEL: Font = Font::new(13.0, "end");
const SMALL: Font = Font::new(11.0, "start");
const TICK: Font = Font::new(11.0, "middle").fill(GREY);

/// One stretch of a stacked bar.
struct Segment {
    phase: String,
    end: Duration,
}

/// The chart for `results`.
pub fn render(results: &Results) -> String {
    let phases = results.phase_names(Runtime::Moat);
    let mut svg = Svg::default();
    let mut y = title(&mut svg, results);

    let bars: Vec<(Runtime, Vec<Segment>)> = results
        .runtimes()
        .into_iter()
        .map(|runtime| (runtime, segments(results, runtime)))
        .collect();
    y = stacked_bars(&mut svg, &bars, &phases, y);

    let rows = distribution_rows(results);
    y = distributions(&mut svg, &rows, y);

    svg.finish(y + 16.0)
}

fn title(svg: &mut Svg, results: &Results) -> f64 {
    let runs = results.tally_of(Runtime::Moat).runs();
    let shape = match results.parallel {
        1 => "one at a time".to_string(),
        k => format!("{k} at a time"),
    };
    let mut title = format!("moat bench: {runs} runs, {shape}");
    if let (true, Some(rate)) = (results.parallel > 1, results.vms_per_second(Runtime::Moat)) {
        title.push_str(&format!(", {rate:.2} VMs started per second"));
    }
    svg.text((MARGIN, 30.0), TITLE, &title);
    svg.text((MARGIN, 50.0), NOTE, &results.machine.describe());
    svg.text((MARGIN, 66.0), NOTE, &results.guest.describe());
    svg.text((MARGIN, 82.0), NOTE, &results.tally_line());
    100.0
}

/// The bar of `runtime`: its median phases in order, then to its median exit.
fn segments(results: &Results, runtime: Runtime) -> Vec<Segment> {
    let mut segments: Vec<Segment> = results
        .phase_names(runtime)
        .into_iter()
        .filter_map(|phase| {
            let end = results.phase(runtime, &phase)?.p50;
            Some(Segment { phase, end })
        })
        .collect();
    if let Some(total) = results.total(runtime) {
        let last = segments.last().map_or(Duration::ZERO, |s| s.end);
        segments.push(Segment {
            phase: TO_EXIT.to_string(),
            end: total.p50.max(last),
        });
    }
    segments
}

fn colour(phases: &[String], phase: &str) -> &'static str {
    match phases.iter().position(|p| p == phase) {
        Some(index) => PALETTE[index % PALETTE.len()],
        None => TO_EXIT_COLOUR,
    }
}

fn stacked_bars(
    svg: &mut Svg,
    bars: &[(Runtime, Vec<Segment>)],
    phases: &[String],
    top: f64,
) -> f64 {
    let heading = "Where the time goes: median of each phase, ms since the process started";
    svg.text((MARGIN, top + 20.0), HEADING, heading);
    let longest = bars
        .iter()
        .filter_map(|(_, segments)| segments.last().map(|s| ms(s.end)))
        .fold(0.0, f64::max);
    let axis = Axis::new(longest);
    let first = top + 36.0;
    let bottom = first + bars.len() as f64 * (BAR_HEIGHT + BAR_GAP) - BAR_GAP + 4.0;
    axis.draw(svg, top + 32.0, bottom);
    let mut y = first;
    for (runtime, segments) in bars {
        bar(svg, &axis, (runtime.name(), segments), phases, y);
        y += BAR_HEIGHT + BAR_GAP;
    }
    legend(svg, phases, bottom + 30.0)
}

fn bar(
    svg: &mut Svg,
    axis: &Axis,
    (label, segments): (&str, &[Segment]),
    phases: &[String],
    y: f64,
) {
    let baseline = y + BAR_HEIGHT / 2.0 + 4.0;
    svg.text((PLOT_LEFT - 10.0, baseline), ROW_LABEL, label);
    let mut start = 0.0;
    for segment in segments {
        let end = ms(segment.end);
        let (x0, x1) = (axis.x(start), axis.x(end));
        let fill = colour(phases, &segment.phase);
        let tip = format!("{}: {:.1} to {:.1} ms", segment.phase, start, end);
        svg.rect(Area::new(x0, y, x1 - x0, BAR_HEIGHT), fill, &tip);
        if x1 - x0 >= MIN_LABELLED_SEGMENT {
            let ink = if is_dark(fill) { "#ffffff" } else { INK };
            let font = Font::new(11.0, "middle").fill(ink);
            svg.text(((x0 + x1) / 2.0, baseline), font, &short_ms(end - start));
        }
        start = end;
    }
    let total = format!("{} ms", short_ms(start));
    svg.text((axis.x(start) + 6.0, baseline), SMALL.bold(), &total);
}

fn legend(svg: &mut Svg, phases: &[String], top: f64) -> f64 {
    let mut x = PLOT_LEFT;
    let mut y = top;
    svg.text(
        (PLOT_LEFT - 10.0, y),
        Font::new(11.0, "end").fill(GREY),
        "each stretch ends at",
    );
    let entries = phases.iter().map(String::as_str).chain([TO_EXIT]);
    for phase in entries {
        let width = 26.0 + 6.2 * phase.len() as f64;
        if x + width > WIDTH - MARGIN {
            x = PLOT_LEFT;
            y += 18.0;
        }
        svg.rect(
            Area::new(x, y - 10.0, 12.0, 12.0),
            colour(phases, phase),
            phase,
        );
        svg.text((x + 17.0, y), SMALL, phase);
        x += width;
    }
    y + 12.0
}

/// One row of the distribution panel: a label and every run's value.
struct DistributionRow {
    label: String,
    values: Vec<Duration>,
}

/// With one runtime: each of moat's phases and spawn to exit. With peers: spawn to exit and the
/// agent's marker for each runtime that reports it.
fn distribution_rows(results: &Results) -> Vec<DistributionRow> {
    let runtimes = results.runtimes();
    let phase_values = |runtime: Runtime, phase: &str| -> Vec<Duration> {
        results
            .runs_of(runtime)
            .filter_map(|r| r.phase(phase))
            .collect()
    };
    let totals = |runtime: Runtime| -> Vec<Duration> {
        results.runs_of(runtime).map(|r| r.total()).collect()
    };
    let mut rows = Vec::new();
    if runtimes.len() == 1 {
        for phase in results.phase_names(Runtime::Moat) {
            let values = phase_values(Runtime::Moat, &phase);
            rows.push(DistributionRow {
                label: phase,
                values,
            });
        }
        let values = totals(Runtime::Moat);
        rows.push(DistributionRow {
            label: "spawn to exit".into(),
            values,
        });
        return rows;
    }
    for &runtime in &runtimes {
        let label = format!("{} spawn to exit", runtime.name());
        rows.push(DistributionRow {
            label,
            values: totals(runtime),
        });
    }
    for &runtime in &runtimes {
        let values = phase_values(runtime, AGENT_READY);
        if !values.is_empty() {
            let label = format!("{} {AGENT_READY}", runtime.name());
            rows.push(DistributionRow { label, values });
        }
    }
    rows
}

fn distributions(svg: &mut Svg, rows: &[DistributionRow], top: f64) -> f64 {
    let heading = "Every run, ms: box from p25 to p75, line at the median, whiskers to min and max";
    svg.text((MARGIN, top + 28.0), HEADING, heading);
    let longest = rows
        .iter()
        .flat_map(|row| row.values.iter().map(|&v| ms(v)))
        .fold(0.0, f64::max);
    let axis = Axis::new(longest);
    let first = top + 44.0;
    let bottom = first + rows.len() as f64 * ROW_HEIGHT;
    axis.draw(svg, top + 40.0, bottom);
    let mut y = first;
    for row in rows {
        distribution(svg, &axis, row, y);
        y += ROW_HEIGHT;
    }
    bottom + 22.0
}

fn distribution(svg: &mut Svg, axis: &Axis, row: &DistributionRow, y: f64) {
    let middle = y + ROW_HEIGHT / 2.0;
    let label_font = Font::new(12.0, "end");
    svg.text((PLOT_LEFT - 10.0, middle + 4.0), label_font, &row.label);
    let values: Vec<f64> = row.values.iter().map(|&v| ms(v)).collect();
    let mut sorted = values.clone();
    sorted.sort_by(f64::total_cmp);
    let (Some(&min), Some(&max)) = (sorted.first(), sorted.last()) else {
        return;
    };
    let at = |p| percentile(&sorted, p).unwrap_or(min);
    let (q1, median, q3) = (at(25.0), at(50.0), at(75.0));

    svg.line((axis.x(min), middle), (axis.x(max), middle), GREY, 1.0);
    for whisker in [min, max] {
        let x = axis.x(whisker);
        svg.line((x, middle - 6.0), (x, middle + 6.0), GREY, 1.0);
    }
    let half = (ROW_HEIGHT - 12.0) / 2.0;
    let tip = format!("p25 {q1:.1}, p50 {median:.1}, p75 {q3:.1} ms");
    let area = Area::new(
        axis.x(q1),
        middle - half,
        axis.x(q3) - axis.x(q1),
        2.0 * half,
    );
    svg.rect(area, BOX_FILL, &tip);
    let x = axis.x(median);
    svg.line((x, middle - half), (x, middle + half), MEDIAN, 2.5);
    for (index, &value) in values.iter().enumerate() {
        // Spread the dots over the row's height so that equal values stay visible.
        let jitter = ((index * 7) % 9) as f64 - 4.0;
        svg.circle((axis.x(value), middle + jitter), 2.5, DOT);
    }
    let note = format!("p50 {}", short_ms(median));
    svg.text((axis.x(max) + 8.0, middle + 4.0), SMALL, &note);
}

/// A linear axis from 0 ms to a round number at least as large as the data.
struct Axis {
    max: f64,
    step: f64,
}

impl Axis {
    fn new(longest: f64) -> Self {
        let step = nice_step(longest.max(1.0) / 5.0);
        Self {
            max: (longest / step).ceil().max(1.0) * step,
            step,
        }
    }

    fn x(&self, value_ms: f64) -> f64 {
        PLOT_LEFT + (value_ms / self.max).clamp(0.0, 1.0) * (PLOT_RIGHT - PLOT_LEFT)
    }

    /// Grid lines from `top` to `bottom` and tick labels under them.
    fn draw(&self, svg: &mut Svg, top: f64, bottom: f64) {
        let ticks = (self.max / self.step).round() as usize;
        for tick in 0..=ticks {
            let value = tick as f64 * self.step;
            let x = self.x(value);
            svg.line((x, top), (x, bottom), GRID, 1.0);
            svg.text((x, bottom + 14.0), TICK, &format!("{value}"));
        }
    }
}

/// Milliseconds with a decimal only where it matters: `0.4`, `6.1`, `12`, `1919`.
fn short_ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&step| step >= raw)
        .unwrap_or(10.0 * power)
}

/// Whether white text reads better than black on `fill` (`#rrggbb`), by its luma (ITU-R BT.601
/// weights).
fn is_dark(fill: &str) -> bool {
    let channel = |at: usize| {
        let hex = fill.get(at..at + 2).unwrap_or("ff");
        f64::from(u8::from_str_radix(hex, 16).unwrap_or(255))
    };
    0.299 * channel(1) + 0.587 * channel(3) + 0.114 * channel(5) < 140.0
}

/// A rectangle's place.
#[derive(Clone, Copy)]
struct Area {
    x: f64,
    y: f64,
    width: f64,
    height: f64,
}

impl Area {
    fn new(x: f64, y: f64, width: f64, height: f64) -> Self {
        Self {
            x,
            y,
            width: width.max(0.0),
            height,
        }
    }
}

/// An SVG document being written: elements are appended, the frame is added at the end.
#[derive(Default)]
struct Svg {
    body: String,
}

impl Svg {
    fn text(&mut self, (x, y): (f64, f64), font: Font, text: &str) {
        let weight = if font.bold {
            " font-weight=\"bold\""
        } else {
            ""
        };
        let _ = writeln!(
            self.body,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" font-size=\"{}\" text-anchor=\"{}\" \
             fill=\"{}\"{weight}>{}</text>",
            font.size,
            font.anchor,
            font.fill,
            escape(text)
        );
    }

    fn rect(&mut self, area: Area, fill: &str, title: &str) {
        let Area {
            x,
            y,
            width,
            height,
        } = area;
        let _ = writeln!(
            self.body,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{height:.1}\" \
             fill=\"{fill}\"><title>{}</title></rect>",
            escape(title)
        );
    }

    fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str, width: f64) {
        let _ = writeln!(
            self.body,
            "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" \
             stroke=\"{stroke}\" stroke-width=\"{width}\"/>"
        );
    }

    fn circle(&mut self, (cx, cy): (f64, f64), r: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"{r}\" fill=\"{fill}\" \
             fill-opacity=\"0.7\"/>"
        );
    }

    fn finish(self, height: f64) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"{WIDTH}\" \
             height=\"{height:.0}\" viewBox=\"0 0 {WIDTH} {height:.0}\" \
             font-family=\"sans-serif\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n{}</svg>\n",
            self.body
        )
    }
}

/// Text as XML character data or an attribute value.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::results::fixtures;
    use super::*;

    #[test]
    fn chart_is_one_svg_document_with_a_bar_per_runtime() {
        let svg = render(&fixtures::results());

        assert!(svg.starts_with("<?xml"));
        assert_eq!(svg.matches("<svg ").count(), 1);
        assert!(svg.trim_end().ends_with("</svg>"));
        for runtime in ["moat", "firecracker", "qemu"] {
            assert!(
                svg.contains(&format!(">{runtime}</text>")),
                "no bar for {runtime}"
            );
        }
    }

    #[test]
    fn every_element_is_closed() {
        let svg = render(&fixtures::results());

        // Each element is either self-closing or has its closing tag: a cheap well-formedness
        // check without an XML parser.
        for element in ["text", "title", "svg"] {
            let opened = svg.matches(&format!("<{element} ")).count()
                + svg.matches(&format!("<{element}>")).count();
            assert_eq!(
                opened,
                svg.matches(&format!("</{element}>")).count(),
                "{element}"
            );
        }
        for element in ["line", "circle"] {
            let opened = svg.matches(&format!("<{element} ")).count();
            let closed = svg
                .lines()
                .filter(|l| l.starts_with(&format!("<{element} ")) && l.ends_with("/>"))
                .count();
            assert_eq!(opened, closed, "{element}");
        }
    }

    #[test]
    fn chart_says_how_many_runs_failed() {
        let svg = render(&fixtures::results_with_failures());

        assert!(svg.contains(">runs ok: moat 2/2, firecracker 1/1, qemu 1/3 (the figures"));
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
    }

    #[test]
    fn axis_steps_are_round_numbers() {
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(38.0), 50.0);
        assert_eq!(nice_step(400.0), 500.0);
        assert_eq!(nice_step(1000.0), 1000.0);
    }

    #[test]
    fn one_runtime_shows_each_phase_spread() {
        let mut results = fixtures::results();
        results.runs.retain(|run| run.runtime == Runtime::Moat);

        let rows = distribution_rows(&results);

        let labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "vm-created",
                "kernel-entry",
                AGENT_READY,
                "exit",
                "spawn to exit"
            ]
        );
    }
}
