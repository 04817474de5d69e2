//! Pictures drawn as inline SVG on the server (no script, no chart library): what storing both
//! precisions in one blob saves, and what each tensor costs per parameter. Colours come from
//! CSS classes, so both follow the light or dark theme.

use maud::{Markup, html};

use super::human_bytes;

/// One bar of the storage chart.
pub struct Bar {
    pub label: String,
    pub bytes: u64,
    /// CSS class: `high`, `int8`, `separate` or `blob`.
    pub class: &'static str,
}

/// Horizontal bars, longest = full width, each with its label and size.
pub fn storage_bars(bars: &[Bar]) -> Markup {
    let max = bars.iter().map(|b| b.bytes).max().unwrap_or(1).max(1) as f64;
    let (width, row) = (600.0, 34.0);
    let height = row * bars.len() as f64;
    html! {
        svg class="chart" viewBox=(format!("0 0 {width} {height}")) role="img"
            aria-label="Bytes stored as one blob against the files it serves" {
            @for (i, bar) in bars.iter().enumerate() {
                @let y = i as f64 * row;
                @let w = (bar.bytes as f64 / max * (width - 10.0)).max(1.0);
                rect class=(format!("bar {}", bar.class)) x="0" y=(y + 4.0) width=(format!("{w:.1}"))
                    height=(row - 12.0) rx="3" {}
                text x="8" y=(y + row / 2.0 + 3.0) {
                    (bar.label) ": " (human_bytes(bar.bytes))
                }
            }
        }
    }
}

/// Bits per parameter of each quantized tensor, in blob order, as dots; a dashed line marks
/// the 16 bits of the BF16 file.
pub fn bits_per_param(points: &[(String, f64)]) -> Markup {
    let (width, height, pad) = (600.0, 220.0, 30.0);
    let top = points.iter().map(|p| p.1).fold(16.0f64, f64::max).ceil();
    let x = |i: usize| pad + (width - 2.0 * pad) * (i as f64 + 0.5) / points.len().max(1) as f64;
    let y = |bits: f64| height - pad - (height - 2.0 * pad) * bits / top;
    html! {
        svg class="chart" viewBox=(format!("0 0 {width} {height}")) role="img"
            aria-label="Stored bits per parameter of each quantized tensor" {
            line class="axis" x1=(pad) y1=(height - pad) x2=(width - pad) y2=(height - pad) {}
            line class="axis" x1=(pad) y1=(pad) x2=(pad) y2=(height - pad) {}
            line class="ref" x1=(pad) y1=(y(16.0)) x2=(width - pad) y2=(y(16.0)) {}
            text x=(pad + 4.0) y=(y(16.0) - 4.0) { "16 bits (BF16)" }
            text x="2" y=(pad + 4.0) { (format!("{top:.0}")) }
            text x="2" y=(height - pad) { "0" }
            @for (i, (name, bits)) in points.iter().enumerate() {
                circle class="dot" cx=(format!("{:.1}", x(i))) cy=(format!("{:.1}", y(*bits))) r="3" {
                    title { (name) ": " (format!("{bits:.2}")) " bits/param" }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_text() {
        let bars = [Bar {
            label: "<script>\"".into(),
            bytes: 10,
            class: "blob",
        }];
        let svg = storage_bars(&bars).into_string();
        assert!(svg.contains("&lt;script&gt;&quot;"), "{svg}");
        let plot = bits_per_param(&[("a<b".into(), 10.5)]).into_string();
        assert!(plot.contains("a&lt;b: 10.50 bits/param"), "{plot}");
    }
}
