//! The guard: a last check on a semantic hit, vetoing it when the two
//! questions differ in something an embedding barely sees but the answer
//! depends on.
//!
//! Sentence embeddings place "capital of France" and "capital of Spain", or
//! "increase" and "decrease the limit", close together: they share topic
//! and form. The guard compares what such pairs differ in, each check a
//! lexical test that paraphrases pass:
//!
//! - **numbers**: the same numbers (digits, and number words as digits);
//! - **negation**: both negated or neither;
//! - **opposites**: no word of an opposite pair swapped for its partner
//!   ("upload" and "download", "before" and "after", "pros" and "cons");
//! - **entities**: the same names (capitalized words, identifiers, quoted
//!   text, and names from a gazetteer typed in lower case), and in the same
//!   order when the question has a direction ("from X to Y");
//! - **language**: the same human language.
//!
//! Which checks there are, and what they cost in paraphrase hits, come from
//! the labeled pairs in `bench/cache/` (see `bench/RESULTS.md`).

mod gazetteer;
mod words;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::OnceLock;

/// Why the guard refused a hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Veto {
    /// The questions name different numbers.
    Numbers,
    /// One question is negated and the other is not.
    Negation,
    /// One question has a word where the other has its opposite.
    Opposite {
        /// The pair, as `word/opposite`.
        pair: String,
    },
    /// The questions name different things.
    Entities,
    /// The same things, in another order, under a direction.
    Order,
    /// The questions are in different languages.
    Language,
}

impl Veto {
    /// A short stable name, for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Veto::Numbers => "numbers",
            Veto::Negation => "negation",
            Veto::Opposite { .. } => "opposite",
            Veto::Entities => "entities",
            Veto::Order => "order",
            Veto::Language => "language",
        }
    }
}

/// Checks that two questions an embedding calls alike ask the same thing.
pub fn check(a: &str, b: &str) -> Result<(), Veto> {
    let (a, b) = (Features::of(a), Features::of(b));
    if a.numbers != b.numbers {
        return Err(Veto::Numbers);
    }
    if a.negated != b.negated {
        return Err(Veto::Negation);
    }
    if let Some(pair) = swapped_opposite(&a.stems, &b.stems) {
        return Err(Veto::Opposite { pair });
    }
    let (set_a, set_b): (BTreeSet<&str>, BTreeSet<&str>) = (
        a.entities.iter().map(String::as_str).collect(),
        b.entities.iter().map(String::as_str).collect(),
    );
    if set_a != set_b {
        return Err(Veto::Entities);
    }
    if a.directed && b.directed && a.entities != b.entities {
        return Err(Veto::Order);
    }
    if a.language.is_some() && b.language.is_some() && a.language != b.language {
        return Err(Veto::Language);
    }
    Ok(())
}

/// What the checks compare, read from one question.
#[derive(Debug, Default)]
struct Features {
    numbers: BTreeSet<String>,
    negated: bool,
    stems: HashSet<String>,
    /// Names in order of first appearance, lower case.
    entities: Vec<String>,
    /// Whether the question has a direction ("to", "from", "into", "vs").
    directed: bool,
    language: Option<&'static str>,
}

impl Features {
    fn of(text: &str) -> Features {
        let lists = lists();
        let mut f = Features::default();
        let push_entity = |f: &mut Features, name: String| {
            if !f.entities.contains(&name) {
                f.entities.push(name);
            }
        };

        for quoted in quoted_spans(text) {
            push_entity(&mut f, quoted.to_lowercase());
        }
        let tokens = tokens(text);
        for token in &tokens {
            let lower = token.text.to_lowercase();
            let bare: String = lower.chars().filter(|c| *c != '\'').collect();
            if lower.chars().any(|c| c.is_ascii_digit()) {
                f.numbers.insert(lower.replace(',', ""));
                continue;
            }
            if let Some(digits) = lists.numbers.get(bare.as_str()) {
                f.numbers.insert((*digits).to_owned());
                continue;
            }
            if lists.negations.contains(bare.as_str())
                || bare.ends_with("nt") && is_contraction(&lower)
            {
                f.negated = true;
            }
            if matches!(
                bare.as_str(),
                "to" | "from" | "into" | "vs" | "versus" | "than"
            ) {
                f.directed = true;
            }
            let name = lists.gazetteer.contains(bare.as_str())
                || is_identifier(token.text)
                || (token.capitalized && !token.sentence_start && bare != "i");
            if name {
                push_entity(&mut f, bare.clone());
            }
            if !lists.function.contains(bare.as_str()) {
                f.stems.insert(stem(&bare));
            }
        }
        f.language = language(&tokens, lists);
        f
    }
}

/// A word of the question, with where it stood.
#[derive(Debug)]
struct Token<'a> {
    text: &'a str,
    capitalized: bool,
    sentence_start: bool,
}

/// Splits on anything but letters, digits and the joiners identifiers use
/// (`.`, `_`, `-`, `+`, `#`, `/`, `'`), trimming joiners at either end.
fn tokens(text: &str) -> Vec<Token<'_>> {
    let joiner = |c: char| matches!(c, '.' | '_' | '-' | '+' | '#' | '/' | '\'');
    let mut out: Vec<Token<'_>> = text
        .split(|c: char| !(c.is_alphanumeric() || joiner(c)))
        .map(|raw| raw.trim_matches(|c: char| joiner(c) && c != '+' && c != '#'))
        .filter(|word| !word.is_empty())
        .map(|word| Token {
            text: word,
            capitalized: word.chars().next().is_some_and(char::is_uppercase),
            sentence_start: false,
        })
        .collect();
    mark_sentence_starts(text, &mut out);
    out
}

/// Marks each token that follows `.`, `?`, `!`, `:` or a line break (or
/// opens the text) as a sentence start, where capitals say nothing.
fn mark_sentence_starts(text: &str, tokens: &mut [Token<'_>]) {
    let base = text.as_ptr() as usize;
    let mut previous_end = 0;
    for token in tokens.iter_mut() {
        let start = token.text.as_ptr() as usize - base;
        let between = &text[previous_end..start];
        token.sentence_start = previous_end == 0 && between.chars().all(|c| !c.is_alphanumeric())
            || between.contains(['.', '?', '!', ':', '\n', '"', '(']);
        previous_end = start + token.text.len();
    }
}

/// Text between matching quotes or backticks: names and literals.
fn quoted_spans(text: &str) -> Vec<&str> {
    let mut spans = Vec::new();
    for quote in ['"', '`', '“'] {
        let close = if quote == '“' { '”' } else { quote };
        let mut rest = text;
        while let Some(open) = rest.find(quote) {
            let after = &rest[open + quote.len_utf8()..];
            match after.find(close) {
                Some(end) if end > 0 && end <= 80 => {
                    spans.push(after[..end].trim());
                    rest = &after[end + close.len_utf8()..];
                }
                _ => break,
            }
        }
    }
    spans
}

/// Whether a word reads as code or a product name: inner dots, slashes or
/// underscores (`node.js`, `/etc/hosts`, `user_id`), inner capitals
/// (`getUser`, `iPhone`), or `+`/`#` (`c++`, `c#`).
fn is_identifier(word: &str) -> bool {
    let inner = word.get(1..).unwrap_or("");
    inner.contains(['.', '/', '_', '+', '#'])
        || inner.chars().any(char::is_uppercase) && word.chars().any(char::is_lowercase)
        || word.len() >= 2 && word.chars().all(|c| c.is_ascii_uppercase())
}

fn is_contraction(word: &str) -> bool {
    word.ends_with("n't")
}

/// A crude English stem, enough to match inflections in the opposite pairs
/// ("increasing", "increased" and "increases" all become "increas").
pub(crate) fn stem(word: &str) -> String {
    for suffix in ["ing", "ed", "es", "e", "s"] {
        if let Some(root) = word.strip_suffix(suffix)
            && root.len() >= 3
        {
            return root.to_owned();
        }
    }
    word.to_owned()
}

/// The first opposite pair of which one question has one word and the
/// other has the other, and neither has both.
fn swapped_opposite(a: &HashSet<String>, b: &HashSet<String>) -> Option<String> {
    lists().opposites.iter().find_map(|(x, y, label)| {
        let (ax, ay, bx, by) = (a.contains(x), a.contains(y), b.contains(x), b.contains(y));
        let swapped = (ax && !ay && by && !bx) || (ay && !ax && bx && !by);
        swapped.then(|| label.clone())
    })
}

/// The language whose common words the question uses most, when it uses
/// at least two of them.
fn language(tokens: &[Token<'_>], lists: &Lists) -> Option<&'static str> {
    let mut best: Option<(&'static str, usize)> = None;
    for (lang, markers) in &lists.languages {
        let hits = tokens
            .iter()
            .filter(|t| markers.contains(t.text.to_lowercase().as_str()))
            .count();
        if hits >= 2 && best.is_none_or(|(_, n)| hits > n) {
            best = Some((lang, hits));
        }
    }
    best.map(|(lang, _)| lang)
}

/// The word lists, as sets, built once.
struct Lists {
    negations: HashSet<&'static str>,
    opposites: Vec<(String, String, String)>,
    numbers: HashMap<&'static str, &'static str>,
    function: HashSet<&'static str>,
    gazetteer: HashSet<&'static str>,
    languages: Vec<(&'static str, HashSet<&'static str>)>,
}

fn lists() -> &'static Lists {
    static LISTS: OnceLock<Lists> = OnceLock::new();
    LISTS.get_or_init(|| Lists {
        negations: words::NEGATIONS.iter().copied().collect(),
        opposites: words::OPPOSITES
            .iter()
            .map(|(x, y)| (stem(x), stem(y), format!("{x}/{y}")))
            .collect(),
        numbers: words::NUMBER_WORDS.iter().copied().collect(),
        function: words::FUNCTION_WORDS.iter().copied().collect(),
        gazetteer: gazetteer::GAZETTEER.iter().copied().collect(),
        languages: words::LANGUAGE_MARKERS
            .iter()
            .map(|(lang, markers)| (*lang, markers.iter().copied().collect()))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vetoed(a: &str, b: &str) -> Option<&'static str> {
        check(a, b).err().map(|v| v.name())
    }

    #[test]
    fn paraphrases_pass() {
        let pairs = [
            ("How do I reset my password?", "how can i reset my password"),
            ("What is the capital of France?", "capital of france?"),
            (
                "Give me three tips for sleeping better",
                "3 tips to sleep better please",
            ),
            ("How do I install numpy?", "what's the way to install numpy"),
            ("Why can't I log in?", "why am I unable to log in"),
        ];
        for (a, b) in pairs {
            assert_eq!(vetoed(a, b), None, "{a} / {b}");
        }
    }

    #[test]
    fn what_matters_is_vetoed() {
        let pairs = [
            (
                "What is the capital of France?",
                "What is the capital of Spain?",
                "entities",
            ),
            ("capital of france", "capital of spain", "entities"),
            (
                "Summarize in 3 bullet points",
                "Summarize in 5 bullet points",
                "numbers",
            ),
            (
                "Does the plan include support?",
                "Does the plan not include support?",
                "negation",
            ),
            (
                "How do I upload a file?",
                "How do I download a file?",
                "opposite",
            ),
            (
                "How do I increase the limit",
                "how do i decrease the limit",
                "opposite",
            ),
            ("Convert 20 USD to EUR", "Convert 20 EUR to USD", "order"),
            (
                "What is the capital of France?",
                "¿Cuál es la capital de Francia?",
                "entities",
            ),
            (
                "How do I sort a list in python",
                "How do I sort a list in rust",
                "entities",
            ),
            (
                "Call `get_user` with id 7",
                "Call `get_order` with id 7",
                "entities",
            ),
        ];
        for (a, b, why) in pairs {
            assert_eq!(vetoed(a, b), Some(why), "{a} / {b}");
        }
    }

    #[test]
    fn stems_match_inflections() {
        assert_eq!(stem("increasing"), stem("increase"));
        assert_eq!(stem("increased"), stem("increases"));
    }
}
