//! The page around every screen (navigation, who is signed in, sign-out) and small renderers
//! shared by the pages. maud escapes every interpolated value: text from sources (errors,
//! names, items) can never become markup.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::db::Level;
use crate::web::User;

pub fn page(title: &str, user: Option<(&User, Level)>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · gn2pg" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                header class="top" {
                    a class="brand" href="/flows" { "gn2pg" }
                    @if let Some((u, level)) = user {
                        nav {
                            a href="/flows" { "Flows" }
                            a href="/alerts" { "Alerts" }
                            @if level.admin { a href="/admin/sources" id="nav-admin" { "Sources admin" } }
                        }
                        form class="who" method="post" action="/sign-out" {
                            span id="who" { (u.session.account.label()) " · " (level_name(level)) }
                            input type="hidden" name="csrf" value=(u.session.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

pub fn level_name(l: Level) -> &'static str {
    if l.admin {
        "admin"
    } else if l.operator {
        "operator"
    } else {
        "reader"
    }
}

/// 1234567 -> "1 234 567" (thin spaces, readable in French and English).
pub fn count(n: i64) -> String {
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Seconds as "2 h 05 min", "3 min 20 s", "12.4 s".
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "—".into();
    }
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{secs:.1} s")
    }
}

/// A status or health word in a coloured badge.
pub fn badge(word: &str) -> Markup {
    let class = match word {
        "ok" | "success" | "sent" => "badge ok",
        "failing" | "failed" | "abandoned" | "stale" => "badge bad",
        "late" | "cancelled" | "pending" | "sending" | "rejected" => "badge warn",
        "running" => "badge run",
        _ => "badge",
    };
    html! { span class=(class) { (word) } }
}

pub fn flash(message: Option<&str>) -> Markup {
    html! { @if let Some(m) = message { div class="flash" id="flash" { (m) } } }
}

pub fn csrf(user: &User) -> Markup {
    html! { input type="hidden" name="csrf" value=(user.session.csrf); }
}

/// Text that must never be markup, pre-formatted (errors, JSON items).
pub fn pre(text: &str) -> Markup {
    html! { pre { (text) } }
}

/// A bar chart of one series over past runs, as inline SVG (no script, allowed by the CSP).
pub fn bar_chart(label: &str, unit: &str, points: &[(String, f64, bool)]) -> Markup {
    let (w, h, pad) = (640.0_f64, 120.0_f64, 4.0_f64);
    let max = points.iter().map(|p| p.1).fold(0.0_f64, f64::max).max(1e-9);
    let n = points.len().max(1) as f64;
    // One run must not fill the whole width: bars are at most 24 units wide.
    let bw = ((w - 2.0 * pad) / n).clamp(1.0, 24.0);
    html! {
        figure class="chart" {
            figcaption { (label) " (max " (fmt_value(max, unit)) ")" }
            svg viewBox=(format!("0 0 {w} {h}")) width="100%" height="120" role="img" aria-label=(label) {
                line x1="0" y1=(h - 1.0) x2=(w) y2=(h - 1.0) stroke="#999" stroke-width="1" {}
                @for (i, (when, v, ok)) in points.iter().enumerate() {
                    @let bh = ((v / max) * (h - 2.0 * pad)).max(1.0);
                    rect x=(format!("{:.1}", pad + i as f64 * bw)) y=(format!("{:.1}", h - 1.0 - bh))
                         width=(format!("{:.1}", (bw - 1.0).max(1.0))) height=(format!("{bh:.1}"))
                         fill=(if *ok { "#3a7d44" } else { "#b33a3a" }) {
                        title { (when) ": " (fmt_value(*v, unit)) }
                    }
                }
            }
        }
    }
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "s" => duration(v),
        _ => format!("{} {unit}", count(v.round() as i64)),
    }
}

/// Marks an empty cell.
pub fn dash() -> PreEscaped<&'static str> {
    PreEscaped("&mdash;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_durations() {
        assert_eq!(count(1234567), "1\u{202f}234\u{202f}567");
        assert_eq!(count(12), "12");
        assert_eq!(count(-1000), "-1\u{202f}000");
        assert_eq!(duration(7500.0), "2 h 05 min");
        assert_eq!(duration(200.0), "3 min 20 s");
        assert_eq!(duration(1.25), "1.2 s");
    }

    #[test]
    fn source_text_is_escaped() {
        let m = pre("<script>alert(1)</script>").into_string();
        assert_eq!(m, "<pre>&lt;script&gt;alert(1)&lt;/script&gt;</pre>");
        let b = badge("<b>").into_string();
        assert!(b.contains("&lt;b&gt;"), "{b}");
    }
}
