//! Plane geometry of zones and lines: which side of a directed line a point is on, whether two
//! segments meet, whether a point is inside a polygon, whether a polygon crosses itself. Pure
//! functions on `(x, y)` pairs in any one unit (pixels with y pointing down, or fractions of the
//! frame); imports nothing of the crate.

/// A point `(x, y)`.
pub(crate) type Point = (f64, f64);

/// `(x1-x0)*(a.y-y0) - (y1-y0)*(a.x-x0)`: the side of the directed line `p0 → p1` that `a` is on
/// (0: on the line). With y pointing down, positive is the right-hand side of the direction.
pub(crate) fn side(p0: Point, p1: Point, a: Point) -> f64 {
    (p1.0 - p0.0) * (a.1 - p0.1) - (p1.1 - p0.1) * (a.0 - p0.0)
}

/// The sign of a side value: -1, 0 or 1.
pub(crate) fn sign(v: f64) -> i8 {
    if v > 0.0 {
        1
    } else if v < 0.0 {
        -1
    } else {
        0
    }
}

/// Whether the closed segments `a0 a1` and `b0 b1` have a point in common (touching counts).
pub(crate) fn segments_meet(a0: Point, a1: Point, b0: Point, b1: Point) -> bool {
    let d1 = sign(side(b0, b1, a0));
    let d2 = sign(side(b0, b1, a1));
    let d3 = sign(side(a0, a1, b0));
    let d4 = sign(side(a0, a1, b1));
    if d1 * d2 < 0 && d3 * d4 < 0 {
        return true;
    }
    (d1 == 0 && on_segment(b0, b1, a0))
        || (d2 == 0 && on_segment(b0, b1, a1))
        || (d3 == 0 && on_segment(a0, a1, b0))
        || (d4 == 0 && on_segment(a0, a1, b1))
}

/// Whether `p`, known to be on the line through `a b`, lies within the segment's box.
fn on_segment(a: Point, b: Point, p: Point) -> bool {
    p.0 >= a.0.min(b.0) && p.0 <= a.0.max(b.0) && p.1 >= a.1.min(b.1) && p.1 <= a.1.max(b.1)
}

/// Whether `p` is inside `polygon` (even-odd rule; a point on an edge counts as inside).
pub(crate) fn inside(polygon: &[Point], p: Point) -> bool {
    let n = polygon.len();
    if n < 3 {
        return false;
    }
    let mut odd = false;
    for i in 0..n {
        let (a, b) = (polygon[i], polygon[(i + 1) % n]);
        if sign(side(a, b, p)) == 0 && on_segment(a, b, p) {
            return true;
        }
        if (a.1 > p.1) != (b.1 > p.1) {
            let x = a.0 + (p.1 - a.1) * (b.0 - a.0) / (b.1 - a.1);
            if p.0 < x {
                odd = !odd;
            }
        }
    }
    odd
}

/// Twice the signed area of `polygon` (shoelace).
pub(crate) fn doubled_area(polygon: &[Point]) -> f64 {
    let n = polygon.len();
    (0..n)
        .map(|i| {
            let (a, b) = (polygon[i], polygon[(i + 1) % n]);
            a.0 * b.1 - b.0 * a.1
        })
        .sum()
}

/// Whether two edges of `polygon` that are not neighbours meet, or two neighbours overlap.
pub(crate) fn self_intersects(polygon: &[Point]) -> bool {
    let n = polygon.len();
    let edge = |i: usize| (polygon[i], polygon[(i + 1) % n]);
    for i in 0..n {
        for j in i + 1..n {
            let (a0, a1) = edge(i);
            let (b0, b1) = edge(j);
            let neighbours = j == i + 1 || (i == 0 && j == n - 1);
            if !neighbours {
                if segments_meet(a0, a1, b0, b1) {
                    return true;
                }
                continue;
            }
            // Neighbours share one vertex; they must not fold back over each other.
            let (shared, other_a, other_b) = if j == i + 1 {
                (a1, a0, b1)
            } else {
                (a0, a1, b0)
            };
            let collinear = sign(side(other_a, shared, other_b)) == 0;
            let back = (other_a.0 - shared.0) * (other_b.0 - shared.0)
                + (other_a.1 - shared.1) * (other_b.1 - shared.1)
                > 0.0;
            if collinear && back {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQUARE: [Point; 4] = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)];

    #[test]
    fn side_follows_the_issue_formula() {
        // A line pointing down the image (x = 0.5, y growing): (x1-x0) = 0, (y1-y0) = 1, so
        // side = -(a.x - 0.5): negative right of it, positive left of it.
        assert_eq!(sign(side((0.5, 0.0), (0.5, 1.0), (0.7, 0.5))), -1);
        assert_eq!(sign(side((0.5, 0.0), (0.5, 1.0), (0.3, 0.5))), 1);
        assert_eq!(sign(side((0.5, 0.0), (0.5, 1.0), (0.5, 9.0))), 0);
    }

    #[test]
    fn segments_meet_only_within_their_ends() {
        assert!(segments_meet(
            (0.0, 0.0),
            (2.0, 2.0),
            (0.0, 2.0),
            (2.0, 0.0)
        ));
        // The infinite lines cross, the segments do not.
        assert!(!segments_meet(
            (0.0, 0.0),
            (1.0, 1.0),
            (3.0, 0.0),
            (2.0, 1.0)
        ));
        // Touching at an end counts.
        assert!(segments_meet(
            (0.0, 0.0),
            (1.0, 0.0),
            (1.0, 0.0),
            (1.0, 5.0)
        ));
        // Collinear, apart.
        assert!(!segments_meet(
            (0.0, 0.0),
            (1.0, 0.0),
            (2.0, 0.0),
            (3.0, 0.0)
        ));
    }

    #[test]
    fn inside_a_square_and_a_concave_polygon() {
        assert!(inside(&SQUARE, (0.5, 0.5)));
        assert!(inside(&SQUARE, (1.0, 0.5)), "on an edge");
        assert!(!inside(&SQUARE, (1.5, 0.5)));
        let l = [
            (0.0, 0.0),
            (2.0, 0.0),
            (2.0, 1.0),
            (1.0, 1.0),
            (1.0, 2.0),
            (0.0, 2.0),
        ];
        assert!(inside(&l, (0.5, 1.5)));
        assert!(!inside(&l, (1.5, 1.5)), "the notch");
    }

    #[test]
    fn bow_ties_and_folds_intersect_themselves() {
        assert!(!self_intersects(&SQUARE));
        let bow = [(0.0, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 1.0)];
        assert!(self_intersects(&bow));
        let fold = [(0.0, 0.0), (2.0, 0.0), (1.0, 0.0), (1.0, 1.0)];
        assert!(self_intersects(&fold));
        assert_eq!(doubled_area(&SQUARE), 2.0);
        assert_eq!(doubled_area(&[(0.0, 0.0), (1.0, 0.0), (2.0, 0.0)]), 0.0);
    }
}
