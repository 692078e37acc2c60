//! Plain-text tables for a terminal: a header, a rule, aligned columns two spaces apart. In:
//! column headers with their alignment, rows of cells. Out: the table as text. Used by
//! `eval` (accuracy per class) and `report` (settings and results per run); and one CSV
//! record ([`csv_line`]) for `report` and `export`.

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table built row by row and rendered once, every column as wide as its widest cell.
#[derive(Debug, Clone)]
pub struct TextTable {
    columns: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl TextTable {
    pub fn new<S: Into<String>>(columns: impl IntoIterator<Item = (S, Align)>) -> Self {
        TextTable {
            columns: columns.into_iter().map(|(h, a)| (h.into(), a)).collect(),
            rows: Vec::new(),
        }
    }

    /// # Panics
    /// When the row does not have one cell per column.
    pub fn push_row(&mut self, row: Vec<String>) {
        assert_eq!(row.len(), self.columns.len(), "one cell per column");
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(c, (header, _))| {
                self.rows
                    .iter()
                    .map(|r| width(&r[c]))
                    .chain([width(header)])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
            let parts: Vec<String> = cells
                .zip(&self.columns)
                .zip(&widths)
                .map(|((cell, (_, align)), &w)| match align {
                    Align::Left => format!("{cell:<w$}"),
                    Align::Right => format!("{cell:>w$}"),
                })
                .collect();
            parts.join("  ").trim_end().to_string() + "\n"
        };
        let mut out = line(&mut self.columns.iter().map(|(h, _)| h.as_str()));
        let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
        out += &line(&mut rule.iter().map(String::as_str));
        for row in &self.rows {
            out += &line(&mut row.iter().map(String::as_str));
        }
        out
    }
}

/// `0.6167` → `61.67%`; no value → `-`.
pub fn percent(value: Option<f64>) -> String {
    value.map_or("-".to_string(), |v| format!("{:.2}%", 100.0 * v))
}

/// One CSV record (RFC 4180: fields with a comma, quote or line break are quoted).
pub fn csv_line(fields: &[String]) -> String {
    let quoted: Vec<String> = fields
        .iter()
        .map(|f| match f.contains([',', '"', '\n', '\r']) {
            true => format!("\"{}\"", f.replace('"', "\"\"")),
            false => f.clone(),
        })
        .collect();
    quoted.join(",") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut t = TextTable::new([("name", Align::Left), ("n", Align::Right)]);
        t.push_row(vec!["a".into(), "1000".into()]);
        t.push_row(vec!["ünïcode".into(), "2".into()]);
        assert_eq!(
            t.render(),
            "name        n\n-------  ----\na        1000\nünïcode     2\n"
        );
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let fields = ["a", "b,c", "say \"x\""].map(String::from);
        assert_eq!(csv_line(&fields), "a,\"b,c\",\"say \"\"x\"\"\"\n");
    }
}
