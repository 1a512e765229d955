use super::*;

fn masker(secrets: &[&str]) -> Masker {
    Masker::new(secrets.iter().map(|s| ("S", *s))).expect("valid secrets")
}

fn masked(m: &Masker, text: &str) -> String {
    String::from_utf8(m.mask(text.as_bytes())).expect("utf-8")
}

/// Feed `text` in pieces split at `cuts` and return the joined output.
fn streamed(m: &Masker, text: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut s = m.stream();
    let mut out = Vec::new();
    let mut prev = 0;
    for &c in cuts {
        out.extend(s.push(&text[prev..c]));
        prev = c;
    }
    out.extend(s.push(&text[prev..]));
    out.extend(s.finish());
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn masks_plain_values_everywhere_they_appear() {
    let m = masker(&["hunter22", "s3cr3t-token"]);
    assert_eq!(
        masked(&m, "pw=hunter22 tok=s3cr3t-token again hunter22\n"),
        "pw=[MASKED] tok=[MASKED] again [MASKED]\n"
    );
}

#[test]
fn text_without_secrets_is_unchanged() {
    let m = masker(&["hunter22"]);
    let text = "hunter2 hunte r22 HUNTER22 nothing here\n";
    assert_eq!(masked(&m, text), text);
}

#[test]
fn no_secrets_means_passthrough_without_holding_back() {
    let m = Masker::new(std::iter::empty()).unwrap();
    let mut s = m.stream();
    assert_eq!(s.push(b"abc"), b"abc");
    assert!(s.finish().is_empty());
}

#[test]
fn refuses_short_secrets_counting_characters_not_bytes() {
    for short in ["", "a", "abc", "äöü"] {
        let err = Masker::new([("TOKEN", short)]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("TOKEN"), "{msg}");
        assert!(msg.contains("shorter than 4"), "{msg}");
    }
    assert!(Masker::new([("TOKEN", "äöüß")]).is_ok());
}

#[test]
fn masks_base64_at_every_alignment() {
    let secret = "correct horse battery";
    let m = masker(&[secret]);
    let b64 = base64::engine::general_purpose::STANDARD;
    for prefix in ["", "u", "us", "user:", "x:"] {
        let encoded = b64.encode(format!("{prefix}{secret}"));
        let out = masked(&m, &format!("auth: {encoded}\n"));
        assert!(out.contains("[MASKED]"), "prefix {prefix:?}: {out}");
        // What is left of the encoding carries at most the bits shared with the neighbours.
        let left = out.replace("auth: ", "").replace("[MASKED]", "");
        assert!(
            left.trim().len() <= 2 + (prefix.len() * 4).div_ceil(3) + 2,
            "{out}"
        );
    }
}

#[test]
fn masks_url_safe_base64() {
    // Bytes chosen so that the standard and URL-safe encodings differ ('+' and '/').
    let secret = "\u{fb}\u{ff}\u{fe}abc>>?";
    let m = masker(&[secret]);
    let enc = base64::engine::general_purpose::URL_SAFE.encode(secret);
    assert!(enc.contains('-') || enc.contains('_'), "{enc}");
    assert_eq!(
        masked(&m, &format!("[{enc}]")).matches("[MASKED]").count(),
        1
    );
}

#[test]
fn masks_url_encoded_forms() {
    let secret = "p@ss w/rd&x=1";
    let m = masker(&[secret]);
    for form in [
        "p%40ss%20w%2Frd%26x%3D1",
        "p%40ss%20w%2frd%26x%3d1",
        "p%40ss+w%2Frd%26x%3D1",
    ] {
        assert_eq!(
            masked(&m, &format!("?q={form}&y")),
            "?q=[MASKED]&y",
            "{form}"
        );
    }
}

#[test]
fn masks_json_escaped_forms() {
    let secret = "line1\n\"quoted\"\\back/slash é😀";
    let m = masker(&[secret]);
    let serde = serde_json::to_string(secret).unwrap();
    assert_eq!(
        masked(&m, &format!("{{\"v\":{serde}}}")),
        "{\"v\":\"[MASKED]\"}"
    );
    let python = "line1\\n\\\"quoted\\\"\\\\back/slash \\u00e9\\ud83d\\ude00";
    assert_eq!(masked(&m, &format!("\"{python}\"")), "\"[MASKED]\"");
    let upper = "line1\\n\\\"quoted\\\"\\\\back/slash \\u00E9\\uD83D\\uDE00";
    assert_eq!(masked(&m, &format!("\"{upper}\"")), "\"[MASKED]\"");
    let php = "line1\\n\\\"quoted\\\"\\\\back\\/slash é😀";
    assert_eq!(masked(&m, &format!("\"{php}\"")), "\"[MASKED]\"");
}

#[test]
fn overlapping_and_touching_secrets_become_one_mask() {
    let m = masker(&["abcdef", "defghi"]);
    assert_eq!(masked(&m, "xabcdefghiy"), "x[MASKED]y");
    assert_eq!(masked(&m, "xabcdefdefghiy"), "x[MASKED]y");
    // A secret inside another.
    let m = masker(&["abcdefgh", "cdef"]);
    assert_eq!(masked(&m, "-abcdefgh-cdef-"), "-[MASKED]-[MASKED]-");
}

#[test]
fn secret_split_at_every_offset_is_masked() {
    let secret = "tok_9f8e7d6c";
    let m = masker(&[secret]);
    let text = format!("before {secret} middle {secret}{secret} after");
    let whole = m.mask(text.as_bytes());
    assert_eq!(
        String::from_utf8(whole.clone()).unwrap(),
        "before [MASKED] middle [MASKED] after"
    );
    let bytes = text.as_bytes();
    for i in 0..=bytes.len() {
        let out = streamed(&m, bytes, &[i]);
        assert_eq!(out, whole, "split at {i}");
        for j in i..=bytes.len() {
            let out = streamed(&m, bytes, &[i, j]);
            assert_eq!(out, whole, "split at {i} and {j}");
        }
    }
}

#[test]
fn byte_by_byte_feeding_matches_one_shot_for_every_form() {
    let secret = "s3cr3t/v@lue+\"x\"";
    let m = masker(&[secret]);
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("ab{secret}"));
    let json = serde_json::to_string(secret).unwrap();
    let text = format!("{secret} {b64} {json} p%40 s3cr3t%2Fv%40lue%2B%22x%22 end");
    let bytes = text.as_bytes();
    let all: Vec<usize> = (1..bytes.len()).collect();
    let out = streamed(&m, bytes, &all);
    assert_eq!(out, m.mask(bytes));
    let out = String::from_utf8(out).unwrap();
    assert_eq!(out.matches("[MASKED]").count(), 4, "{out}");
    assert!(!out.contains("s3cr3t"), "{out}");
}

#[test]
fn held_back_prefix_is_released_when_it_does_not_complete() {
    let m = masker(&["abcdef"]);
    let mut s = m.stream();
    assert_eq!(s.push(b"xx abc"), b"xx ");
    assert_eq!(s.push(b"dX"), b"abcdX");
    assert_eq!(s.push(b"abcde"), b"");
    assert_eq!(s.finish(), b"abcde");
    // And the stream is reusable after finish.
    assert_eq!(s.push(b"abcdef!"), b"[MASKED]!");
}

#[test]
fn holds_back_no_more_than_the_longest_pattern() {
    let m = masker(&["abcdef"]);
    let mut s = m.stream();
    let out = s.push(b"aaaaaaaaaaaaaaaaaaaaabcde");
    assert_eq!(out, b"aaaaaaaaaaaaaaaaaaaa");
}

#[test]
fn a_match_starting_in_a_released_mask_is_not_leaked() {
    // "abcd" is masked and released first; "cdefgh" starts inside it and completes later.
    let m = masker(&["abcd", "cdefgh"]);
    let text = b"abcdefgh.";
    for i in 0..=text.len() {
        for j in i..=text.len() {
            assert_eq!(streamed(&m, text, &[i, j]), b"[MASKED].", "{i} {j}");
        }
    }
}

/// A small deterministic generator (xorshift) so the property test needs no extra crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_texts_and_chunkings_agree_with_one_shot_and_never_leak() {
    let secrets = ["abab", "babba", "xyzzy", "zzyx"];
    let m = masker(&secrets);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let alphabet = b"abxyz";
    for _ in 0..3000 {
        let len = rng.below(40);
        let mut text: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        if rng.below(2) == 0 {
            let s = secrets[rng.below(secrets.len())].as_bytes();
            let at = rng.below(text.len() + 1);
            text.splice(at..at, s.iter().copied());
        }
        let whole = m.mask(&text);
        for s in secrets {
            assert!(!contains(&whole, s.as_bytes()), "{:?}", text);
        }
        let mut cuts: Vec<usize> = (0..rng.below(6))
            .map(|_| rng.below(text.len() + 1))
            .collect();
        cuts.sort_unstable();
        assert_eq!(
            streamed(&m, &text, &cuts),
            whole,
            "text {:?} cuts {cuts:?}",
            String::from_utf8_lossy(&text)
        );
    }
}

#[test]
fn masks_large_chunks_quickly_enough_to_not_matter() {
    // Not a benchmark: guards against accidental quadratic behaviour on big output.
    let m = masker(&["supersecretvalue", "anothersecret"]);
    let line = b"some ordinary build output line with nothing to hide in it\n";
    let chunk: Vec<u8> = line.iter().copied().cycle().take(1 << 20).collect();
    let mut s = m.stream();
    let mut total = 0;
    for _ in 0..8 {
        total += s.push(&chunk).len();
    }
    total += s.finish().len();
    assert_eq!(total, 8 << 20);
}

/// The union of every occurrence of every pattern, found the slow and obvious way.
fn naive_intervals(patterns: &[Vec<u8>], text: &[u8]) -> Vec<(usize, usize)> {
    let mut covered = vec![false; text.len() + 1];
    for p in patterns {
        for s in 0..text.len() {
            if text[s..].starts_with(p) {
                covered[s..s + p.len()].iter_mut().for_each(|c| *c = true);
            }
        }
    }
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (i, _) in covered[..text.len()]
        .iter()
        .enumerate()
        .filter(|(_, c)| **c)
    {
        match out.last_mut() {
            Some(last) if last.1 == i => last.1 = i + 1,
            _ => out.push((i, i + 1)),
        }
    }
    out
}

#[test]
fn intervals_are_the_union_of_all_overlapping_matches() {
    let secrets = ["abab", "babba", "xyzzy", "zzyx", "aaaa"];
    let m = masker(&secrets);
    let p = m.inner.as_ref().unwrap();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let alphabet = b"abxyz";
    for _ in 0..3000 {
        let len = rng.below(60);
        let text: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        assert_eq!(
            p.intervals(&text),
            naive_intervals(&p.patterns, &text),
            "{:?}",
            String::from_utf8_lossy(&text)
        );
    }
}
