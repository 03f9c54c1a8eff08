//! The report as one self-contained HTML page.

use super::*;

/// Escapes text for HTML element content and attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page's style sheet. Its line breaks are for reading the file; the page gets
/// it on one line, as before the sheet moved to its own file.
const CSS: &str = include_str!("report.css");

/// The report as one self-contained HTML page: inline CSS, no scripts, no external assets.
pub fn html(r: &Report) -> String {
    let d = doc(r);
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n",
    );
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str(&format!(
        "<title>{}</title>\n<style>{}</style>\n</head>\n<body>\n",
        esc(&d.title),
        CSS.replace('\n', "")
    ));
    out.push_str(&format!("<h1>{}</h1>\n<dl class=\"meta\">\n", esc(&d.title)));
    for (k, v) in &d.meta {
        out.push_str(&format!("<dt>{}</dt><dd>{}</dd>\n", esc(k), esc(v)));
    }
    out.push_str("</dl>\n<ul class=\"glance\">\n");
    for g in &d.glance {
        out.push_str(&format!("<li>{}</li>\n", esc(g)));
    }
    out.push_str("</ul>\n");
    for s in &d.sections {
        out.push_str(&format!("<section>\n<h2>{}</h2>\n<p class=\"explain\">{}</p>\n", esc(s.title), esc(s.explain)));
        for b in &s.blocks {
            match b {
                Block::Para(p) => out.push_str(&format!("<p>{}</p>\n", esc(p))),
                Block::Sub(t) => out.push_str(&format!("<h3>{}</h3>\n", esc(t))),
                Block::Table { head, rows } => {
                    out.push_str("<table>\n<thead><tr>");
                    for h in head {
                        out.push_str(&format!("<th>{}</th>", esc(h)));
                    }
                    out.push_str("</tr></thead>\n<tbody>\n");
                    for row in rows {
                        out.push_str("<tr>");
                        for c in row {
                            out.push_str(&format!("<td>{}</td>", esc(c)));
                        }
                        out.push_str("</tr>\n");
                    }
                    out.push_str("</tbody>\n</table>\n");
                }
                Block::Item { title, fields } => {
                    out.push_str(&format!("<h3>{}</h3>\n<dl class=\"item\">\n", esc(title)));
                    for (k, v) in fields {
                        out.push_str(&format!("<dt>{}</dt><dd>{}</dd>\n", esc(k), esc(v)));
                    }
                    out.push_str("</dl>\n");
                }
            }
        }
        out.push_str("</section>\n");
    }
    out.push_str("</body>\n</html>\n");
    out
}
