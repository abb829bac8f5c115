//! Text tables for the listing commands (`jobq stats`, `queues`, `jobs list`, `workers`,
//! `schedules`, `lock status`): each column as wide as its widest cell, numbers right-aligned,
//! two spaces between columns, the last column unpadded. Widths are counted in characters.

/// How a column's cells line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// A table being built: a header, then rows.
pub(crate) struct Table {
    header: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[(&'static str, Align)]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells print empty, extra ones are dropped.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as lines (no trailing newline on the last).
    pub(crate) fn render(&self) -> String {
        let n = self.header.len();
        let cell = |r: &Vec<String>, i: usize| r.get(i).map_or("", String::as_str).to_owned();
        let mut widths: Vec<usize> = self.header.iter().map(|(h, _)| h.chars().count()).collect();
        for r in &self.rows {
            for (i, w) in widths.iter_mut().enumerate() {
                *w = (*w).max(cell(r, i).chars().count());
            }
        }
        let line = |cells: Vec<String>| {
            let mut out = String::new();
            for (i, text) in cells.iter().enumerate() {
                let pad = widths[i].saturating_sub(text.chars().count());
                let last = i + 1 == n;
                if i > 0 {
                    out.push_str("  ");
                }
                match self.header[i].1 {
                    Align::Right => {
                        out.push_str(&" ".repeat(pad));
                        out.push_str(text);
                    }
                    Align::Left => {
                        out.push_str(text);
                        if !last {
                            out.push_str(&" ".repeat(pad));
                        }
                    }
                }
            }
            out
        };
        let mut lines = vec![line(
            self.header.iter().map(|(h, _)| h.to_string()).collect(),
        )];
        for r in &self.rows {
            lines.push(line((0..n).map(|i| cell(r, i)).collect()));
        }
        lines.join("\n")
    }

    /// Prints the table to stdout.
    pub(crate) fn print(&self) {
        outln!("{}", self.render());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_widest_cell() {
        let mut t = Table::new(&[
            ("queue", Align::Left),
            ("available", Align::Right),
            ("limits", Align::Left),
        ]);
        t.row(vec![
            "a-much-longer-queue".into(),
            "7".into(),
            "key_limit=1".into(),
        ]);
        t.row(vec!["q".into(), "12345678901".into(), "x".into()]);
        let out = t.render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "queue                  available  limits",
                "a-much-longer-queue            7  key_limit=1",
                "q                    12345678901  x",
            ]
        );
    }

    #[test]
    fn missing_cells_are_empty_and_width_counts_characters() {
        let mut t = Table::new(&[("a", Align::Left), ("b", Align::Right)]);
        t.row(vec!["ééé".into()]);
        assert_eq!(t.render(), "a    b\nééé   ");
    }
}
