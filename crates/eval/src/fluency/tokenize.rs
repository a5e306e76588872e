//! NLTK's `word_tokenize` as EasyEdit's n-gram entropy calls it: sentences first (punkt), then
//! NLTK's Treebank-style word tokenizer (`NLTKWordTokenizer`) on each sentence. The sentence
//! split matters to the tokens: the word tokenizer splits a period off a word only at the end of
//! its input, so `end.` is one token mid-text and two at a sentence's end.
//!
//! Punkt here is punkt's algorithm with empty parameters (`PunktSentenceTokenizer()`), since the
//! trained English model (nltk_data) cannot be had offline: a word ending in `.` ends a sentence
//! unless it is an ellipsis, an initial (`J.`) or a number followed by a lower-case word or
//! punctuation; `?` and `!` always do. The trained model also knows abbreviations (`Mr.`, `U.S.`)
//! and frequent sentence starters; texts with those split differently. Checked token for token
//! against NLTK itself (`fixtures/reference/fluency.py`, `fixtures/fluency.json`).

use std::sync::LazyLock;

use fancy_regex::Regex;

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("a valid pattern")
}

/// Punkt's characters that cannot continue a word (its `_re_non_word_chars` for English).
const NON_WORD: &str = r#"(?:[)";}\]*:@'({\[‘’“”«»?!])"#;
/// Punkt's multi-character punctuation: dashes and ellipses.
const MULTI_CHAR: &str = r"(?:-{2,}|\.{2,}|(?:\.\s){2,}\.)";

/// Punkt's word segmentation (periods stay on their word).
static PUNKT_WORD: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        r#"({MULTI_CHAR}|(?=[^("`{{\[:;&#*@)}}\]\-,])\S+?(?=\s|$|{NON_WORD}|{MULTI_CHAR}|,(?=$|\s|{NON_WORD}|{MULTI_CHAR}))|\S)"#
    ))
});
/// A potential sentence end: `.`, `?` or `!` followed by punctuation, or by space and a token.
static PERIOD_CONTEXT: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        r"[.?!](?=(?P<after_tok>{NON_WORD}|\s+(?P<next_tok>\S+)))"
    ))
});
static BOUNDARY_REALIGNMENT: LazyLock<Regex> =
    LazyLock::new(|| re(r#"\A["')\]}‘’“”«»]+?(?:\s+|(?=--)|(?m:$))"#));
static INITIAL: LazyLock<Regex> = LazyLock::new(|| re(r"^[^\W\d]\.$"));
static NUMERIC: LazyLock<Regex> = LazyLock::new(|| re(r"^-?[.,]?\d[\d,.\-]*\.?$"));
static ELLIPSIS: LazyLock<Regex> = LazyLock::new(|| re(r"^\.\.+$"));

/// `text`'s words, as NLTK's `word_tokenize` gives them (with untrained punkt).
pub fn word_tokenize(text: &str) -> Vec<String> {
    sentences(text)
        .into_iter()
        .flat_map(treebank_words)
        .collect()
}

/// Punkt's sentences of `text` (untrained): slices of it, realigned so that closing quotes and
/// brackets after a sentence's end stay with it.
pub fn sentences(text: &str) -> Vec<&str> {
    // (start, end) of each sentence before realignment.
    let mut slices = Vec::new();
    let mut last_break = 0;
    for (m_end, next_tok, context) in potential_ends(text) {
        if contains_sentbreak(&context) {
            slices.push((last_break, m_end));
            last_break = next_tok.unwrap_or(m_end);
        }
    }
    slices.push((last_break, text.trim_end().len().max(last_break)));
    // Realignment: a sentence that starts with closing punctuation gives it to the one before.
    let mut out = Vec::new();
    let mut realign = 0;
    for i in 0..slices.len() {
        let (start, end) = (slices[i].0 + realign, slices[i].1);
        let start = start.min(end);
        match slices.get(i + 1) {
            None => {
                if start < end {
                    out.push(&text[start..end]);
                }
            }
            Some(&(s2, e2)) => {
                let next = &text[s2..e2];
                match BOUNDARY_REALIGNMENT.find(next).ok().flatten() {
                    Some(m) => {
                        out.push(&text[start..s2 + m.as_str().trim_end().len()]);
                        realign = m.end();
                    }
                    None => {
                        realign = 0;
                        if start < end {
                            out.push(&text[start..end]);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Punkt's candidate breaks: (match end, where the next token starts if a space
/// follows, the context it decides on: the word before, the mark and what follows). Of marks
/// whose words overlap (`!!!`) only the last is a candidate.
fn potential_ends(text: &str) -> Vec<(usize, Option<usize>, String)> {
    let mut out = Vec::new();
    let mut previous: Option<(usize, Option<usize>, String)> = None;
    let mut prev_slice = (0usize, 0usize);
    for caps in PERIOD_CONTEXT.captures_iter(text).flatten() {
        let m = caps.get(0).expect("match");
        let after = caps.name("after_tok").expect("after_tok");
        let next_tok = caps.name("next_tok").map(|t| t.start());
        let before = &text[prev_slice.1..m.start()];
        // Python's `_get_last_whitespace_index`: ASCII whitespace only, and 0 both for "none"
        // and for "at 0".
        let last_ws = before
            .bytes()
            .rposition(|c| b" \t\n\r\x0b\x0c".contains(&c))
            .unwrap_or(0);
        let word_start = if last_ws != 0 {
            prev_slice.1 + last_ws + 1
        } else {
            prev_slice.0
        };
        let word = (word_start, m.start());
        if let Some(p) = previous.take() {
            if prev_slice.1 <= word.0 {
                out.push(p);
            }
        }
        let context = format!("{}{}{}", &text[word.0..word.1], m.as_str(), after.as_str());
        previous = Some((m.end(), next_tok, context));
        prev_slice = word;
    }
    out.extend(previous);
    out
}

/// Punkt's decision on a candidate's context: some token in it ends a sentence and is not its
/// last.
fn contains_sentbreak(context: &str) -> bool {
    let toks: Vec<&str> = context
        .split('\n')
        .filter(|l| !l.trim().is_empty())
        .flat_map(|l| {
            PUNKT_WORD
                .find_iter(l)
                .flatten()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
        })
        .collect();
    toks.windows(2).any(|w| sentbreak(w[0], w[1]))
}

/// Whether punkt (untrained) marks `tok` as ending a sentence, given the token after it (the
/// last token's mark is never read).
fn sentbreak(tok: &str, next: &str) -> bool {
    // First pass: marks end sentences; words ending in a period do unless they are ellipses
    // (no abbreviations are known).
    let first = if [".", "?", "!"].contains(&tok) {
        true
    } else if matches(&ELLIPSIS, tok) {
        false
    } else {
        tok.ends_with('.') && !tok.ends_with("..")
    };
    // Second pass, for words ending in a period: an initial or a number is not an end when the
    // next token is not a sentence starter (punctuation, or lower case), nor an initial before a
    // capital.
    if !first || !tok.ends_with('.') {
        return first;
    }
    let initial = matches(&INITIAL, tok);
    let lower = tok.to_lowercase();
    let number = matches(&NUMERIC, &lower);
    if !(initial || number) {
        return true;
    }
    let first_char = next.chars().next();
    let not_starter = [";", ":", ",", ".", "!", "?"].contains(&next)
        || first_char.is_some_and(char::is_lowercase);
    if not_starter {
        return false;
    }
    !(initial && first_char.is_some_and(char::is_uppercase))
}

fn matches(r: &Regex, s: &str) -> bool {
    r.is_match(s).unwrap_or(false)
}

/// One rewrite of the word tokenizer: a pattern and its replacement (`$1`, `$0`).
struct Rule(Regex, &'static str);

fn rules(list: &[(&str, &'static str)]) -> Vec<Rule> {
    list.iter().map(|&(p, r)| Rule(re(p), r)).collect()
}

/// NLTKWordTokenizer's rewrites, in its order (nltk 3.10 `tokenize/destructive.py`).
static STARTING_QUOTES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    rules(&[
        (r"([«“‘„]|[`]+)", " $1 "),
        (r#"^""#, "``"),
        (r"(``)", " $1 "),
        (r#"([ (\[{<])("|'{2})"#, "$1 `` "),
        (r"(?i)(?<!\w)(')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)", "$1 "),
    ])
});
static PUNCTUATION: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    rules(&[
        (r#"([^.])(\.)([\])}>"'»”’ ]*)\s*$"#, "$1 $2 $3 "),
        (r"([:,])([^\d])", " $1 $2"),
        (r"([:,])$", " $1 "),
        (r"\.{2,}", " $0 "),
        (r"[;@#$%&]", " $0 "),
        (r"[\x{2012}-\x{2015}]", " $0 "),
        (r#"([^.])(\.)([\])}>"']*)\s*$"#, "$1 $2$3 "),
        (r"[?!]", " $0 "),
        (r"([^'])' ", "$1 ' "),
        (r"[*]", " $0 "),
    ])
});
static PARENS_AND_DASHES: LazyLock<Vec<Rule>> =
    LazyLock::new(|| rules(&[(r"[\]\[(){}<>]", " $0 "), (r"--", " -- ")]));
static ENDING_QUOTES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    rules(&[
        (r"([»”’])", " $1 "),
        (r"''", " '' "),
        (r#"""#, " '' "),
        (r"\s+", " "),
        (r"([^' ])('[sS]|'[mM]|'[dD]|') ", "$1 $2 "),
        (r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", "$1 $2 "),
    ])
});
/// Robert MacIntyre's contractions (NLTK's CONTRACTIONS2 and CONTRACTIONS3): split in two.
static CONTRACTIONS: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    rules(&[
        (r"(?i)\b(can)(not)\b", " $1 $2 "),
        (r"(?i)\b(d)('ye)\b", " $1 $2 "),
        (r"(?i)\b(gim)(me)\b", " $1 $2 "),
        (r"(?i)\b(gon)(na)\b", " $1 $2 "),
        (r"(?i)\b(got)(ta)\b", " $1 $2 "),
        (r"(?i)\b(lem)(me)\b", " $1 $2 "),
        (r"(?i)\b(more)('n)\b", " $1 $2 "),
        (r"(?i)\b(wan)(na)(?=\s)", " $1 $2 "),
        (r"(?i) ('t)(is)\b", " $1 $2 "),
        (r"(?i) ('t)(was)\b", " $1 $2 "),
    ])
});

fn apply(rules: &[Rule], mut text: String) -> String {
    for Rule(r, with) in rules {
        text = r.replace_all(&text, *with).into_owned();
    }
    text
}

/// NLTKWordTokenizer on one sentence.
pub fn treebank_words(sentence: &str) -> Vec<String> {
    let text = apply(&STARTING_QUOTES, sentence.to_owned());
    let text = apply(&PUNCTUATION, text);
    let text = apply(&PARENS_AND_DASHES, text);
    let text = apply(&ENDING_QUOTES, format!(" {text} "));
    let text = apply(&CONTRACTIONS, text);
    text.split_whitespace().map(str::to_owned).collect()
}
