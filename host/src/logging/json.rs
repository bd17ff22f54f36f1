//! JSON as W&B writes it: like standard JSON, except that non-finite numbers are the bare tokens `NaN`, `Infinity`
//! and `-Infinity` (what Python's `json` and W&B's own parser read back). serde_json would turn them into `null` and
//! lose them, so numbers are formatted here, and [`parse_line`] reads such lines back.

use super::{MetricValue, Metrics};

/// A number as a JSON token: integers without a fraction, other finite values in shortest round-trip form.
pub fn number(x: f64) -> String {
    if x.is_nan() {
        "NaN".to_string()
    } else if x == f64::INFINITY {
        "Infinity".to_string()
    } else if x == f64::NEG_INFINITY {
        "-Infinity".to_string()
    } else if x.fract() == 0.0 && x.abs() < 9.007_199_254_740_992e15 {
        // Integral values print as integers (`_step`, counts), as Python's json would print an int.
        format!("{}", x as i64)
    } else {
        // ryu via serde_json: shortest representation that parses back to the same f64.
        serde_json::Number::from_f64(x).map(|n| n.to_string()).unwrap_or_else(|| "null".to_string())
    }
}

/// A JSON string literal.
pub fn string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// A metric value as a JSON token.
pub fn value(v: &MetricValue) -> String {
    match v {
        MetricValue::Number(x) => number(*x),
        MetricValue::Text(s) => string(s),
    }
}

/// A JSON object from already-encoded `(key, value_json)` pairs.
pub fn object<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&string(k));
        out.push(':');
        out.push_str(&v);
    }
    out.push('}');
    out
}

/// Read one JSON object line that may contain `NaN`/`Infinity`/`-Infinity`: numbers and strings become metrics,
/// booleans become 1/0, and anything else (null, nested objects) is skipped. `None` if the line is not an object.
pub fn parse_line(line: &str) -> Option<Metrics> {
    let standard = replace_nonfinite(line);
    let v: serde_json::Value = serde_json::from_str(&standard).ok()?;
    let obj = v.as_object()?;
    let mut out = Metrics::new();
    for (k, v) in obj {
        let mv = match v {
            serde_json::Value::Number(n) => MetricValue::Number(n.as_f64()?),
            serde_json::Value::Bool(b) => MetricValue::from(*b),
            serde_json::Value::String(s) => match s.as_str() {
                NAN_MARK => MetricValue::Number(f64::NAN),
                INF_MARK => MetricValue::Number(f64::INFINITY),
                NEG_INF_MARK => MetricValue::Number(f64::NEG_INFINITY),
                _ => MetricValue::Text(s.clone()),
            },
            _ => continue,
        };
        out.insert(k.clone(), mv);
    }
    Some(out)
}

const NAN_MARK: &str = "\u{1}NaN";
const INF_MARK: &str = "\u{1}Infinity";
const NEG_INF_MARK: &str = "\u{1}-Infinity";

/// Turn bare non-finite tokens outside string literals into marker strings serde_json accepts.
fn replace_nonfinite(line: &str) -> String {
    let bytes = line.as_bytes();
    let mut out = String::with_capacity(line.len() + 16);
    let mut i = 0;
    let mut in_string = false;
    let mut start = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        let token = [("-Infinity", NEG_INF_MARK), ("Infinity", INF_MARK), ("NaN", NAN_MARK)]
            .into_iter()
            .find(|(t, _)| bytes[i..].starts_with(t.as_bytes()));
        if let Some((t, mark)) = token {
            out.push_str(&line[start..i]);
            out.push_str(&string(mark));
            i += t.len();
            start = i;
            continue;
        }
        if c == b'"' {
            in_string = true;
        }
        i += 1;
    }
    out.push_str(&line[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_nonfinite_values() {
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "Infinity");
        assert_eq!(number(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(-0.5), "-0.5");
        assert_eq!(number(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(number(1e300), "1e+300");
    }

    #[test]
    fn lines_round_trip_with_nonfinite_tokens_and_tricky_strings() {
        let mut m = Metrics::new();
        m.insert("a".into(), MetricValue::Number(f64::NAN));
        m.insert("b".into(), MetricValue::Number(f64::NEG_INFINITY));
        m.insert("c".into(), MetricValue::Number(f64::INFINITY));
        m.insert("d".into(), MetricValue::Text("say \"NaN\" or Infinity\n".into()));
        m.insert("e".into(), MetricValue::Number(2.5));
        let line = object(m.iter().map(|(k, v)| (k.as_str(), value(v))));
        assert_eq!(line, r#"{"a":NaN,"b":-Infinity,"c":Infinity,"d":"say \"NaN\" or Infinity\n","e":2.5}"#);
        let back = parse_line(&line).unwrap();
        assert!(back["a"].as_f64().unwrap().is_nan());
        assert_eq!(back["b"], MetricValue::Number(f64::NEG_INFINITY));
        assert_eq!(back["c"], MetricValue::Number(f64::INFINITY));
        assert_eq!(back["d"], m["d"]);
        assert_eq!(back["e"], m["e"]);
    }
}
