//! A calculator for the expressions a model writes into `<tool:calc>...</tool>`.
//!
//! It is a parser, never an evaluator of code: numbers (Python's integer and float literals), `+ - * / // % **`,
//! unary `+`/`-` and parentheses, nothing else. Results follow Python 3.11 (`str(eval(expr))`): integers of any
//! size, `/` gives a float, `//` and `%` floor, `**` binds tighter than a unary minus on its left (`-2**2 == -4`) and
//! is right-associative, an integer to a negative integer power is a float.
//!
//! Every resource is bounded so that no input can hang or crash the caller: input length, parenthesis depth, the
//! size of every integer (checked before a multiplication or power is carried out) and the total amount of big-number
//! work. Parsing uses explicit stacks (shunting-yard), so deep nesting cannot overflow the call stack.

use std::fmt;

use num_bigint::{BigInt, Sign};
use num_integer::Integer;
use num_traits::{One, Signed, ToPrimitive, Zero};

use crate::pyfloat::{self, FloatError};

/// Resource bounds for one evaluation.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest accepted expression, in bytes (after trimming surrounding whitespace).
    pub max_input_bytes: usize,
    /// Deepest accepted parenthesis nesting.
    pub max_depth: usize,
    /// Largest integer, in bits, of any intermediate or final result. The default stays below Python's own limit of
    /// 4300 digits for converting an int to text, so every result we print Python could print too.
    pub max_int_bits: u64,
    /// Budget of big-number work, in 64-bit limb operations (a product of an m-limb and an n-limb number costs m*n).
    pub max_work: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_input_bytes: 4096, max_depth: 100, max_int_bits: 14_000, max_work: 2_000_000 }
    }
}

/// A calculator result: a Python `int` or `float`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An integer of any size (within [`Limits::max_int_bits`]).
    Int(BigInt),
    /// A double-precision float.
    Float(f64),
}

impl fmt::Display for Value {
    /// The text Python's `str()` gives for the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => f.write_str(&pyfloat::repr(*x)),
        }
    }
}

/// Why an expression has no value. The message is what the model is shown.
#[derive(Debug, Clone, PartialEq)]
pub enum CalcError {
    /// Nothing but whitespace.
    Empty,
    /// Longer than [`Limits::max_input_bytes`].
    TooLong {
        /// Length of the input in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not an arithmetic expression.
    Syntax {
        /// Character offset (0-based) where the problem was found.
        pos: usize,
        /// What is wrong there.
        msg: String,
    },
    /// Parentheses nested deeper than [`Limits::max_depth`].
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// Division or modulo by zero, or zero to a negative power (Python's `ZeroDivisionError`).
    ZeroDivision(&'static str),
    /// A float result out of range, or an integer too large to become a float (Python's `OverflowError`).
    Overflow(&'static str),
    /// A negative number raised to a fractional power; Python would give a complex number.
    Complex,
    /// An integer larger than [`Limits::max_int_bits`].
    TooLarge {
        /// The limit in bits.
        max_bits: u64,
    },
    /// More big-number work than [`Limits::max_work`].
    TooMuchWork,
}

impl CalcError {
    /// A stable short name for the kind of error: `syntax`, `zero_division`, `overflow`, `complex` or `limit`.
    pub fn kind(&self) -> &'static str {
        match self {
            CalcError::Empty | CalcError::Syntax { .. } => "syntax",
            CalcError::ZeroDivision(_) => "zero_division",
            CalcError::Overflow(_) => "overflow",
            CalcError::Complex => "complex",
            CalcError::TooLong { .. }
            | CalcError::TooDeep { .. }
            | CalcError::TooLarge { .. }
            | CalcError::TooMuchWork => "limit",
        }
    }
}

impl fmt::Display for CalcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalcError::Empty => f.write_str("empty expression"),
            CalcError::TooLong { len, max } => {
                write!(f, "expression is {len} bytes long; the limit is {max}")
            }
            CalcError::Syntax { pos, msg } => write!(f, "syntax error at character {pos}: {msg}"),
            CalcError::TooDeep { max } => write!(f, "parentheses nested deeper than {max} levels"),
            CalcError::ZeroDivision(msg) => write!(f, "division by zero ({msg})"),
            CalcError::Overflow(msg) => write!(f, "overflow: {msg}"),
            CalcError::Complex => {
                f.write_str("a negative number to a fractional power has a complex result, which is not supported")
            }
            CalcError::TooLarge { max_bits } => write!(f, "integer result larger than {max_bits} bits"),
            CalcError::TooMuchWork => f.write_str("expression needs too much computation"),
        }
    }
}

impl std::error::Error for CalcError {}

impl From<FloatError> for CalcError {
    fn from(e: FloatError) -> Self {
        match e {
            FloatError::ZeroDivision(m) => CalcError::ZeroDivision(m),
            FloatError::Overflow(m) => CalcError::Overflow(m),
            FloatError::Complex => CalcError::Complex,
        }
    }
}

/// Evaluate an expression with the default [`Limits`].
pub fn evaluate(expr: &str) -> Result<Value, CalcError> {
    evaluate_with(expr, &Limits::default())
}

/// The calculator's name as a tool.
pub const TOOL_NAME: &str = "calc";

/// The calculator as a tool: the value's text, or the error's; either is what the model is shown.
pub fn run_tool(expr: &str) -> Result<String, String> {
    evaluate(expr).map(|v| v.to_string()).map_err(|e| e.to_string())
}

/// Evaluate an expression with the given limits.
pub fn evaluate_with(expr: &str, limits: &Limits) -> Result<Value, CalcError> {
    let expr = expr.trim();
    if expr.is_empty() {
        return Err(CalcError::Empty);
    }
    if expr.len() > limits.max_input_bytes {
        return Err(CalcError::TooLong { len: expr.len(), max: limits.max_input_bytes });
    }
    let tokens = lex(expr, limits)?;
    let rpn = to_rpn(&tokens, limits)?;
    Machine { limits, work: 0 }.run(rpn)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Mod,
    Pow,
    Neg,
    Pos,
}

impl Op {
    fn precedence(self) -> u8 {
        match self {
            Op::Add | Op::Sub => 1,
            Op::Mul | Op::Div | Op::FloorDiv | Op::Mod => 2,
            Op::Neg | Op::Pos => 3,
            Op::Pow => 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(Value),
    Plus,
    Minus,
    Star,
    Slash,
    DoubleSlash,
    Percent,
    DoubleStar,
    LParen,
    RParen,
}

fn syntax(pos: usize, msg: impl Into<String>) -> CalcError {
    CalcError::Syntax { pos, msg: msg.into() }
}

/// Split into tokens, with each token's character offset. Whitespace is space, tab and form feed anywhere, and line
/// breaks only inside parentheses, as in Python.
fn lex(s: &str, limits: &Limits) -> Result<Vec<(usize, Tok)>, CalcError> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut depth = 0usize;
    while i < b.len() {
        let c = b[i];
        let tok = match c {
            b' ' | b'\t' | b'\x0c' => {
                i += 1;
                continue;
            }
            b'\n' | b'\r' if depth > 0 => {
                i += 1;
                continue;
            }
            b'0'..=b'9' | b'.' => {
                let (tok, end) = lex_number(s, i, limits)?;
                out.push((i, tok));
                i = end;
                continue;
            }
            b'+' => Tok::Plus,
            b'-' => Tok::Minus,
            b'%' => Tok::Percent,
            b'(' => {
                depth += 1;
                Tok::LParen
            }
            b')' => {
                depth = depth.saturating_sub(1);
                Tok::RParen
            }
            b'*' if b.get(i + 1) == Some(&b'*') => {
                i += 1;
                Tok::DoubleStar
            }
            b'*' => Tok::Star,
            b'/' if b.get(i + 1) == Some(&b'/') => {
                i += 1;
                Tok::DoubleSlash
            }
            b'/' => Tok::Slash,
            _ => {
                let ch = s[i..].chars().next().unwrap_or('?');
                return Err(syntax(i, format!("unexpected character {ch:?}")));
            }
        };
        let start = if matches!(tok, Tok::DoubleStar | Tok::DoubleSlash) { i - 1 } else { i };
        out.push((start, tok));
        i += 1;
    }
    Ok(out)
}

/// Scan `digit (_? digit)*` in the given radix from `i`; returns the end offset (equal to `i` when no digit is there).
fn scan_digits(b: &[u8], mut i: usize, radix: u32) -> Result<usize, CalcError> {
    let is_digit = |c: u8| (c as char).is_digit(radix);
    let start = i;
    while i < b.len() {
        let separator = b[i] == b'_' && i > start && i + 1 < b.len() && is_digit(b[i + 1]);
        if is_digit(b[i]) || separator {
            i += 1;
        } else if b[i] == b'_' {
            return Err(syntax(i, "invalid use of '_' in a number"));
        } else {
            break;
        }
    }
    Ok(i)
}

fn lex_number(s: &str, start: usize, limits: &Limits) -> Result<(Tok, usize), CalcError> {
    let b = s.as_bytes();
    let digits_only = |a: usize, z: usize| s[a..z].replace('_', "");
    let mut i = start;
    // 0x, 0o, 0b integers.
    if b[i] == b'0' && i + 1 < b.len() {
        let radix = match b[i + 1] {
            b'x' | b'X' => Some(16),
            b'o' | b'O' => Some(8),
            b'b' | b'B' => Some(2),
            _ => None,
        };
        if let Some(radix) = radix {
            // Python allows one underscore right after the prefix.
            let mut j = i + 2;
            if b.get(j) == Some(&b'_') {
                j += 1;
            }
            let end = scan_digits(b, j, radix)?;
            if end == j {
                return Err(syntax(start, "invalid number literal"));
            }
            check_number_end(b, end)?;
            let text = digits_only(j, end);
            let value =
                BigInt::parse_bytes(text.as_bytes(), radix).ok_or_else(|| syntax(start, "invalid number literal"))?;
            check_bits(&value, limits)?;
            return Ok((Tok::Num(Value::Int(value)), end));
        }
    }
    let int_end = scan_digits(b, i, 10)?;
    let int_part = digits_only(i, int_end);
    i = int_end;
    let mut is_float = false;
    let mut frac_part = String::new();
    if b.get(i) == Some(&b'.') {
        is_float = true;
        i += 1;
        let frac_end = scan_digits(b, i, 10)?;
        frac_part = digits_only(i, frac_end);
        i = frac_end;
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(syntax(start, "unexpected '.'"));
        }
    }
    let mut exp_part = String::new();
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        let mut sign = "";
        if matches!(b.get(j), Some(b'+' | b'-')) {
            sign = if b[j] == b'-' { "-" } else { "" };
            j += 1;
        }
        let exp_end = scan_digits(b, j, 10)?;
        if exp_end == j {
            return Err(syntax(start, "invalid decimal literal"));
        }
        is_float = true;
        exp_part = format!("{sign}{}", digits_only(j, exp_end));
        i = exp_end;
    }
    check_number_end(b, i)?;
    if is_float {
        let text = format!(
            "{}.{}e{}",
            if int_part.is_empty() { "0" } else { &int_part },
            if frac_part.is_empty() { "0" } else { &frac_part },
            if exp_part.is_empty() { "0" } else { &exp_part }
        );
        let x: f64 = text.parse().map_err(|_| syntax(start, "invalid float literal"))?;
        return Ok((Tok::Num(Value::Float(x)), i));
    }
    if int_part.len() > 1 && int_part.starts_with('0') && int_part.bytes().any(|c| c != b'0') {
        return Err(syntax(start, "leading zeros in decimal integer literals are not permitted"));
    }
    let value: BigInt = int_part.parse().map_err(|_| syntax(start, "invalid integer literal"))?;
    check_bits(&value, limits)?;
    Ok((Tok::Num(Value::Int(value)), i))
}

/// A number must not run straight into a letter, digit, underscore or dot (`1a`, `1.2.3`, `1j`).
fn check_number_end(b: &[u8], i: usize) -> Result<(), CalcError> {
    match b.get(i) {
        Some(c) if c.is_ascii_alphanumeric() || *c == b'_' || *c == b'.' || *c >= 0x80 => {
            Err(syntax(i, "invalid number literal"))
        }
        _ => Ok(()),
    }
}

fn check_bits(v: &BigInt, limits: &Limits) -> Result<(), CalcError> {
    if v.bits() > limits.max_int_bits {
        Err(CalcError::TooLarge { max_bits: limits.max_int_bits })
    } else {
        Ok(())
    }
}

#[derive(Debug)]
enum Rpn {
    Num(Value),
    Op(Op),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stacked {
    Op(Op),
    LParen(usize),
}

/// Shunting-yard: infix tokens to reverse Polish notation, with Python's precedence. Unary operators sit between
/// the multiplicative operators and `**`, and `**` is right-associative, which gives `-2**2 == -(2**2)` and
/// `2**-1 == 2**(-1)`.
fn to_rpn(tokens: &[(usize, Tok)], limits: &Limits) -> Result<Vec<Rpn>, CalcError> {
    let mut out = Vec::with_capacity(tokens.len());
    let mut stack: Vec<Stacked> = Vec::new();
    let mut depth = 0usize;
    let mut expect_operand = true;
    for (pos, tok) in tokens {
        let pos = *pos;
        if expect_operand {
            match tok {
                Tok::Num(v) => {
                    out.push(Rpn::Num(v.clone()));
                    expect_operand = false;
                }
                Tok::Minus => stack.push(Stacked::Op(Op::Neg)),
                Tok::Plus => stack.push(Stacked::Op(Op::Pos)),
                Tok::LParen => {
                    depth += 1;
                    if depth > limits.max_depth {
                        return Err(CalcError::TooDeep { max: limits.max_depth });
                    }
                    stack.push(Stacked::LParen(pos));
                }
                Tok::RParen => return Err(syntax(pos, "expected a number before ')'")),
                _ => return Err(syntax(pos, "expected a number")),
            }
            continue;
        }
        let op = match tok {
            Tok::Plus => Op::Add,
            Tok::Minus => Op::Sub,
            Tok::Star => Op::Mul,
            Tok::Slash => Op::Div,
            Tok::DoubleSlash => Op::FloorDiv,
            Tok::Percent => Op::Mod,
            Tok::DoubleStar => Op::Pow,
            Tok::RParen => {
                loop {
                    match stack.pop() {
                        Some(Stacked::Op(o)) => out.push(Rpn::Op(o)),
                        Some(Stacked::LParen(_)) => break,
                        None => return Err(syntax(pos, "unmatched ')'")),
                    }
                }
                depth -= 1;
                continue;
            }
            Tok::Num(_) | Tok::LParen => {
                return Err(syntax(pos, "expected an operator"));
            }
        };
        let right_assoc = op == Op::Pow;
        while let Some(Stacked::Op(top)) = stack.last() {
            let (pt, po) = (top.precedence(), op.precedence());
            if pt > po || (pt == po && !right_assoc) {
                out.push(Rpn::Op(*top));
                stack.pop();
            } else {
                break;
            }
        }
        stack.push(Stacked::Op(op));
        expect_operand = true;
    }
    if expect_operand {
        let end = tokens.last().map(|(p, _)| *p).unwrap_or(0);
        return Err(syntax(end, "expression ends where a number is expected"));
    }
    while let Some(s) = stack.pop() {
        match s {
            Stacked::Op(o) => out.push(Rpn::Op(o)),
            Stacked::LParen(p) => return Err(syntax(p, "'(' was never closed")),
        }
    }
    Ok(out)
}

struct Machine<'a> {
    limits: &'a Limits,
    work: u64,
}

fn limbs(v: &BigInt) -> u64 {
    v.bits() / 64 + 1
}

fn to_float(v: &Value) -> Result<f64, CalcError> {
    match v {
        Value::Float(x) => Ok(*x),
        Value::Int(i) => {
            let mag =
                pyfloat::uint_to_f64(i.magnitude()).ok_or(CalcError::Overflow("int too large to convert to float"))?;
            Ok(if i.sign() == Sign::Minus { -mag } else { mag })
        }
    }
}

impl Machine<'_> {
    fn charge(&mut self, cost: u64) -> Result<(), CalcError> {
        self.work = self.work.saturating_add(cost);
        if self.work > self.limits.max_work {
            Err(CalcError::TooMuchWork)
        } else {
            Ok(())
        }
    }

    fn int(&self, v: BigInt) -> Result<Value, CalcError> {
        check_bits(&v, self.limits)?;
        Ok(Value::Int(v))
    }

    fn run(mut self, rpn: Vec<Rpn>) -> Result<Value, CalcError> {
        let mut stack: Vec<Value> = Vec::new();
        for item in rpn {
            match item {
                Rpn::Num(v) => stack.push(v),
                Rpn::Op(op @ (Op::Neg | Op::Pos)) => {
                    let v = stack.pop().expect("the parser checked operand counts");
                    stack.push(match (op, v) {
                        (Op::Neg, Value::Int(i)) => Value::Int(-i),
                        (Op::Neg, Value::Float(x)) => Value::Float(-x),
                        (_, v) => v,
                    });
                }
                Rpn::Op(op) => {
                    let b = stack.pop().expect("the parser checked operand counts");
                    let a = stack.pop().expect("the parser checked operand counts");
                    stack.push(self.binary(op, a, b)?);
                }
            }
        }
        let result = stack.pop().expect("the parser checked operand counts");
        debug_assert!(stack.is_empty());
        Ok(result)
    }

    fn binary(&mut self, op: Op, a: Value, b: Value) -> Result<Value, CalcError> {
        if let (Value::Int(x), Value::Int(y)) = (&a, &b) {
            return self.int_binary(op, x, y);
        }
        let (x, y) = (to_float(&a)?, to_float(&b)?);
        float_binary(op, x, y)
    }

    fn int_binary(&mut self, op: Op, a: &BigInt, b: &BigInt) -> Result<Value, CalcError> {
        let max_bits = self.limits.max_int_bits;
        match op {
            Op::Add => {
                self.charge(limbs(a).max(limbs(b)))?;
                self.int(a + b)
            }
            Op::Sub => {
                self.charge(limbs(a).max(limbs(b)))?;
                self.int(a - b)
            }
            Op::Mul => {
                if !a.is_zero() && !b.is_zero() && a.bits() + b.bits() - 1 > max_bits {
                    return Err(CalcError::TooLarge { max_bits });
                }
                self.charge(limbs(a) * limbs(b))?;
                self.int(a * b)
            }
            Op::Div => {
                if b.is_zero() {
                    return Err(CalcError::ZeroDivision("division by zero"));
                }
                self.charge(limbs(a) * limbs(b) + 2 * (limbs(a) + limbs(b)))?;
                let mag = pyfloat::div_to_f64(a.magnitude(), b.magnitude())
                    .ok_or(CalcError::Overflow("integer division result too large for a float"))?;
                let negative = (a.sign() == Sign::Minus) != (b.sign() == Sign::Minus);
                Ok(Value::Float(if negative { -mag } else { mag }))
            }
            Op::FloorDiv | Op::Mod => {
                if b.is_zero() {
                    return Err(CalcError::ZeroDivision("integer division or modulo by zero"));
                }
                self.charge(limbs(a) * limbs(b))?;
                let r = if op == Op::FloorDiv { a.div_floor(b) } else { a.mod_floor(b) };
                self.int(r)
            }
            Op::Pow => {
                if b.is_negative() {
                    // Python hands int ** negative int to float pow.
                    return float_binary(Op::Pow, to_float(&Value::Int(a.clone()))?, to_float(&Value::Int(b.clone()))?);
                }
                if a.is_zero() || a.is_one() || b.is_zero() {
                    return Ok(Value::Int(if b.is_zero() { BigInt::one() } else { a.clone() }));
                }
                if a.magnitude().is_one() {
                    // (-1) ** b
                    let odd = b.is_odd();
                    return Ok(Value::Int(if odd { a.clone() } else { BigInt::one() }));
                }
                // |a| >= 2, so the result has at least b * (bits(a) - 1) + 1 bits: refuse before computing.
                let e = b.to_u64().filter(|e| *e <= max_bits).ok_or(CalcError::TooLarge { max_bits })?;
                if e * (a.bits() - 1) + 1 > max_bits {
                    return Err(CalcError::TooLarge { max_bits });
                }
                let out_limbs = e * a.bits() / 64 + 1;
                self.charge(out_limbs * out_limbs)?;
                self.int(a.pow(e as u32))
            }
            Op::Neg | Op::Pos => unreachable!("unary operators are handled by the caller"),
        }
    }
}

fn float_binary(op: Op, x: f64, y: f64) -> Result<Value, CalcError> {
    let r = match op {
        Op::Add => x + y,
        Op::Sub => x - y,
        Op::Mul => x * y,
        Op::Div => pyfloat::div(x, y)?,
        Op::FloorDiv => pyfloat::floor_div(x, y)?,
        Op::Mod => pyfloat::rem(x, y)?,
        Op::Pow => pyfloat::pow(x, y)?,
        Op::Neg | Op::Pos => unreachable!("unary operators are handled by the caller"),
    };
    Ok(Value::Float(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(e: &str) -> String {
        match evaluate(e) {
            Ok(v) => v.to_string(),
            Err(err) => panic!("{e:?} failed: {err}"),
        }
    }

    fn err(e: &str) -> &'static str {
        match evaluate(e) {
            Ok(v) => panic!("{e:?} gave {v}, expected an error"),
            Err(err) => err.kind(),
        }
    }

    #[test]
    fn python_semantics() {
        let cases = [
            ("2**10", "1024"),
            ("-2**2", "-4"),
            ("2**-2**2", "0.0625"),
            ("2**3**2", "512"),
            ("7//-2", "-4"),
            ("-7%3", "2"),
            ("7.5//2", "3.0"),
            ("-7.5%2", "0.5"),
            ("4/2", "2.0"),
            ("1/10", "0.1"),
            ("10**16/1", "1e+16"),
            ("0/-5", "-0.0"),
            ("2**-1", "0.5"),
            ("(-8)**-1", "-0.125"),
            ("1e999", "inf"),
            ("1_000 + 0x_ff + 0o17 + 0b101", "1275"),
            ("1. + .5 + 1.e1", "11.5"),
            ("00", "0"),
            ("--+-3", "-3"),
            ("2*-3**2", "-18"),
            ("(1 +\n 2)", "3"),
            ("  6 * 7 ", "42"),
            ("2**100", "1267650600228229401496703205376"),
        ];
        for (e, want) in cases {
            assert_eq!(ok(e), want, "{e}");
        }
    }

    #[test]
    fn errors_have_kinds() {
        assert_eq!(err("1/0"), "zero_division");
        assert_eq!(err("1%0"), "zero_division");
        assert_eq!(err("0**-1"), "zero_division");
        assert_eq!(err("10.0**400"), "overflow");
        assert_eq!(err("(-8)**(1/3)"), "complex");
        for e in [
            "", "1 +", "(1", "1)", "1 2", "01", "1__0", "2^3", "~2", "2<3", "abc", "1 +\n 2", "2(3)", "1..2", "1e",
            "3j",
        ] {
            assert_eq!(err(e), "syntax", "{e:?}");
        }
        assert_eq!(err("9**9**9**9"), "limit");
        assert_eq!(err(&"(".repeat(101)), "limit");
    }
}
