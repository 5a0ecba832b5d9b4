use super::{plan_exemplars, ExemplarRole, ExemplarSpec, QueryPlan};
use std::sync::Arc;

fn spec(label: Option<&str>, negative: bool) -> ExemplarSpec<'_> {
    ExemplarSpec { label, negative }
}

#[test]
fn exemplars_are_laid_out_by_label_and_sign() {
    let text = vec!["a cat".to_string(), "a dog".to_string()];
    let ex = [
        spec(Some("a cat"), true), // a negative before anything it refines
        spec(Some("b"), false),
        spec(Some("image:2"), false),
        spec(Some("b"), false),
        spec(None, true),
        spec(Some("image:2"), true),
    ];
    let (roles, labels) = plan_exemplars(&text, &ex).expect("plan");
    assert_eq!(labels, vec!["a cat", "a dog", "b", "image:2"]);
    assert_eq!(
        roles,
        vec![
            ExemplarRole::Negative(Some(0)),
            ExemplarRole::Positive(2),
            ExemplarRole::Positive(3),
            ExemplarRole::Positive(2),
            ExemplarRole::Negative(None),
            ExemplarRole::Negative(Some(3)),
        ]
    );
    for (bad, want) in [
        (vec![spec(Some("a dog"), false)], "also a text query"),
        (vec![spec(Some("zebra"), true)], "names no query"),
        (vec![spec(None, false)], "has no label"),
    ] {
        let e = plan_exemplars(&text, &bad).expect_err("refused");
        assert!(e.to_string().contains(want), "{e}");
    }
    let e = plan_exemplars(&[], &[spec(None, true)]).expect_err("negatives alone");
    assert!(e.to_string().contains("need a query"), "{e}");
}

#[test]
fn a_labelled_negative_applies_to_every_query_of_that_label() {
    let text = vec![
        "a cat".to_string(),
        "a dog".to_string(),
        "a cat".to_string(),
    ];
    let e = |v: f32| -> Arc<[f32]> { Arc::from(vec![v, 0.0]) };
    let plan = QueryPlan::build(
        &text,
        vec![e(1.0), e(2.0), e(3.0)],
        &[spec(Some("a cat"), true)],
        &[e(9.0)],
    )
    .expect("plan");
    let targets: Vec<Option<usize>> = plan.negatives.iter().map(|n| n.1).collect();
    assert_eq!(targets, vec![Some(0), Some(2)]);
    assert_eq!(plan.labels, text);
}
