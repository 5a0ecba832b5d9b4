//! Snapshot drawing: owns how detections are burnt into a processed video frame (box outlines and
//! caption bars in a per-class colour, text in the `font8x8` bitmap font) and the JPEG encoding of
//! that frame for `GET /v1/streams/{name}/snapshot.jpg`; `detect --draw` uses the same drawing
//! (and PNG). Works on packed RGB24 rows.

use font8x8::{UnicodeFonts, BASIC_FONTS};
use image::codecs::jpeg::JpegEncoder;

/// One box to draw.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Annotation {
    /// `x0, y0, x1, y1` in image pixels; may lie partly or wholly outside the image, may be NaN.
    pub bbox: [f32; 4],
    /// Text shown in the caption.
    pub label: String,
    /// Score shown with two decimals.
    pub score: f32,
    /// Tracker id, shown as ` #id` when present.
    pub track_id: Option<u64>,
    /// Picks the colour from the palette.
    pub class: usize,
}

impl Annotation {
    /// A detection's box, caption and colour (by its query), with its track id if it has one.
    pub(crate) fn of(d: &crate::postprocess::Detection, track_id: Option<u64>) -> Self {
        Annotation {
            bbox: d.bbox,
            label: d.label.clone(),
            score: d.score,
            track_id,
            class: d.query_index,
        }
    }
}

/// Why a frame cannot be drawn on or encoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DrawError {
    /// The buffer length is not `width * height * 3`.
    #[error("frame buffer of {got} bytes does not hold {width}x{height} RGB")]
    Size { width: u32, height: u32, got: usize },
    /// The image encoder failed.
    #[error("cannot encode the image: {0}")]
    Encode(String),
}

/// Distinct colours, picked by `class % PALETTE.len()`.
const PALETTE: [[u8; 3]; 10] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [128, 128, 128],
];

/// Outline thickness in pixels.
const THICKNESS: i64 = 2;

fn check_size(width: u32, height: u32, got: usize) -> Result<(), DrawError> {
    let want = (width as usize)
        .checked_mul(height as usize)
        .and_then(|n| n.checked_mul(3));
    if want == Some(got) {
        Ok(())
    } else {
        Err(DrawError::Size { width, height, got })
    }
}

/// The packed RGB frame being drawn on; every write is clipped to it.
struct Canvas<'a> {
    w: i64,
    h: i64,
    data: &'a mut [u8],
}

impl Canvas<'_> {
    /// Fills `[x0, x1) x [y0, y1)`, clipped to the image.
    fn fill(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
        let (x0, x1) = (x0.clamp(0, self.w), x1.clamp(0, self.w));
        let (y0, y1) = (y0.clamp(0, self.h), y1.clamp(0, self.h));
        if x0 >= x1 || y0 >= y1 {
            return;
        }
        for y in y0..y1 {
            let row = (y * self.w) as usize * 3;
            let span = row + x0 as usize * 3..row + x1 as usize * 3;
            if let Some(px) = self.data.get_mut(span) {
                for p in px.chunks_exact_mut(3) {
                    p.copy_from_slice(&c);
                }
            }
        }
    }

    /// A 2-px wide segment from `a` to `b` (Bresenham), clipped to the image.
    fn segment(&mut self, a: (i64, i64), b: (i64, i64), c: [u8; 3]) {
        let (mut x, mut y) = a;
        let (dx, dy) = ((b.0 - x).abs(), -(b.1 - y).abs());
        let (sx, sy) = (if x < b.0 { 1 } else { -1 }, if y < b.1 { 1 } else { -1 });
        let mut err = dx + dy;
        // Endpoints far outside the image would take long to walk; shapes are inside [0, 1].
        for _ in 0..=(dx - dy).min(1 << 16) {
            self.fill(x - 1, y - 1, x + 1, y + 1, c);
            if (x, y) == b {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Draws `text` with its top-left corner at `(x, y)`, each font pixel `s` x `s` image pixels.
    fn text(&mut self, text: &str, x: i64, y: i64, s: i64, c: [u8; 3]) {
        for (i, ch) in text.chars().enumerate() {
            let cx = x + i as i64 * 8 * s;
            if cx >= self.w {
                break;
            }
            let ch = if ch.is_ascii_graphic() || ch == ' ' {
                ch
            } else {
                '?'
            };
            let glyph = BASIC_FONTS.get(ch).unwrap_or([0; 8]);
            for (gy, bits) in glyph.iter().enumerate() {
                for gx in 0..8 {
                    if bits & (1 << gx) != 0 {
                        let (px, py) = (cx + gx * s, y + gy as i64 * s);
                        self.fill(px, py, px + s, py + s, c);
                    }
                }
            }
        }
    }
}

/// The integer box `[l, r] x [t, b]` (inclusive) of an annotation, or `None` when it is not drawable.
fn pixel_box(bbox: [f32; 4], w: i64, h: i64) -> Option<(i64, i64, i64, i64)> {
    let [x0, y0, x1, y1] = bbox.map(f64::from);
    if !(x0.is_finite() && y0.is_finite() && x1.is_finite() && y1.is_finite()) {
        return None;
    }
    if x1 <= x0 || y1 <= y0 || x1 <= 0.0 || y1 <= 0.0 || x0 >= w as f64 || y0 >= h as f64 {
        return None;
    }
    // Edges further out than the outline thickness are invisible; clamping keeps the math small.
    let m = (THICKNESS + 1) as f64;
    let xs = |v: f64| v.clamp(-m, w as f64 + m).round() as i64;
    let ys = |v: f64| v.clamp(-m, h as f64 + m).round() as i64;
    let (l, t) = (xs(x0), ys(y0));
    Some((l, t, (xs(x1) - 1).max(l), (ys(y1) - 1).max(t)))
}

/// Draws each annotation onto packed RGB24 rows (`data.len() == width * height * 3`): a 2-px
/// outline clipped to the image in the class colour, and a caption bar `"{label} {score:.2}"`
/// (plus `" #{track_id}"`) above the box, or just below its top edge when there is no room above.
pub(crate) fn annotate(
    width: u32,
    height: u32,
    data: &mut [u8],
    anns: &[Annotation],
) -> Result<(), DrawError> {
    check_size(width, height, data.len())?;
    let (w, h) = (i64::from(width), i64::from(height));
    let mut cv = Canvas { w, h, data };
    let s: i64 = if width.min(height) < 480 { 1 } else { 2 };
    for a in anns {
        let Some((l, t, r, b)) = pixel_box(a.bbox, w, h) else {
            continue;
        };
        let c = PALETTE[a.class % PALETTE.len()];
        cv.fill(l, t, r + 1, t + THICKNESS, c);
        cv.fill(l, b + 1 - THICKNESS, r + 1, b + 1, c);
        cv.fill(l, t, l + THICKNESS, b + 1, c);
        cv.fill(r + 1 - THICKNESS, t, r + 1, b + 1, c);

        let mut caption = format!("{} {:.2}", a.label, a.score);
        if let Some(id) = a.track_id {
            caption.push_str(&format!(" #{id}"));
        }
        // Characters past the right edge are never drawn; don't count them.
        let max_chars = (w / (8 * s) + 1) as usize;
        let n = caption.chars().take(max_chars).count() as i64;
        let (bar_w, bar_h) = (n * 8 * s + 2 * s, 8 * s + 2 * s);
        let bx = l.clamp(0, (w - bar_w).max(0));
        let by = if t >= bar_h { t - bar_h } else { t.max(0) };
        let by = by.min((h - bar_h).max(0));
        cv.fill(bx, by, bx + bar_w, by + bar_h, c);
        let luma = 299 * u32::from(c[0]) + 587 * u32::from(c[1]) + 114 * u32::from(c[2]);
        let ink = if luma > 128_000 {
            [0, 0, 0]
        } else {
            [255, 255, 255]
        };
        cv.text(&caption, bx + s, by + s, s, ink);
    }
    Ok(())
}

/// A stream's zone (closed polygon) or line (`p0 → p1`) to draw, in fractions of the frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Shape {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub closed: bool,
}

/// Zone outlines (amber) and lines (cyan, a square marking `p1`: crossing from the line's left to
/// its right, facing `p1`, is `in`), each with its name.
const ZONE_COLOUR: [u8; 3] = [255, 190, 0];
const LINE_COLOUR: [u8; 3] = [0, 210, 255];

/// The shapes of a stream's rules, zones first.
pub(crate) fn shapes(zones: &crate::spec::Zones, lines: &crate::spec::Lines) -> Vec<Shape> {
    let zone = zones.iter().map(|(name, z)| Shape {
        name: name.clone(),
        points: z.polygon.iter().map(|&[x, y]| (x, y)).collect(),
        closed: true,
    });
    let line = lines.iter().map(|(name, l)| Shape {
        name: name.clone(),
        points: l.points.iter().map(|&[x, y]| (x, y)).collect(),
        closed: false,
    });
    zone.chain(line).collect()
}

/// Draws the rules' shapes and, when there are any, each annotation's anchor (the bottom-centre
/// of its box, the point the rules test) onto packed RGB24 rows.
pub(crate) fn overlay(
    width: u32,
    height: u32,
    data: &mut [u8],
    shapes: &[Shape],
    anns: &[Annotation],
) -> Result<(), DrawError> {
    check_size(width, height, data.len())?;
    if shapes.is_empty() {
        return Ok(());
    }
    let (w, h) = (i64::from(width), i64::from(height));
    let mut cv = Canvas { w, h, data };
    let s: i64 = if width.min(height) < 480 { 1 } else { 2 };
    let to_px = |(x, y): (f64, f64)| ((x * w as f64).round() as i64, (y * h as f64).round() as i64);
    for shape in shapes {
        let pts: Vec<(i64, i64)> = shape.points.iter().map(|&p| to_px(p)).collect();
        let c = if shape.closed {
            ZONE_COLOUR
        } else {
            LINE_COLOUR
        };
        let n = pts.len();
        let edges = if shape.closed { n } else { n.saturating_sub(1) };
        for i in 0..edges {
            cv.segment(pts[i], pts[(i + 1) % n], c);
        }
        if let (false, Some(&(x, y))) = (shape.closed, pts.last()) {
            cv.fill(x - 3 * s, y - 3 * s, x + 3 * s, y + 3 * s, c);
        }
        if let Some(&(x, y)) = pts.first() {
            let tx = x.clamp(0, (w - 8 * s * shape.name.len() as i64).max(0));
            let ty = (y + 2 * s).clamp(0, (h - 8 * s).max(0));
            cv.text(&shape.name, tx, ty, s, c);
        }
    }
    for a in anns {
        if let Some((l, _, r, b)) = pixel_box(a.bbox, w, h) {
            let (x, y) = ((l + r) / 2, b);
            cv.fill(
                x - 2 * s,
                y - 2 * s,
                x + 2 * s + 1,
                y + 2 * s + 1,
                [255, 255, 255],
            );
            cv.fill(
                x - s,
                y - s,
                x + s + 1,
                y + s + 1,
                PALETTE[a.class % PALETTE.len()],
            );
        }
    }
    Ok(())
}

/// Encodes packed RGB24 as PNG.
pub(crate) fn encode_png(width: u32, height: u32, data: &[u8]) -> Result<Vec<u8>, DrawError> {
    use image::ImageEncoder;
    check_size(width, height, data.len())?;
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(data, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| DrawError::Encode(e.to_string()))?;
    Ok(out)
}

/// Encodes packed RGB24 as baseline JPEG at `quality` (clamped to 1..=100).
pub(crate) fn encode_jpeg(
    width: u32,
    height: u32,
    data: &[u8],
    quality: u8,
) -> Result<Vec<u8>, DrawError> {
    check_size(width, height, data.len())?;
    let mut out = Vec::with_capacity(data.len() / 8 + 1024);
    JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
        .encode(data, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| DrawError::Encode(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BG: [u8; 3] = [10, 20, 30];

    fn frame(w: u32, h: u32) -> Vec<u8> {
        BG.repeat((w * h) as usize)
    }

    fn px(d: &[u8], w: u32, x: u32, y: u32) -> [u8; 3] {
        let i = ((y * w + x) * 3) as usize;
        [d[i], d[i + 1], d[i + 2]]
    }

    fn ann(bbox: [f32; 4], class: usize) -> Annotation {
        Annotation {
            bbox,
            label: "cat".into(),
            score: 0.876,
            track_id: Some(7),
            class,
        }
    }

    #[test]
    fn outline_has_class_colour_and_inside_is_untouched() {
        let (w, h) = (200, 150);
        let mut d = frame(w, h);
        annotate(w, h, &mut d, &[ann([50.0, 60.0, 150.0, 140.0], 3)]).expect("annotate");
        let c = PALETTE[3];
        for (x, y) in [
            (50, 60),
            (51, 61),
            (149, 139),
            (148, 100),
            (100, 60),
            (50, 100),
        ] {
            assert_eq!(px(&d, w, x, y), c, "({x},{y})");
        }
        for (x, y) in [
            (53, 63),
            (100, 100),
            (146, 136),
            (49, 100),
            (151, 100),
            (100, 141),
        ] {
            assert_eq!(px(&d, w, x, y), BG, "({x},{y})");
        }
    }

    #[test]
    fn caption_has_bar_and_text_colours() {
        let (w, h) = (200, 150);
        let mut d = frame(w, h);
        annotate(w, h, &mut d, &[ann([50.0, 60.0, 150.0, 140.0], 0)]).expect("annotate");
        // Bar is 10 px tall right above the box.
        let bar: Vec<[u8; 3]> = (50..60)
            .flat_map(|y| (50..150).map(move |x| (x, y)))
            .map(|(x, y)| px(&d, w, x, y))
            .collect();
        assert!(bar.contains(&PALETTE[0]));
        assert!(bar.contains(&[255, 255, 255]));
        assert_eq!(px(&d, w, 50, 49), BG);
    }

    #[test]
    fn caption_goes_inside_when_no_room_above_and_scales() {
        let (w, h) = (640, 480);
        let mut d = frame(w, h);
        let mut a = ann([0.0, 0.0, 600.0, 400.0], 2);
        a.label = "é\n".repeat(100);
        annotate(w, h, &mut d, &[a]).expect("annotate");
        // Yellow bar: black text, 20 px tall at scale 2, cut at the right edge.
        let bar: Vec<[u8; 3]> = (0..20)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| px(&d, w, x, y))
            .collect();
        assert!(bar.contains(&[0, 0, 0]));
        assert!(bar.contains(&PALETTE[2]));
        assert_eq!(px(&d, w, 300, 200), BG);
    }

    #[test]
    fn partly_outside_box_is_clipped() {
        let (w, h) = (100, 80);
        let mut d = frame(w, h);
        annotate(w, h, &mut d, &[ann([-50.0, -30.0, 60.0, 500.0], 1)]).expect("annotate");
        assert_eq!(px(&d, w, 58, 40), PALETTE[1]);
        assert_eq!(px(&d, w, 30, 40), BG);
        assert_eq!(px(&d, w, 0, 40), BG);
    }

    #[test]
    fn bad_boxes_change_nothing() {
        let (w, h) = (64, 48);
        let mut d = frame(w, h);
        let bad = [
            [f32::NAN, 0.0, 10.0, 10.0],
            [0.0, 0.0, f32::INFINITY, 10.0],
            [30.0, 30.0, 10.0, 10.0],
            [5.0, 5.0, 5.0, 20.0],
            [100.0, 100.0, 200.0, 200.0],
            [-1e30, -1e30, -1e20, -5.0],
        ];
        let anns: Vec<Annotation> = bad.iter().map(|b| ann(*b, 0)).collect();
        annotate(w, h, &mut d, &anns).expect("annotate");
        assert_eq!(d, frame(w, h));
        // A huge box covering the image only draws a caption; its edges are all outside.
        annotate(w, h, &mut d, &[ann([-1e30, -1e30, 1e30, 1e30], 0)]).expect("annotate");
        assert_eq!(px(&d, w, 32, 40), BG);
        annotate(0, 0, &mut [], &anns).expect("annotate");
    }

    #[test]
    fn wrong_length_is_an_error() {
        let mut d = vec![0u8; 10];
        assert!(matches!(
            annotate(4, 4, &mut d, &[]),
            Err(DrawError::Size { got: 10, .. })
        ));
        assert!(encode_jpeg(4, 4, &d, 80).is_err());
        assert!(annotate(u32::MAX, u32::MAX, &mut d, &[]).is_err());
    }

    #[test]
    fn jpeg_round_trips_flat_colour() {
        let (w, h) = (64, 40);
        let d = [200u8, 100, 50].repeat((w * h) as usize);
        let jpg = encode_jpeg(w, h, &d, 0).expect("encode");
        assert_eq!(&jpg[..2], &[0xFF, 0xD8]);
        let img = image::load_from_memory(&encode_jpeg(w, h, &d, 90).expect("encode"))
            .expect("decode")
            .to_rgb8();
        assert_eq!(img.dimensions(), (w, h));
        for p in img.pixels() {
            for (a, b) in p.0.iter().zip([200u8, 100, 50]) {
                assert!(a.abs_diff(b) <= 6, "{:?}", p.0);
            }
        }
    }

    #[test]
    fn zones_lines_and_anchors_are_drawn_where_the_rules_see_them() {
        let (w, h) = (100u32, 80u32);
        let mut d = frame(w, h);
        let shapes = vec![
            Shape {
                name: "z".into(),
                points: vec![(0.1, 0.1), (0.5, 0.1), (0.5, 0.5), (0.1, 0.5)],
                closed: true,
            },
            Shape {
                name: "l".into(),
                points: vec![(0.8, 0.0), (0.8, 1.0)],
                closed: false,
            },
        ];
        overlay(w, h, &mut d, &shapes, &[ann([60.0, 40.0, 70.0, 60.0], 0)]).expect("drawn");
        assert_eq!(px(&d, w, 30, 8), ZONE_COLOUR, "the zone's top edge (y = 8)");
        assert_eq!(px(&d, w, 30, 25), BG, "inside the zone is untouched");
        assert_eq!(px(&d, w, 80, 40), LINE_COLOUR, "the line at x = 80");
        assert_eq!(
            px(&d, w, 65, 60),
            PALETTE[0],
            "the anchor: bottom-centre of the box"
        );
        let mut plain = frame(w, h);
        overlay(w, h, &mut plain, &[], &[ann([60.0, 40.0, 70.0, 60.0], 0)]).expect("drawn");
        assert_eq!(plain, frame(w, h), "no rules: nothing drawn");
    }

    #[test]
    fn classes_get_different_colours() {
        let (w, h) = (100, 100);
        let mut d = frame(w, h);
        let anns = [
            ann([10.0, 30.0, 40.0, 90.0], 0),
            ann([60.0, 30.0, 90.0, 90.0], 1),
        ];
        annotate(w, h, &mut d, &anns).expect("annotate");
        assert_ne!(px(&d, w, 10, 60), px(&d, w, 60, 60));
        assert_eq!(px(&d, w, 10, 60), PALETTE[0]);
        assert_eq!(px(&d, w, 60, 60), PALETTE[1]);
    }
}
