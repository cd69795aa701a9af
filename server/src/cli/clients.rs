//! `ntsd clients`: the clients of a running server as a table, in the
//! shape of `chronyc clients`, sorted by NTP packets. Reads `/clients` on
//! the server's metrics endpoint (a path of its own: addresses are personal
//! data and are never part of `/metrics`).
//!
//! Addresses are always printed as numbers (ntsd never resolves names), so
//! chronyc's `-n` is accepted and changes nothing.

use std::path::Path;

use super::stats::{authorities, fetch_any};

/// One client, as `/clients` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub(crate) addr: String,
    pub(crate) ntp: u64,
    pub(crate) drop: u64,
    /// log2 of the average interval, seconds; `None` when unknown.
    pub(crate) interval: Option<i32>,
    pub(crate) last: u64,
    pub(crate) interleaved: u64,
    pub(crate) nts: u64,
}

/// Parses the body of `/clients`; a line that does not parse is an error
/// that names it (the server is not ntsd, or not this version).
pub(crate) fn parse(body: &str) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| -> Result<u64, String> {
            f.get(i)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("/clients: cannot read line {line:?}"))
        };
        let interval = match f.get(3) {
            Some(&"-") => None,
            Some(v) => Some(
                v.parse()
                    .map_err(|_| format!("/clients: cannot read line {line:?}"))?,
            ),
            None => return Err(format!("/clients: cannot read line {line:?}")),
        };
        rows.push(Row {
            addr: f.first().copied().unwrap_or_default().to_owned(),
            ntp: num(1)?,
            drop: num(2)?,
            interval,
            last: num(4)?,
            interleaved: num(5)?,
            nts: num(6)?,
        });
    }
    Ok(rows)
}

/// Seconds as chronyc prints a "last" column: seconds, then minutes,
/// hours, days.
fn ago(s: u64) -> String {
    match s {
        0..=1024 => format!("{s}"),
        1025..36_000 => format!("{}m", s / 60),
        36_000..345_600 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The table.
pub(crate) fn render(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<39} {:>10} {:>7} {:>3} {:>5} {:>11} {:>10}\n",
        "Address", "NTP", "Drop", "Int", "Last", "Interleaved", "NTS"
    );
    out.push_str(&"=".repeat(92));
    out.push('\n');
    for r in rows {
        let interval = r.interval.map_or_else(|| "-".to_owned(), |i| i.to_string());
        out.push_str(&format!(
            "{:<39} {:>10} {:>7} {:>3} {:>5} {:>11} {:>10}\n",
            r.addr,
            r.ntp,
            r.drop,
            interval,
            ago(r.last),
            r.interleaved,
            r.nts
        ));
    }
    out
}

/// `ntsd clients`: from `--metrics URL` (its host and port; the path is
/// `/clients`) or `--config FILE` (default `/etc/ntsd/config.toml`), the
/// first `top` clients.
pub fn run(metrics: Option<&str>, config: Option<&Path>, top: Option<usize>) -> Result<(), String> {
    let candidates = authorities(metrics, config)?;
    let path = match top {
        Some(n) => format!("/clients?top={n}"),
        None => "/clients".to_owned(),
    };
    let body = fetch_any(&candidates, &path)?;
    if !body.starts_with("# address ntp") {
        return Err(format!(
            "{}{path} does not look like ntsd's client log (an ntsd older than this command?)",
            candidates.join(" or ")
        ));
    }
    print!("{}", render(&parse(&body)?));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_parses_and_prints_like_chronyc() {
        let rows = parse(
            "# address ntp drop interval last interleaved nts\n\
             127.0.0.2 120 3 -4 0 100 120\n\
             2001:db8::1 1 0 - 5000 0 0\n",
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].interval, Some(-4));
        assert_eq!(rows[1].interval, None);
        let t = render(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("Address"));
        let first: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(first, ["127.0.0.2", "120", "3", "-4", "0", "100", "120"]);
        let second: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(second, ["2001:db8::1", "1", "0", "-", "83m", "0", "0"]);
        assert!(parse("127.0.0.1 x 0 0 0 0 0\n").is_err());
    }

    #[test]
    fn last_is_in_chronycs_units() {
        assert_eq!(ago(5), "5");
        assert_eq!(ago(1024), "1024");
        assert_eq!(ago(3000), "50m");
        assert_eq!(ago(100_000), "27h");
        assert_eq!(ago(400_000), "4d");
    }
}
