//! What a PostgreSQL restore lets psql run: a plain-format dump, read the way psql reads it,
//! before psql reads it.
//!
//! A plain dump is a psql script, and psql runs more than SQL: a line such as `\! rm -rf ~`
//! is a meta-command that psql executes on the host of the restore. A backup stream only
//! authenticates under the master key, so only someone who can write backups could put one
//! there; a restore still must not turn "can write a backup" into "runs commands on the
//! operator's machine", nor let the dump end the restore's single transaction. So the
//! decrypted dump goes through [`DumpCheck`] twice: once while the stream is authenticated
//! (a refusal then comes before psql is even started) and once on its way to psql.
//!
//! **What it refuses** (each a [`DumpRefused`] naming the line, never quoting its data):
//!
//! - every backslash outside strings, quoted identifiers, dollar quotes, comments and COPY
//!   data: psql treats any of them as a meta-command, at the start of a line or in its middle;
//! - top-level transaction control: a statement that starts with `BEGIN`, `START`, `COMMIT`,
//!   `END`, `ROLLBACK`, `ABORT`, `SAVEPOINT`, `RELEASE` or `PREPARE TRANSACTION` (inside
//!   function bodies, strings and dollar quotes these words are text and pass);
//! - a `COPY` other than `COPY ... FROM stdin` (not from a file or a program, not binary),
//!   and anything after its `;` on its line;
//! - what would make psql read the rest differently from this check: NUL bytes, a change of
//!   `standard_conforming_strings` other than a plain `SET` on a line of its own, a client
//!   encoding whose multibyte characters can hide a quote or a backslash (SJIS, BIG5, GBK,
//!   UHC, GB18030, JOHAB and their aliases), a string continued on the next line, a quote or
//!   `$` glued to a word or number, a `BEGIN` in a function definition other than
//!   `BEGIN ATOMIC`, and psql's own variables (`:VERSION`, `:DBNAME`...);
//! - a dump that ends inside a statement, a string or COPY data (psql would read the
//!   restore's own `COMMIT` as part of it).
//!
//! pg_dump writes none of these, except the `\restrict KEY` and `\unrestrict KEY` lines of
//! PostgreSQL 13.22, 14.19, 15.14, 16.10, 17.6 and later (the fix of CVE-2025-8714: psql in
//! restricted mode refuses every meta-command but `\unrestrict` with the same key). Those
//! two lines are checked (at most one pair, matching keys, outside any statement) and
//! dropped: the restore puts psql in restricted mode itself, with a fresh random key the
//! dump cannot know, before the first line of the dump. So psql's own lexer refuses a
//! meta-command even where this check would read the text differently from psql.
//!
//! **How it reads.** As psql's lexer (`psqlscan.l`) does, line by line: `--` and nested
//! `/* */` comments, standard strings (`'...'`, `B'...'`, `X'...'`, `N'...'`, `U&'...'`;
//! backslash-escaped when `standard_conforming_strings` is off), escape strings (`E'...'`),
//! quoted identifiers, dollar quotes (`$tag$...$tag$`), parentheses, and psql's rule for
//! SQL-standard function bodies (`CREATE FUNCTION ... BEGIN ATOMIC ...; END`, whose `;` do not
//! end the statement). After a `COPY ... FROM stdin;` every line is data, whatever it starts
//! with (`\N` for a NULL first column, `\\x...` for a bytea one), until a line that is
//! exactly `\.`. A `SET standard_conforming_strings` takes effect on the next line, as in
//! psql.
//!
//! **Limits.** SQL in the dump can change `standard_conforming_strings` or the client
//! encoding through dynamic SQL (`EXECUTE` of a built string) where no check can see it;
//! psql would then read later lines differently. Meta-commands stay refused by psql's
//! restricted mode; transaction control hidden that way is not detected. Such a dump can
//! only come from someone holding the master key.

use std::fmt;

/// The reason a dump is not given to psql, and the line (1-based) where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the dump is refused at line {line}: {reason}")]
pub(crate) struct DumpRefused {
    /// The line of the dump.
    pub(crate) line: u64,
    /// What was found there (a keyword or a command name at most, never data).
    pub(crate) reason: Reason,
}

/// What a refused dump holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reason {
    /// A psql meta-command (its name, sanitized).
    MetaCommand(String),
    /// A statement that ends or nests the restore's transaction (its keyword).
    TransactionControl(&'static str),
    /// A `COPY` other than `COPY ... FROM stdin`.
    Copy(&'static str),
    /// Something that psql would read differently from this check.
    Ambiguous(&'static str),
    /// The `\restrict`/`\unrestrict` lines are not pg_dump's pair.
    Restrict(&'static str),
    /// The dump ends inside something.
    Unterminated(&'static str),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::MetaCommand(name) => write!(
                f,
                "a psql meta-command (`\\{name}`), which psql would run on this host"
            ),
            Reason::TransactionControl(word) => write!(
                f,
                "transaction control (`{word}`), which would break the restore's single \
                 transaction"
            ),
            Reason::Copy(what) => write!(f, "{what}"),
            Reason::Ambiguous(what) => write!(f, "{what}, which psql could read otherwise"),
            Reason::Restrict(what) => write!(f, "{what}"),
            Reason::Unterminated(what) => write!(f, "the dump ends {what}"),
        }
    }
}

/// The longest `\restrict` key accepted (pg_dump writes 64 characters).
const MAX_RESTRICT_KEY: usize = 256;
/// Tokens kept per statement for classifying it: a `SET` needs a handful, a `COPY` two per
/// column of its column list, for a table of up to PostgreSQL's 1,600 columns.
const MAX_TOKENS: usize = 2 * 1_600 + 16;
/// String contents kept for classification (setting and encoding names).
const MAX_KEPT_STRING: usize = 64;

/// Client encodings (as PostgreSQL normalizes their names: lowercase, alphanumerics only)
/// whose multibyte characters may end in an ASCII byte: psql's lexer then skips a quote or
/// a backslash that this check would see.
const UNSAFE_ENCODINGS: [&str; 17] = [
    "sjis",
    "shiftjis",
    "mskanji",
    "win932",
    "windows932",
    "shiftjis2004",
    "big5",
    "win950",
    "windows950",
    "gbk",
    "win936",
    "windows936",
    "uhc",
    "win949",
    "windows949",
    "gb18030",
    "johab",
];

/// Text after a `COPY ... FROM stdin;` or a tracked `SET` on its line: psql reads it only
/// after the COPY data, or under the new setting.
const MUST_END: Reason =
    Reason::Ambiguous("text after a COPY or a SET that psql tracks, on its line");
/// psql counts every `begin` of a function definition; the server only `BEGIN ATOMIC`.
const NOT_ATOMIC: Reason =
    Reason::Ambiguous("a BEGIN in a function definition that is not BEGIN ATOMIC");

/// Statements whose first word ends, opens or nests a transaction.
const TRANSACTION_WORDS: [&str; 8] = [
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "savepoint",
    "release",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    /// Backslashes are text (`'...'` with `standard_conforming_strings` on, `B'`, `X'`, `U&'`).
    Standard,
    /// A backslash escapes the next byte (`E'...'`, or `'...'` with the setting off).
    Escape,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Lex {
    /// SQL text.
    Normal,
    /// Inside `/* */`, nested this deep.
    BlockComment(u32),
    /// Inside a string literal.
    String(Quote),
    /// Inside `"..."`.
    QuotedIdent,
    /// Inside a dollar quote; the delimiter, both `$` included.
    Dollar(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A word (identifier or keyword), lowercased.
    Word(String),
    /// A string literal: its content when short.
    Str(Option<Vec<u8>>),
    /// A number.
    Num,
    /// Punctuation or an operator character.
    Sym(u8),
}

/// One statement as psql splits them, and what classifying it needs.
#[derive(Debug, Default)]
struct Statement {
    /// The first tokens, with their parenthesis depth.
    tokens: Vec<(u32, Token)>,
    overflow: bool,
    paren_depth: u32,
    /// psql's `begin_depth`: inside `BEGIN ATOMIC ... END` of a function definition.
    begin_depth: u32,
    /// psql's `identifiers` (the first letters of the first four words, when they are
    /// `create`, `or`, `replace`, `function` or `procedure`) and `identifier_count`.
    idents: [u8; 4],
    ident_count: usize,
    /// A counted `begin` was just seen: the next token must be `atomic`.
    expect_atomic: bool,
    /// The statement names `standard_conforming_strings` or `client_encoding`.
    names_lexing_setting: bool,
    /// The string literal being read, while it is short enough to keep.
    string: Option<Vec<u8>>,
}

impl Statement {
    fn started(&self) -> bool {
        !self.tokens.is_empty() || self.overflow
    }

    fn push(&mut self, token: Token) {
        if self.tokens.len() < MAX_TOKENS {
            self.tokens.push((self.paren_depth, token));
        } else {
            self.overflow = true;
        }
    }

    fn words_at_top(&self) -> impl Iterator<Item = &str> {
        self.tokens.iter().filter_map(|(depth, t)| match t {
            Token::Word(w) if *depth == 0 => Some(w.as_str()),
            _ => None,
        })
    }

    /// psql's heuristic: the statement starts `CREATE [OR REPLACE] FUNCTION|PROCEDURE`.
    fn defines_function(&self) -> bool {
        let i = &self.idents;
        i[0] == b'c'
            && (i[1] == b'f'
                || i[1] == b'p'
                || (i[1] == b'o' && i[2] == b'r' && (i[3] == b'f' || i[3] == b'p')))
    }
}

/// Reads a plain-format dump as psql will and refuses what must not reach psql (see the
/// [module docs](self)); forwards every other line unchanged.
#[derive(Debug)]
pub(crate) struct DumpCheck {
    /// The current line, while it is incomplete.
    pending: Vec<u8>,
    /// Lines completed so far.
    line: u64,
    lex: Lex,
    statement: Statement,
    /// `standard_conforming_strings` as psql reads the current line.
    std_strings: bool,
    /// A `SET standard_conforming_strings` ended on this line: psql uses it from the next.
    next_std_strings: Option<bool>,
    /// Nothing but blanks and a `--` comment may follow on this line (after a COPY or a
    /// setting psql tracks).
    line_must_end: bool,
    /// A `COPY ... FROM stdin` ended on this line: the next lines are data.
    copy_next: bool,
    /// Inside COPY data.
    in_copy: bool,
    /// The key of the dump's `\restrict` line, until its `\unrestrict`.
    restrict_key: Option<Vec<u8>>,
    restrict_seen: bool,
    /// A string literal ended its line (only blanks or a comment after it): a bare quote
    /// opening the next token would continue it for the server, not for psql.
    string_ended_line: bool,
}

impl DumpCheck {
    /// A check at the start of a dump, psql reading with `standard_conforming_strings` on
    /// (the restore sets it before the dump's first line).
    pub(crate) fn new() -> Self {
        DumpCheck {
            pending: Vec::new(),
            line: 0,
            lex: Lex::Normal,
            statement: Statement::default(),
            std_strings: true,
            next_std_strings: None,
            line_must_end: false,
            copy_next: false,
            in_copy: false,
            restrict_key: None,
            restrict_seen: false,
            string_ended_line: false,
        }
    }

    /// Checks the next bytes of the dump and appends to `out` the complete lines that go on
    /// to psql (the dump's `\restrict`/`\unrestrict` lines are dropped).
    pub(crate) fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), DumpRefused> {
        while let Some(at) = data.iter().position(|b| *b == b'\n') {
            let (line, rest) = data.split_at(at + 1);
            data = rest;
            if self.pending.is_empty() {
                self.line(line, out)?;
            } else {
                let mut whole = std::mem::take(&mut self.pending);
                whole.extend_from_slice(line);
                self.line(&whole, out)?;
                whole.clear();
                self.pending = whole;
            }
        }
        self.pending.extend_from_slice(data);
        Ok(())
    }

    /// Ends the dump: checks its last line and that it ends outside any statement, string
    /// or COPY data, and appends that line to `out`.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), DumpRefused> {
        if !self.pending.is_empty() {
            let last = std::mem::take(&mut self.pending);
            self.line(&last, out)?;
        }
        let unterminated = if self.in_copy || self.copy_next {
            Some("inside COPY data (no `\\.` line)")
        } else {
            match self.lex {
                Lex::Normal if self.statement.started() => {
                    Some("inside a statement (no `;` after it)")
                }
                Lex::Normal => None,
                Lex::BlockComment(_) => Some("inside a `/* */` comment"),
                Lex::String(_) => Some("inside a string literal"),
                Lex::QuotedIdent => Some("inside a quoted identifier"),
                Lex::Dollar(_) => Some("inside a dollar-quoted string"),
            }
        };
        match unterminated {
            Some(what) => Err(self.refuse(Reason::Unterminated(what))),
            None => Ok(()),
        }
    }

    fn refuse(&self, reason: Reason) -> DumpRefused {
        DumpRefused {
            line: self.line.max(1),
            reason,
        }
    }

    /// One line, its `\n` included (absent on a last line without one).
    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<(), DumpRefused> {
        self.line += 1;
        if line.contains(&0) {
            return Err(self.refuse(Reason::Ambiguous("a NUL byte")));
        }
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if self.in_copy {
            // psql ends COPY data at a line that is exactly `\.`; every other line is data.
            if text == b"\\." {
                self.in_copy = false;
            }
            out.extend_from_slice(line);
            return Ok(());
        }
        if self.lex == Lex::Normal && !self.statement.started() && self.restrict_line(text)? {
            return Ok(());
        }
        self.lex_line(line)?;
        // The end of the line: what psql does between lines.
        if let Some(on) = self.next_std_strings.take() {
            self.std_strings = on;
        }
        self.line_must_end = false;
        if self.copy_next {
            self.copy_next = false;
            self.in_copy = true;
        }
        out.extend_from_slice(line);
        Ok(())
    }

    /// Handles pg_dump's `\restrict KEY` / `\unrestrict KEY` lines: `Ok(true)` when `text` is
    /// one of them (it is dropped).
    fn restrict_line(&mut self, text: &[u8]) -> Result<bool, DumpRefused> {
        let (restrict, key) = if let Some(key) = text.strip_prefix(b"\\restrict ") {
            (true, key)
        } else if let Some(key) = text.strip_prefix(b"\\unrestrict ") {
            (false, key)
        } else {
            return Ok(false);
        };
        if key.is_empty()
            || key.len() > MAX_RESTRICT_KEY
            || !key.iter().all(u8::is_ascii_alphanumeric)
        {
            return Err(self.refuse(Reason::Restrict(
                "a `\\restrict` line whose key is not pg_dump's (letters and digits)",
            )));
        }
        if restrict {
            if self.restrict_seen {
                return Err(self.refuse(Reason::Restrict("a second `\\restrict` line")));
            }
            self.restrict_seen = true;
            self.restrict_key = Some(key.to_vec());
        } else {
            match self.restrict_key.take() {
                Some(k) if k == key => {}
                Some(_) => {
                    return Err(self.refuse(Reason::Restrict(
                        "an `\\unrestrict` line whose key is not that of the `\\restrict` line",
                    )));
                }
                None => {
                    return Err(self.refuse(Reason::Restrict(
                        "an `\\unrestrict` line without a `\\restrict` line before it",
                    )));
                }
            }
        }
        Ok(true)
    }

    /// Lexes one SQL line as psql does.
    fn lex_line(&mut self, line: &[u8]) -> Result<(), DumpRefused> {
        let mut i = 0;
        while i < line.len() {
            i = match self.lex.clone() {
                Lex::Normal => self.normal(line, i)?,
                Lex::BlockComment(depth) => self.block_comment(line, i, depth),
                Lex::String(quote) => self.string(line, i, quote)?,
                Lex::QuotedIdent => match line[i..].iter().position(|b| *b == b'"') {
                    // `""` is a quote inside; psql reads it as an end and a new start.
                    Some(at) => {
                        self.lex = Lex::Normal;
                        i + at + 1
                    }
                    None => line.len(),
                },
                Lex::Dollar(delimiter) => match find(&line[i..], &delimiter) {
                    Some(at) => {
                        self.lex = Lex::Normal;
                        i + at + delimiter.len()
                    }
                    None => line.len(),
                },
            };
        }
        Ok(())
    }

    fn block_comment(&mut self, line: &[u8], mut i: usize, mut depth: u32) -> usize {
        while i < line.len() {
            if line[i..].starts_with(b"/*") {
                depth += 1;
                i += 2;
            } else if line[i..].starts_with(b"*/") {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    self.lex = Lex::Normal;
                    return i;
                }
            } else {
                i += 1;
            }
        }
        self.lex = Lex::BlockComment(depth);
        i
    }

    fn string(&mut self, line: &[u8], mut i: usize, quote: Quote) -> Result<usize, DumpRefused> {
        while i < line.len() {
            let b = line[i];
            if quote == Quote::Escape && b == b'\\' {
                // The backslash and the byte it escapes.
                self.keep_string(&line[i..(i + 2).min(line.len())]);
                i += 2;
                continue;
            }
            if b == b'\'' {
                if line.get(i + 1) == Some(&b'\'') {
                    self.keep_string(b"'");
                    i += 2;
                    continue;
                }
                self.lex = Lex::Normal;
                let content = self.statement.string.take();
                self.end_string(content, line, i + 1)?;
                return Ok(i + 1);
            }
            self.keep_string(&line[i..=i]);
            i += 1;
        }
        Ok(i)
    }

    fn keep_string(&mut self, bytes: &[u8]) {
        if let Some(s) = &mut self.statement.string {
            if s.len() + bytes.len() <= MAX_KEPT_STRING {
                s.extend_from_slice(bytes);
            } else {
                self.statement.string = None;
            }
        }
    }

    /// A string literal ended at `line[..at]`.
    fn end_string(
        &mut self,
        content: Option<Vec<u8>>,
        line: &[u8],
        at: usize,
    ) -> Result<(), DumpRefused> {
        if let Some(text) = &content
            && names_lexing_setting(text)
        {
            self.statement.names_lexing_setting = true;
        }
        self.token(Token::Str(content))?;
        // The server continues `'a'` <newline> `'b'` as one literal (in the first one's
        // quoting); psql, which never sees the newline, reads two. Such a quote is refused
        // rather than guessed at (see `open_string`).
        let rest = &line[at..];
        let blank = rest
            .iter()
            .take_while(|b| b" \t\r\x0b\x0c".contains(b))
            .count();
        let rest = &rest[blank..];
        if rest.is_empty() || rest == b"\n" || rest.starts_with(b"--") {
            self.string_ended_line = true;
        }
        Ok(())
    }

    /// A statement token: the checks that psql's statement rules need.
    fn token(&mut self, token: Token) -> Result<(), DumpRefused> {
        self.string_ended_line = false;
        if self.line_must_end {
            return Err(self.refuse(MUST_END));
        }
        if self.statement.expect_atomic {
            self.statement.expect_atomic = false;
            if token != Token::Word("atomic".to_owned()) {
                return Err(self.refuse(NOT_ATOMIC));
            }
        }
        self.statement.push(token);
        Ok(())
    }

    /// Lexes SQL text from `line[i]`; returns where it stopped (the start of a string,
    /// comment... or the end of the line).
    fn normal(&mut self, line: &[u8], mut i: usize) -> Result<usize, DumpRefused> {
        while i < line.len() {
            let b = line[i];
            let next = line.get(i + 1).copied();
            match b {
                b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                    i += 1;
                }
                b'-' if next == Some(b'-') => return Ok(line.len()),
                b'/' if next == Some(b'*') => {
                    // `/*` after a COPY or a tracked setting could hide the lines after it.
                    if self.line_must_end {
                        return Err(self.refuse(MUST_END));
                    }
                    self.string_ended_line = false;
                    self.lex = Lex::BlockComment(1);
                    return Ok(i + 2);
                }
                b'\'' => {
                    let quote = if self.std_strings {
                        Quote::Standard
                    } else {
                        Quote::Escape
                    };
                    self.open_string(quote, true)?;
                    return Ok(i + 1);
                }
                b'"' => {
                    self.token(Token::Sym(b'"'))?;
                    self.lex = Lex::QuotedIdent;
                    return Ok(i + 1);
                }
                b'$' => return self.dollar(line, i),
                b'\\' => {
                    let name: String = line[i + 1..]
                        .iter()
                        .take_while(|c| !c.is_ascii_whitespace())
                        .take(12)
                        .map(|c| {
                            if c.is_ascii_graphic() {
                                char::from(*c)
                            } else {
                                '?'
                            }
                        })
                        .collect();
                    return Err(self.refuse(Reason::MetaCommand(name)));
                }
                b';' => {
                    i += 1;
                    self.semicolon()?;
                }
                b'(' | b')' => {
                    self.token(Token::Sym(b))?;
                    if b == b'(' {
                        self.statement.paren_depth += 1;
                    } else {
                        self.statement.paren_depth = self.statement.paren_depth.saturating_sub(1);
                    }
                    i += 1;
                }
                b':' if next == Some(b':') => {
                    self.token(Token::Sym(b':'))?;
                    i += 2;
                }
                b':' if next.is_some_and(|c| c.is_ascii_uppercase()) => {
                    // psql replaces `:NAME` by the value of its variable NAME; its own
                    // variables (VERSION, DBNAME, PROMPT1...) are all upper case.
                    let name = &line[i + 1..];
                    let len = name
                        .iter()
                        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                        .count();
                    if name[..len]
                        .iter()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
                    {
                        return Err(
                            self.refuse(Reason::Ambiguous("a psql variable reference (`:NAME`)"))
                        );
                    }
                    self.token(Token::Sym(b':'))?;
                    i += 1;
                }
                b'0'..=b'9' => i = self.number(line, i)?,
                c if is_ident_start(c) => {
                    i = self.word(line, i)?;
                    if self.lex != Lex::Normal {
                        // A prefixed string (`E'`...) or quoted identifier (`U&"`) opened.
                        return Ok(i);
                    }
                }
                _ => {
                    self.token(Token::Sym(b))?;
                    i += 1;
                }
            }
        }
        Ok(i)
    }

    /// A string literal opens; `bare` for a quote without a prefix (`E`, `B`, `X`, `N`, `U&`).
    fn open_string(&mut self, quote: Quote, bare: bool) -> Result<(), DumpRefused> {
        if std::mem::take(&mut self.string_ended_line) && bare {
            return Err(self.refuse(Reason::Ambiguous(
                "a string literal continued on the next line",
            )));
        }
        if self.line_must_end {
            return Err(self.refuse(MUST_END));
        }
        self.statement.string = Some(Vec::new());
        self.lex = Lex::String(quote);
        Ok(())
    }

    /// A `$` in SQL text: a dollar quote `$tag$`, a parameter `$1`, or text.
    fn dollar(&mut self, line: &[u8], i: usize) -> Result<usize, DumpRefused> {
        let tag = line[i + 1..]
            .iter()
            .enumerate()
            .take_while(|(n, c)| {
                if *n == 0 {
                    is_ident_start(**c)
                } else {
                    is_ident_start(**c) || c.is_ascii_digit()
                }
            })
            .count();
        if line.get(i + 1 + tag) == Some(&b'$') {
            self.token(Token::Str(None))?;
            self.lex = Lex::Dollar(line[i..i + tag + 2].to_vec());
            return Ok(i + tag + 2);
        }
        self.token(Token::Sym(b'$'))?;
        // `$1`, or a `$` and a word that psql reads as text.
        let digits = line[i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        Ok(i + 1 + digits.max(tag))
    }

    fn number(&mut self, line: &[u8], mut i: usize) -> Result<usize, DumpRefused> {
        let digits =
            |line: &[u8], i: usize| line[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        i += digits(line, i);
        if line.get(i) == Some(&b'.') && line.get(i + 1) != Some(&b'.') {
            i += 1;
            i += digits(line, i);
        }
        if matches!(line.get(i), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(line.get(i + 1), Some(b'+' | b'-')));
            if line.get(i + 1 + sign).is_some_and(u8::is_ascii_digit) {
                i += 1 + sign;
                i += digits(line, i);
            }
        }
        if line
            .get(i)
            .is_some_and(|c| is_ident_start(*c) || *c == b'$' || *c == b'\'')
        {
            return Err(self.refuse(Reason::Ambiguous(
                "a number run into a word, a quote or a `$`",
            )));
        }
        self.token(Token::Num)?;
        Ok(i)
    }

    fn word(&mut self, line: &[u8], start: usize) -> Result<usize, DumpRefused> {
        let len = line[start..]
            .iter()
            .take_while(|c| is_ident_start(**c) || c.is_ascii_digit())
            .count();
        let end = start + len;
        let word = String::from_utf8_lossy(&line[start..end]).to_ascii_lowercase();
        match line.get(end) {
            Some(b'$') => {
                return Err(self.refuse(Reason::Ambiguous("a `$` right after a word")));
            }
            Some(b'\'') => {
                let quote = match word.as_str() {
                    "e" => Quote::Escape,
                    "b" | "x" => Quote::Standard,
                    "n" if self.std_strings => Quote::Standard,
                    "n" => Quote::Escape,
                    _ => {
                        return Err(self.refuse(Reason::Ambiguous("a quote right after a word")));
                    }
                };
                self.open_string(quote, false)?;
                return Ok(end + 1);
            }
            Some(b'&') if word == "u" => match line.get(end + 1) {
                Some(b'\'') => {
                    self.open_string(Quote::Standard, false)?;
                    return Ok(end + 2);
                }
                Some(b'"') => {
                    self.token(Token::Sym(b'"'))?;
                    self.lex = Lex::QuotedIdent;
                    return Ok(end + 2);
                }
                _ => {}
            },
            _ => {}
        }
        self.identifier(word)?;
        Ok(end)
    }

    /// A word, counted as psql's lexer counts identifiers.
    fn identifier(&mut self, word: String) -> Result<(), DumpRefused> {
        if names_lexing_setting(word.as_bytes()) {
            self.statement.names_lexing_setting = true;
        }
        let s = &mut self.statement;
        if s.ident_count == 0 {
            s.idents = [0; 4];
        }
        if s.ident_count < 4
            && matches!(
                word.as_str(),
                "create" | "function" | "procedure" | "or" | "replace"
            )
        {
            s.idents[s.ident_count] = word.as_bytes()[0];
        }
        s.ident_count += 1;
        let mut counted_begin = false;
        if s.defines_function() && s.paren_depth == 0 {
            match word.as_str() {
                "begin" => {
                    if s.begin_depth > 0 {
                        return Err(self
                            .refuse(Reason::Ambiguous("a nested BEGIN in a function definition")));
                    }
                    s.begin_depth += 1;
                    counted_begin = true;
                }
                "case" if s.begin_depth >= 1 => s.begin_depth += 1,
                "end" if s.begin_depth > 0 => s.begin_depth -= 1,
                _ => {}
            }
        }
        self.token(Token::Word(word))?;
        self.statement.expect_atomic = counted_begin;
        Ok(())
    }

    /// A `;`: the end of the statement when psql would end it there.
    fn semicolon(&mut self) -> Result<(), DumpRefused> {
        if self.line_must_end {
            return Err(self.refuse(MUST_END));
        }
        if self.statement.expect_atomic {
            return Err(self.refuse(NOT_ATOMIC));
        }
        if self.statement.paren_depth > 0 || self.statement.begin_depth > 0 {
            return self.token(Token::Sym(b';'));
        }
        let statement = std::mem::take(&mut self.statement);
        self.classify(&statement)
    }

    /// Checks a whole statement.
    fn classify(&mut self, s: &Statement) -> Result<(), DumpRefused> {
        let Some((0, Token::Word(first))) = s.tokens.first() else {
            if s.names_lexing_setting {
                return Err(self.refuse(Reason::Ambiguous(
                    "a statement that changes standard_conforming_strings or the client encoding",
                )));
            }
            return Ok(());
        };
        let second = match s.tokens.get(1) {
            Some((_, Token::Word(w))) => Some(w.as_str()),
            _ => None,
        };
        if let Some(word) = TRANSACTION_WORDS.iter().find(|w| **w == first) {
            return Err(self.refuse(Reason::TransactionControl(word)));
        }
        if first == "prepare" && second == Some("transaction") {
            return Err(self.refuse(Reason::TransactionControl("PREPARE TRANSACTION")));
        }
        match first.as_str() {
            "copy" => self.copy(s),
            "set" => self.set(s),
            "reset"
                if matches!(
                    second,
                    Some("all" | "standard_conforming_strings" | "client_encoding")
                ) =>
            {
                Err(self.refuse(Reason::Ambiguous(
                    "a RESET of standard_conforming_strings or the client encoding",
                )))
            }
            _ if s.names_lexing_setting => Err(self.refuse(Reason::Ambiguous(
                "a statement that changes standard_conforming_strings or the client encoding",
            ))),
            _ => Ok(()),
        }
    }

    fn copy(&mut self, s: &Statement) -> Result<(), DumpRefused> {
        if s.overflow {
            return Err(self.refuse(Reason::Copy("a COPY statement longer than pg_dump's")));
        }
        let words: Vec<&str> = s.words_at_top().collect();
        let Some(from) = words.windows(2).position(|w| w == ["from", "stdin"]) else {
            return Err(self.refuse(Reason::Copy(
                "a COPY that is not `COPY ... FROM stdin` (pg_dump writes no other)",
            )));
        };
        if words.contains(&"program") {
            return Err(self.refuse(Reason::Copy("a COPY from or to a program")));
        }
        let after_stdin = s
            .tokens
            .iter()
            .filter_map(|(_, t)| match t {
                Token::Word(w) => Some(w.as_str()),
                _ => None,
            })
            .skip_while(|w| *w != "stdin")
            .any(|w| w == "binary");
        if after_stdin || words[..from].contains(&"binary") {
            return Err(self.refuse(Reason::Copy("a binary COPY")));
        }
        self.copy_next = true;
        self.line_must_end = true;
        Ok(())
    }

    /// `SET [SESSION | LOCAL] name {= | TO} value`: psql follows two settings itself.
    fn set(&mut self, s: &Statement) -> Result<(), DumpRefused> {
        let mut tokens = s.tokens.iter().map(|(_, t)| t).skip(1).peekable();
        if matches!(tokens.peek(), Some(Token::Word(w)) if w == "session" || w == "local") {
            tokens.next();
        }
        let name = match tokens.next() {
            Some(Token::Word(w)) => w.as_str(),
            _ => "",
        };
        let rest: Vec<&Token> = tokens.collect();
        let value = match rest.as_slice() {
            [Token::Sym(b'='), value] => Some(*value),
            [Token::Word(to), value] if to == "to" => Some(*value),
            [value] if name == "names" => Some(*value),
            _ => None,
        };
        let text = |t: &Token| match t {
            Token::Word(w) => Some(w.as_bytes().to_vec()),
            Token::Str(Some(s)) => Some(s.to_ascii_lowercase()),
            _ => None,
        };
        match name {
            "standard_conforming_strings" => {
                let on = match value.and_then(text).as_deref() {
                    Some(b"on" | b"true" | b"yes") => true,
                    Some(b"off" | b"false" | b"no") => false,
                    _ => {
                        return Err(self.refuse(Reason::Ambiguous(
                            "a SET of standard_conforming_strings to an unusual value",
                        )));
                    }
                };
                if s.overflow {
                    return Err(self.refuse(Reason::Ambiguous("an unusual SET")));
                }
                self.next_std_strings = Some(on);
                self.line_must_end = true;
                Ok(())
            }
            "client_encoding" | "names" => {
                let Some(encoding) = value.and_then(text) else {
                    return Err(self.refuse(Reason::Ambiguous(
                        "a SET of the client encoding to an unusual value",
                    )));
                };
                let normalized: String = encoding
                    .iter()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .map(|c| char::from(c.to_ascii_lowercase()))
                    .collect();
                if UNSAFE_ENCODINGS.contains(&normalized.as_str()) {
                    return Err(self.refuse(Reason::Ambiguous(
                        "a client encoding whose characters can end in a quote or a backslash",
                    )));
                }
                self.line_must_end = true;
                Ok(())
            }
            _ if s.names_lexing_setting => Err(self.refuse(Reason::Ambiguous(
                "a statement that changes standard_conforming_strings or the client encoding",
            ))),
            _ => Ok(()),
        }
    }
}

/// A byte that starts an identifier in psql's lexer (letters, `_`, any non-ASCII byte).
fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// Whether `text` is (case-insensitively) a setting that changes how psql reads the dump.
fn names_lexing_setting(text: &[u8]) -> bool {
    text.eq_ignore_ascii_case(b"standard_conforming_strings")
        || text.eq_ignore_ascii_case(b"client_encoding")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dump through a check, whole and byte by byte (both must agree).
    fn check(dump: &str) -> Result<String, DumpRefused> {
        let run = |step: usize| {
            let mut check = DumpCheck::new();
            let mut out = Vec::new();
            for piece in dump.as_bytes().chunks(step) {
                check.feed(piece, &mut out)?;
            }
            check.finish(&mut out)?;
            Ok(String::from_utf8(out).expect("utf-8"))
        };
        let whole = run(dump.len().max(1));
        assert_eq!(whole, run(1), "fed byte by byte");
        assert_eq!(whole, run(7), "fed 7 bytes at a time");
        whole
    }

    fn refused(dump: &str) -> Reason {
        match check(dump) {
            Err(e) => e.reason,
            Ok(_) => panic!("accepted: {dump:?}"),
        }
    }

    /// What the installed pg_dump (15.20) writes, trimmed: the restrict pair, settings,
    /// functions, COPY data with NULL and bytea first columns.
    const PG_DUMP: &str = "--\n-- PostgreSQL database dump\n--\n\n\
\\restrict qv8KVilE472uXxzabrShE2kIaHOhV0Kar7ioLD4mB8zdUG6jAH7DdMfcE8wWwIB\n\n\
SET statement_timeout = 0;\n\
SET client_encoding = 'UTF8';\n\
SET standard_conforming_strings = on;\n\
SELECT pg_catalog.set_config('search_path', '', false);\n\
SET check_function_bodies = false;\n\
DROP TABLE IF EXISTS public.t;\n\
CREATE FUNCTION public.f() RETURNS integer\n    LANGUAGE plpgsql\n    AS $$ begin commit; return 1; end $$;\n\
CREATE FUNCTION public.g(a integer) RETURNS integer\n    LANGUAGE sql\n    BEGIN ATOMIC\n SELECT CASE WHEN (a > 0) THEN 1 ELSE 0 END AS \"case\";\n SELECT 2;\nEND;\n\
CREATE PROCEDURE public.p()\n    LANGUAGE plpgsql\n    AS $_$ BEGIN COMMIT; RAISE NOTICE 'x\\y'; END $_$;\n\
CREATE TABLE public.t (\n    a bytea,\n    b integer\n);\n\
COMMENT ON TABLE public.t IS 'it''s \\! not a command; COMMIT;';\n\
ALTER TABLE ONLY public.t ALTER COLUMN b SET DEFAULT nextval('public.t_b_seq'::regclass);\n\
CREATE VIEW public.v AS\n SELECT (ARRAY[1, 2])[1:2] AS s, t.a::text AS x\n   FROM public.t;\n\
COPY public.t (a, b) FROM stdin;\n\
\\\\x00ff\t1\n\
\\N\t2\n\
\\! touch /tmp/x\t3\n\
COMMIT;\t4\n\
\\.\n\
COPY public.u (a, b) FROM stdin;\n\
\\N\t1\n\
\\.\n\
/* a comment /* nested */ still */\n\
SELECT E'\\\\' || 'x';\n\
\n--\n-- PostgreSQL database dump complete\n--\n\n\
\\unrestrict qv8KVilE472uXxzabrShE2kIaHOhV0Kar7ioLD4mB8zdUG6jAH7DdMfcE8wWwIB\n\n";

    #[test]
    fn pg_dump_output_passes_without_its_restrict_lines() {
        let out = check(PG_DUMP).expect("accepted");
        assert!(!out.contains("restrict"), "{out}");
        // Everything else is forwarded unchanged.
        let expected: String = PG_DUMP
            .lines()
            .filter(|l| !l.contains("restrict "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(out, expected);
        // A dump of an older pg_dump has no restrict pair.
        let old: String = expected.clone();
        assert_eq!(check(&old).expect("accepted"), expected);
    }

    #[test]
    fn meta_commands_are_refused_wherever_psql_would_run_them() {
        for dump in [
            "\\! touch /tmp/owned\n",
            "CREATE TABLE a ();\n\\! touch /tmp/owned\nCREATE TABLE b ();\n",
            "SELECT 1; \\! touch /tmp/owned\n",
            "SELECT 1 \\g\n",
            "SELECT 'a' \\! id\n",
            "SELECT '\\'; \\! id\n-- '\n",
            "SELECT E'\\'' \\! id';\n",
            "COPY t FROM stdin;\n\\.\n\\! id\n",
            "\\copy t from '/etc/passwd'\n",
            "\\set ON_ERROR_STOP 0\n",
            "SELECT 1;\n   \\! id\n",
        ] {
            assert!(
                matches!(refused(dump), Reason::MetaCommand(_)),
                "{dump:?}: {:?}",
                refused(dump)
            );
        }
        assert_eq!(
            refused("\\! touch /tmp/owned\n"),
            Reason::MetaCommand("!".to_owned())
        );
        let e = check("SELECT 1;\n\n\\! touch /tmp/owned\n").expect_err("refused");
        assert_eq!(e.line, 3);
        assert!(e.to_string().contains("line 3"), "{e}");
        assert!(!e.to_string().contains("owned"), "no dump text: {e}");
    }

    #[test]
    fn backslashes_in_strings_comments_and_copy_data_pass() {
        for dump in [
            "SELECT '\\! id';\n",
            "SELECT $$\\! id$$, $x$ \\! $$ $x$;\n",
            "-- \\! id\n",
            "/* \\! id\n \\! */ SELECT 1;\n",
            "SELECT \"a\\b\" FROM t;\n",
            "SELECT E'\\\\';\n",
            "SELECT E'it\\'s';\n",
            "SELECT U&'d\\0061t';\n",
            "COPY t (a) FROM stdin;\n\\! id\n\\N\n\\\\x41\n\\.\n",
            "COPY t FROM stdin WITH (FORMAT csv);\n\"a\\! b\"\n\\.\n",
        ] {
            check(dump).unwrap_or_else(|e| panic!("{dump:?}: {e}"));
        }
    }

    #[test]
    fn standard_conforming_strings_off_is_followed_from_the_next_line() {
        // Off: a backslash escapes the quote, so the string goes on.
        check("SET standard_conforming_strings = off;\nSELECT '\\'; \\! id';\n").expect("off");
        // On (the default): the same line holds a meta-command.
        assert!(matches!(
            refused("SELECT '\\'; \\! id';\n"),
            Reason::MetaCommand(_)
        ));
        // The change applies from the next line only, so nothing may follow it.
        assert!(matches!(
            refused("SET standard_conforming_strings = off; SELECT 1;\n"),
            Reason::Ambiguous(_)
        ));
        for dump in [
            "SET standard_conforming_strings = DEFAULT;\n",
            "SELECT set_config('standard_conforming_strings', 'off', false);\n",
            "RESET ALL;\n",
            "SET client_encoding = 'SJIS';\n",
            "SET NAMES 'win932';\n",
            "SELECT set_config('client_encoding', 'BIG5', false);\n",
            "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings';\n",
        ] {
            assert!(
                matches!(refused(dump), Reason::Ambiguous(_)),
                "{dump:?}: {:?}",
                refused(dump)
            );
        }
        check("SET client_encoding = 'LATIN1';\nSET NAMES 'UTF8';\n").expect("safe encodings");
    }

    #[test]
    fn top_level_transaction_control_is_refused() {
        for (dump, word) in [
            (
                "CREATE TABLE a ();\nCOMMIT;\nCREATE TABLE b ();\n",
                "commit",
            ),
            ("begin;\n", "begin"),
            ("/* x */ Rollback;\n", "rollback"),
            ("-- x\n  END;\n", "end"),
            ("ABORT;\n", "abort"),
            ("START TRANSACTION;\n", "start"),
            ("SAVEPOINT s;\n", "savepoint"),
            ("RELEASE SAVEPOINT s;\n", "release"),
            ("COMMIT PREPARED 'x';\n", "commit"),
            ("SELECT 1;COMMIT;\n", "commit"),
            ("SELECT 1\n;\ncommit\n;\n", "commit"),
        ] {
            assert_eq!(refused(dump), Reason::TransactionControl(word), "{dump:?}");
        }
        assert_eq!(
            refused("PREPARE TRANSACTION 'x';\n"),
            Reason::TransactionControl("PREPARE TRANSACTION")
        );
        // Not at statement level: text, bodies, prepared statements.
        check(
            "SELECT 'COMMIT;';\nPREPARE q AS SELECT 1;\nDO $$ BEGIN COMMIT; END $$;\n\
             CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\n\
             SELECT (1); -- COMMIT;\n",
        )
        .expect("accepted");
        // psql would send these as one query, in which the server runs a COMMIT.
        assert_eq!(
            refused(
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET x.y = begin RETURN 1; COMMIT; END;\n"
            ),
            NOT_ATOMIC
        );
    }

    #[test]
    fn only_copy_from_stdin_is_accepted() {
        for dump in [
            "COPY t TO stdout;\n",
            "COPY t FROM '/etc/passwd';\n",
            "COPY t FROM PROGRAM 'id';\n",
            "COPY t FROM stdin WITH (FORMAT binary);\n\\.\n",
            "COPY BINARY t FROM stdin;\n\\.\n",
        ] {
            assert!(
                matches!(refused(dump), Reason::Copy(_)),
                "{dump:?}: {:?}",
                refused(dump)
            );
        }
        // psql would run what follows the COPY on its line after the data.
        assert_eq!(refused("COPY t FROM stdin; SELECT 1;\n\\.\n"), MUST_END);
        check("COPY t FROM stdin; -- data\n1\n\\.\n").expect("a comment after it");
        // Columns named like keywords are inside the parentheses.
        check("COPY public.t (program, \"binary\") FROM stdin;\n\\.\n").expect("columns");
        // A wide table's column list, as pg_dump writes it.
        let columns: Vec<String> = (0..1_600).map(|i| format!("c{i}")).collect();
        let wide = format!(
            "COPY public.wide ({}) FROM stdin;\n\\.\n",
            columns.join(", ")
        );
        check(&wide).expect("1,600 columns");
        let more: Vec<String> = (0..1_700).map(|i| format!("c{i}")).collect();
        let over = format!("COPY public.wide ({}) FROM stdin;\n\\.\n", more.join(", "));
        assert!(matches!(refused(&over), Reason::Copy(_)));
    }

    #[test]
    fn a_dump_must_end_outside_any_statement() {
        for dump in [
            "COPY t FROM stdin;\n1\n",
            "COPY t FROM stdin;\n",
            "SELECT 1\n",
            "SELECT 'x\n",
            "SELECT $$x\n",
            "/* x\n",
            "SELECT \"x\n",
        ] {
            assert!(
                matches!(refused(dump), Reason::Unterminated(_)),
                "{dump:?}: {:?}",
                refused(dump)
            );
        }
        check("SELECT 1;\n-- the end, without a newline").expect("a last comment");
        check("COPY t FROM stdin;\n1\n\\.").expect("a last `\\.` without a newline");
    }

    #[test]
    fn forms_psql_could_read_otherwise_are_refused() {
        for dump in [
            "SELECT 1;\0\n",
            "SELECT 'a'\n'b';\n",
            "SELECT 'a' -- x\n\n  'b';\n",
            "SELECT a$x$;\n",
            "SELECT 1e5$x$;\n",
            "SELECT foo'x';\n",
            "SELECT 1abc;\n",
            "SELECT :VERSION;\n",
            "SELECT :DBNAME;\n",
        ] {
            assert!(
                matches!(refused(dump), Reason::Ambiguous(_)),
                "{dump:?}: {:?}",
                refused(dump)
            );
        }
        check("SELECT 'a',\n'b', E'c'\n, x'0F', B'1', N'n', 1e5, 1.5e-3, $1, a::text, :lower;\n")
            .expect("accepted");
    }

    #[test]
    fn restrict_lines_must_be_pg_dumps_pair() {
        for dump in [
            "\\restrict abc\n\\restrict abc\n",
            "\\restrict abc\n\\unrestrict abd\n",
            "\\unrestrict abc\n",
            "\\restrict a-b\n",
        ] {
            assert!(
                matches!(refused(dump), Reason::Restrict(_)),
                "{dump:?}: {:?}",
                refused(dump)
            );
        }
        // Inside a statement it is a meta-command like any other.
        assert!(matches!(
            refused("SELECT 1\n\\restrict abc\n;\n"),
            Reason::MetaCommand(_)
        ));
    }
}
