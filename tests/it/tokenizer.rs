//! Tokenizer parity: ids equal transformers' `CLIPTokenizer` on the shared probe strings, for both
//! tokenizer forms (`tokenizer.json` and `vocab.json` + `merges.txt`).

use std::path::Path;

use intelligent_video::model::tokenizer::QueryError;
use intelligent_video::model::QueryTokenizer;

use crate::support::fixtures::fixtures;

fn cases() -> Vec<serde_json::Value> {
    let bytes = std::fs::read(fixtures().join("tokenizer_cases.json")).expect("cases");
    serde_json::from_slice(&bytes).expect("json")
}

fn check_dir(dir: &Path) {
    let tok = QueryTokenizer::from_dir(dir, 16).expect("tokenizer loads");
    let mut checked = 0;
    for (i, case) in cases().iter().enumerate() {
        let text = case["text"].as_str().expect("text");
        let want: Vec<i64> =
            serde_json::from_value(case["input_ids_padded_truncated"].clone()).expect("ids");
        let unpadded = case["input_ids_unpadded"]
            .as_array()
            .expect("unpadded")
            .len();
        match tok.encode(i, text) {
            Ok(got) => {
                // transformers truncates to 16 keeping EOS; we do the same.
                assert_eq!(got.ids, want, "case {i} {text:?}");
                assert_eq!(got.truncated, unpadded > 16, "case {i} {text:?}");
                checked += 1;
            }
            Err(QueryError::Empty { .. }) => {
                assert_eq!(
                    unpadded, 2,
                    "case {i} {text:?} rejected as empty but has tokens"
                );
            }
            Err(e) => panic!("case {i} {text:?}: {e}"),
        }
    }
    assert!(checked >= 15, "only {checked} cases checked");
}

#[test]
fn tokenizer_json_matches_transformers() {
    check_dir(&fixtures().join("tiny-a"));
}

#[test]
fn vocab_and_merges_match_transformers() {
    let dir = fixtures().join("tiny-b");
    assert!(
        !dir.join("tokenizer.json").exists(),
        "tiny-b must use vocab.json + merges.txt"
    );
    check_dir(&dir);
}

#[test]
fn known_example_and_errors() {
    let tok = QueryTokenizer::from_dir(&fixtures().join("tiny-a"), 16).expect("tokenizer");
    let got = tok.encode(0, "a photo of a cat").expect("ok");
    assert_eq!(
        got.ids,
        vec![49406, 320, 1125, 539, 320, 2368, 49407, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert!(!got.truncated);
    assert_eq!(tok.encode(3, ""), Err(QueryError::Empty { index: 3 }));
    assert_eq!(tok.encode(1, "   \t "), Err(QueryError::Empty { index: 1 }));
    let long = "cat ".repeat(40);
    let got = tok
        .encode(0, &long)
        .expect("long query is truncated, not refused");
    assert!(got.truncated);
    assert_eq!(got.ids.len(), 16);
    assert_eq!(got.ids[0], 49406);
    assert_eq!(got.ids[15], 49407);
    assert!(got.ids[1..15].iter().all(|&i| i == 2368));
    let huge = "x".repeat(10_000);
    assert!(matches!(
        tok.encode(0, &huge),
        Err(QueryError::TooLong { .. })
    ));
}
