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
    /// The same words but for a thing after a determiner ("cancel my
    /// order" and "cancel my subscription").
    Substitution,
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
            Veto::Substitution => "substitution",
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
    if negation_differs(&a, &b) || negation_differs(&b, &a) {
        return Err(Veto::Negation);
    }
    if let Some(pair) = swapped_opposite(&a, &b) {
        return Err(Veto::Opposite { pair });
    }
    if names_missing(&a, &b) || names_missing(&b, &a) || kinds_differ(&a, &b) {
        return Err(Veto::Entities);
    }
    if substituted(&a.sequence, &b.sequence) {
        return Err(Veto::Substitution);
    }
    if swapped_roles(&a.sequence, &b.sequence) {
        return Err(Veto::Order);
    }
    // A question with too few marker words to tell is taken as English.
    if a.language.unwrap_or("en") != b.language.unwrap_or("en") {
        return Err(Veto::Language);
    }
    Ok(())
}

/// Whether `a` negates a word `b` uses without negating it ("does the plan
/// not include support" against "does the plan include support"). A
/// negation of a word the other question does not use is left alone: "no
/// rush, what is the symbol for gold" asks what "what is the symbol for
/// gold" does.
fn negation_differs(a: &Features, b: &Features) -> bool {
    a.negated
        .iter()
        .any(|t| !b.negated.contains(t) && b.stems.contains(t))
}

/// Whether a name in `a` goes unnamed in `b` (written in any case).
fn names_missing(a: &Features, b: &Features) -> bool {
    a.names.iter().any(|name| !b.words.contains(name))
}

/// Whether both questions name a unit, a time or a data type, and not the
/// same ones.
fn kinds_differ(a: &Features, b: &Features) -> bool {
    a.kinds
        .iter()
        .zip(&b.kinds)
        .any(|(x, y)| !x.is_empty() && !y.is_empty() && x != y)
}

/// Words after which a changed word is most likely a thing named rather
/// than a way of saying it: "cancel my order" and "cancel my subscription",
/// "the users table" and "the orders table".
const DETERMINERS: &[&str] = &[
    "the", "a", "an", "my", "your", "our", "their", "his", "her", "its", "this", "that", "these",
    "those", "of", "each", "every",
];

/// Whether the questions are the same words but for one or two after a
/// determiner, or after a determiner and one more word: another thing
/// asked about in the same frame.
fn substituted(a: &[Word], b: &[Word]) -> bool {
    let prefix = a
        .iter()
        .zip(b)
        .take_while(|(x, y)| x.stem == y.stem)
        .count();
    let room = a.len().min(b.len()) - prefix;
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take(room)
        .take_while(|(x, y)| x.stem == y.stem)
        .count();
    let (ma, mb) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let short = |m: &[Word]| (1..=2).contains(&m.len()) && m.iter().all(|w| w.content);
    let describes = |m: &[Word]| m.iter().all(|w| is_adjective(&w.text));
    // "cancel my order", or one word on ("the invoice number").
    let framed =
        |back: usize| prefix >= back && DETERMINERS.contains(&a[prefix - back].text.as_str());
    let after_modifier = prefix >= 2 && a[prefix - 1].content;
    short(ma)
        && short(mb)
        && (framed(1) || after_modifier && framed(2))
        && !(describes(ma) && describes(mb))
}

/// Adjectives that paraphrases swap for each other after a determiner
/// ("the main cause", "the primary cause"), and superlatives.
fn is_adjective(word: &str) -> bool {
    const COMMON: &[&str] = &[
        "main",
        "primary",
        "major",
        "key",
        "principal",
        "chief",
        "big",
        "large",
        "huge",
        "small",
        "little",
        "tiny",
        "good",
        "great",
        "nice",
        "bad",
        "poor",
        "fast",
        "quick",
        "rapid",
        "slow",
        "easy",
        "simple",
        "hard",
        "difficult",
        "right",
        "correct",
        "proper",
        "wrong",
        "new",
        "recent",
        "latest",
        "current",
        "old",
        "previous",
        "cheap",
        "affordable",
        "expensive",
        "common",
        "usual",
        "typical",
        "whole",
        "entire",
        "full",
        "complete",
        "top",
        "leading",
    ];
    COMMON.contains(&word) || word.len() > 5 && word.ends_with("est")
}

/// Words that give the things around them roles: "from X to Y", "X than
/// Y", "time in X when it is noon in Y".
const DIRECTIONS: &[&str] = &[
    "to", "from", "into", "onto", "vs", "versus", "than", "when", "while",
];

/// Whether two content words both questions use trade places with a
/// direction between them in each ("from savings to checking" against
/// "from checking to savings"). Moving a phrase ("in Rust, how do I…"
/// against "how do I… in Rust") leaves no direction between the swapped
/// words in one of them.
fn swapped_roles(a: &[Word], b: &[Word]) -> bool {
    const MOST: usize = 64;
    let (pa, pb) = (first_positions(a), first_positions(b));
    let shared: Vec<(&str, usize, usize)> = pa
        .iter()
        .filter_map(|(w, &i)| pb.get(w).map(|&j| (*w, i, j)))
        .take(MOST)
        .collect();
    let directed = |seq: &[Word], i: usize, j: usize| {
        seq[i.min(j) + 1..i.max(j)]
            .iter()
            .any(|w| DIRECTIONS.contains(&w.text.as_str()))
    };
    shared.iter().enumerate().any(|(n, &(_, ai, bi))| {
        shared[n + 1..].iter().any(|&(_, aj, bj)| {
            (ai < aj) != (bi < bj) && directed(a, ai, aj) && directed(b, bi, bj)
        })
    })
}

/// Where each content word's stem first appears.
fn first_positions(seq: &[Word]) -> HashMap<&str, usize> {
    let mut at = HashMap::new();
    for (i, w) in seq.iter().enumerate().filter(|(_, w)| w.content) {
        at.entry(w.stem.as_str()).or_insert(i);
    }
    at
}

/// One word of a question, in order, for the checks that compare frames.
#[derive(Debug)]
struct Word {
    /// Lower case, possessive and alias resolved.
    text: String,
    stem: String,
    /// Not a function word.
    content: bool,
}

/// What the checks compare, read from one question.
#[derive(Debug, Default)]
struct Features {
    numbers: BTreeSet<String>,
    /// Stems of the words a negation applies to.
    negated: BTreeSet<String>,
    /// Stems of the content words.
    stems: HashSet<String>,
    /// Stems of every word, function words too ("in" and "out").
    all_stems: HashSet<String>,
    /// Names: capitalized words, identifiers, quoted text and gazetteer
    /// entries, lower case.
    names: Vec<String>,
    /// Every word and quoted span, lower case, for finding names.
    words: HashSet<String>,
    /// Units, times and data types named (stems).
    kinds: [BTreeSet<String>; 3],
    sequence: Vec<Word>,
    language: Option<&'static str>,
}

impl Features {
    fn negated_set(&self) -> HashSet<String> {
        self.negated.iter().cloned().collect()
    }

    fn of(text: &str) -> Features {
        let lists = lists();
        let mut f = Features::default();
        for quoted in quoted_spans(text) {
            let quoted = quoted.to_lowercase();
            f.words.insert(quoted.clone());
            if !f.names.contains(&quoted) {
                f.names.push(quoted);
            }
        }
        let tokens = tokens(text);
        let mut negating = false;
        for (i, token) in tokens.iter().enumerate() {
            let lower = token.text.to_lowercase();
            let mut bare: String = lower.chars().filter(|c| *c != '\'').collect();
            if let Some(owner) = lower.strip_suffix("'s") {
                bare = owner.replace('\'', "");
            }
            if bare.chars().any(|c| c.is_ascii_digit()) {
                f.numbers.extend(numbers_in(&bare));
                bare.retain(|c| c.is_alphabetic());
                if bare.chars().count() < 2 {
                    continue;
                }
            }
            let previous = i.checked_sub(1).map(|p| tokens[p].text.to_lowercase());
            if let Some(digits) = lists.numbers.get(bare.as_str())
                && !(bare == "one" && previous.is_some_and(|p| PRONOUN_ONE.contains(&p.as_str())))
            {
                f.numbers.insert((*digits).to_owned());
                continue;
            }
            let word = match lists.aliases.get(bare.as_str()) {
                Some(canonical) => (*canonical).to_owned(),
                None if bare == "an" => "a".to_owned(),
                None => bare,
            };
            let stem = stem(&word);
            if lists.negations.contains(word.as_str()) || is_contraction(&lower) {
                negating = true;
                continue;
            }
            let content = !lists.function.contains(word.as_str());
            if negating && content {
                f.negated.insert(stem.clone());
                negating = false;
            }
            let pronoun = lower.starts_with("i'");
            let name = lists.gazetteer.contains(word.as_str())
                || is_identifier(token.text)
                || (token.capitalized && !token.sentence_start && word != "i" && !pronoun);
            for (kind, list) in f.kinds.iter_mut().zip(&lists.kinds) {
                if list.contains(word.as_str()) {
                    kind.insert(stem.clone());
                }
            }
            let kind = lists.kinds.iter().any(|k| k.contains(word.as_str()));
            if name && !kind && !f.names.contains(&word) {
                f.names.push(word.clone());
            }
            if content {
                f.stems.insert(stem.clone());
            }
            f.all_stems.insert(stem.clone());
            f.words.insert(word.clone());
            f.sequence.push(Word {
                text: word,
                stem,
                content,
            });
        }
        f.language = language(&tokens, lists);
        f
    }
}

/// Words before "one" that make it a pronoun ("a new one"), not a count.
const PRONOUN_ONE: &[&str] = &[
    "a", "an", "the", "this", "that", "which", "each", "every", "any", "another", "new", "no",
    "some", "same", "other", "only", "last", "next", "right", "wrong",
];

/// The numbers written in a word: runs of digits with their decimal part,
/// without thousands separators, leading zeros or trailing decimal zeros
/// ("Q3" has 3, "2024-05-17" has 2024, 5 and 17, "88.40" is 88.4).
fn numbers_in(word: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut flush = |current: &mut String| {
        let mut n = current.trim_end_matches('.').replace(',', "");
        if n.contains('.') {
            n = n.trim_end_matches('0').trim_end_matches('.').to_owned();
        }
        let n = n.trim_start_matches('0');
        if !current.is_empty() {
            out.push(if n.is_empty() || n.starts_with('.') {
                format!("0{n}")
            } else {
                n.to_owned()
            });
        }
        current.clear();
    };
    for c in word.chars() {
        if c.is_ascii_digit() || (matches!(c, '.' | ',') && !current.is_empty()) {
            current.push(c);
        } else {
            flush(&mut current);
        }
    }
    flush(&mut current);
    out
}

/// A word of the question, with where it stood.
#[derive(Debug)]
struct Token<'a> {
    text: &'a str,
    capitalized: bool,
    sentence_start: bool,
}

/// Splits on anything but letters, digits and the joiners identifiers use
/// (`.`, `_`, `+`, `#`, `/`, `@`, `'`), trimming joiners at either end. A
/// hyphen splits ("three-bullet" is "three" and "bullet").
fn tokens(text: &str) -> Vec<Token<'_>> {
    let joiner = |c: char| matches!(c, '.' | '_' | '+' | '#' | '/' | '@' | '\'');
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

/// The English (Porter 2) stem of a lower-case word, so inflections match
/// ("succeeded" and "succeed", "increasing" and "increases").
pub(crate) fn stem(word: &str) -> String {
    static STEMMER: OnceLock<rust_stemmers::Stemmer> = OnceLock::new();
    STEMMER
        .get_or_init(|| rust_stemmers::Stemmer::create(rust_stemmers::Algorithm::English))
        .stem(word)
        .into_owned()
}

/// Prefixes that turn a word into its opposite ("mutable" and
/// "immutable", "install" and "uninstall").
const NEGATING_PREFIXES: &[&str] = &["un", "im", "in", "ir", "il", "non", "dis", "de"];

/// The first pair of opposites of which one question has one word and the
/// other the other, and neither has both; a negated word counts as absent
/// ("not working" against "fails" is no swap).
fn swapped_opposite(a: &Features, b: &Features) -> Option<String> {
    let (a_words, b_words) = (a, b);
    let plain = |f: &Features| -> HashSet<String> {
        f.all_stems.difference(&f.negated_set()).cloned().collect()
    };
    let (a, b) = (plain(a), plain(b));
    let listed = lists().opposites.iter().find_map(|(x, y, label)| {
        let (ax, ay, bx, by) = (a.contains(x), a.contains(y), b.contains(x), b.contains(y));
        let swapped = (ax && !ay && by && !bx) || (ay && !ax && bx && !by);
        swapped.then(|| label.clone())
    });
    listed.or_else(|| {
        prefixed_opposite(&a_words.words, &b_words.words)
            .or_else(|| prefixed_opposite(&b_words.words, &a_words.words))
    })
}

/// A word of `a` that `b` only has with a negating prefix.
fn prefixed_opposite(a: &HashSet<String>, b: &HashSet<String>) -> Option<String> {
    a.iter().filter(|w| w.len() >= 4).find_map(|w| {
        NEGATING_PREFIXES.iter().find_map(|p| {
            let opposite = format!("{p}{w}");
            (b.contains(&opposite) && !a.contains(&opposite) && !b.contains(w))
                .then(|| format!("{w}/{opposite}"))
        })
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
    /// Units, times and data types.
    kinds: [HashSet<&'static str>; 3],
    aliases: HashMap<&'static str, &'static str>,
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
        kinds: [gazetteer::UNITS, gazetteer::TIMES, gazetteer::TYPES]
            .map(|list| list.iter().copied().collect()),
        aliases: words::ALIASES.iter().copied().collect(),
        languages: words::LANGUAGE_MARKERS
            .iter()
            .map(|(lang, markers)| (*lang, markers.iter().copied().collect()))
            .collect(),
    })
}

#[cfg(test)]
mod tests;
