//! The machine-readable last line: `RESULT key=value ...`, numbers plain
//! (no units, no thousands separators), keys without a value left out.

use std::fmt::{self, Display, Write};

#[derive(Debug, Clone)]
pub struct ResultLine(String);

impl ResultLine {
    pub fn new(kind: &str) -> Self {
        let mut s = Self(String::from("RESULT"));
        s.push("kind", kind);
        s
    }

    /// Adds `key=value`. Keys and values must not contain spaces or '='.
    pub fn push(&mut self, key: &str, value: impl Display) -> &mut Self {
        let _ = write!(self.0, " {key}={value}");
        self
    }

    /// Adds `key=value` with `decimals` digits after the point.
    pub fn num(&mut self, key: &str, value: f64, decimals: usize) -> &mut Self {
        let v = if value.is_finite() { value } else { 0.0 };
        let _ = write!(self.0, " {key}={v:.decimals$}");
        self
    }

    /// Like [`ResultLine::num`], left out when `None`.
    pub fn opt(&mut self, key: &str, value: Option<f64>, decimals: usize) -> &mut Self {
        if let Some(v) = value {
            self.num(key, v, decimals);
        }
        self
    }
}

impl Display for ResultLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a RESULT line into its pairs (for scripts written in Rust and
/// the tests); `None` if the line is not one.
pub fn parse(line: &str) -> Option<Vec<(&str, &str)>> {
    let rest = line.strip_prefix("RESULT ")?;
    rest.split(' ')
        .map(|kv| {
            kv.split_once('=')
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut r = ResultLine::new("flood");
        r.push("threads", 2)
            .num("rate", 1234.56, 0)
            .opt("server_cpu_pct", None, 1)
            .opt("gen_cpu_pct", Some(f64::NAN), 1);
        let line = r.to_string();
        assert_eq!(
            line,
            "RESULT kind=flood threads=2 rate=1235 gen_cpu_pct=0.0"
        );
        let kv = parse(&line).expect("parse");
        assert_eq!(kv[0], ("kind", "flood"));
        assert_eq!(kv.len(), 4);
        assert!(parse("RESULT a=1 b").is_none());
        assert!(parse("flood a=1").is_none());
    }
}
