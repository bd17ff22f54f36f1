//! The calculator against Python 3.11 on the cases in tests/fixtures/calc/cases.jsonl, written by
//! tests/oracles/calc_cases.py: every result must print exactly as `str(eval(expr))`, and every expression Python
//! rejects must be rejected.

use std::path::PathBuf;

use grpo_toolcall::calc;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../tests/fixtures/calc/cases.jsonl")
}

#[test]
fn calculator_matches_python() {
    let text = std::fs::read_to_string(fixture()).expect("tests/fixtures/calc/cases.jsonl is committed");
    let mut checked = 0;
    let mut failures = Vec::new();
    for line in text.lines() {
        let case: serde_json::Value = serde_json::from_str(line).expect("fixture lines are JSON");
        let expr = case["expr"].as_str().expect("expr is a string");
        let got = calc::evaluate(expr);
        match (case.get("result").and_then(|r| r.as_str()), &got) {
            (Some(want), Ok(v)) if v.to_string() == want => {}
            (Some(want), _) => failures.push(format!("{expr:?}: Python {want}, we {got:?}")),
            (None, Ok(v)) => failures.push(format!("{expr:?}: Python {}, we {v}", case["error"])),
            (None, Err(e)) => {
                let python = case["error"].as_str().unwrap_or("");
                let expected_kind = match python {
                    "ZeroDivisionError" => Some("zero_division"),
                    "OverflowError" => Some("overflow"),
                    "ComplexResult" => Some("complex"),
                    "SyntaxError" => Some("syntax"),
                    _ => None,
                };
                if let Some(kind) = expected_kind {
                    // A literal Python writes as complex (`3j`) is a syntax error to us; that is fine.
                    if e.kind() != kind && !(python == "ComplexResult" && e.kind() == "syntax") {
                        failures.push(format!("{expr:?}: Python {python}, we {} ({e})", e.kind()));
                    }
                }
            }
        }
        checked += 1;
    }
    assert!(checked > 2000, "only {checked} cases in the fixture");
    assert!(failures.is_empty(), "{} of {checked} cases differ:\n{}", failures.len(), failures.join("\n"));
}
