use super::*;

fn unlogged(s: &StreamShared) -> u64 {
    s.status
        .lock()
        .map(|s| s.error_log.held_back())
        .unwrap_or(u64::MAX)
}

#[test]
fn repeated_frame_errors_are_logged_once_per_interval() {
    let s = StreamShared::new("cam", 4, 1 << 20, 4);
    s.note_error("frame too large".into());
    assert_eq!(unlogged(&s), 0);
    for _ in 0..5 {
        s.note_error("frame too large".into());
    }
    assert_eq!(
        unlogged(&s),
        5,
        "repeats within the interval are counted, not logged"
    );
    s.note_error("queue full".into());
    assert_eq!(unlogged(&s), 0, "a new error is logged at once");
    assert_eq!(s.view().last_error.as_deref(), Some("queue full"));
}

#[test]
fn frame_rate_over_recent_frames() {
    let now = Instant::now();
    let times: VecDeque<Instant> = (0..11)
        .map(|i| now - Duration::from_millis(1000 - i * 100))
        .collect();
    assert!((fps(&times) - 10.0).abs() < 0.01, "{}", fps(&times));
    assert_eq!(fps(&VecDeque::new()), 0.0);
}
