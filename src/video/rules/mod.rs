//! A stream's rules at work: from the detections a frame event reports (tracked, above the
//! stream's threshold, their boxes as reported) to the events people act on: each track's
//! lifecycle (`new`, `update`, `end`), zone presence with inertia (`zone_enter`, `zone_exit`),
//! `loiter` in stream time, directed line crossings (`line_cross`) with cumulative counts, and the
//! occupancy per zone and label. Pure: no clock, no I/O; stream time is the frames' `pts_ms`.
//!
//! A detection's anchor is the bottom-centre of its box, `((x0+x1)/2, y1)` in pixels. Rules are
//! kept as fractions of the frame and scaled to each frame's size, so a resolution change keeps
//! them where they were drawn (and a track's previous anchor moves with them).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::geometry::{self, Point};
use crate::spec::{Lines, Zones};

pub(crate) mod bench;
#[cfg(test)]
mod tests;

/// What a frame tells the rules about one reported track.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observation<'a> {
    pub track_id: u64,
    pub label: &'a str,
    pub score: f32,
    /// `[x0, y0, x1, y1]` in pixels.
    pub bbox: [f32; 4],
}

/// An event's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    New,
    Update,
    End,
    ZoneEnter,
    ZoneExit,
    Loiter,
    LineCross,
}

impl Kind {
    /// Every type, as `?type=` and `[[webhooks]] events` name them.
    pub(crate) const ALL: [Kind; 7] = [
        Kind::New,
        Kind::Update,
        Kind::End,
        Kind::ZoneEnter,
        Kind::ZoneExit,
        Kind::Loiter,
        Kind::LineCross,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::New => "new",
            Kind::Update => "update",
            Kind::End => "end",
            Kind::ZoneEnter => "zone_enter",
            Kind::ZoneExit => "zone_exit",
            Kind::Loiter => "loiter",
            Kind::LineCross => "line_cross",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// A line crossing's direction: `in` is from the line's negative side to its positive side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Direction {
    In,
    Out,
}

/// Cumulative crossings of one line by one label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct LineCount {
    #[serde(rename = "in")]
    pub inbound: u64,
    #[serde(rename = "out")]
    pub outbound: u64,
}

/// One event: the track it is about, and what happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct RuleEvent {
    #[serde(rename = "type")]
    pub kind: Kind,
    pub pts_ms: u64,
    pub track_id: u64,
    pub label: String,
    pub score: f32,
    pub top_score: f32,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub start_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<u64>,
    pub current_zones: Vec<String>,
    pub entered_zones: Vec<String>,
    /// `zone_enter`, `zone_exit`, `loiter`: the zone, and its occupancy by this label after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occupancy: Option<u32>,
    /// `line_cross`: the line, the direction, and the label's counts after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counts: Option<LineCount>,
    /// The track's best snapshot (`GET /v1/events/{id}/snapshot.jpg`), saved when it ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

/// How tracks live and are reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RuleSettings {
    /// A track not reported for this long (stream time) ends.
    pub lost_ms: u64,
    /// `update` events of one track at most this often.
    pub update_interval_ms: u64,
}

struct Zone {
    name: String,
    polygon: Vec<Point>,
    labels: Vec<String>,
    inertia: u32,
    loiter_ms: Option<u64>,
    min_score: f32,
}

struct Line {
    name: String,
    p0: Point,
    p1: Point,
    labels: Vec<String>,
}

/// Whether a rule with `labels` watches `label` (none: every label).
fn watches(labels: &[String], label: &str) -> bool {
    labels.is_empty() || labels.iter().any(|l| l == label)
}

/// One track's presence in one zone.
#[derive(Debug, Clone, Copy, Default)]
struct Presence {
    inside: bool,
    /// Consecutive reported frames on the other side of the zone's border.
    streak: u32,
    /// Stream time of the first frame of the current inside run.
    since_ms: u64,
    candidate_ms: u64,
    loitered: bool,
}

struct TrackState {
    label: String,
    start_ms: u64,
    last_ms: u64,
    score: f32,
    top_score: f32,
    bbox: [f32; 4],
    /// The previous anchor, in fractions of the frame.
    anchor: Option<Point>,
    /// Per line: the last non-zero side (0: none yet).
    sides: Vec<i8>,
    zones: Vec<Presence>,
    entered: Vec<String>,
    last_update_ms: u64,
    pending_update: bool,
}

/// A stream's rules and the state of its tracks.
pub(crate) struct Rules {
    zones: Vec<Zone>,
    lines: Vec<Line>,
    settings: RuleSettings,
    tracks: BTreeMap<u64, TrackState>,
    /// Per zone: tracks inside by label.
    occupancy: Vec<BTreeMap<String, u32>>,
    /// Per line: crossings by label.
    counts: Vec<BTreeMap<String, LineCount>>,
    /// The stream time of the last frame seen.
    last_pts_ms: u64,
}

/// A point of a rule (fractions) in pixels of a `w × h` frame.
fn px(p: Point, w: f64, h: f64) -> Point {
    (p.0 * w, p.1 * h)
}

impl Rules {
    /// The rules of a validated stream definition.
    pub(crate) fn new(zones: &Zones, lines: &Lines, settings: RuleSettings) -> Self {
        let zones: Vec<Zone> = zones
            .iter()
            .map(|(name, z)| Zone {
                name: name.clone(),
                polygon: z.polygon.iter().map(|&[x, y]| (x, y)).collect(),
                labels: z.labels.clone(),
                inertia: z.inertia.max(1),
                loiter_ms: z.loiter_s.map(|s| (s * 1000.0).round() as u64),
                min_score: z.min_score.unwrap_or(0.0),
            })
            .collect();
        let lines: Vec<Line> = lines
            .iter()
            .map(|(name, l)| Line {
                name: name.clone(),
                p0: (l.points[0][0], l.points[0][1]),
                p1: (l.points[1][0], l.points[1][1]),
                labels: l.labels.clone(),
            })
            .collect();
        Rules {
            occupancy: vec![BTreeMap::new(); zones.len()],
            counts: vec![BTreeMap::new(); lines.len()],
            zones,
            lines,
            settings,
            tracks: BTreeMap::new(),
            last_pts_ms: 0,
        }
    }

    /// The events of one frame of `width × height` pixels at `pts_ms`, whose reported tracks are
    /// `seen`: tracks unseen for longer than `lost_ms` end first, then each seen track in id
    /// order.
    pub(crate) fn frame(
        &mut self,
        pts_ms: u64,
        width: u32,
        height: u32,
        seen: &[Observation<'_>],
    ) -> Vec<RuleEvent> {
        self.last_pts_ms = pts_ms;
        let mut out = Vec::new();
        let lost: Vec<u64> = self
            .tracks
            .iter()
            .filter(|(id, t)| {
                pts_ms.saturating_sub(t.last_ms) > self.settings.lost_ms
                    && !seen.iter().any(|o| o.track_id == **id)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            self.end_track(id, pts_ms, &mut out);
        }
        let mut order: Vec<&Observation<'_>> = seen.iter().collect();
        order.sort_by_key(|o| o.track_id);
        let size = (f64::from(width.max(1)), f64::from(height.max(1)));
        for o in order {
            self.observe(o, pts_ms, size, &mut out);
        }
        out
    }

    /// Ends every track at the last frame's stream time (the stream ended, or its tracks
    /// restarted).
    pub(crate) fn end_all(&mut self) -> Vec<RuleEvent> {
        let pts_ms = self.last_pts_ms;
        let mut out = Vec::new();
        let ids: Vec<u64> = self.tracks.keys().copied().collect();
        for id in ids {
            self.end_track(id, pts_ms, &mut out);
        }
        out
    }

    fn observe(&mut self, o: &Observation<'_>, pts_ms: u64, size: Point, out: &mut Vec<RuleEvent>) {
        let (w, h) = size;
        let anchor = (
            f64::from(o.bbox[0] + o.bbox[2]) / 2.0 / w,
            f64::from(o.bbox[3]) / h,
        );
        let (nl, nz) = (self.lines.len(), self.zones.len());
        let is_new = !self.tracks.contains_key(&o.track_id);
        let t = self.tracks.entry(o.track_id).or_insert_with(|| TrackState {
            label: o.label.to_string(),
            start_ms: pts_ms,
            last_ms: pts_ms,
            score: o.score,
            top_score: o.score,
            bbox: o.bbox,
            anchor: None,
            sides: vec![0; nl],
            zones: vec![Presence::default(); nz],
            entered: Vec::new(),
            last_update_ms: pts_ms,
            pending_update: false,
        });
        if !is_new && o.score > t.top_score {
            t.top_score = o.score;
            t.pending_update = true;
        }
        t.score = o.score;
        t.bbox = o.bbox;
        t.last_ms = pts_ms;
        if is_new {
            out.push(self.event(o.track_id, Kind::New, pts_ms));
        }
        self.cross_lines(o, anchor, size, pts_ms, out);
        self.zones_of(o, anchor, size, pts_ms, out);
        let interval = self.settings.update_interval_ms;
        if let Some(t) = self.tracks.get_mut(&o.track_id) {
            t.anchor = Some(anchor);
            let due = pts_ms.saturating_sub(t.last_update_ms) >= interval;
            if t.pending_update && due {
                t.pending_update = false;
                t.last_update_ms = pts_ms;
                out.push(self.event(o.track_id, Kind::Update, pts_ms));
            }
        }
    }

    /// Line crossings of the move from the track's previous anchor to `anchor`.
    fn cross_lines(
        &mut self,
        o: &Observation<'_>,
        anchor: Point,
        (w, h): Point,
        pts_ms: u64,
        out: &mut Vec<RuleEvent>,
    ) {
        for i in 0..self.lines.len() {
            let line = &self.lines[i];
            if !watches(&line.labels, o.label) {
                continue;
            }
            let (p0, p1) = (px(line.p0, w, h), px(line.p1, w, h));
            let a = px(anchor, w, h);
            let Some(t) = self.tracks.get_mut(&o.track_id) else {
                return;
            };
            let now = geometry::sign(geometry::side(p0, p1, a));
            let before = t.sides[i];
            if now != 0 {
                t.sides[i] = now;
            }
            let crossed = match t.anchor {
                Some(prev) if now != 0 && before != 0 && now != before => {
                    geometry::segments_meet(px(prev, w, h), a, p0, p1)
                }
                _ => false,
            };
            if !crossed {
                continue;
            }
            let direction = if before < 0 {
                Direction::In
            } else {
                Direction::Out
            };
            let count = self.counts[i].entry(o.label.to_string()).or_default();
            match direction {
                Direction::In => count.inbound += 1,
                Direction::Out => count.outbound += 1,
            }
            let count = *count;
            let mut e = self.event(o.track_id, Kind::LineCross, pts_ms);
            e.line = Some(self.lines[i].name.clone());
            e.direction = Some(direction);
            e.counts = Some(count);
            out.push(e);
        }
    }

    /// Zone presence (with inertia) and loitering for one reported frame of a track.
    fn zones_of(
        &mut self,
        o: &Observation<'_>,
        anchor: Point,
        (w, h): Point,
        pts_ms: u64,
        out: &mut Vec<RuleEvent>,
    ) {
        let a = px(anchor, w, h);
        for i in 0..self.zones.len() {
            let zone = &self.zones[i];
            if !watches(&zone.labels, o.label) || o.score < zone.min_score {
                continue;
            }
            let polygon: Vec<Point> = zone.polygon.iter().map(|&p| px(p, w, h)).collect();
            let inside = geometry::inside(&polygon, a);
            let (inertia, loiter_ms) = (zone.inertia, zone.loiter_ms);
            let Some(t) = self.tracks.get_mut(&o.track_id) else {
                return;
            };
            let p = &mut t.zones[i];
            if inside == p.inside {
                p.streak = 0;
            } else {
                if p.streak == 0 {
                    p.candidate_ms = pts_ms;
                }
                p.streak += 1;
            }
            if p.streak >= inertia {
                p.inside = inside;
                p.streak = 0;
                p.loitered = false;
                p.since_ms = p.candidate_ms;
                self.flip_zone(o.track_id, i, inside, pts_ms, out);
            }
            let Some(t) = self.tracks.get_mut(&o.track_id) else {
                return;
            };
            let p = &mut t.zones[i];
            let loitering = matches!(loiter_ms, Some(l) if pts_ms.saturating_sub(p.since_ms) >= l);
            if p.inside && !p.loitered && loitering {
                p.loitered = true;
                let mut e = self.event(o.track_id, Kind::Loiter, pts_ms);
                e.zone = Some(self.zones[i].name.clone());
                e.occupancy = Some(self.occupancy_of(i, o.label));
                out.push(e);
            }
        }
    }

    /// A track entered (`inside`) or left zone `i`.
    fn flip_zone(
        &mut self,
        id: u64,
        i: usize,
        inside: bool,
        pts_ms: u64,
        out: &mut Vec<RuleEvent>,
    ) {
        let Some(t) = self.tracks.get_mut(&id) else {
            return;
        };
        let name = self.zones[i].name.clone();
        let label = t.label.clone();
        t.pending_update = true;
        if inside && !t.entered.contains(&name) {
            t.entered.push(name.clone());
        }
        let n = self.occupancy[i].entry(label.clone()).or_insert(0);
        *n = if inside { *n + 1 } else { n.saturating_sub(1) };
        let mut e = self.event(
            id,
            if inside {
                Kind::ZoneEnter
            } else {
                Kind::ZoneExit
            },
            pts_ms,
        );
        e.zone = Some(name);
        e.occupancy = Some(self.occupancy_of(i, &label));
        out.push(e);
    }

    fn occupancy_of(&self, zone: usize, label: &str) -> u32 {
        self.occupancy[zone].get(label).copied().unwrap_or(0)
    }

    /// A track ends: it leaves the zones it is in, then `end`.
    fn end_track(&mut self, id: u64, pts_ms: u64, out: &mut Vec<RuleEvent>) {
        let inside: Vec<usize> = match self.tracks.get(&id) {
            Some(t) => (0..t.zones.len()).filter(|&i| t.zones[i].inside).collect(),
            None => return,
        };
        for i in inside {
            if let Some(t) = self.tracks.get_mut(&id) {
                t.zones[i].inside = false;
            }
            self.flip_zone(id, i, false, pts_ms, out);
        }
        let mut e = self.event(id, Kind::End, pts_ms);
        e.end_ms = self.tracks.get(&id).map(|t| t.last_ms);
        out.push(e);
        self.tracks.remove(&id);
    }

    /// An event of `kind` about track `id` as it is now.
    fn event(&self, id: u64, kind: Kind, pts_ms: u64) -> RuleEvent {
        let t = self.tracks.get(&id);
        let current_zones = t
            .map(|t| {
                (0..t.zones.len())
                    .filter(|&i| t.zones[i].inside)
                    .map(|i| self.zones[i].name.clone())
                    .collect()
            })
            .unwrap_or_default();
        RuleEvent {
            kind,
            pts_ms,
            track_id: id,
            label: t.map(|t| t.label.clone()).unwrap_or_default(),
            score: t.map_or(0.0, |t| t.score),
            top_score: t.map_or(0.0, |t| t.top_score),
            bbox: t.map_or([0.0; 4], |t| t.bbox),
            start_ms: t.map_or(pts_ms, |t| t.start_ms),
            end_ms: None,
            current_zones,
            entered_zones: t.map(|t| t.entered.clone()).unwrap_or_default(),
            zone: None,
            occupancy: None,
            line: None,
            direction: None,
            counts: None,
            snapshot: None,
        }
    }
}
