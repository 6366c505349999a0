//! A bench [`Figure`] drawn as inline SVG with `plotters`: one line per
//! series, ours in blue, peers in other colours, the host's own limit
//! dashed in grey; the legend is HTML under the plot ([`legend`]), so
//! long names never cover the data.

use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::prelude::*;

use crate::record::{Figure, Role, Series};

/// Pixels of a plot.
const SIZE: (u32, u32) = (560, 340);

/// The colours of series, in order: ours first.
const OURS: [RGBColor; 3] = [
    RGBColor(0x1f, 0x5f, 0xbf),
    RGBColor(0x3f, 0x9f, 0xef),
    RGBColor(0x0b, 0x3d, 0x7a),
];
const PEERS: [RGBColor; 6] = [
    RGBColor(0xd9, 0x5f, 0x02),
    RGBColor(0x1b, 0x9e, 0x77),
    RGBColor(0x75, 0x70, 0xb3),
    RGBColor(0xe7, 0x29, 0x8a),
    RGBColor(0x66, 0xa6, 0x1e),
    RGBColor(0xa6, 0x76, 0x1d),
];
const LIMITS: [RGBColor; 2] = [RGBColor(0x55, 0x55, 0x55), RGBColor(0x99, 0x99, 0x99)];

/// Each series' colour, by role and order within the role.
fn colours(f: &Figure) -> Vec<RGBColor> {
    let mut n = [0usize; 3];
    f.series
        .iter()
        .map(|s| {
            let (set, i): (&[RGBColor], usize) = match s.role {
                Role::Ours => (&OURS, 0),
                Role::Peer => (&PEERS, 1),
                Role::Limit => (&LIMITS, 2),
            };
            let c = set[n[i] % set.len()];
            n[i] += 1;
            c
        })
        .collect()
}

/// A number as an axis label, to three figures: 1.02k, 12.3k, 1.5M.
fn human(v: f64) -> String {
    let a = v.abs();
    let (scaled, unit) = if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let s = scaled.abs();
    let digits = if s >= 100.0 || s == 0.0 {
        format!("{scaled:.0}")
    } else if s >= 10.0 {
        format!("{scaled:.1}")
    } else {
        format!("{scaled:.2}")
    };
    // 1.20k is 1.2k, 80.0k is 80k.
    let digits = if digits.contains('.') {
        digits.trim_end_matches('0').trim_end_matches('.')
    } else {
        &digits
    };
    format!("{digits}{unit}")
}

/// A log axis's label: only at 1, 2 and 5 times a power of ten, so the
/// labels never crowd.
fn log_label(v: f64) -> String {
    if v <= 0.0 {
        return String::new();
    }
    let mantissa = v / 10f64.powf(v.log10().floor());
    if [1.0, 2.0, 5.0]
        .iter()
        .any(|m| (mantissa - m).abs() < 1e-6 || (mantissa - 10.0 * m).abs() < 1e-6)
    {
        human(v)
    } else {
        String::new()
    }
}

/// The figure as an `<svg>` element.
pub fn svg(f: &Figure) -> Result<String, String> {
    let points: Vec<(f64, f64)> = f.series.iter().flat_map(|s| s.points.clone()).collect();
    if points.is_empty() {
        return Err("no points".into());
    }
    let (mut x0, mut x1) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    let y1 = points.iter().fold(0f64, |hi, p| hi.max(p.1)) * 1.1;
    let y1 = if y1 > 0.0 { y1 } else { 1.0 };
    let log = f.log_x && x0 > 0.0;
    if log {
        (x0, x1) = (x0 / 1.5, x1 * 1.5);
    } else if x0 == x1 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        if log {
            draw(&root, f, (x0..x1).log_scale(), y1, true)?;
        } else {
            draw(&root, f, x0..x1, y1, false)?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(buf)
}

fn draw<X>(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    f: &Figure,
    x: X,
    y1: f64,
    log: bool,
) -> Result<(), String>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(root)
        .caption(&f.title, ("sans-serif", 14))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x, 0f64..y1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(f.x_label.as_str())
        .y_desc(f.y_label.as_str())
        .x_label_formatter(&|v| if log { log_label(*v) } else { human(*v) })
        .y_label_formatter(&|v| human(*v))
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| e.to_string())?;
    for (s, colour) in f.series.iter().zip(colours(f)) {
        let mut pts = s.points.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let style = colour.stroke_width(2);
        match s.role {
            Role::Limit => chart
                .draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style))
                .map(|_| ()),
            _ => chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map(|_| ()),
        }
        .map_err(|e| e.to_string())?;
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, colour.filled())))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The legend of `f` as HTML: a swatch and the name of each series.
pub fn legend(f: &Figure) -> String {
    let mut h = String::from("<span class=\"legend\">");
    for (s, c) in f.series.iter().zip(colours(f)) {
        h.push_str(&swatch(s, c));
    }
    h.push_str("</span>");
    h
}

fn swatch(s: &Series, c: RGBColor) -> String {
    let RGBColor(r, g, b) = c;
    let dash = if s.role == Role::Limit {
        " stroke-dasharray=\"4 3\""
    } else {
        ""
    };
    format!(
        "<span><svg width=\"22\" height=\"10\"><line x1=\"0\" y1=\"5\" x2=\"22\" y2=\"5\" \
         stroke=\"rgb({r},{g},{b})\" stroke-width=\"3\"{dash}/></svg> {}</span>",
        super::esc(&s.name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Series;

    #[test]
    fn a_figure_draws_as_svg_with_its_title_and_every_series() {
        let f = Figure {
            id: "t".into(),
            title: "IOPS <against> depth".into(),
            x_label: "depth".into(),
            y_label: "IOPS".into(),
            log_x: true,
            series: vec![
                Series {
                    name: "ours".into(),
                    role: Role::Ours,
                    points: vec![(1.0, 9000.0), (32.0, 90000.0), (128.0, 120_000.0)],
                },
                Series {
                    name: "qsd".into(),
                    role: Role::Peer,
                    points: vec![(1.0, 8000.0), (32.0, 70000.0)],
                },
                Series {
                    name: "host".into(),
                    role: Role::Limit,
                    points: vec![(1.0, 20000.0), (32.0, 200_000.0)],
                },
            ],
        };
        let svg = svg(&f).expect("drawn");
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(svg.contains("IOPS &lt;against&gt; depth"), "title escaped");
        assert!(svg.contains("100k") || svg.contains("120k"), "human labels");
        let legend = legend(&f);
        for n in ["ours", "qsd", "host"] {
            assert!(legend.contains(n));
        }
        assert!(legend.contains("stroke-dasharray"), "the limit is dashed");
        // One point: a linear axis around it, still drawn.
        let one = Figure {
            log_x: false,
            series: vec![f.series[0].clone()],
            ..f.clone()
        };
        let one = Figure {
            series: vec![Series {
                points: vec![(64.0, 5.0)],
                ..one.series[0].clone()
            }],
            ..one
        };
        assert!(svg_ok(&one));
        let empty = Figure {
            series: Vec::new(),
            ..f
        };
        assert!(super::svg(&empty).is_err());
    }

    fn svg_ok(f: &Figure) -> bool {
        super::svg(f).is_ok_and(|s| s.contains("<svg"))
    }

    #[test]
    fn human_labels() {
        assert_eq!(human(0.0), "0");
        assert_eq!(human(2.5), "2.5");
        assert_eq!(human(512.0), "512");
        assert_eq!(human(1_020.0), "1.02k");
        assert_eq!(human(1_200.0), "1.2k");
        assert_eq!(human(80_000.0), "80k");
        assert_eq!(human(12_345.0), "12.3k");
        assert_eq!(human(512_000.0), "512k");
        assert_eq!(human(1_500_000.0), "1.5M");
        assert_eq!(log_label(50.0), "50");
        assert_eq!(log_label(2000.0), "2k");
        assert_eq!(log_label(7.0), "");
        assert_eq!(log_label(30.0), "");
    }
}
