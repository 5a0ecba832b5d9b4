//! A stream's rules as users write them (`zones` and `lines` of a `[[streams]]` table or a
//! `PUT /v1/streams/{name}` body) and their validation. Coordinates are fractions of the frame's
//! width and height, so rules survive a resolution change. What the rules do is `video::rules`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::geometry::{self, Point};

/// The event types the rules give (`video::rules::Kind`), as `?type=` and webhooks name them.
pub(crate) const EVENT_TYPES: [&str; 7] = [
    "new",
    "update",
    "end",
    "zone_enter",
    "zone_exit",
    "loiter",
    "line_cross",
];

/// Zones or lines one stream may have.
pub(crate) const MAX_RULES: usize = 64;
/// Points a zone's polygon may have.
pub(crate) const MAX_POLYGON_POINTS: usize = 64;
/// The most consecutive frames `inertia` may ask for.
pub(crate) const MAX_INERTIA: u32 = 1000;
/// The longest `loiter_s` (a day).
pub(crate) const MAX_LOITER_S: f64 = 86_400.0;

/// A zone: a polygon, the labels it watches and how presence is decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ZoneSpec {
    /// 3 to 64 points `[x, y]`, fractions of the frame's width and height, not crossing itself.
    pub(crate) polygon: Vec<[f64; 2]>,
    /// Query labels the zone watches; empty or absent: every query.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) labels: Vec<String>,
    /// Consecutive reported frames inside (outside) before a track enters (leaves).
    #[serde(default = "default_inertia")]
    pub(crate) inertia: u32,
    /// Seconds of stream time in the zone before one `loiter` event (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) loiter_s: Option<f64>,
    /// Detections scoring below this do not count for the zone (absent: every reported one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) min_score: Option<f32>,
}

fn default_inertia() -> u32 {
    3
}

/// A directed line `p0 → p1`; crossing it from its negative side to its positive side is `in`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LineSpec {
    /// `[[x0, y0], [x1, y1]]`, fractions of the frame's width and height.
    pub(crate) points: [[f64; 2]; 2],
    /// Query labels the line counts; empty or absent: every query.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) labels: Vec<String>,
}

/// Zones by name.
pub(crate) type Zones = BTreeMap<String, ZoneSpec>;
/// Lines by name.
pub(crate) type Lines = BTreeMap<String, LineSpec>;

/// Checks a stream's zones and lines; the message names the rule and what is wrong.
pub(crate) fn check(zones: &Zones, lines: &Lines) -> Result<(), String> {
    if zones.len() > MAX_RULES || lines.len() > MAX_RULES {
        return Err(format!(
            "a stream may have {MAX_RULES} zones and {MAX_RULES} lines at most"
        ));
    }
    for (name, z) in zones {
        check_rule_name("zone", name)?;
        check_zone(z).map_err(|e| format!("zone {name:?}: {e}"))?;
    }
    for (name, l) in lines {
        check_rule_name("line", name)?;
        check_line(l).map_err(|e| format!("line {name:?}: {e}"))?;
    }
    Ok(())
}

fn check_rule_name(what: &str, name: &str) -> Result<(), String> {
    if crate::limits::is_valid_name(name) {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} name {:?} (1-64 characters of a-z, 0-9, '_' and '-')",
            name.chars().take(80).collect::<String>()
        ))
    }
}

fn check_zone(z: &ZoneSpec) -> Result<(), String> {
    let n = z.polygon.len();
    if !(3..=MAX_POLYGON_POINTS).contains(&n) {
        return Err(format!(
            "polygon has {n} points; it needs 3 to {MAX_POLYGON_POINTS}"
        ));
    }
    let points = fractions(&z.polygon)?;
    if geometry::doubled_area(&points).abs() < 1e-12 {
        return Err("polygon has no area".into());
    }
    if geometry::self_intersects(&points) {
        return Err("polygon crosses itself".into());
    }
    check_labels(&z.labels)?;
    if !(1..=MAX_INERTIA).contains(&z.inertia) {
        return Err(format!(
            "inertia must be 1 to {MAX_INERTIA} frames, got {}",
            z.inertia
        ));
    }
    if let Some(s) = z.loiter_s {
        if !s.is_finite() || s <= 0.0 || s > MAX_LOITER_S {
            return Err(format!(
                "loiter_s must be a number of seconds in (0, {MAX_LOITER_S}], got {s}"
            ));
        }
    }
    if let Some(m) = z.min_score {
        if !m.is_finite() || !(0.0..=1.0).contains(&m) {
            return Err(format!("min_score must be a number in [0, 1], got {m}"));
        }
    }
    Ok(())
}

fn check_line(l: &LineSpec) -> Result<(), String> {
    let p = fractions(&l.points)?;
    if p[0] == p[1] {
        return Err("its two points are the same".into());
    }
    check_labels(&l.labels)
}

fn check_labels(labels: &[String]) -> Result<(), String> {
    if labels.len() > 256 {
        return Err("at most 256 labels".into());
    }
    match labels
        .iter()
        .find(|l| l.trim().is_empty() || l.len() > 1024)
    {
        Some(l) => Err(format!(
            "label {:?} is blank or longer than 1024 bytes",
            l.chars().take(80).collect::<String>()
        )),
        None => Ok(()),
    }
}

/// The points as `Point`s, each coordinate a finite fraction in [0, 1].
pub(crate) fn fractions(points: &[[f64; 2]]) -> Result<Vec<Point>, String> {
    points
        .iter()
        .map(|&[x, y]| {
            if x.is_finite()
                && y.is_finite()
                && (0.0..=1.0).contains(&x)
                && (0.0..=1.0).contains(&y)
            {
                Ok((x, y))
            } else {
                Err(format!(
                    "point [{x}, {y}] is not inside the frame (fractions in [0, 1])"
                ))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(polygon: &[[f64; 2]]) -> ZoneSpec {
        ZoneSpec {
            polygon: polygon.to_vec(),
            labels: vec![],
            inertia: 3,
            loiter_s: None,
            min_score: None,
        }
    }

    fn one_zone(z: ZoneSpec) -> Result<(), String> {
        check(&Zones::from([("porch".to_string(), z)]), &Lines::new())
    }

    #[test]
    fn zones_are_checked_with_their_names_in_the_message() {
        let square = [[0.1, 0.5], [0.6, 0.5], [0.6, 1.0], [0.1, 1.0]];
        assert_eq!(one_zone(zone(&square)), Ok(()));
        let e = one_zone(zone(&square[..2])).expect_err("refused");
        assert!(e.starts_with("zone \"porch\": polygon has 2 points"), "{e}");
        let bow = [[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.5]];
        assert!(one_zone(zone(&bow))
            .expect_err("refused")
            .contains("crosses itself"));
        let outside = [[0.0, 0.0], [1.5, 0.0], [1.0, 1.0]];
        assert!(one_zone(zone(&outside))
            .expect_err("refused")
            .contains("not inside the frame"));
        let flat = [[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]];
        assert!(one_zone(zone(&flat))
            .expect_err("refused")
            .contains("no area"));
        let mut z = zone(&square);
        z.inertia = 0;
        assert!(one_zone(z).expect_err("refused").contains("inertia"));
        let mut z = zone(&square);
        z.loiter_s = Some(f64::NAN);
        assert!(one_zone(z).expect_err("refused").contains("loiter_s"));
        let mut z = zone(&square);
        z.min_score = Some(1.5);
        assert!(one_zone(z).expect_err("refused").contains("min_score"));
        let mut z = zone(&square);
        z.labels = vec![" ".into()];
        assert!(one_zone(z).expect_err("refused").contains("blank"));
        let e = check(
            &Zones::from([("Porch".into(), zone(&square))]),
            &Lines::new(),
        )
        .expect_err("refused");
        assert!(e.contains("invalid zone name"), "{e}");
    }

    #[test]
    fn lines_need_two_distinct_points_in_the_frame() {
        let line = |points| LineSpec {
            points,
            labels: vec![],
        };
        let one = |l| check(&Zones::new(), &Lines::from([("dock".to_string(), l)]));
        assert_eq!(one(line([[0.5, 0.0], [0.5, 1.0]])), Ok(()));
        assert!(one(line([[0.5, 0.5], [0.5, 0.5]]))
            .expect_err("refused")
            .starts_with("line \"dock\": its two points are the same"));
        assert!(one(line([[0.5, -0.1], [0.5, 1.0]]))
            .expect_err("refused")
            .contains("not inside the frame"));
    }

    #[test]
    fn the_issue_example_parses_with_defaults() {
        let z: ZoneSpec = serde_json::from_str(
            r#"{"polygon": [[0.1,0.5],[0.6,0.5],[0.6,1.0],[0.1,1.0]], "labels": ["a package"], "loiter_s": 120, "min_score": 0.3}"#,
        )
        .expect("test step");
        assert_eq!(z.inertia, 3);
        assert_eq!(z.loiter_s, Some(120.0));
        assert!(
            serde_json::from_str::<LineSpec>(r#"{"points": [[0,0],[1,1]], "colour": 1}"#).is_err()
        );
    }
}
