//! Secret masking for step output, before any byte of it leaves the runner.
//!
//! Each secret is searched for in the forms a script is likely to print it in: as is, base64
//! (standard and URL-safe alphabets, at every alignment inside a longer encoded string),
//! URL-encoded (`%2F` and `%2f`, `+` for space) and JSON-escaped (as `serde_json`, Python's
//! ASCII-only `json.dumps` and PHP's `\/` write it). Every byte covered by any match is replaced,
//! overlapping and touching matches collapsing into one [`MASK`].
//!
//! Output arrives in arbitrary chunks, so a secret may be split across two of them. A
//! [`MaskStream`] holds back the longest tail of what it has seen that could still grow into a
//! match (never more than the longest pattern minus one byte) and releases it once the next chunk
//! settles the question, or at [`MaskStream::finish`] when the step ends. Whatever way the
//! output is chunked, the masked result is the same as masking it in one piece.
//!
//! Secrets shorter than [`MIN_SECRET_LEN`] characters are refused: masking every `abc` in a log
//! would destroy the log and reveal the secret by its holes.

use std::collections::BTreeSet;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, Input, MatchKind};
use base64::Engine as _;

/// What a secret is replaced with.
pub const MASK: &[u8] = b"[MASKED]";

/// Shortest secret accepted, in characters.
pub const MIN_SECRET_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error(
        "secret {name} is {len} character(s) long; secrets shorter than {MIN_SECRET_LEN} \
         characters are refused because masking them would garble the log (use a longer value)"
    )]
    TooShort { name: String, len: usize },
    #[error("cannot build the secret matcher: {0}")]
    Build(#[from] aho_corasick::BuildError),
}

/// The compiled patterns for a set of secrets. Cheap to clone; one [`MaskStream`] per output
/// stream.
#[derive(Clone, Debug)]
pub struct Masker {
    inner: Option<Arc<Patterns>>,
}

#[derive(Debug)]
struct Patterns {
    matcher: AhoCorasick,
    patterns: Vec<Vec<u8>>,
    /// KMP failure function of each pattern, to find how much of a chunk's tail could still
    /// become a match.
    failure: Vec<Vec<usize>>,
    max_len: usize,
}

impl Masker {
    /// Compile the patterns for `secrets` (name, value). Fails if any value is too short.
    pub fn new<'a, I>(secrets: I) -> Result<Masker, MaskError>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut set = BTreeSet::new();
        for (name, value) in secrets {
            let len = value.chars().count();
            if len < MIN_SECRET_LEN {
                return Err(MaskError::TooShort {
                    name: name.to_string(),
                    len,
                });
            }
            set.extend(
                forms(value)
                    .into_iter()
                    .filter(|p| p.len() >= MIN_SECRET_LEN),
            );
        }
        if set.is_empty() {
            return Ok(Masker { inner: None });
        }
        let patterns: Vec<Vec<u8>> = set.into_iter().collect();
        // Leftmost-longest rather than overlapping search: it keeps the prefilter fast path
        // (several times the throughput on build logs); `intervals` recovers the overlaps.
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)?;
        let max_len = patterns.iter().map(Vec::len).max().unwrap_or(0);
        let failure = patterns.iter().map(|p| failure_function(p)).collect();
        Ok(Masker {
            inner: Some(Arc::new(Patterns {
                matcher,
                patterns,
                failure,
                max_len,
            })),
        })
    }

    /// A masker that masks nothing.
    pub fn none() -> Masker {
        Masker { inner: None }
    }

    /// A fresh stream state (one per output stream of a step).
    pub fn stream(&self) -> MaskStream {
        MaskStream {
            masker: self.clone(),
            buf: Vec::new(),
            done: 0,
            ends_masked: false,
        }
    }

    /// Mask a complete piece of text in one go.
    pub fn mask(&self, data: &[u8]) -> Vec<u8> {
        let mut s = self.stream();
        let mut out = s.push(data);
        out.extend(s.finish());
        out
    }
}

/// Streaming state for one output stream.
#[derive(Debug)]
pub struct MaskStream {
    masker: Masker,
    /// Text not released yet, after `done` bytes kept only as context: `buf[..done]` was
    /// already emitted as (part of) a mask, and a match starting in it must not leak its end.
    buf: Vec<u8>,
    done: usize,
    /// The output so far ends with a mask that covers `buf[..done]` exactly, so a match that
    /// starts at or before `done` continues it instead of starting a new one.
    ends_masked: bool,
}

impl MaskStream {
    /// Feed a chunk; returns what can be released now (possibly empty).
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        let Some(p) = self.masker.inner.clone() else {
            return data.to_vec();
        };
        self.buf.extend_from_slice(data);
        let cut = self.buf.len() - p.holdback(&self.buf);
        self.release(&p, cut)
    }

    /// The stream ended: release everything held back.
    pub fn finish(&mut self) -> Vec<u8> {
        let Some(p) = self.masker.inner.clone() else {
            return Vec::new();
        };
        let out = self.release(&p, self.buf.len());
        self.buf.clear();
        self.done = 0;
        self.ends_masked = false;
        out
    }

    /// Emit `buf[done..cut]` masked (and further, while a mask runs past `cut`), then drop what
    /// no future match can start in.
    fn release(&mut self, p: &Patterns, cut: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(cut.saturating_sub(self.done) + MASK.len());
        let mut pos = self.done;
        for (start, end) in p.intervals(&self.buf) {
            if end <= pos {
                continue;
            }
            if start >= cut {
                break;
            }
            if start > pos {
                out.extend_from_slice(&self.buf[pos..start]);
                self.ends_masked = false;
            }
            if !(start <= pos && self.ends_masked) {
                out.extend_from_slice(MASK);
            }
            self.ends_masked = true;
            pos = end;
        }
        if pos < cut {
            out.extend_from_slice(&self.buf[pos..cut]);
            self.ends_masked = false;
            pos = cut;
        }
        // No match can start before `cut` and still be incomplete, so only `buf[cut..]` is
        // needed from here on.
        self.buf.drain(..cut);
        self.done = pos - cut;
        out
    }
}

impl Patterns {
    /// Byte ranges covered by any match of any pattern, merged where they overlap or touch,
    /// in order.
    ///
    /// Each leftmost-longest match `[s, e)` is widened by the matches that start inside it and
    /// run past its end (found by searching again from just after each start, no further than
    /// a match starting before `e` could reach), so the union is the same as with an
    /// overlapping search.
    fn intervals(&self, text: &[u8]) -> Vec<(usize, usize)> {
        let mut merged: Vec<(usize, usize)> = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            let Some(m) = self.matcher.find(Input::new(text).range(pos..)) else {
                break;
            };
            let (start, mut end) = (m.start(), m.end());
            let mut probe = start + 1;
            while probe < end {
                let reach = (end - 1 + self.max_len).min(text.len());
                match self.matcher.find(Input::new(text).range(probe..reach)) {
                    Some(n) if n.start() < end => {
                        end = end.max(n.end());
                        probe = n.start() + 1;
                    }
                    _ => break,
                }
            }
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
            pos = end;
        }
        merged
    }

    /// Length of the longest tail of `text` that is a proper prefix of some pattern: the part
    /// that must wait for the next chunk.
    fn holdback(&self, text: &[u8]) -> usize {
        let mut best = 0;
        for (pat, fail) in self.patterns.iter().zip(&self.failure) {
            let window = text.len().min(pat.len() - 1);
            if window <= best {
                continue;
            }
            let mut k = 0;
            for &b in &text[text.len() - window..] {
                while k > 0 && pat[k] != b {
                    k = fail[k - 1];
                }
                if pat[k] == b {
                    k += 1;
                }
            }
            best = best.max(k);
        }
        best
    }
}

/// KMP prefix function: `f[i]` is the length of the longest proper prefix of `p[..=i]` that is
/// also its suffix.
fn failure_function(p: &[u8]) -> Vec<usize> {
    let mut f = vec![0; p.len()];
    let mut k = 0;
    for i in 1..p.len() {
        while k > 0 && p[i] != p[k] {
            k = f[k - 1];
        }
        if p[i] == p[k] {
            k += 1;
        }
        f[i] = k;
    }
    f
}

/// Every form of `secret` that is searched for.
fn forms(secret: &str) -> Vec<Vec<u8>> {
    let mut out = vec![secret.as_bytes().to_vec()];
    for engine in [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE,
    ] {
        for align in 0..3 {
            out.push(base64_core(engine, secret.as_bytes(), align));
        }
    }
    out.extend(url_forms(secret));
    out.extend(json_forms(secret));
    out
}

/// The base64 characters that depend only on `secret` when it starts `align` bytes into a
/// 3-byte group of a longer encoded string (characters mixing in neighbouring bytes differ
/// from one occurrence to the next, so they are left out).
fn base64_core(engine: &base64::engine::GeneralPurpose, secret: &[u8], align: usize) -> Vec<u8> {
    let mut data = vec![0u8; align];
    data.extend_from_slice(secret);
    let encoded = engine.encode(&data).into_bytes();
    let first = (8 * align).div_ceil(6);
    let last = (8 * (align + secret.len())) / 6;
    encoded[first..last.min(encoded.len())].to_vec()
}

fn url_forms(secret: &str) -> Vec<Vec<u8>> {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    // RFC 3986 unreserved characters stay as they are.
    const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let upper = utf8_percent_encode(secret, ENCODE).to_string();
    let lower = lower_hex_escapes(&upper, '%');
    // application/x-www-form-urlencoded writes a space as '+'.
    let form = upper.replace("%20", "+");
    vec![upper.into_bytes(), lower.into_bytes(), form.into_bytes()]
}

/// `%2F` -> `%2f` (the two hex digits after each `marker`).
fn lower_hex_escapes(s: &str, marker: char) -> String {
    let mut out = String::with_capacity(s.len());
    let mut digits = 0;
    for c in s.chars() {
        if c == marker {
            digits = 2;
            out.push(c);
        } else if digits > 0 {
            digits -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn json_forms(secret: &str) -> Vec<Vec<u8>> {
    let quoted = serde_json::to_string(secret).unwrap_or_default();
    let plain = quoted
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(&quoted)
        .to_string();
    // Python's json.dumps (ensure_ascii): non-ASCII as \uXXXX, surrogate pairs beyond the BMP,
    // in lower-case hex as Python writes it and upper-case as some other encoders do.
    let escape_non_ascii = |upper: bool| {
        let mut out = String::with_capacity(plain.len());
        for c in plain.chars() {
            if c.is_ascii() {
                out.push(c);
                continue;
            }
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                if upper {
                    out.push_str(&format!("\\u{u:04X}"));
                } else {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
        out
    };
    let ascii = escape_non_ascii(false);
    let ascii_upper = escape_non_ascii(true);
    // PHP's json_encode escapes '/'.
    let slashed = plain.replace('/', "\\/");
    let mut out = vec![plain.into_bytes(), slashed.into_bytes()];
    if ascii.len() != out[0].len() {
        out.push(ascii.into_bytes());
        out.push(ascii_upper.into_bytes());
    }
    out
}

// An explicit path so that `benches/mask.rs`, which includes this file by path, finds it too.
#[cfg(test)]
#[path = "mask/tests.rs"]
mod tests;
