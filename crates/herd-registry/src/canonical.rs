//! RFC 8785 (JSON Canonicalization Scheme) serialization of a `serde_json::Value`.
//!
//! Object members are sorted by the UTF-16 code units of their names, strings are escaped the way
//! ECMAScript's `JSON.stringify` does, numbers use the ECMAScript number-to-string algorithm and
//! there is no whitespace. A release id is the SHA-256 of these bytes, so this must never change.

use serde_json::Value;

/// The canonical (RFC 8785) form of `value`.
///
/// Fails only for numbers JSON cannot carry (NaN/infinity cannot appear in a `Value`), so the
/// error case is a non-finite float produced by an arbitrary-precision source.
pub fn to_canonical_string(value: &Value) -> Result<String, String> {
    let mut out = String::new();
    write_value(value, &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut String) -> Result<(), String> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                write_integer_like(i as f64, i.unsigned_abs() as u128, i < 0, out);
            } else if let Some(u) = n.as_u64() {
                write_integer_like(u as f64, u as u128, false, out);
            } else {
                let f = n
                    .as_f64()
                    .ok_or_else(|| format!("number {n} cannot be canonicalized"))?;
                write_number(f, out)?;
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_value(&map[key], out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// Integers are numbers too: JCS serializes the IEEE-754 double they round to. Exact integers up
/// to 2^53 print as themselves; larger ones go through the double path like any JS number.
fn write_integer_like(as_f64: f64, magnitude: u128, negative: bool, out: &mut String) {
    if magnitude <= (1u128 << 53) {
        if negative && magnitude != 0 {
            out.push('-');
        }
        out.push_str(&magnitude.to_string());
    } else {
        // Finite by construction, so this cannot fail.
        let _ = write_number(as_f64, out);
    }
}

/// ECMAScript `Number::toString(10)` for a finite double (ECMA-262, 7.1.12.1).
fn write_number(f: f64, out: &mut String) -> Result<(), String> {
    if !f.is_finite() {
        return Err(format!("{f} is not a finite number; JSON cannot carry it"));
    }
    if f == 0.0 {
        out.push('0');
        return Ok(());
    }
    if f < 0.0 {
        out.push('-');
    }
    // Rust's `{:e}` prints the shortest digits that round-trip, e.g. "1.2345e-7".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci
        .split_once('e')
        .ok_or_else(|| format!("unexpected float form {sci}"))?;
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exp: i32 = exp
        .parse()
        .map_err(|_| format!("unexpected float exponent in {sci}"))?;
    let k = digits.len() as i32;
    let n = exp + 1; // position of the decimal point relative to the digits
    if k <= n && n <= 21 {
        out.push_str(&digits);
        for _ in 0..(n - k) {
            out.push('0');
        }
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        for _ in 0..(-n) {
            out.push('0');
        }
        out.push_str(&digits);
    } else {
        let e = n - 1;
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if e < 0 { '-' } else { '+' });
        out.push_str(&e.abs().to_string());
    }
    Ok(())
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(v: Value) -> String {
        to_canonical_string(&v).unwrap()
    }

    #[test]
    fn sorts_keys_by_utf16_code_units() {
        // The RFC 8785 section 3.2.3 sorting example.
        let v: Value = serde_json::from_str(
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
        )
        .unwrap();
        let names: Vec<String> = {
            let s = canon(v);
            let back: serde_json::Map<String, Value> = serde_json::from_str(&s).unwrap();
            // serde_json's map is sorted by Rust string order, so re-read the order from the text.
            let mut order: Vec<(usize, String)> = back
                .into_iter()
                .map(|(k, v)| (s.find(v.as_str().unwrap()).unwrap(), k))
                .collect();
            order.sort();
            order.into_iter().map(|(_, k)| k).collect()
        };
        let expected = [
            "\r",
            "1",
            "\u{80}",
            "\u{f6}",
            "\u{20ac}",
            "\u{1f600}",
            "\u{fb33}",
        ];
        assert_eq!(names, expected);
    }

    #[test]
    #[allow(clippy::excessive_precision)] // the RFC's literal, on purpose
    fn rfc_example_structure() {
        // RFC 8785 section 3.2.2 input. serde_json's default float parser is not correctly
        // rounded, so the first number is put in from a Rust literal (which is).
        let mut v: Value = serde_json::from_str(
            r#"{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
                "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
                "literals": [null, true, false]}"#,
        )
        .unwrap();
        v["numbers"][0] = json!(333333333.33333329_f64);
        assert_eq!(
            canon(v),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    #[test]
    fn numbers_follow_ecmascript() {
        assert_eq!(canon(json!(0)), "0");
        assert_eq!(canon(json!(-0.0)), "0");
        assert_eq!(canon(json!(1)), "1");
        assert_eq!(canon(json!(-7)), "-7");
        assert_eq!(canon(json!(1e21)), "1e+21");
        assert_eq!(canon(json!(1e20)), "100000000000000000000");
        assert_eq!(canon(json!(0.000001)), "0.000001");
        assert_eq!(canon(json!(1e-7)), "1e-7");
        assert_eq!(canon(json!(123.456)), "123.456");
        assert_eq!(canon(json!(9007199254740992u64)), "9007199254740992");
        assert_eq!(
            canon(json!(18446744073709551615u64)),
            "18446744073709552000"
        );
        assert_eq!(canon(json!(-1.5e-10)), "-1.5e-10");
    }

    #[test]
    fn nesting_and_whitespace() {
        let a = canon(json!({"b": {"y": 1, "x": [1, 2]}, "a": "s"}));
        assert_eq!(a, r#"{"a":"s","b":{"x":[1,2],"y":1}}"#);
    }
}
