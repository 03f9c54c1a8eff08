//! The overlap matrix as a heat-map for HQ's report (issue 12): one drawing, rendered
//! by plotters twice — a PNG and an SVG — and written atomically, mode 0644 (a report,
//! not a secret).
//!
//! Text in the PNG is drawn with a vendored ASCII subset of DejaVu Sans
//! (`assets/fonts/`, loaded with `include_bytes!` through plotters' `ab_glyph`), so no
//! machine needs fontconfig or freetype; axes are labelled by node name, which is an
//! ASCII DNS name. Organisation names may be Chinese, which that font cannot draw: they
//! appear in the SVG only, whose `<text>` elements name a CJK-capable font stack for
//! the viewer to resolve. plotters escapes every text and attribute it writes into the
//! SVG (`<`, `>`, `&`, quotes).

use std::io::Write as _;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontDesc, FontFamily, FontStyle, FontTransform};
use unicode_width::UnicodeWidthStr;

use super::{OverlapError, OverlapView, PairRow, count};

/// Which figure the heat-map colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeatMetric {
    /// |A ∩ B| / |A ∪ B|; symmetric; 1 on the diagonal.
    Jaccard,
    /// The released shared counts. The diagonal shows each channel's size in a colour of
    /// its own, off the scale, which runs from 0 to the largest shared count (a channel's
    /// size would dwarf every overlap).
    Shared,
    /// |row ∩ column| / |row|: the share of the row channel's customers who are also
    /// the column channel's; 1 on the diagonal.
    ContainmentRowInColumn,
}

impl HeatMetric {
    fn title(self) -> &'static str {
        match self {
            HeatMetric::Jaccard => "Jaccard index: shared / (row + column - shared)",
            HeatMetric::Shared => "shared customers (diagonal: the channel's own customers)",
            HeatMetric::ContainmentRowInColumn => "share of the row's customers who are also the column's",
        }
    }
}

/// The vendored font: DejaVu Sans cut down to printable ASCII and ± × − ≤ ≥ (35 kB;
/// its licence is `assets/fonts/LICENSE`).
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-ascii.ttf");
/// The name plotters' font table knows the vendored font by (its own, so no other
/// registration can replace it).
const PNG_FAMILY: &str = "fedcrm-dejavu-sans-ascii";
/// The SVG's font stack: CJK-capable fonts first, for the organisation names.
const SVG_FAMILY: &str = "Noto Sans CJK SC, Source Han Sans SC, Microsoft YaHei, PingFang SC, sans-serif";

fn register_font() -> Result<(), OverlapError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| plotters::style::register_font(PNG_FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok { Ok(()) } else { Err(OverlapError::Font) }
}

/// What one cell of the heat-map shows.
#[derive(Debug, Clone, Copy)]
enum Heat {
    Value(f64),
    /// A count it needs is withheld by the release rules.
    Withheld,
    /// Every count is there, but noise left the denominator ≤ 0.
    Undefined,
    NotCompared,
}

fn heat(v: &OverlapView, pairs: &[Option<&PairRow>], metric: HeatMetric, i: usize, j: usize) -> Heat {
    let n = v.channels.len();
    if i == j {
        return match (v.channels[i].customers, metric) {
            (None, _) => Heat::Withheld,
            (Some(x), HeatMetric::Shared) => Heat::Value(x),
            (Some(x), _) if x > 0.0 => Heat::Value(1.0),
            (Some(_), _) => Heat::Undefined,
        };
    }
    let Some(p) = pairs[i * n + j] else { return Heat::NotCompared };
    let value = match metric {
        HeatMetric::Shared => p.shared,
        HeatMetric::Jaccard => p.jaccard,
        HeatMetric::ContainmentRowInColumn if v.channels[i].node == p.a => p.a_in_b,
        HeatMetric::ContainmentRowInColumn => p.b_in_a,
    };
    let withheld = p.shared.is_none()
        || (metric != HeatMetric::Shared && (v.channels[i].customers.is_none() || v.channels[j].customers.is_none()));
    match (value, withheld) {
        (Some(x), _) => Heat::Value(x),
        (None, true) => Heat::Withheld,
        (None, false) => Heat::Undefined,
    }
}

/// A sequential blue scale from near-white (0) to dark blue (1).
fn colour(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let mix = |lo: u8, hi: u8| (f64::from(lo) + (f64::from(hi) - f64::from(lo)) * t).round() as u8;
    RGBColor(mix(247, 8), mix(251, 48), mix(255, 107))
}

const GREY: RGBColor = RGBColor(205, 205, 205);
const HATCH: RGBColor = RGBColor(140, 140, 140);
const CELL: i32 = 96;
/// The diagonal of the `Shared` map: channel sizes, off the colour scale.
const SIZE_FILL: RGBColor = RGBColor(255, 243, 205);
/// A generous estimate of a character's width at the label size, for the layout.
const CHAR: i32 = 8;
/// The same at the notes' size.
const NOTE_CHAR: i32 = 7;

/// Where everything goes, computed once for both renderings.
struct Layout {
    n: i32,
    left: i32,
    top: i32,
    legend_x: i32,
    bar_height: i32,
    notes_y: i32,
    size: (u32, u32),
    /// The scale's top: 1 for ratios, the largest released count for `Shared`.
    max: f64,
}

fn layout(v: &OverlapView, heats: &[Heat], metric: HeatMetric, notes: &[String]) -> Layout {
    let n = v.channels.len() as i32;
    let cols = v.channels.len().max(1);
    let label = v.channels.iter().map(|c| c.node.width() as i32).max().unwrap_or(0) * CHAR + 12;
    let left = 20 + label;
    let top = 80 + label;
    let legend_x = left + n * CELL + 30;
    let bar_height = (n * CELL).max(180);
    // Below the scale and its swatches (the bar is never shorter than the matrix).
    let notes_y = top + bar_height + 110;
    let widest_note = notes.iter().map(|s| s.width() as i32).max().unwrap_or(0) * NOTE_CHAR;
    let width = (legend_x + 180).max(40 + widest_note).max(40 + v.run.width() as i32 * CHAR + 200);
    let height = notes_y + 20 * notes.len() as i32 + 20;
    let max = match metric {
        HeatMetric::Shared => heats
            .iter()
            .enumerate()
            .filter(|(k, _)| k / cols != k % cols)
            .filter_map(|(_, h)| match h {
                Heat::Value(x) => Some(x.max(0.0)),
                _ => None,
            })
            .fold(0.0, f64::max),
        _ => 1.0,
    };
    let max = if max > 0.0 { max } else { 1.0 };
    Layout { n, left, top, legend_x, bar_height, notes_y, size: (width as u32, height as u32), max }
}

/// Diagonal hatching inside a square, as line segments.
fn hatch(x0: i32, y0: i32, side: i32) -> Vec<[(i32, i32); 2]> {
    (1..)
        .map(|k| k * 12)
        .take_while(|&t| t < 2 * side)
        .map(|t| {
            let (sx, sy) = (t.min(side), t - t.min(side));
            let (ex, ey) = (t - t.min(side), t.min(side));
            [(x0 + sx, y0 + sy), (x0 + ex, y0 + ey)]
        })
        .collect()
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// The drawing, on either backend. `family` names the font; `notes` are the lines
/// under the matrix (the SVG's include the organisations).
fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    v: &OverlapView,
    metric: HeatMetric,
    heats: &[Heat],
    l: &Layout,
    family: &str,
    notes: &[String],
) -> DrawResult<DB> {
    let font = |size: f64| FontDesc::new(FontFamily::Name(family), size, FontStyle::Normal);
    let text = |size: f64, c: &RGBColor, h: HPos, vp: VPos| font(size).color(c).pos(Pos::new(h, vp));
    area.fill(&WHITE)?;
    area.draw(&Text::new(
        format!("Customer overlap, PSI run {}", v.run),
        (20, 20),
        text(20.0, &BLACK, HPos::Left, VPos::Top),
    ))?;
    area.draw(&Text::new(metric.title().to_string(), (20, 48), text(15.0, &BLACK, HPos::Left, VPos::Top)))?;
    let label = text(14.0, &BLACK, HPos::Right, VPos::Center);
    for (i, c) in v.channels.iter().enumerate() {
        let mid = i as i32 * CELL + CELL / 2;
        area.draw(&Text::new(c.node.clone(), (l.left - 8, l.top + mid), label.clone()))?;
        let column =
            font(14.0).transform(FontTransform::Rotate270).color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
        area.draw(&Text::new(c.node.clone(), (l.left + mid, l.top - 8), column))?;
    }
    let n = l.n as usize;
    for i in 0..n {
        for j in 0..n {
            let (x0, y0) = (l.left + j as i32 * CELL, l.top + i as i32 * CELL);
            let (x1, y1) = (x0 + CELL, y0 + CELL);
            let centre = (x0 + CELL / 2, y0 + CELL / 2);
            let (fill, words, ink) = match heats[i * n + j] {
                Heat::Value(x) if i == j && metric == HeatMetric::Shared => (SIZE_FILL, count(x), BLACK),
                Heat::Value(x) => {
                    let t = x.max(0.0) / l.max;
                    let words = match metric {
                        HeatMetric::Shared => count(x),
                        _ => format!("{x:.3}"),
                    };
                    (colour(t), words, if t > 0.5 { WHITE } else { BLACK })
                }
                Heat::Withheld => (GREY, "withheld".to_string(), BLACK),
                Heat::Undefined => (GREY, "n/a".to_string(), BLACK),
                Heat::NotCompared => (WHITE, "-".to_string(), BLACK),
            };
            area.draw(&Rectangle::new([(x0, y0), (x1, y1)], fill.filled()))?;
            if matches!(heats[i * n + j], Heat::Withheld) {
                for segment in hatch(x0, y0, CELL) {
                    area.draw(&PathElement::new(segment.to_vec(), HATCH.stroke_width(1)))?;
                }
            }
            area.draw(&Rectangle::new([(x0, y0), (x1, y1)], WHITE.stroke_width(2)))?;
            area.draw(&Text::new(words, centre, text(13.0, &ink, HPos::Center, VPos::Center)))?;
        }
    }
    // The colour scale: a bar from the top of the scale down to 0, then the swatches.
    let (bx, by) = (l.legend_x, l.top);
    for k in 0..l.bar_height {
        let t = 1.0 - f64::from(k) / f64::from(l.bar_height - 1);
        area.draw(&Rectangle::new([(bx, by + k), (bx + 20, by + k + 1)], colour(t).filled()))?;
    }
    area.draw(&Rectangle::new([(bx, by), (bx + 20, by + l.bar_height)], BLACK.stroke_width(1)))?;
    let tick = |x: f64| match metric {
        HeatMetric::Shared => count(x),
        _ => format!("{x:.1}"),
    };
    for (frac, value) in [(0.0, l.max), (0.5, l.max / 2.0), (1.0, 0.0)] {
        let y = by + (frac * f64::from(l.bar_height)) as i32;
        area.draw(&Text::new(tick(value), (bx + 28, y), text(13.0, &BLACK, HPos::Left, VPos::Center)))?;
    }
    let sy = by + l.bar_height + 16;
    area.draw(&Rectangle::new([(bx, sy), (bx + 20, sy + 20)], GREY.filled()))?;
    for segment in hatch(bx, sy, 20) {
        area.draw(&PathElement::new(segment.to_vec(), HATCH.stroke_width(1)))?;
    }
    area.draw(&Text::new("withheld".to_string(), (bx + 28, sy + 10), text(13.0, &BLACK, HPos::Left, VPos::Center)))?;
    area.draw(&Rectangle::new([(bx, sy + 28), (bx + 20, sy + 48)], BLACK.stroke_width(1)))?;
    area.draw(&Text::new(
        "- not compared".to_string(),
        (bx + 28, sy + 38),
        text(13.0, &BLACK, HPos::Left, VPos::Center),
    ))?;
    if metric == HeatMetric::Shared {
        area.draw(&Rectangle::new([(bx, sy + 56), (bx + 20, sy + 76)], SIZE_FILL.filled()))?;
        area.draw(&Text::new(
            "channel size".to_string(),
            (bx + 28, sy + 66),
            text(13.0, &BLACK, HPos::Left, VPos::Center),
        ))?;
    }
    for (k, line) in notes.iter().enumerate() {
        let y = l.notes_y + 20 * k as i32;
        area.draw(&Text::new(line.clone(), (20, y), text(13.0, &BLACK, HPos::Left, VPos::Top)))?;
    }
    Ok(())
}

/// The lines under the matrix: what the figures are and how they were noised; the SVG's
/// also name each channel's organisation.
fn notes(v: &OverlapView, organisations: bool) -> Vec<String> {
    let mut out = vec![
        "withheld: below the release threshold (never 0); n/a: noise left the denominator <= 0".to_string(),
        "ratios from the noised counts clamped at 0, then into [0, 1]; counts shown as released".to_string(),
    ];
    // A pair of HQ's own channels is compared on an HQ node, which sees its exact count.
    let hq = |name: &str| v.channels.iter().any(|c| c.node == name && c.kind == super::ChannelKind::Hq);
    let own_pairs = v.pairs.iter().any(|p| hq(&p.a) && hq(&p.b));
    out.push(match &v.noise {
        Some(n) if n.dp => format!(
            "differential privacy: discrete Gaussian noise on every count{}{}; HQ never sees an exact count{}",
            n.epsilon.map(|e| format!(", epsilon = {e}")).unwrap_or_default(),
            n.delta.map(|d| format!(", delta = {d:e}")).unwrap_or_default(),
            if own_pairs { " except between two of its own channels" } else { "" },
        ),
        Some(_) => "exact (dp off): the counts carry no noise".to_string(),
        None => "the release does not say how its counts were noised".to_string(),
    });
    if organisations {
        out.push("channels:".to_string());
        for c in &v.channels {
            out.push(format!("{}: {} ({})", c.node, c.organisation, c.kind.as_str()));
        }
    }
    out
}

/// Draws the overlap matrix coloured by `metric` and writes it as a PNG and an SVG.
/// Both are rendered before either is written; each file is written to a temporary
/// file beside it and renamed into place, mode 0644.
pub fn write_heatmap(v: &OverlapView, metric: HeatMetric, png: &Path, svg: &Path) -> Result<(), OverlapError> {
    register_font()?;
    let n = v.channels.len();
    let mut pairs: Vec<Option<&PairRow>> = vec![None; n * n];
    for p in &v.pairs {
        if let (Some(i), Some(j)) = (v.position(&p.a), v.position(&p.b)) {
            pairs[i * n + j] = Some(p);
            pairs[j * n + i] = Some(p);
        }
    }
    let heats: Vec<Heat> = (0..n * n).map(|k| heat(v, &pairs, metric, k / n, k % n)).collect();
    let (png_notes, svg_notes) = (notes(v, false), notes(v, true));

    let mut svg_text = String::new();
    {
        let l = layout(v, &heats, metric, &svg_notes);
        let area = SVGBackend::with_string(&mut svg_text, l.size).into_drawing_area();
        let failed = |e: DrawingAreaErrorKind<_>| OverlapError::Draw { path: svg.to_path_buf(), reason: e.to_string() };
        draw(&area, v, metric, &heats, &l, SVG_FAMILY, &svg_notes).map_err(failed)?;
        area.present().map_err(failed)?;
    }

    let l = layout(v, &heats, metric, &png_notes);
    let (w, h) = l.size;
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let failed = |e: DrawingAreaErrorKind<_>| OverlapError::Draw { path: png.to_path_buf(), reason: e.to_string() };
        let backend = BitMapBackend::<plotters::backend::RGBPixel>::with_buffer_and_format(&mut rgb, l.size)
            .map_err(|e| OverlapError::Draw { path: png.to_path_buf(), reason: e.to_string() })?;
        let area = backend.into_drawing_area();
        draw(&area, v, metric, &heats, &l, PNG_FAMILY, &png_notes).map_err(failed)?;
        area.present().map_err(failed)?;
    }
    let mut png_bytes = Vec::new();
    {
        let encoded = |source| OverlapError::Encode { path: png.to_path_buf(), source };
        let mut encoder = png::Encoder::new(&mut png_bytes, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(encoded)?;
        writer.write_image_data(&rgb).map_err(encoded)?;
        writer.finish().map_err(encoded)?;
    }
    write_atomically(png, &png_bytes)?;
    write_atomically(svg, svg_text.as_bytes())
}

/// Writes `bytes` to a temporary file in `path`'s directory, mode 0644, syncs it and
/// renames it over `path`: a reader sees the old file or the whole new one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), OverlapError> {
    let failed = |source| OverlapError::Write { path: path.to_path_buf(), source };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new().prefix(".heatmap-").tempfile_in(dir).map_err(failed)?;
    tmp.write_all(bytes).map_err(failed)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(failed)?;
    }
    tmp.as_file().sync_all().map_err(failed)?;
    tmp.persist(path).map_err(|e| failed(e.error))?;
    Ok(())
}
