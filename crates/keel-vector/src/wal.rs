//! The write-ahead log: every acknowledged write, in order, until the next
//! snapshot covers it.
//!
//! A record is `length (u32 LE) | crc32 (u32 LE) | body`, the body being an
//! operation with its sequence number. Vectors are raw `f32`s and payloads
//! JSON. A crash can leave a torn record at the end; replay stops there and
//! cuts it off, which loses nothing acknowledged: a write is acknowledged
//! only after its record is written (and synced, when `fsync` is on).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Result, VectorError};
use crate::point::Point;

const UPSERT: u8 = 1;
const DELETE: u8 = 2;

/// One logged operation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    /// Points stored (vectors already normalized for cosine).
    Upsert(Vec<Point>),
    /// Ids removed.
    Delete(Vec<String>),
}

/// An open log.
#[derive(Debug)]
pub(crate) struct Wal {
    path: PathBuf,
    file: File,
    fsync: bool,
    bytes: u64,
}

impl Wal {
    /// Opens (or creates) the log at `path`, returning it with the records
    /// found, in order, as `(seq, op)`.
    pub fn open(path: &Path, dimension: usize, fsync: bool) -> Result<(Wal, Vec<(u64, Op)>)> {
        let mut data = Vec::new();
        if path.exists() {
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(VectorError::io(format!("reading {}", path.display())))?;
        }
        let (records, valid) = decode_all(&data, dimension);
        if valid < data.len() {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = data.len() - valid,
                "Cut a torn record off the end of the write-ahead log"
            );
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(VectorError::io(format!("opening {}", path.display())))?;
        file.set_len(valid as u64)
            .map_err(VectorError::io(format!("truncating {}", path.display())))?;
        let wal = Wal {
            path: path.to_owned(),
            file,
            fsync,
            bytes: valid as u64,
        };
        Ok((wal, records))
    }

    /// Appends one operation; when this returns, it survives a crash of
    /// the process (and of the machine, with `fsync`).
    pub fn append(&mut self, seq: u64, op: &Op) -> Result<()> {
        let body = encode(seq, op);
        let mut record = Vec::with_capacity(body.len() + 8);
        record.extend_from_slice(&(body.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        record.extend_from_slice(&body);
        let context = || format!("appending to {}", self.path.display());
        self.file
            .write_all(&record)
            .map_err(VectorError::io(context()))?;
        if self.fsync {
            self.file.sync_data().map_err(VectorError::io(context()))?;
        }
        self.bytes += record.len() as u64;
        Ok(())
    }

    /// Bytes in the log.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Empties the log once a snapshot covers it.
    pub fn clear(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .and_then(|()| self.file.sync_all())
            .map_err(VectorError::io(format!(
                "truncating {}",
                self.path.display()
            )))?;
        self.bytes = 0;
        Ok(())
    }
}

fn encode(seq: u64, op: &Op) -> Vec<u8> {
    let mut out = Vec::new();
    match op {
        Op::Upsert(points) => {
            out.push(UPSERT);
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&(points.len() as u32).to_le_bytes());
            for p in points {
                put_bytes(&mut out, p.id.as_bytes());
                let payload = serde_json::to_vec(&p.payload).unwrap_or_else(|_| b"{}".to_vec());
                put_bytes(&mut out, &payload);
                p.vector
                    .iter()
                    .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            }
        }
        Op::Delete(ids) => {
            out.push(DELETE);
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
            ids.iter().for_each(|id| put_bytes(&mut out, id.as_bytes()));
        }
    }
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Decodes records until the data ends or one is torn; returns them with
/// the length of the valid prefix.
fn decode_all(data: &[u8], dimension: usize) -> (Vec<(u64, Op)>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while data.len() - at >= 8 {
        let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        let crc = u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]);
        let Some(body) = data.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        let Some(record) = decode(body, dimension) else {
            break;
        };
        records.push(record);
        at += 8 + len;
    }
    (records, at)
}

/// A cursor over a record body.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, at: 0 }
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.data.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(out)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }

    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    pub fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }

    pub fn payload(&mut self) -> Option<Map<String, Value>> {
        serde_json::from_slice(self.bytes()?).ok()
    }

    pub fn floats(&mut self, n: usize) -> Option<Vec<f32>> {
        let raw = self.take(n.checked_mul(4)?)?;
        Some(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }
}

fn decode(body: &[u8], dimension: usize) -> Option<(u64, Op)> {
    let mut r = Reader::new(body);
    let kind = r.u8()?;
    let seq = r.u64()?;
    let count = r.u32()? as usize;
    let op = match kind {
        UPSERT => {
            let mut points = Vec::with_capacity(count.min(1 << 16));
            for _ in 0..count {
                let id = r.string()?;
                let payload = r.payload()?;
                let vector = r.floats(dimension)?;
                points.push(Point {
                    id,
                    vector,
                    payload,
                });
            }
            Op::Upsert(points)
        }
        DELETE => Op::Delete((0..count).map(|_| r.string()).collect::<Option<_>>()?),
        _ => return None,
    };
    Some((seq, op))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(id: &str) -> Point {
        let mut payload = Map::new();
        payload.insert("lang".into(), Value::from("en"));
        Point {
            id: id.into(),
            vector: vec![0.5, -1.25],
            payload,
        }
    }

    #[test]
    fn replays_what_was_appended_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let (mut wal, found) = Wal::open(&path, 2, false).unwrap();
        assert!(found.is_empty());
        wal.append(1, &Op::Upsert(vec![point("a"), point("b")]))
            .unwrap();
        wal.append(2, &Op::Delete(vec!["a".into()])).unwrap();
        drop(wal);

        // A crash mid-append leaves half a record.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);

        let (mut wal, found) = Wal::open(&path, 2, false).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0], (1, Op::Upsert(vec![point("a"), point("b")])));
        assert_eq!(found[1], (2, Op::Delete(vec!["a".into()])));
        wal.append(3, &Op::Delete(vec!["b".into()])).unwrap();
        drop(wal);
        let (_, found) = Wal::open(&path, 2, false).unwrap();
        assert_eq!(found.len(), 3, "appends after a cut tail are readable");
    }

    #[test]
    fn a_corrupt_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let (mut wal, _) = Wal::open(&path, 2, false).unwrap();
        wal.append(1, &Op::Delete(vec!["x".into()])).unwrap();
        drop(wal);
        let mut data = std::fs::read(&path).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        std::fs::write(&path, data).unwrap();
        let (_, found) = Wal::open(&path, 2, false).unwrap();
        assert!(found.is_empty());
    }
}
