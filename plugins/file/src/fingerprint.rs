//! How a file is recognised across renames, restarts and compression.
//!
//! `checksum` hashes the file's first line, or its first [`CHECKSUM_BYTES`] bytes if the
//! line is longer. An audit event's first 256 bytes hold its `auditID`, so two log files
//! never share one; a gzipped backup hashes its *decompressed* start and so matches the
//! file it was compressed from. A file with fewer bytes than that and no newline yet has
//! no fingerprint: it is not read until it grows.
//!
//! `device_inode` is the `(st_dev, st_ino)` pair: available at once, but fooled by inode
//! reuse and blind to compression.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};

use sha2::{Digest, Sha256};

use crate::FingerprintMode;

/// Bytes hashed at most by the `checksum` fingerprint.
pub(crate) const CHECKSUM_BYTES: usize = 256;

/// A file's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Fingerprint {
    Checksum([u8; 16]),
    DeviceInode { dev: u64, ino: u64 },
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fingerprint::Checksum(sum) => {
                f.write_str("checksum:")?;
                sum.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
            }
            Fingerprint::DeviceInode { dev, ino } => write!(f, "device_inode:{dev}:{ino}"),
        }
    }
}

impl Fingerprint {
    /// Parses what [`Display`](fmt::Display) wrote (a checkpoint record).
    pub(crate) fn parse(text: &str) -> Option<Fingerprint> {
        if let Some(hex) = text.strip_prefix("checksum:") {
            if hex.len() != 32 {
                return None;
            }
            let mut sum = [0u8; 16];
            for (i, byte) in sum.iter_mut().enumerate() {
                *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            return Some(Fingerprint::Checksum(sum));
        }
        let rest = text.strip_prefix("device_inode:")?;
        let (dev, ino) = rest.split_once(':')?;
        Some(Fingerprint::DeviceInode {
            dev: dev.parse().ok()?,
            ino: ino.parse().ok()?,
        })
    }

    /// The checksum of a file's first bytes, `None` if there are too few yet.
    pub(crate) fn of_start(start: &[u8]) -> Option<Fingerprint> {
        let end = match memchr_newline(start) {
            Some(newline) => newline + 1,
            None if start.len() >= CHECKSUM_BYTES => CHECKSUM_BYTES,
            None => return None,
        };
        let digest = Sha256::digest(&start[..end]);
        let mut sum = [0u8; 16];
        sum.copy_from_slice(&digest[..16]);
        Some(Fingerprint::Checksum(sum))
    }

    /// The fingerprint of an open plain file, `None` if it is too short yet.
    pub(crate) fn of_file(mode: FingerprintMode, file: &File) -> io::Result<Option<Fingerprint>> {
        match mode {
            FingerprintMode::DeviceInode => {
                let meta = file.metadata()?;
                Ok(Some(Fingerprint::DeviceInode {
                    dev: meta.dev(),
                    ino: meta.ino(),
                }))
            }
            FingerprintMode::Checksum => {
                let mut start = [0u8; CHECKSUM_BYTES];
                let mut filled = 0;
                while filled < CHECKSUM_BYTES {
                    match file.read_at(&mut start[filled..], filled as u64)? {
                        0 => break,
                        n => filled += n,
                    }
                }
                Ok(Fingerprint::of_start(&start[..filled]))
            }
        }
    }

    /// The fingerprint of a gzip file, from its decompressed start.
    pub(crate) fn of_gzip(mode: FingerprintMode, file: &File) -> io::Result<Option<Fingerprint>> {
        if mode == FingerprintMode::DeviceInode {
            return Fingerprint::of_file(mode, file);
        }
        let mut decoder = flate2::read::MultiGzDecoder::new(file);
        let mut start = [0u8; CHECKSUM_BYTES];
        let mut filled = 0;
        while filled < CHECKSUM_BYTES {
            match decoder.read(&mut start[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                // Still being written: not fingerprinted yet.
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(error) => return Err(error),
            }
        }
        Ok(Fingerprint::of_start(&start[..filled]))
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&byte| byte == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_line_without_newline_has_no_fingerprint_yet() {
        assert_eq!(Fingerprint::of_start(b"{\"kind\":\"Ev"), None);
        assert!(Fingerprint::of_start(b"{}\n").is_some());
        assert!(Fingerprint::of_start(&[b'x'; CHECKSUM_BYTES]).is_some());
    }

    #[test]
    fn only_the_first_line_or_256_bytes_count() {
        let a = Fingerprint::of_start(b"{\"a\":1}\nrest one");
        let b = Fingerprint::of_start(b"{\"a\":1}\nrest two");
        assert_eq!(a, b);
        let long_a = [vec![b'x'; CHECKSUM_BYTES], b"tail a".to_vec()].concat();
        let long_b = [vec![b'x'; CHECKSUM_BYTES], b"tail b".to_vec()].concat();
        assert_eq!(
            Fingerprint::of_start(&long_a),
            Fingerprint::of_start(&long_b)
        );
        assert_ne!(a, Fingerprint::of_start(b"{\"a\":2}\n"));
    }

    #[test]
    fn fingerprints_round_trip_through_their_text() {
        let sum = Fingerprint::of_start(b"{}\n").unwrap();
        let inode = Fingerprint::DeviceInode { dev: 2049, ino: 77 };
        for fingerprint in [sum, inode] {
            assert_eq!(
                Fingerprint::parse(&fingerprint.to_string()),
                Some(fingerprint)
            );
        }
        assert_eq!(Fingerprint::parse("checksum:zz"), None);
    }

    #[test]
    fn a_gzipped_copy_has_the_fingerprint_of_its_original() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let text = b"{\"auditID\":\"a\"}\n{\"auditID\":\"b\"}\n";
        let plain = dir.path().join("audit.log");
        std::fs::write(&plain, text).unwrap();
        let gz = dir.path().join("audit.log.gz");
        let mut encoder =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), Default::default());
        encoder.write_all(text).unwrap();
        encoder.finish().unwrap();
        let mode = FingerprintMode::Checksum;
        assert_eq!(
            Fingerprint::of_file(mode, &File::open(&plain).unwrap()).unwrap(),
            Fingerprint::of_gzip(mode, &File::open(&gz).unwrap()).unwrap()
        );
    }
}
