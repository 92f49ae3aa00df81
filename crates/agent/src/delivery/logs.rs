//! Workload output: a raw source (podman's `k8s-file` log, or the bytes a process wrote) is
//! turned into `output.log`, append-only UTF-8 text whose byte offsets are the `log_offset`s
//! of the reports. Invalid UTF-8 becomes U+FFFD and control characters other than newline,
//! carriage return and tab become `?`, so the text the control plane stores has exactly the
//! length the offsets count.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Most raw bytes converted in one call.
const MAX_PUMP: u64 = 4 * 1024 * 1024;

/// How the raw source is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// CRI lines (`<time> <stream> <F|P> <text>`), as podman's `k8s-file` driver writes.
    Cri,
    /// The bytes as the workload wrote them.
    Raw,
}

/// Converts a raw source into `output.log`, remembering how far it got in `<out>.pos`
/// (so an agent restart neither loses nor repeats output, give or take the last write).
#[derive(Debug)]
pub(crate) struct Converter {
    raw: PathBuf,
    out: PathBuf,
    pos_file: PathBuf,
    format: Format,
    pos: u64,
}

impl Converter {
    pub(crate) fn new(raw: PathBuf, out: PathBuf, format: Format) -> Converter {
        let pos_file = out.with_extension("pos");
        let pos = std::fs::read_to_string(&pos_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Converter {
            raw,
            out,
            pos_file,
            format,
            pos,
        }
    }

    /// Converts what the source gained since the last call. `last` also takes an unfinished
    /// last line (the workload has ended).
    pub(crate) fn pump(&mut self, last: bool) -> std::io::Result<()> {
        let mut f = match File::open(&self.raw) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        if len <= self.pos {
            return Ok(());
        }
        f.seek(SeekFrom::Start(self.pos))?;
        let mut buf = Vec::new();
        f.take(MAX_PUMP).read_to_end(&mut buf)?;
        let (text, used) = match self.format {
            Format::Cri => cri_text(&buf, last),
            Format::Raw => raw_text(&buf, last),
        };
        if used == 0 {
            return Ok(());
        }
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.out)?;
        out.write_all(text.as_bytes())?;
        self.pos += used as u64;
        std::fs::write(&self.pos_file, self.pos.to_string())
    }
}

/// Text of complete CRI lines in `buf`, and the bytes they used.
fn cri_text(buf: &[u8], last: bool) -> (String, usize) {
    let mut text = String::new();
    let mut used = 0;
    while used < buf.len() {
        let rest = &buf[used..];
        let (line, next) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (&rest[..i], used + i + 1),
            None if last => (rest, buf.len()),
            None => break,
        };
        // <time> <stream> <tag> <text>; a partial line (tag P) continues on the next one.
        let mut parts = line.splitn(4, |b| *b == b' ');
        let (_time, _stream) = (parts.next(), parts.next());
        let tag = parts.next().unwrap_or_default();
        let content = parts.next().unwrap_or_default();
        text.push_str(&clean(content));
        if tag != b"P" {
            text.push('\n');
        }
        used = next;
    }
    (text, used)
}

/// Text of `buf`, leaving an incomplete UTF-8 sequence at its end for the next call.
fn raw_text(buf: &[u8], last: bool) -> (String, usize) {
    let mut used = buf.len();
    if !last
        && let Err(e) = std::str::from_utf8(buf)
        && e.error_len().is_none()
    {
        used = e.valid_up_to();
    }
    (clean(&buf[..used]), used)
}

/// Lossy UTF-8 with control characters (but newline, carriage return, tab) replaced.
fn clean(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| {
            if c.is_control() && !matches!(c, '\n' | '\r' | '\t') {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// Up to `max` bytes of `path` from `offset`, cut at a character boundary, and whether that
/// reaches the end of the file. A missing file reads as empty and complete.
pub(crate) fn read_chunk(path: &Path, offset: u64, max: usize) -> (String, bool) {
    let Ok(mut f) = File::open(path) else {
        return (String::new(), true);
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len <= offset || max == 0 {
        return (String::new(), len <= offset);
    }
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return (String::new(), false);
    }
    let mut buf = Vec::new();
    if f.take(max as u64).read_to_end(&mut buf).is_err() {
        return (String::new(), false);
    }
    let text = match String::from_utf8(buf) {
        Ok(t) => t,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let mut buf = e.into_bytes();
            buf.truncate(valid);
            String::from_utf8_lossy(&buf).into_owned()
        }
    };
    let complete = offset + text.len() as u64 >= len;
    (text, complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_lines_lose_their_prefix_and_partial_lines_join() {
        let raw = b"2026-01-01T00:00:00Z stdout F hello\n2026-01-01T00:00:00Z stderr P par\n2026-01-01T00:00:00Z stderr F tial\n2026-01-01T00:00:00Z stdout F unfinished";
        let (text, used) = cri_text(raw, false);
        assert_eq!(text, "hello\npartial\n");
        assert_eq!(&raw[used..], b"2026-01-01T00:00:00Z stdout F unfinished");
        let (text, used) = cri_text(&raw[used..], true);
        assert_eq!((text.as_str(), used), ("unfinished\n", 40));
    }

    #[test]
    fn raw_bytes_keep_an_unfinished_character_and_clean_controls() {
        let (text, used) = raw_text("añ".as_bytes().split_at(2).0, false);
        assert_eq!((text.as_str(), used), ("a", 1));
        let (text, _) = raw_text(b"\x1b[1mbold\xff\n", true);
        assert_eq!(text, "?[1mbold\u{fffd}\n");
    }

    #[test]
    fn converts_and_reads_chunks_by_offset() {
        let dir = std::env::temp_dir().join(format!("nc-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (raw, out) = (dir.join("raw"), dir.join("output.log"));
        std::fs::write(&raw, "héllo\nworld\n").unwrap();
        let mut c = Converter::new(raw.clone(), out.clone(), Format::Raw);
        c.pump(false).unwrap();
        c.pump(false).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "héllo\nworld\n");
        // A restarted converter goes on where the last one stopped.
        std::fs::write(&raw, "héllo\nworld\nmore\n").unwrap();
        Converter::new(raw, out.clone(), Format::Raw)
            .pump(false)
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "héllo\nworld\nmore\n"
        );
        // 2 bytes from 0 would cut 'é' in half: only "h" is read.
        assert_eq!(read_chunk(&out, 0, 2), ("h".to_string(), false));
        assert_eq!(
            read_chunk(&out, 1, 100),
            ("éllo\nworld\nmore\n".into(), true)
        );
        assert_eq!(read_chunk(&out, 18, 100), (String::new(), true));
        assert_eq!(read_chunk(&dir.join("none"), 0, 10), (String::new(), true));
        std::fs::remove_dir_all(&dir).ok();
    }
}
