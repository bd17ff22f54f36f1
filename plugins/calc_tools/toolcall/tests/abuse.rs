//! Hostile expressions: each must come back with an error (or a value) quickly, without hanging or crashing.

use std::time::{Duration, Instant};

use grpo_toolcall::calc::{self, CalcError, Limits};

/// The fastest of a few runs, so that a busy machine does not fail the time bound.
fn fastest(expr: &str, limits: &Limits) -> (Result<calc::Value, CalcError>, Duration) {
    let mut best = Duration::MAX;
    let mut result = None;
    for _ in 0..3 {
        let t = Instant::now();
        let r = calc::evaluate_with(expr, limits);
        best = best.min(t.elapsed());
        result = Some(r);
    }
    (result.expect("ran at least once"), best)
}

fn assert_fast_error(expr: &str, kind: &str) {
    let (r, took) = fastest(expr, &Limits::default());
    let shown: String = expr.chars().take(40).collect();
    match r {
        Ok(v) => panic!("{shown:?}... gave {v}, expected a {kind} error"),
        Err(e) => assert_eq!(e.kind(), kind, "{shown:?}...: {e}"),
    }
    eprintln!("{took:>10.3?}  {shown:?}");
    assert!(took < Duration::from_millis(10), "{shown:?}... took {took:?}");
}

#[test]
fn tower_of_powers_is_refused() {
    assert_fast_error("9**9**9**9", "limit");
    assert_fast_error("2**2**2**2**2**2", "limit");
    assert_fast_error("(-3)**100000", "limit");
    assert_fast_error("10**14000", "limit");
}

#[test]
fn deep_nesting_is_refused() {
    let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
    assert_fast_error(&deep, "limit");
    let deep = format!("{}1{}", "(".repeat(1_000), ")".repeat(1_000));
    assert_fast_error(&deep, "limit");
    let unclosed = "(".repeat(3_000);
    assert_fast_error(&unclosed, "limit");
}

#[test]
fn megabyte_expression_is_refused() {
    let big = format!("{}1", "1+".repeat(500_000));
    assert_fast_error(&big, "limit");
    let digits = "9".repeat(1 << 20);
    assert_fast_error(&digits, "limit");
}

#[test]
fn heavy_arithmetic_within_the_input_limit_stops_early() {
    // Products and quotients of 7000-bit numbers, as many as 4 kB allows: the work budget ends it.
    let mut e = String::from("9**2200");
    while e.len() < 4000 {
        e.push_str("*9**2200//9**2200");
    }
    assert_fast_error(&e, "limit");
}

#[test]
fn large_but_legal_results_are_quick() {
    // Six 600-digit literals multiplied: 3600 digits, under the size limit.
    let lit = "9".repeat(600);
    let product = [lit.as_str(); 6].join("*");
    let minus = format!("{}1", "-".repeat(4000));
    for expr in ["2**13999 // 3", "10**4000 / (10**3999 + 7)", "-(-(-(3**8000)))", &minus, &product] {
        let (r, took) = fastest(expr, &Limits::default());
        assert!(r.is_ok(), "{expr:.40}: {r:?}");
        assert!(took < Duration::from_millis(10), "{expr:.40} took {took:?}");
    }
}

#[test]
fn the_parser_has_no_recursion_to_overflow() {
    // With the length and depth limits lifted, ten thousand levels still evaluate on a small thread stack.
    let limits = Limits { max_input_bytes: usize::MAX, max_depth: usize::MAX, ..Limits::default() };
    let deep = format!("{}1{}", "(-".repeat(10_001), ")".repeat(10_001));
    let r = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || calc::evaluate_with(&deep, &limits).map(|v| v.to_string()))
        .expect("spawn")
        .join()
        .expect("no stack overflow");
    assert_eq!(r, Ok("-1".to_string()));
}
