//! Content digests: parsing `sha256:<hex>`, and a reader that hashes and counts what flows
//! through it so a blob is checked against its descriptor while it is being unpacked.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("invalid digest {0:?}: expected sha256:<64 hex digits>")]
    Invalid(String),
    #[error("blob {expected} is corrupt: its content hashes to {actual}")]
    Mismatch { expected: String, actual: String },
    #[error("blob {digest} is {actual} bytes, its descriptor says {expected}")]
    Size {
        digest: String,
        expected: u64,
        actual: u64,
    },
}

/// A validated content digest. Only sha256 is accepted: it is what every registry and the
/// OCI spec's "registered algorithms" require; sha512 images are vanishingly rare.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, VerifyError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| VerifyError::Invalid(s.to_string()))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(VerifyError::Invalid(s.to_string()));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    pub fn of(data: &[u8]) -> Digest {
        Digest {
            hex: hex::encode(Sha256::digest(data)),
        }
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// A name safe for a file or directory: `sha256-<hex>`.
    pub fn file_name(&self) -> String {
        format!("sha256-{}", self.hex)
    }

    /// The first 12 hex digits, as `docker images` shows them.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// Why a verified read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Verify(VerifyError),
    #[error("cannot read blob: {0}")]
    Io(io::Error),
}

/// Check `data` against a descriptor's digest and size.
pub fn check(data: &[u8], digest: &Digest, size: Option<u64>) -> Result<(), VerifyError> {
    if let Some(expected) = size {
        if data.len() as u64 != expected {
            return Err(VerifyError::Size {
                digest: digest.to_string(),
                expected,
                actual: data.len() as u64,
            });
        }
    }
    let actual = Digest::of(data);
    if &actual != digest {
        return Err(VerifyError::Mismatch {
            expected: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

/// Hashes and counts everything read through it. Reading past the expected size fails at
/// once, so a hostile registry cannot fill the disk with an endless blob.
#[derive(Debug)]
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    expected: Digest,
    size: Option<u64>,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Digest, size: Option<u64>) -> Self {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            read: 0,
            expected,
            size,
        }
    }

    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Read whatever the consumer left (tar end blocks, compression trailers), then compare.
    /// A read error after every expected byte arrived is judged by the bytes themselves, so a
    /// corrupt blob is reported as corrupt rather than as whatever choked on it first.
    pub fn finish(mut self) -> Result<(), ReadError> {
        match io::copy(&mut self, &mut io::sink()) {
            Ok(_) => self.verdict().map_err(ReadError::Verify),
            Err(e) => {
                if e.get_ref().is_some_and(|i| i.is::<VerifyError>()) {
                    if let Some(Ok(v)) = e.into_inner().map(|b| b.downcast::<VerifyError>()) {
                        return Err(ReadError::Verify(*v));
                    }
                    unreachable!("checked to be a VerifyError");
                }
                if self.size == Some(self.read) {
                    self.verdict().map_err(ReadError::Verify)?;
                }
                Err(ReadError::Io(e))
            }
        }
    }

    fn verdict(&mut self) -> Result<(), VerifyError> {
        if let Some(expected) = self.size {
            if self.read != expected {
                return Err(VerifyError::Size {
                    digest: self.expected.to_string(),
                    expected,
                    actual: self.read,
                });
            }
        }
        let actual = Digest {
            hex: hex::encode(std::mem::take(&mut self.hasher).finalize()),
        };
        if actual != self.expected {
            return Err(VerifyError::Mismatch {
                expected: self.expected.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if let Some(expected) = self.size {
            if self.read > expected {
                return Err(io::Error::other(VerifyError::Size {
                    digest: self.expected.to_string(),
                    expected,
                    actual: self.read,
                }));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_rejects() {
        assert_eq!(Digest::parse(EMPTY).unwrap().to_string(), EMPTY);
        assert!(Digest::parse("sha512:abcd").is_err());
        assert!(Digest::parse("sha256:XYZ").is_err());
        assert!(Digest::parse(&EMPTY.to_uppercase()).is_err());
    }

    #[test]
    fn reader_verifies_digest_and_size() {
        let d = Digest::of(b"hello");
        let mut ok = VerifyingReader::new(&b"hello"[..], d.clone(), Some(5));
        let mut buf = [0u8; 2];
        ok.read_exact(&mut buf).unwrap();
        assert!(ok.finish().is_ok());

        let bad = VerifyingReader::new(&b"hellO"[..], d.clone(), Some(5));
        assert!(matches!(
            bad.finish(),
            Err(ReadError::Verify(VerifyError::Mismatch { .. }))
        ));

        let long = VerifyingReader::new(&b"hello!"[..], d.clone(), Some(5));
        assert!(matches!(
            long.finish(),
            Err(ReadError::Verify(VerifyError::Size { .. }))
        ));
        assert!(check(b"hello", &d, Some(5)).is_ok());
        assert!(check(b"hello", &d, Some(4)).is_err());
    }
}
