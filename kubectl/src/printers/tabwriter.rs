//! Column alignment the way kubectl's output is aligned (Go's `text/tabwriter` with
//! kubectl's settings): cells end with `\t`, each column is as wide as its widest cell
//! plus the padding (at least the minimum width), a line's last cell is not padded, and
//! a column spans only consecutive lines that have a cell in it ("column blocks").

/// Aligns tab-separated text.
#[derive(Debug, Clone)]
pub struct TabWriter {
    min_width: usize,
    padding: usize,
    /// Widths kept from earlier flushes (kubectl's `RememberWidths`, used by `--watch`).
    remember: bool,
    remembered: Vec<usize>,
    buf: String,
}

impl TabWriter {
    /// kubectl's table writer: minimum width 6, padding 3.
    pub fn table() -> TabWriter {
        TabWriter::new(6, 3)
    }

    /// kubectl describe's writer: minimum width 0, padding 2.
    pub fn describe() -> TabWriter {
        TabWriter::new(0, 2)
    }

    pub fn new(min_width: usize, padding: usize) -> TabWriter {
        TabWriter {
            min_width,
            padding,
            remember: false,
            remembered: Vec::new(),
            buf: String::new(),
        }
    }

    /// Keeps column widths across flushes, so that rows printed later line up.
    pub fn remember_widths(mut self) -> TabWriter {
        self.remember = true;
        self
    }

    pub fn write(&mut self, text: &str) {
        self.buf.push_str(text);
    }

    /// Writes one line of cells.
    pub fn row<S: AsRef<str>>(&mut self, cells: &[S]) {
        let line: Vec<&str> = cells.iter().map(|c| c.as_ref()).collect();
        self.buf.push_str(&line.join("\t"));
        self.buf.push('\n');
    }

    /// The aligned text of everything written since the last flush.
    pub fn flush(&mut self) -> String {
        let text = std::mem::take(&mut self.buf);
        let lines: Vec<Vec<&str>> = text
            .split_inclusive('\n')
            .map(|l| l.split('\t').collect())
            .collect();
        let mut out = String::new();
        let mut widths = Vec::new();
        self.format(&mut out, &lines, 0, lines.len(), &mut widths);
        out
    }

    fn format(
        &mut self,
        out: &mut String,
        lines: &[Vec<&str>],
        mut line0: usize,
        line1: usize,
        widths: &mut Vec<usize>,
    ) {
        let column = widths.len();
        let mut this = line0;
        while this < line1 {
            if column + 1 >= lines[this].len() {
                this += 1;
                continue;
            }
            // A column block starts at `this`: print the lines before it.
            self.write_lines(out, &lines[line0..this], widths);
            line0 = this;
            let mut width = self.min_width;
            while this < line1 && column + 1 < lines[this].len() {
                let w = cell_width(lines[this][column]) + self.padding;
                width = width.max(w);
                this += 1;
            }
            if self.remember {
                if let Some(&old) = self.remembered.get(column) {
                    width = width.max(old);
                }
                if self.remembered.len() <= column {
                    self.remembered.resize(column + 1, 0);
                }
                self.remembered[column] = width;
            }
            widths.push(width);
            self.format(out, lines, line0, this, widths);
            widths.pop();
            line0 = this;
        }
        self.write_lines(out, &lines[line0..line1], widths);
    }

    fn write_lines(&self, out: &mut String, lines: &[Vec<&str>], widths: &[usize]) {
        for line in lines {
            for (j, cell) in line.iter().enumerate() {
                out.push_str(cell);
                if j + 1 < line.len() {
                    let w = widths.get(j).copied().unwrap_or(0);
                    let pad = w.saturating_sub(cell_width(cell));
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
    }
}

fn cell_width(cell: &str) -> usize {
    cell.trim_end_matches('\n').chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_like_kubectl_tables() {
        let mut w = TabWriter::table();
        w.row(&["NAME", "READY", "STATUS", "AGE"]);
        w.row(&["web-1", "1/1", "Running", "5s"]);
        assert_eq!(
            w.flush(),
            "NAME    READY   STATUS    AGE\nweb-1   1/1     Running   5s\n"
        );
        let mut w = TabWriter::table();
        w.row(&["A", "B"]);
        assert_eq!(w.flush(), "A     B\n", "minimum width 6");
    }

    #[test]
    fn columns_span_only_consecutive_lines() {
        let mut w = TabWriter::describe();
        w.write("Name:\tx\nLabels:\t<none>\nContainers:\n  c:\n    Image:\tbusybox\n");
        assert_eq!(
            w.flush(),
            "Name:    x\nLabels:  <none>\nContainers:\n  c:\n    Image:  busybox\n"
        );
    }
}
