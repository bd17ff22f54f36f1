//! Python's float semantics where they differ from plain IEEE arithmetic in Rust: `repr`, correctly rounded
//! int-to-float conversion and int true division, floor division and modulo, and `**`.
//!
//! Each function follows the behaviour of CPython 3.11 (`Objects/floatobject.c`, `Objects/longobject.c`) so that the
//! calculator prints what `str(eval(expr))` would.

use num_bigint::BigUint;
use num_integer::Integer;
use num_traits::Zero;

/// Why a float operation has no result, as Python would raise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatError {
    /// `ZeroDivisionError`, with Python's message.
    ZeroDivision(&'static str),
    /// `OverflowError`, with Python's message.
    Overflow(&'static str),
    /// A negative base raised to a fractional power; Python returns a complex number, which we do not support.
    Complex,
}

/// Format a float exactly as Python's `repr` (and `str`) does: the shortest digits that round-trip, in fixed notation
/// for decimal exponents from -4 up to 16 and in scientific notation (`1e+16`, `1e-05`) outside that range.
pub fn repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if x == 0.0 {
        return format!("{sign}0.0");
    }
    // Rust's `{:e}` also prints the shortest round-trip digits, but where the double lies exactly halfway between two
    // shortest candidates it rounds the tie up, and Python to even. Rust's fixed-precision formatting rounds exact
    // ties to even, so prefer it at the same length whenever it still round-trips.
    let mut sci = format!("{:e}", x.abs());
    let n_digits = sci.split_once('e').map_or(0, |(m, _)| m.chars().filter(char::is_ascii_digit).count());
    if n_digits > 1 {
        let even = format!("{:.*e}", n_digits - 1, x.abs());
        if even != sci && even.parse::<f64>() == Ok(x.abs()) {
            sci = even;
        }
    }
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` always prints an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` prints an integer exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    // Position of the decimal point relative to the first digit, as CPython's `decpt`.
    let decpt = exp + 1;
    let n = digits.len() as i32;
    let body = if decpt > -4 && decpt <= 16 {
        if decpt <= 0 {
            format!("0.{}{}", "0".repeat((-decpt) as usize), digits)
        } else if decpt >= n {
            format!("{}{}.0", digits, "0".repeat((decpt - n) as usize))
        } else {
            format!("{}.{}", &digits[..decpt as usize], &digits[decpt as usize..])
        }
    } else {
        let e = decpt - 1;
        let esign = if e < 0 { '-' } else { '+' };
        let frac = if n > 1 { format!(".{}", &digits[1..]) } else { String::new() };
        format!("{}{}e{}{:02}", &digits[..1], frac, esign, e.abs())
    };
    format!("{sign}{body}")
}

/// `m * 2^exp` for a value the caller knows is exactly representable (or overflows to infinity). Scaling in steps of
/// at most 2^1000 keeps every intermediate exact, so no double rounding happens on the way to a subnormal result.
fn ldexp(m: u64, mut exp: i64) -> f64 {
    let mut x = m as f64;
    while exp != 0 && x != 0.0 && x.is_finite() {
        let step = exp.clamp(-1000, 1000);
        x *= f64::from_bits(((1023 + step) as u64) << 52);
        exp -= step;
    }
    x
}

/// `a / b` for non-negative integers, rounded to the nearest double (ties to even), as CPython's `long_true_divide`
/// does; `None` when the result does not fit in a double. `b` must not be zero.
pub fn div_to_f64(a: &BigUint, b: &BigUint) -> Option<f64> {
    debug_assert!(!b.is_zero());
    if a.is_zero() {
        return Some(0.0);
    }
    let (na, nb) = (a.bits() as i64, b.bits() as i64);
    // Scale so that the integer quotient has 55 or 56 bits: 53 for the mantissa, one guard bit and one spare.
    let s = 55 + nb - na;
    let (num, den) = if s >= 0 { (a << (s as u64), b.clone()) } else { (a.clone(), b << ((-s) as u64)) };
    let (q, r) = num.div_rem(&den);
    let sticky = !r.is_zero();
    let k = q.bits() as i64;
    // The value is (q + fraction) * 2^-s; its leading bit has weight 2^(k-1-s).
    if k - 1 - s > 1023 {
        return None;
    }
    // Drop bits below the mantissa's last place: 53 significant bits, or fewer where the result is subnormal.
    let drop = (k - 53).max(s - 1074);
    // `q` has 55 or 56 bits, so at least two bits are always dropped (the guard bit and one more).
    let mant = if drop > k {
        0
    } else {
        let kept = &q >> (drop as u64);
        let mut mant = kept.iter_u64_digits().next().unwrap_or(0);
        let rem = &q - (&kept << (drop as u64));
        let half = BigUint::from(1u8) << ((drop - 1) as u64);
        if rem > half || (rem == half && (sticky || mant & 1 == 1)) {
            mant += 1;
        }
        mant
    };
    let exp = drop - s;
    let x = ldexp(mant, exp);
    x.is_finite().then_some(x)
}

/// The nearest double to a non-negative integer (ties to even), or `None` past `f64::MAX`, like `float(int)`.
pub fn uint_to_f64(a: &BigUint) -> Option<f64> {
    div_to_f64(a, &BigUint::from(1u8))
}

fn is_odd_integer(x: f64) -> bool {
    (x.abs() % 2.0) == 1.0
}

/// Python's `x / y` for floats.
pub fn div(x: f64, y: f64) -> Result<f64, FloatError> {
    if y == 0.0 {
        return Err(FloatError::ZeroDivision("float division by zero"));
    }
    Ok(x / y)
}

/// Python's `x % y` for floats: the result takes the sign of `y`.
pub fn rem(x: f64, y: f64) -> Result<f64, FloatError> {
    if y == 0.0 {
        return Err(FloatError::ZeroDivision("float modulo"));
    }
    let mut m = x % y;
    if m != 0.0 {
        if (y < 0.0) != (m < 0.0) {
            m += y;
        }
    } else {
        m = 0.0f64.copysign(y);
    }
    Ok(m)
}

/// Python's `x // y` for floats, computed through `fmod` as CPython's `_float_div_mod` does so that
/// `x == (x // y) * y + x % y` holds as closely as floats allow.
pub fn floor_div(x: f64, y: f64) -> Result<f64, FloatError> {
    if y == 0.0 {
        return Err(FloatError::ZeroDivision("float floor division by zero"));
    }
    let m = x % y;
    let mut d = (x - m) / y;
    if m != 0.0 && (y < 0.0) != (m < 0.0) {
        d -= 1.0;
    }
    Ok(if d != 0.0 {
        let mut f = d.floor();
        if d - f > 0.5 {
            f += 1.0;
        }
        f
    } else {
        0.0f64.copysign(x / y)
    })
}

/// Python's `x ** y` for floats, with CPython's special cases ahead of the C library's `pow`.
pub fn pow(x: f64, y: f64) -> Result<f64, FloatError> {
    if y == 0.0 {
        return Ok(1.0);
    }
    if x.is_nan() {
        return Ok(x);
    }
    if y.is_nan() {
        return Ok(if x == 1.0 { 1.0 } else { y });
    }
    if y.is_infinite() {
        let ax = x.abs();
        return Ok(if ax == 1.0 {
            1.0
        } else if (y > 0.0) == (ax > 1.0) {
            f64::INFINITY
        } else {
            0.0
        });
    }
    if x.is_infinite() {
        let odd = is_odd_integer(y);
        return Ok(if y > 0.0 {
            if odd {
                x
            } else {
                x.abs()
            }
        } else if odd {
            0.0f64.copysign(x)
        } else {
            0.0
        });
    }
    if x == 0.0 {
        if y < 0.0 {
            return Err(FloatError::ZeroDivision("0.0 cannot be raised to a negative power"));
        }
        return Ok(if is_odd_integer(y) { x } else { 0.0 });
    }
    let mut base = x;
    let mut negate = false;
    if base < 0.0 {
        if y != y.floor() {
            return Err(FloatError::Complex);
        }
        base = -base;
        negate = is_odd_integer(y);
    }
    if base == 1.0 {
        return Ok(if negate { -1.0 } else { 1.0 });
    }
    let r = base.powf(y);
    if r.is_infinite() {
        return Err(FloatError::Overflow("(34, 'Numerical result out of range')"));
    }
    Ok(if negate { -r } else { r })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_matches_python_layout() {
        let cases = [
            (2.0, "2.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (-0.0, "-0.0"),
            (1.0 / 3.0, "0.3333333333333333"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (5e-324, "5e-324"),
            (f64::INFINITY, "inf"),
            (f64::NAN, "nan"),
            (123.456, "123.456"),
            // Exact ties between two shortest candidates: Python rounds to even.
            (14.0 + 2f64.powi(-16), "14.000015258789062"),
            (-(599999999999999.0 + 0.25), "-599999999999999.2"),
        ];
        for (x, want) in cases {
            assert_eq!(repr(x), want, "repr({x:?})");
        }
    }

    #[test]
    fn division_rounds_to_nearest() {
        let big = |s: &str| s.parse::<BigUint>().unwrap();
        assert_eq!(div_to_f64(&big("1"), &big("3")), Some(1.0 / 3.0));
        let p400 = BigUint::from(10u8).pow(400);
        let p399 = BigUint::from(10u8).pow(399);
        assert_eq!(div_to_f64(&p400, &p399), Some(10.0));
        assert_eq!(div_to_f64(&p399, &p400), Some(0.1));
        // 2^53 + 1 is a tie between 2^53 and 2^53 + 2; ties go to the even mantissa.
        assert_eq!(uint_to_f64(&big("9007199254740993")), Some(9007199254740992.0));
        assert_eq!(uint_to_f64(&big("9007199254740995")), Some(9007199254740996.0));
        let two_1024 = BigUint::from(1u8) << 1024u32;
        assert_eq!(uint_to_f64(&two_1024), None);
        assert_eq!(uint_to_f64(&(two_1024 - 1u8)), None);
        let two_1074 = BigUint::from(1u8) << 1074u32;
        assert_eq!(div_to_f64(&big("1"), &two_1074), Some(5e-324));
        assert_eq!(div_to_f64(&big("1"), &(two_1074 << 1u32)), Some(0.0));
    }
}
