//! The overview's chart: attempts completed and failed per minute over the last hour, drawn as
//! an inline SVG on the server (no script, no external service). The SVG is built from numbers
//! only, never from stored text, which is why the page may embed it unescaped.

use std::fmt::Write;

use crate::store::Minute;

const WIDTH: u32 = 720;
const HEIGHT: u32 = 150;
const LEFT: u32 = 44;
const BOTTOM: u32 = 20;
const TOP: u32 = 8;
const MINUTES: u32 = 60;

/// The per-minute totals in chronological order (index 0 = 59 minutes ago, 59 = now).
pub(crate) fn series(minutes: &[Minute]) -> [(i64, i64); MINUTES as usize] {
    let mut out = [(0, 0); MINUTES as usize];
    for m in minutes {
        if m.ago < MINUTES {
            let slot = &mut out[(MINUTES - 1 - m.ago) as usize];
            slot.0 += m.completed;
            slot.1 += m.failed;
        }
    }
    out
}

/// A round axis maximum at or above `n` (1, 2, 5 × 10^k).
pub(crate) fn nice_max(n: i64) -> i64 {
    let mut base = 1i64;
    loop {
        for step in [1, 2, 5] {
            if n <= base * step {
                return base * step;
            }
        }
        base *= 10;
    }
}

/// The SVG: one bar per minute, completions stacked on failures, a labelled scale.
/// `reach` is how many minutes back the data goes (see `store::last_hour`).
pub(crate) fn svg(minutes: &[Minute], reach: u32) -> String {
    let data = series(minutes);
    let peak = data.iter().map(|(c, f)| c + f).max().unwrap_or(0);
    let max = nice_max(peak.max(1));
    let plot_w = WIDTH - LEFT - 4;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let bar_w = plot_w / MINUTES;
    let y = |v: i64| -> u32 { (v as f64 / max as f64 * plot_h as f64).round() as u32 };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg"><title>Attempts per minute, last hour: completed (green) and failed (red)</title>"#
    );
    let base = TOP + plot_h;
    for share in [1.0, 0.5, 0.0] {
        let v = max as f64 * share;
        let ly = base - (share * plot_h as f64).round() as u32;
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{ly}" x2="{}" y2="{ly}" stroke="#ddd"/><text x="{}" y="{}" font-size="10" text-anchor="end" fill="#666">{v}</text>"##,
            WIDTH - 4,
            LEFT - 4,
            ly + 3
        );
    }
    for (i, (done, failed)) in data.iter().enumerate() {
        let x = LEFT + i as u32 * bar_w + 1;
        let hf = y(*failed);
        let hc = y(*done);
        if hf > 0 {
            let _ = write!(
                s,
                r##"<rect class="failed" x="{x}" y="{}" width="{}" height="{hf}" fill="#c0392b"><title>{} min ago: {failed} failed</title></rect>"##,
                base - hf,
                bar_w - 2,
                MINUTES - 1 - i as u32
            );
        }
        if hc > 0 {
            let _ = write!(
                s,
                r##"<rect class="completed" x="{x}" y="{}" width="{}" height="{hc}" fill="#27ae60"><title>{} min ago: {done} completed</title></rect>"##,
                base - hf - hc,
                bar_w - 2,
                MINUTES - 1 - i as u32
            );
        }
    }
    for (i, label) in [(0u32, "-60m"), (30, "-30m"), (59, "now")] {
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" font-size="10" fill="#666">{label}</text>"##,
            LEFT + i * bar_w,
            HEIGHT - 6
        );
    }
    if reach < MINUTES {
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" font-size="10" fill="#666">(busy: only the last {reach} min read)</text>"##,
            LEFT + 2,
            TOP + 10
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(ago: u32, completed: i64, failed: i64) -> Minute {
        Minute {
            ago,
            completed,
            failed,
        }
    }

    #[test]
    fn minutes_land_in_order() {
        let s = series(&[m(0, 5, 1), m(59, 2, 0), m(60, 9, 9), m(0, 1, 0)]);
        assert_eq!(s[59], (6, 1));
        assert_eq!(s[0], (2, 0));
        assert_eq!(s.iter().map(|(c, f)| c + f).sum::<i64>(), 9);
    }

    #[test]
    fn axis_maxima_are_round() {
        for (n, want) in [
            (0, 1),
            (1, 1),
            (2, 2),
            (3, 5),
            (7, 10),
            (11, 20),
            (4_001, 5_000),
        ] {
            assert_eq!(nice_max(n), want, "{n}");
        }
    }

    #[test]
    fn bars_scale_to_the_axis() {
        let s = svg(&[m(0, 10, 0), m(1, 5, 5)], 60);
        assert_eq!(s.matches("class=\"completed\"").count(), 2);
        assert_eq!(s.matches("class=\"failed\"").count(), 1);
        // The tallest bar (10) reaches the axis maximum (10): full plot height.
        assert!(
            s.contains(&format!("height=\"{}\"", HEIGHT - TOP - BOTTOM)),
            "{s}"
        );
        assert!(!s.contains("busy"));
        assert!(svg(&[], 12).contains("only the last 12 min"));
        // A scale of 5 is labelled 5, 2.5 and 0.
        let s = svg(&[m(0, 4, 0)], 60);
        for label in [">5<", ">2.5<", ">0<"] {
            assert!(s.contains(label), "{label} in {s}");
        }
    }
}
