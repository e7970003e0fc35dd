//! A parser for the Python literals some datasets are written in (one `repr()` of a dict per
//! line, as in the Steam data, or list columns such as KuaiRec's `"[8, 27]"`), producing JSON
//! values: dicts → objects, lists and tuples → arrays, `True`/`False` → booleans, `None`,
//! `nan` and `inf` → null.

use serde_json::{Map, Number, Value};

/// Parses one complete Python literal; the error says what was wrong and at which column.
pub(crate) fn parse(text: &str) -> Result<Value, String> {
    let mut parser = Parser {
        bytes: text.as_bytes(),
        pos: 0,
    };
    let value = parser.value(0)?;
    parser.skip_space();
    if parser.pos < parser.bytes.len() {
        return Err(parser.error("unexpected text after the literal"));
    }
    Ok(value)
}

const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, message: &str) -> String {
        format!("{message} at column {}", self.pos + 1)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(self.error("literal nested too deeply"));
        }
        self.skip_space();
        match self.peek() {
            None => Err(self.error("unexpected end of line")),
            Some(b'{') => self.dict(depth),
            Some(b'[') => self.sequence(b']', depth),
            Some(b'(') => self.sequence(b')', depth),
            Some(b'\'' | b'"') => self.string().map(Value::String),
            Some(b'u' | b'r' | b'b')
                if matches!(self.bytes.get(self.pos + 1), Some(b'\'' | b'"')) =>
            {
                self.pos += 1;
                self.string().map(Value::String)
            }
            Some(b) if b == b'-' || b == b'+' || b == b'.' || b.is_ascii_digit() => self.number(),
            Some(b) if b.is_ascii_alphabetic() => self.word(),
            Some(_) => Err(self.error("unexpected character")),
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        self.skip_space();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected `{}`", byte as char)))
        }
    }

    fn dict(&mut self, depth: usize) -> Result<Value, String> {
        self.pos += 1;
        let mut map = Map::new();
        loop {
            self.skip_space();
            if self.peek() == Some(b'}') {
                self.pos += 1;
                return Ok(Value::Object(map));
            }
            let key = match self.value(depth + 1)? {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => if b { "True" } else { "False" }.to_owned(),
                Value::Null => "None".to_owned(),
                _ => return Err(self.error("a dict key must be a string or a number")),
            };
            self.expect(b':')?;
            let value = self.value(depth + 1)?;
            map.insert(key, value);
            self.skip_space();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => return Err(self.error("expected `,` or `}` in a dict")),
            }
        }
    }

    fn sequence(&mut self, close: u8, depth: usize) -> Result<Value, String> {
        self.pos += 1;
        let mut values = Vec::new();
        loop {
            self.skip_space();
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok(Value::Array(values));
            }
            values.push(self.value(depth + 1)?);
            self.skip_space();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b) if b == close => {}
                _ => {
                    return Err(
                        self.error(&format!("expected `,` or `{}` in a list", close as char))
                    )
                }
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let quote = self.bytes[self.pos];
        let start = self.pos;
        self.pos += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                self.pos = start;
                return Err(self.error("string is never closed"));
            };
            self.pos += 1;
            if b == quote {
                break;
            }
            if b != b'\\' {
                out.push(b);
                continue;
            }
            let Some(escape) = self.peek() else {
                return Err(self.error("string ends inside an escape"));
            };
            self.pos += 1;
            let decoded = match escape {
                b'n' => '\n',
                b't' => '\t',
                b'r' => '\r',
                b'0' => '\0',
                b'a' => '\u{7}',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'v' => '\u{b}',
                b'\\' | b'\'' | b'"' => escape as char,
                b'\n' => continue,
                b'x' => self.hex_char(2)?,
                b'u' => self.hex_char(4)?,
                b'U' => self.hex_char(8)?,
                other => {
                    // Python keeps unknown escapes verbatim.
                    out.push(b'\\');
                    out.push(other);
                    continue;
                }
            };
            let mut buf = [0u8; 4];
            out.extend_from_slice(decoded.encode_utf8(&mut buf).as_bytes());
        }
        // The input is valid UTF-8 and escapes were re-encoded, so this cannot fail; stay total anyway.
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn hex_char(&mut self, len: usize) -> Result<char, String> {
        let hex = self
            .bytes
            .get(self.pos..self.pos + len)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| self.error("bad hexadecimal escape"))?;
        self.pos += len;
        Ok(char::from_u32(hex).unwrap_or(char::REPLACEMENT_CHARACTER))
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.' | b'_'))
        {
            self.pos += 1;
        }
        let text = std::str::from_utf8(&self.bytes[start..self.pos])
            .unwrap_or_default()
            .replace('_', "");
        let unsigned = text.trim_start_matches(['-', '+']);
        if unsigned == "inf" || unsigned == "nan" {
            return Ok(Value::Null);
        }
        if let Ok(int) = text.parse::<i64>() {
            return Ok(Value::Number(int.into()));
        }
        match text.parse::<f64>() {
            Ok(float) => Ok(Number::from_f64(float).map_or(Value::Null, Value::Number)),
            Err(_) => {
                self.pos = start;
                Err(self.error(&format!("`{text}` is not a number")))
            }
        }
    }

    fn word(&mut self) -> Result<Value, String> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            self.pos += 1;
        }
        match &self.bytes[start..self.pos] {
            b"True" => Ok(Value::Bool(true)),
            b"False" => Ok(Value::Bool(false)),
            b"None" | b"nan" | b"inf" => Ok(Value::Null),
            other => {
                let word = String::from_utf8_lossy(other).into_owned();
                self.pos = start;
                Err(self.error(&format!("`{word}` is not a Python literal")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_python_reprs_of_nested_dicts() {
        let text = r#"{'user_id': 'u1', 'n': -3, 'x': 1.5e2, 'ok': True, 'no': None, 'reviews': [{'review': "it's \"fine\"\n", 'tags': ('a', 'b')}], 'é': '\xe9\u00e9'}"#;
        let value = parse(text).unwrap();
        assert_eq!(
            value,
            json!({"user_id": "u1", "n": -3, "x": 150.0, "ok": true, "no": null,
                   "reviews": [{"review": "it's \"fine\"\n", "tags": ["a", "b"]}], "é": "éé"})
        );
        assert_eq!(parse("[8, 27]").unwrap(), json!([8, 27]));
        assert_eq!(parse("[]").unwrap(), json!([]));
    }

    #[test]
    fn errors_give_the_column() {
        assert_eq!(
            parse("{'a': tru}").unwrap_err(),
            "`tru` is not a Python literal at column 7"
        );
        assert_eq!(
            parse("{'a': 'x").unwrap_err(),
            "string is never closed at column 7"
        );
        assert!(parse("{'a' 1}").unwrap_err().starts_with("expected `:`"));
        assert!(parse("[1, 2] x")
            .unwrap_err()
            .starts_with("unexpected text"));
    }
}
