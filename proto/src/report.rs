//! How every shelfboot binary and log line prints an error: the error's message followed by
//! the messages of its `source()` chain, outermost first.
//!
//! [`error_chain`] gives the one-line form (`outer: cause: root cause`) used on the serial
//! console, in logs, in `Error` frames and in the master's JSON error lines; [`causes`] walks
//! the chain for callers that lay it out otherwise (one cause per line).
//!
//! This module formats; it does not decide what an error means or whether to log it.

use std::error::Error;

/// `err`, then its source, then that one's source, and so on: outermost first.
pub fn causes<'a>(err: &'a (dyn Error + 'a)) -> impl Iterator<Item = &'a (dyn Error + 'a)> {
    std::iter::successors(Some(err), |&e| {
        e.source().map(|s| -> &'a (dyn Error + 'a) { s })
    })
}

/// `err` and its `source()` chain on one line, joined with `": "`.
pub fn error_chain(err: &dyn Error) -> String {
    let mut out = String::new();
    for (i, e) in causes(err).enumerate() {
        if i > 0 {
            out.push_str(": ");
        }
        out.push_str(&e.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("opening the flash store")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("reading volume 3")]
    struct Middle(#[source] std::io::Error);

    fn sample() -> Outer {
        Outer(Middle(std::io::Error::other("input/output error")))
    }

    #[test]
    fn one_line_outermost_first() {
        assert_eq!(
            error_chain(&sample()),
            "opening the flash store: reading volume 3: input/output error"
        );
        assert_eq!(error_chain(&std::io::Error::other("alone")), "alone");
    }

    #[test]
    fn causes_walks_every_source() {
        let e = sample();
        let all: Vec<String> = causes(&e).map(|c| c.to_string()).collect();
        assert_eq!(
            all,
            [
                "opening the flash store",
                "reading volume 3",
                "input/output error"
            ]
        );
    }
}
