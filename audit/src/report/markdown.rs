//! The report as Markdown.

use super::*;

/// Escapes text for a Markdown line or table cell: no line breaks, no table pipes,
/// no emphasis, code, links or raw HTML.
pub(super) fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '|' | '*' | '`' | '<' | '>' | '[' | ']' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' | '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The report as Markdown.
pub fn markdown(r: &Report) -> String {
    let d = doc(r);
    let mut out = format!("# {}\n\n", md(&d.title));
    for (k, v) in &d.meta {
        out.push_str(&format!("- **{k}:** {}\n", md(v)));
    }
    out.push_str("\n**At a glance**\n\n");
    for g in &d.glance {
        out.push_str(&format!("- {}\n", md(g)));
    }
    for s in &d.sections {
        out.push_str(&format!("\n## {}\n\n*{}*\n\n", s.title, md(s.explain)));
        for b in &s.blocks {
            match b {
                Block::Para(p) => out.push_str(&format!("{}\n\n", md(p))),
                Block::Sub(t) => out.push_str(&format!("### {}\n\n", md(t))),
                Block::Table { head, rows } => {
                    out.push_str(&format!("| {} |\n", head.join(" | ")));
                    out.push_str(&format!("|{}\n", "---|".repeat(head.len())));
                    for row in rows {
                        let cells: Vec<String> = row.iter().map(|c| md(c)).collect();
                        out.push_str(&format!("| {} |\n", cells.join(" | ")));
                    }
                    out.push('\n');
                }
                Block::Item { title, fields } => {
                    out.push_str(&format!("### {}\n\n", md(title)));
                    for (k, v) in fields {
                        out.push_str(&format!("- **{k}:** {}\n", md(v)));
                    }
                    out.push('\n');
                }
            }
        }
    }
    out
}
