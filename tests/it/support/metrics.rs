//! Reads values out of the Prometheus text exposition that `/metrics` serves.

/// One sample line: `name{label="value",…} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) value: f64,
}

/// Every sample of `text` (comments and blank lines skipped); panics on a malformed line, which
/// is a bug in the exposition.
pub(crate) fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_line(l).unwrap_or_else(|e| panic!("bad metrics line {l:?}: {e}\n{text}")))
        .collect()
}

/// The value of the sample named `name` whose label set is exactly `labels` (in any order);
/// `&[]` for an unlabelled metric.
pub(crate) fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text)
        .into_iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
}

/// Whether any sample is named `name` (with any labels).
pub(crate) fn has(text: &str, name: &str) -> bool {
    samples(text).iter().any(|s| s.name == name)
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let end = loop {
            // Skip separators, then read `key="value"` until the closing brace.
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            let (start, c) = chars.next().ok_or("unterminated labels")?;
            if c == '}' {
                break start + 1;
            }
            let mut key = String::from(c);
            loop {
                let (_, c) = chars.next().ok_or("unterminated label name")?;
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key} has no quoted value"));
            }
            let mut val = String::new();
            loop {
                let (_, c) = chars.next().ok_or("unterminated label value")?;
                match c {
                    '"' => break,
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => val.push('\n'),
                        Some(c) => val.push(c),
                        None => return Err("dangling escape".into()),
                    },
                    c => val.push(c),
                }
            }
            labels.push((key.trim().to_string(), val));
        };
        rest = &body[end..];
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or("no value")?
        .parse::<f64>()
        .map_err(|e| e.to_string())?;
    Ok(Sample {
        name,
        labels,
        value,
    })
}

#[test]
fn reads_unlabelled_and_labelled_samples() {
    let text = "# HELP iv_requests_total Requests.\n# TYPE iv_requests_total counter\n\
        iv_requests_total{outcome=\"ok\"} 3\niv_requests_total{outcome=\"queue_full\"} 1\n\
        iv_batch_size_bucket{le=\"+Inf\"} 7\niv_queue_depth 0\n\
        odd{a=\"x\\\"y\",b=\"2\"} 1.5 1700000000\n";
    assert_eq!(value(text, "iv_queue_depth", &[]), Some(0.0));
    assert_eq!(
        value(text, "iv_requests_total", &[("outcome", "ok")]),
        Some(3.0)
    );
    assert_eq!(
        value(text, "iv_requests_total", &[("outcome", "queue_full")]),
        Some(1.0)
    );
    assert_eq!(value(text, "iv_requests_total", &[]), None);
    assert_eq!(
        value(text, "iv_requests_total", &[("outcome", "timeout")]),
        None
    );
    assert_eq!(value(text, "odd", &[("b", "2"), ("a", "x\"y")]), Some(1.5));
    assert!(has(text, "iv_batch_size_bucket"));
    assert!(!has(text, "iv_batch_size"));
}

/// Runs `promtool check metrics` on `text` when promtool is installed (`.ci/run` installs it; under
/// CI a missing promtool is a failure). Returns promtool's complaints, empty when it is satisfied.
pub(crate) fn promtool_lint(text: &str) -> Option<String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is required under CI: {e}"
            );
            eprintln!("promtool not installed ({e}); skipping the Prometheus lint");
            return None;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    Some(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}
