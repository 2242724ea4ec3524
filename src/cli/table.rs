//! Plain text tables: a header row and columns aligned with spaces.
//!
//! No colors and no box drawing, so the output reads the same in a terminal, a log file or a pipe
//! into `awk`/`column`. Widths are counted in characters; cells are expected to be single-line
//! (callers escape control characters, see `display::one_line`).

/// Spaces between two columns.
const COLUMN_GAP: &str = "  ";

/// A table under construction.
pub struct Table {
    /// Column titles; an empty header means a table without a header row (key/value lists).
    header: Vec<String>,
    /// Whether each column is aligned to the right (numbers) rather than the left.
    right_aligned: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles, all aligned to the left.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|title| title.to_string()).collect(),
            right_aligned: vec![false; header.len()],
            rows: Vec::new(),
        }
    }

    /// A table without a header row, with `column_count` columns.
    pub fn headless(column_count: usize) -> Table {
        Table { header: Vec::new(), right_aligned: vec![false; column_count], rows: Vec::new() }
    }

    /// Aligns these columns (by index) to the right.
    pub fn right_align(mut self, columns: &[usize]) -> Table {
        for &column in columns {
            if let Some(flag) = self.right_aligned.get_mut(column) {
                *flag = true;
            }
        }
        self
    }

    /// Adds a row; missing cells are blank and extra cells are dropped.
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// The table as text, one line per row, each ending in a newline, no trailing spaces.
    pub fn render(&self) -> String {
        let column_count = self.right_aligned.len();
        let mut widths = vec![0usize; column_count];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut text = String::new();
        if !self.header.is_empty() {
            self.render_row(&self.header, &widths, &mut text);
        }
        for row in &self.rows {
            self.render_row(row, &widths, &mut text);
        }
        text
    }

    fn render_row(&self, row: &[String], widths: &[usize], text: &mut String) {
        let mut line = String::new();
        for (column, width) in widths.iter().enumerate() {
            let cell = row.get(column).map_or("", String::as_str);
            let padding = " ".repeat(width.saturating_sub(cell.chars().count()));
            if column > 0 {
                line.push_str(COLUMN_GAP);
            }
            if self.right_aligned[column] {
                line.push_str(&padding);
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&padding);
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_lines_have_no_trailing_spaces() {
        let mut table = Table::new(&["QUEUE", "READY", "NOTE"]).right_align(&[1]);
        table.push(vec!["emails".into(), "7".into(), "".into()]);
        table.push(vec!["a".into(), "1200".into(), "héllo".into()]);
        assert_eq!(table.render(), "QUEUE   READY  NOTE\nemails      7\na        1200  héllo\n");
    }

    #[test]
    fn headless_tables_have_no_header_row_and_short_rows_are_padded() {
        let mut table = Table::headless(2);
        table.push(vec!["id".into(), "1".into()]);
        table.push(vec!["state".into()]);
        assert_eq!(table.render(), "id     1\nstate\n");
    }
}
