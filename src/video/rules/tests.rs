use super::*;
use crate::spec::rules::{LineSpec, ZoneSpec};

const W: u32 = 640;
const H: u32 = 480;

fn settings() -> RuleSettings {
    RuleSettings {
        lost_ms: 1000,
        update_interval_ms: 0,
    }
}

fn zone(inertia: u32, loiter_s: Option<f64>) -> Zones {
    Zones::from([(
        "porch".to_string(),
        ZoneSpec {
            polygon: vec![[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]],
            labels: vec![],
            inertia,
            loiter_s,
            min_score: None,
        },
    )])
}

/// A vertical line at x = 0.5 from `y0` down to `y1`.
fn line(y0: f64, y1: f64) -> Lines {
    Lines::from([(
        "dock".to_string(),
        LineSpec {
            points: [[0.5, y0], [0.5, y1]],
            labels: vec![],
        },
    )])
}

/// A 20×20 box whose anchor (bottom-centre) is at (`x`, `y`) fractions of a `w × h` frame.
fn at(id: u64, x: f64, y: f64, w: u32, h: u32) -> Observation<'static> {
    let (ax, ay) = ((x * f64::from(w)) as f32, (y * f64::from(h)) as f32);
    Observation {
        track_id: id,
        label: "a person",
        score: 0.5,
        bbox: [ax - 10.0, ay - 20.0, ax + 10.0, ay],
    }
}

fn kinds(events: &[RuleEvent]) -> Vec<Kind> {
    events.iter().map(|e| e.kind).collect()
}

#[test]
fn a_track_enters_after_inertia_frames_inside_and_a_blip_does_not_leave() {
    let mut r = Rules::new(&zone(3, None), &Lines::new(), settings());
    let xs = [0.1, 0.5, 0.5, 0.5, 0.9, 0.5, 0.9, 0.9, 0.9];
    let mut all = Vec::new();
    for (i, x) in xs.iter().enumerate() {
        let ev = r.frame(i as u64 * 100, W, H, &[at(1, *x, 0.5, W, H)]);
        all.push(kinds(&ev));
    }
    assert_eq!(all[0], vec![Kind::New]);
    assert_eq!(all[1], vec![]);
    assert_eq!(all[2], vec![]);
    // The third consecutive frame inside.
    assert_eq!(all[3], vec![Kind::ZoneEnter, Kind::Update]);
    // One frame outside, then inside again: no exit.
    assert_eq!(all[4], vec![]);
    assert_eq!(all[5], vec![]);
    assert_eq!(all[6], vec![]);
    assert_eq!(all[7], vec![]);
    assert_eq!(all[8], vec![Kind::ZoneExit, Kind::Update]);
    assert_eq!(r.occupancy[0].get("a person"), Some(&0));
}

#[test]
fn zone_events_carry_occupancy_and_the_track_zones() {
    let mut r = Rules::new(&zone(1, None), &Lines::new(), settings());
    let ev = r.frame(0, W, H, &[at(1, 0.5, 0.5, W, H), at(2, 0.6, 0.6, W, H)]);
    let enters: Vec<_> = ev.iter().filter(|e| e.kind == Kind::ZoneEnter).collect();
    assert_eq!(enters.len(), 2);
    assert_eq!(enters[0].occupancy, Some(1));
    assert_eq!(enters[1].occupancy, Some(2));
    assert_eq!(enters[1].zone.as_deref(), Some("porch"));
    assert_eq!(enters[1].current_zones, vec!["porch".to_string()]);
    assert_eq!(enters[1].entered_zones, vec!["porch".to_string()]);
    // Track 2 is lost: it leaves the zone, then ends.
    let ev = r.frame(500, W, H, &[at(1, 0.5, 0.5, W, H)]);
    assert_eq!(ev, vec![]);
    let ev = r.frame(1200, W, H, &[at(1, 0.5, 0.5, W, H)]);
    assert_eq!(kinds(&ev), vec![Kind::ZoneExit, Kind::End]);
    assert_eq!(ev[0].occupancy, Some(1));
    assert_eq!(ev[1].track_id, 2);
    assert_eq!(ev[1].end_ms, Some(0));
    assert!(ev[1].current_zones.is_empty());
    assert_eq!(ev[1].entered_zones, vec!["porch".to_string()]);
}

#[test]
fn crossings_have_a_direction_and_cumulative_counts() {
    let mut r = Rules::new(&Zones::new(), &line(0.0, 1.0), settings());
    // For a line pointing down, positive side is left (smaller x): left → right is `out`.
    let mut crossings = Vec::new();
    for (i, x) in [0.2, 0.4, 0.6, 0.8, 0.6, 0.3].iter().enumerate() {
        for e in r.frame(i as u64 * 40, W, H, &[at(1, *x, 0.5, W, H)]) {
            if e.kind == Kind::LineCross {
                crossings.push((i, e.direction, e.counts));
            }
        }
    }
    let c = |inbound, outbound| Some(LineCount { inbound, outbound });
    assert_eq!(
        crossings,
        vec![
            (2, Some(Direction::Out), c(0, 1)),
            (5, Some(Direction::In), c(1, 1))
        ]
    );
}

#[test]
fn a_stop_on_the_line_keeps_the_previous_side() {
    let mut r = Rules::new(&Zones::new(), &line(0.0, 1.0), settings());
    let mut n = 0;
    // Left, exactly on the line twice, then right: one crossing, `out`.
    for (i, x) in [0.25, 0.5, 0.5, 0.75].iter().enumerate() {
        for e in r.frame(i as u64 * 40, W, H, &[at(1, *x, 0.5, W, H)]) {
            if e.kind == Kind::LineCross {
                assert_eq!(e.direction, Some(Direction::Out));
                n += 1;
            }
        }
    }
    assert_eq!(n, 1);
    // Back onto the line and off it on the same side: no crossing.
    for (i, x) in [0.5, 0.75].iter().enumerate() {
        let ev = r.frame(200 + i as u64 * 40, W, H, &[at(1, *x, 0.5, W, H)]);
        assert!(ev.iter().all(|e| e.kind != Kind::LineCross));
    }
}

#[test]
fn passing_beside_the_segment_is_not_a_crossing() {
    // The line covers the top 30% only; the track passes at y = 0.8.
    let mut r = Rules::new(&Zones::new(), &line(0.0, 0.3), settings());
    for (i, x) in [0.2, 0.4, 0.6, 0.8].iter().enumerate() {
        let ev = r.frame(i as u64 * 40, W, H, &[at(1, *x, 0.8, W, H)]);
        assert!(ev.iter().all(|e| e.kind != Kind::LineCross), "frame {i}");
    }
    assert!(r.counts[0].is_empty());
}

#[test]
fn loitering_is_measured_in_stream_time_once_per_stay() {
    let mut r = Rules::new(&zone(1, Some(2.0)), &Lines::new(), settings());
    let mut loiters = Vec::new();
    // Frames at irregular stream times: 0, 10, 1990, 2000, 2500, 5000 ms.
    for t in [0, 10, 1990, 2000, 2500, 5000] {
        for e in r.frame(t, W, H, &[at(1, 0.5, 0.5, W, H)]) {
            if e.kind == Kind::Loiter {
                loiters.push((t, e.zone, e.occupancy));
            }
        }
    }
    assert_eq!(loiters, vec![(2000, Some("porch".to_string()), Some(1))]);
}

#[test]
fn a_resolution_change_keeps_rules_and_anchors_in_place() {
    let mut r = Rules::new(&zone(1, None), &line(0.0, 1.0), settings());
    let ev = r.frame(0, W, H, &[at(1, 0.4, 0.5, W, H)]);
    // With no update interval, the zone change is told at once.
    assert_eq!(kinds(&ev), vec![Kind::New, Kind::ZoneEnter, Kind::Update]);
    // Same place in fractions at twice the size: nothing happens.
    let ev = r.frame(40, 2 * W, 2 * H, &[at(1, 0.4, 0.5, 2 * W, 2 * H)]);
    assert_eq!(ev, vec![]);
    // Then across the line at the new size: one crossing.
    let ev = r.frame(80, 2 * W, 2 * H, &[at(1, 0.6, 0.5, 2 * W, 2 * H)]);
    assert_eq!(kinds(&ev), vec![Kind::LineCross]);
}

#[test]
fn updates_follow_new_top_scores_at_most_every_interval() {
    let s = RuleSettings {
        lost_ms: 1000,
        update_interval_ms: 500,
    };
    let mut r = Rules::new(&Zones::new(), &Lines::new(), s);
    let mut updates = Vec::new();
    for (t, score) in [
        (0, 0.3),
        (100, 0.4),
        (200, 0.5),
        (600, 0.45),
        (700, 0.9),
        (800, 0.2),
    ] {
        let mut o = at(7, 0.5, 0.5, W, H);
        o.score = score;
        for e in r.frame(t, W, H, &[o]) {
            if e.kind == Kind::Update {
                updates.push((t, e.top_score, e.score));
            }
        }
    }
    // Top scores at 100 and 200 wait for the interval (600); 0.9 at 700 waits for 1100.
    assert_eq!(updates, vec![(600, 0.5, 0.45)]);
    let ev = r.end_all();
    assert_eq!(kinds(&ev), vec![Kind::End]);
    assert_eq!(ev[0].top_score, 0.9);
    assert_eq!(ev[0].start_ms, 0);
    assert_eq!(ev[0].end_ms, Some(800));
    assert_eq!(ev[0].pts_ms, 800);
}

#[test]
fn labels_and_min_score_filter_what_a_rule_sees() {
    let mut zones = zone(1, None);
    if let Some(z) = zones.get_mut("porch") {
        z.labels = vec!["a package".into()];
    }
    let mut lines = line(0.0, 1.0);
    if let Some(l) = lines.get_mut("dock") {
        l.labels = vec!["a forklift".into()];
    }
    let mut r = Rules::new(&zones, &lines, settings());
    for (i, x) in [0.4, 0.6].iter().enumerate() {
        let ev = r.frame(i as u64 * 40, W, H, &[at(1, *x, 0.5, W, H)]);
        assert!(ev
            .iter()
            .all(|e| e.kind != Kind::ZoneEnter && e.kind != Kind::LineCross));
    }
    let mut zones = zone(1, None);
    if let Some(z) = zones.get_mut("porch") {
        z.min_score = Some(0.6);
    }
    let mut r = Rules::new(&zones, &Lines::new(), settings());
    let ev = r.frame(0, W, H, &[at(1, 0.5, 0.5, W, H)]);
    assert_eq!(kinds(&ev), vec![Kind::New], "score 0.5 < min_score 0.6");
}

#[test]
fn the_kinds_are_the_documented_event_types() {
    let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(names, crate::spec::rules::EVENT_TYPES);
    for k in Kind::ALL {
        assert_eq!(serde_json::to_value(k).expect("json"), k.name());
        assert_eq!(Kind::parse(k.name()), Some(k));
    }
}

#[test]
fn events_serialise_with_the_documented_field_names() {
    let mut r = Rules::new(&Zones::new(), &line(0.0, 1.0), settings());
    r.frame(0, W, H, &[at(1, 0.4, 0.5, W, H)]);
    let ev = r.frame(40, W, H, &[at(1, 0.6, 0.5, W, H)]);
    let v = serde_json::to_value(&ev[0]).expect("test step");
    assert_eq!(v["type"], "line_cross");
    assert_eq!(v["line"], "dock");
    assert_eq!(v["direction"], "out");
    assert_eq!(v["counts"], serde_json::json!({"in": 0, "out": 1}));
    assert_eq!(v["box"].as_array().map(Vec::len), Some(4));
    assert!(v.get("zone").is_none());
}
