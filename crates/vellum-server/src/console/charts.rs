//! Server-rendered charts: stacked bar charts as inline SVG, laid out here and drawn by a
//! template (so every label is HTML-escaped like any other value). No script, no style
//! attributes: colours come from CSS classes in the console's stylesheet, which the CSP allows.
//! Each chart also carries its numbers as a table for screen readers and keyboard users.

/// Drawing width of a chart (the SVG scales to its container).
pub const WIDTH: f64 = 640.0;
/// Drawing height.
pub const HEIGHT: f64 = 200.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;

/// One series: a name, its CSS class and a value per bucket.
pub struct Series {
    /// Legend label.
    pub name: String,
    /// CSS class giving its colour.
    pub class: String,
    /// One count per bucket.
    pub values: Vec<u64>,
}

/// A rectangle of a bar.
pub struct Segment {
    /// Left edge.
    pub x: String,
    /// Top edge.
    pub y: String,
    /// Width.
    pub w: String,
    /// Height.
    pub h: String,
    /// CSS class.
    pub class: String,
    /// Tooltip (`<title>`).
    pub title: String,
}

/// A text label placed on the chart.
pub struct Label {
    /// X.
    pub x: String,
    /// Y.
    pub y: String,
    /// Text.
    pub text: String,
}

/// A legend entry.
pub struct Legend {
    /// Label.
    pub name: String,
    /// CSS class.
    pub class: String,
    /// Sum over the buckets.
    pub total: u64,
}

/// A laid-out stacked bar chart.
pub struct StackedChart {
    /// Identifier for `aria-labelledby`.
    pub id: String,
    /// Caption.
    pub title: String,
    /// `viewBox` width.
    pub width: u32,
    /// `viewBox` height.
    pub height: u32,
    /// The bars' rectangles.
    pub segments: Vec<Segment>,
    /// Bucket labels under the x axis (a few).
    pub x_labels: Vec<Label>,
    /// Count labels beside the y axis.
    pub y_labels: Vec<Label>,
    /// Grid lines' y positions.
    pub grid: Vec<String>,
    /// Legend.
    pub legend: Vec<Legend>,
    /// The numbers: bucket label, then one count per series.
    pub rows: Vec<(String, Vec<u64>)>,
    /// Whether every count is zero.
    pub empty: bool,
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

/// A round upper bound for the y axis.
pub fn nice_max(max: u64) -> u64 {
    if max <= 5 {
        return max.max(1);
    }
    let magnitude = 10u64.pow(max.ilog10());
    for step in [1, 2, 5, 10] {
        let bound = magnitude * step;
        if bound >= max {
            return bound;
        }
    }
    magnitude * 10
}

/// Lays out `series` stacked over `buckets` (their labels, oldest first).
pub fn stacked(id: &str, title: &str, buckets: &[String], series: &[Series]) -> StackedChart {
    let n = buckets.len().max(1);
    let totals: Vec<u64> = (0..buckets.len())
        .map(|i| {
            series
                .iter()
                .map(|s| s.values.get(i).copied().unwrap_or(0))
                .sum()
        })
        .collect();
    let max = nice_max(totals.iter().copied().max().unwrap_or(0));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let column = plot_w / n as f64;
    let bar = (column * 0.8).max(1.0);
    let scale = plot_h / max as f64;
    let mut segments = Vec::new();
    for (i, bucket) in buckets.iter().enumerate() {
        let x = LEFT + column * i as f64 + (column - bar) / 2.0;
        let mut base = TOP + plot_h;
        for s in series {
            let v = s.values.get(i).copied().unwrap_or(0);
            if v == 0 {
                continue;
            }
            let h = v as f64 * scale;
            base -= h;
            segments.push(Segment {
                x: fmt(x),
                y: fmt(base),
                w: fmt(bar),
                h: fmt(h),
                class: s.class.clone(),
                title: format!("{bucket}: {} {v}", s.name),
            });
        }
    }
    let every = n.div_ceil(6).max(1);
    let x_labels = buckets
        .iter()
        .enumerate()
        .filter(|(i, _)| i % every == 0)
        .map(|(i, b)| Label {
            x: fmt(LEFT + column * i as f64 + column / 2.0),
            y: fmt(HEIGHT - 6.0),
            text: b.clone(),
        })
        .collect();
    let ticks = [0, max / 2, max];
    let y_of = |v: u64| TOP + plot_h - v as f64 * scale;
    StackedChart {
        id: id.to_owned(),
        title: title.to_owned(),
        width: WIDTH as u32,
        height: HEIGHT as u32,
        segments,
        x_labels,
        y_labels: ticks
            .iter()
            .map(|t| Label {
                x: fmt(LEFT - 6.0),
                y: fmt(y_of(*t) + 4.0),
                text: t.to_string(),
            })
            .collect(),
        grid: ticks.iter().map(|t| fmt(y_of(*t))).collect(),
        legend: series
            .iter()
            .map(|s| Legend {
                name: s.name.clone(),
                class: s.class.clone(),
                total: s.values.iter().sum(),
            })
            .collect(),
        rows: buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                (
                    b.clone(),
                    series
                        .iter()
                        .map(|s| s.values.get(i).copied().unwrap_or(0))
                        .collect(),
                )
            })
            .collect(),
        empty: totals.iter().all(|t| *t == 0),
    }
}

/// A CSS class name for a value of a known set (`prefix-value`, lowercase), `prefix-other`
/// for anything else, so a stored value can never inject a class.
pub fn class_for(prefix: &str, value: &str, known: &[&str]) -> String {
    if known.iter().any(|k| k.eq_ignore_ascii_case(value)) {
        format!("{prefix}-{}", value.to_ascii_lowercase())
    } else {
        format!("{prefix}-other")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_bounds() {
        assert_eq!(nice_max(0), 1);
        assert_eq!(nice_max(3), 3);
        assert_eq!(nice_max(7), 10);
        assert_eq!(nice_max(11), 20);
        assert_eq!(nice_max(120), 200);
        assert_eq!(nice_max(501), 1000);
        assert_eq!(nice_max(1000), 1000);
    }

    #[test]
    fn bars_stack_and_fit_the_plot() {
        let buckets: Vec<String> = (0..24).map(|h| format!("{h:02}:00")).collect();
        let series = vec![
            Series {
                name: "success".into(),
                class: "st-success".into(),
                values: (0..24).map(|h| h as u64).collect(),
            },
            Series {
                name: "failure".into(),
                class: "st-failure".into(),
                values: vec![1; 24],
            },
        ];
        let chart = stacked("c", "Events", &buckets, &series);
        assert!(!chart.empty);
        // Hour 0 has only a failure; every other hour has both.
        assert_eq!(chart.segments.len(), 24 + 23);
        for s in &chart.segments {
            let y: f64 = s.y.parse().expect("y");
            let h: f64 = s.h.parse().expect("h");
            assert!(
                y >= TOP - 0.1 && y + h <= HEIGHT - BOTTOM + 0.1,
                "{} {}",
                s.y,
                s.h
            );
        }
        assert_eq!(chart.legend[0].total, (0..24).sum::<u64>());
        assert_eq!(chart.rows[23].1, vec![23, 1]);
        assert!(chart.x_labels.len() <= 6);
        assert!(stacked("e", "none", &buckets, &[]).empty);
    }

    #[test]
    fn classes_come_from_known_values_only() {
        assert_eq!(class_for("st", "success", &["success"]), "st-success");
        assert_eq!(class_for("cl", "PHI", &["PHI"]), "cl-phi");
        assert_eq!(class_for("st", "x\" onload=\"", &["success"]), "st-other");
    }
}
