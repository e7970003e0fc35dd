//! File helpers shared by readers and writers: transparent gzip, text encodings,
//! CRLF-tolerant lines, and atomic writes (temp file + rename).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::DataError;

/// Text encoding of a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    /// ISO-8859-1: every byte is the code point of the same value.
    Latin1,
}

/// Opens `path` for buffered reading, decompressing it when it ends in `.gz`.
pub fn open(path: &Path) -> Result<Box<dyn BufRead + Send>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    if path.extension().is_some_and(|e| e == "gz") {
        Ok(Box::new(BufReader::with_capacity(
            1 << 16,
            flate2::read::MultiGzDecoder::new(file),
        )))
    } else {
        Ok(Box::new(BufReader::with_capacity(1 << 16, file)))
    }
}

/// `path` if it exists, else `path.gz` if that exists.
pub fn find_maybe_gz(path: &Path) -> Option<PathBuf> {
    if path.exists() {
        return Some(path.to_owned());
    }
    let mut gz = path.as_os_str().to_owned();
    gz.push(".gz");
    let gz = PathBuf::from(gz);
    gz.exists().then_some(gz)
}

/// Reads a text file line by line (1-based line numbers), stripping `\n` / `\r\n`.
pub struct Lines {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    encoding: Encoding,
    buf: Vec<u8>,
    decoded: String,
    line_no: u64,
}

impl Lines {
    pub fn open(path: &Path, encoding: Encoding) -> Result<Self, DataError> {
        Ok(Lines {
            path: path.to_owned(),
            reader: open(path)?,
            encoding,
            buf: Vec::with_capacity(256),
            decoded: String::new(),
            line_no: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of the line returned last (0 before the first).
    pub fn line_no(&self) -> u64 {
        self.line_no
    }

    /// The next line as (line number, text), or `None` at the end of the file.
    /// A line that is not valid in the file's encoding is an [`DataError::Encoding`].
    pub fn next_line(&mut self) -> Option<Result<(u64, String), DataError>> {
        self.next_line_ref()
            .map(|line| line.map(|(no, text)| (no, text.to_owned())))
    }

    /// Like [`Lines::next_line`], but borrows the text from an internal buffer instead of
    /// allocating a `String` per line (for readers of large files).
    pub fn next_line_ref(&mut self) -> Option<Result<(u64, &str), DataError>> {
        self.buf.clear();
        match self.reader.read_until(b'\n', &mut self.buf) {
            Ok(0) => None,
            Ok(_) => {
                self.line_no += 1;
                if self.buf.last() == Some(&b'\n') {
                    self.buf.pop();
                }
                if self.buf.last() == Some(&b'\r') {
                    self.buf.pop();
                }
                match self.encoding {
                    Encoding::Latin1 => {
                        self.decoded.clear();
                        self.decoded.extend(self.buf.iter().map(|&b| b as char));
                        Some(Ok((self.line_no, self.decoded.as_str())))
                    }
                    Encoding::Utf8 => match std::str::from_utf8(&self.buf) {
                        Ok(s) => Some(Ok((self.line_no, s.strip_prefix('\u{feff}').unwrap_or(s)))),
                        Err(_) => Some(Err(self.utf8_error())),
                    },
                }
            }
            Err(e) => Some(Err(DataError::io(&self.path, e))),
        }
    }

    fn utf8_error(&self) -> DataError {
        DataError::Encoding {
            path: self.path.clone(),
            line: self.line_no,
            expected: "UTF-8",
            hint: "convert it to UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or use the reader for its original layout",
        }
    }
}

/// Reads a whole (optionally gzipped) file into bytes.
pub fn read_all(path: &Path) -> Result<Vec<u8>, DataError> {
    let mut bytes = Vec::new();
    open(path)?
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::io(path, e))?;
    Ok(bytes)
}

/// Writes a file atomically: the content goes to a temp file in the same folder, which is
/// renamed over `path` only when `write` succeeds — a failure leaves no half-written output.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<(), DataError>
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
{
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| DataError::Write {
        path: dir.clone(),
        source: e,
    })?;
    let err = |e| DataError::Write {
        path: path.to_owned(),
        source: e,
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".mirrorsim-").suffix(".tmp");
    // Temp files are private (0600) by default; the output is an ordinary file a user shares.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut tmp = builder.tempfile_in(&dir).map_err(err)?;
    {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, tmp.as_file_mut());
        write(&mut out).map_err(err)?;
        out.flush().map_err(err)?;
    }
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_strip_crlf_and_decode_latin1() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.txt");
        std::fs::write(&p, b"a\r\nb\xe9\n").unwrap();
        let mut l = Lines::open(&p, Encoding::Latin1).unwrap();
        assert_eq!(l.next_line().unwrap().unwrap(), (1, "a".to_string()));
        assert_eq!(l.next_line().unwrap().unwrap(), (2, "bé".to_string()));
        assert!(l.next_line().is_none());
        let mut l = Lines::open(&p, Encoding::Utf8).unwrap();
        l.next_line().unwrap().unwrap();
        assert!(matches!(
            l.next_line().unwrap(),
            Err(DataError::Encoding { line: 2, .. })
        ));
    }

    #[test]
    fn borrowed_lines_match_owned_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.txt");
        std::fs::write(&p, b"\xef\xbb\xbfa\r\nb\xe9\n\nc").unwrap();
        let mut l = Lines::open(&p, Encoding::Latin1).unwrap();
        assert_eq!(
            l.next_line_ref().unwrap().unwrap(),
            (1, "\u{ef}\u{bb}\u{bf}a")
        );
        assert_eq!(l.next_line_ref().unwrap().unwrap(), (2, "bé"));
        assert_eq!(l.line_no(), 2);
        let mut l = Lines::open(&p, Encoding::Utf8).unwrap();
        assert_eq!(l.next_line_ref().unwrap().unwrap(), (1, "a"));
        assert!(matches!(
            l.next_line_ref().unwrap(),
            Err(DataError::Encoding { line: 2, .. })
        ));
        assert_eq!(l.next_line_ref().unwrap().unwrap(), (3, ""));
        assert_eq!(l.next_line_ref().unwrap().unwrap(), (4, "c"));
        assert!(l.next_line_ref().is_none());
    }

    #[test]
    fn atomic_write_leaves_nothing_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        let r = write_atomic(&p, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("boom"))
        });
        assert!(r.is_err());
        assert!(!p.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_atomic(&p, |w| w.write_all(b"ok")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"ok");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
    }
}
