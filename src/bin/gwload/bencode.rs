//! Just enough bencode for rtpengine's ng protocol: byte strings, integers,
//! lists and dictionaries. Written here because the ng messages are tiny
//! and the crates on offer bring serde derive machinery for four types.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Bytes(Vec<u8>),
    Int(i64),
    List(Vec<Value>),
    /// Keys sorted, as bencode requires.
    Dict(BTreeMap<Vec<u8>, Value>),
}

impl Value {
    pub fn str(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    pub fn dict<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
        Value::Dict(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect(),
        )
    }

    /// The value under `key` of a dictionary.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Bytes(b) => {
                out.extend_from_slice(b.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(b);
            }
            Value::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b'e');
            }
            Value::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode(out);
                }
                out.push(b'e');
            }
            Value::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    Value::Bytes(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// Decodes one value that fills `data` exactly.
    pub fn decode(data: &[u8]) -> Option<Value> {
        let (v, rest) = decode_one(data, 0)?;
        rest.is_empty().then_some(v)
    }
}

/// Nesting deeper than this is refused (ng replies are two levels deep).
const MAX_DEPTH: usize = 32;

fn decode_one(data: &[u8], depth: usize) -> Option<(Value, &[u8])> {
    if depth > MAX_DEPTH {
        return None;
    }
    match *data.first()? {
        b'i' => {
            let end = data.iter().position(|&b| b == b'e')?;
            let n = std::str::from_utf8(&data[1..end]).ok()?.parse().ok()?;
            Some((Value::Int(n), &data[end + 1..]))
        }
        b'l' => {
            let mut rest = &data[1..];
            let mut items = Vec::new();
            while *rest.first()? != b'e' {
                let (v, r) = decode_one(rest, depth + 1)?;
                items.push(v);
                rest = r;
            }
            Some((Value::List(items), &rest[1..]))
        }
        b'd' => {
            let mut rest = &data[1..];
            let mut map = BTreeMap::new();
            while *rest.first()? != b'e' {
                let (k, r) = decode_one(rest, depth + 1)?;
                let Value::Bytes(k) = k else { return None };
                let (v, r) = decode_one(r, depth + 1)?;
                map.insert(k, v);
                rest = r;
            }
            Some((Value::Dict(map), &rest[1..]))
        }
        b'0'..=b'9' => {
            let colon = data.iter().position(|&b| b == b':')?;
            let len: usize = std::str::from_utf8(&data[..colon]).ok()?.parse().ok()?;
            let body = data.get(colon + 1..colon + 1 + len)?;
            Some((Value::Bytes(body.to_vec()), &data[colon + 1 + len..]))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = Value::dict([
            ("command", Value::str("offer")),
            ("flags", Value::List(vec![Value::str("a"), Value::Int(-3)])),
        ]);
        let mut out = Vec::new();
        v.encode(&mut out);
        assert_eq!(out, b"d7:command5:offer5:flagsl1:ai-3eee".to_vec());
        assert_eq!(Value::decode(&out), Some(v));
    }

    #[test]
    fn bad_input() {
        for bad in [
            &b"d3:abc"[..],
            b"5:ab",
            b"i12",
            b"x",
            b"le junk",
            b"d1:ai1ee1",
        ] {
            assert_eq!(
                Value::decode(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = "l".repeat(100) + &"e".repeat(100);
        assert_eq!(Value::decode(deep.as_bytes()), None);
    }
}
