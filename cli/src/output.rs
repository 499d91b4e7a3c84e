//! How results are shown: an aligned table or text for people, one JSON
//! document with `--json` for scripts.

use std::fmt::Write as _;

use serde_json::Value;

/// Where a command's result goes.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Prints `value` as JSON with `--json`, else the human text.
    pub fn emit(self, value: &Value, human: impl FnOnce() -> String) {
        if self.json {
            // A `Value` always serialises.
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
            );
        } else {
            let text = human();
            if text.ends_with('\n') {
                print!("{text}");
            } else {
                println!("{text}");
            }
        }
    }
}

/// A plain text table with left-aligned columns.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &[String]| {
            let mut text = String::new();
            for (i, cell) in cells.iter().enumerate().take(columns) {
                if i + 1 == columns {
                    text.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count();
                    let _ = write!(text, "{cell}{}  ", " ".repeat(pad));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&self.headers);
        for row in &self.rows {
            line(row);
        }
        out
    }
}

/// Unix ms as RFC 3339, or "-" for 0 (never / unknown).
pub fn time(ms: i64) -> String {
    if ms == 0 {
        "-".to_owned()
    } else {
        tvaers_daemon::config::format_time(ms)
    }
}

/// A duration in ms for people: `850ms`, `12s`, `4m`, `3h`, `2d`.
pub fn age(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..120_000 => format!("{}s", ms / 1_000),
        120_000..7_200_000 => format!("{}m", ms / 60_000),
        7_200_000..172_800_000 => format!("{}h", ms / 3_600_000),
        _ => format!("{}d", ms / 86_400_000),
    }
}

/// Hex in upper case, in groups of four, for reading aloud over the phone:
/// `sha256:ab12…` → `AB12 CD34 …`.
pub fn grouped(text: &str) -> String {
    let hex_part = text.split_once(':').map_or(text, |(_, rest)| rest);
    let upper: Vec<char> = hex_part
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    upper
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_of_four_upper_case() {
        assert_eq!(grouped("sha256:ab12cd34ef"), "AB12 CD34 EF");
        assert_eq!(grouped("ed25519:00ff"), "00FF");
    }

    #[test]
    fn table_aligns() {
        let mut t = Table::new(&["a", "long header"]);
        t.row(vec!["longer cell".into(), "x".into()]);
        let text = t.render();
        assert_eq!(text, "a            long header\nlonger cell  x\n");
    }

    #[test]
    fn ages() {
        assert_eq!(age(500), "500ms");
        assert_eq!(age(61_000), "61s");
        assert_eq!(age(3 * 86_400_000), "3d");
    }
}
