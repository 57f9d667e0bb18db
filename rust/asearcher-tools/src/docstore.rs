//! The document store of a local index: passages laid out back to back in `docs.bin`
//! (length-prefixed id, title, url, text) with a table of offsets in `docs.idx`, both memory-mapped.
//! Fetching a hit is a slice lookup: no block decompression, unlike a compressed store.

use crate::{Document, Result, ToolError};
use memmap2::Mmap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub const DATA_FILE: &str = "docs.bin";
pub const OFFSETS_FILE: &str = "docs.idx";

/// Appends documents in ordinal order (the n-th written document has ordinal n).
pub struct DocStoreWriter {
    dir: PathBuf,
    data: BufWriter<File>,
    offsets: Vec<u64>,
    pos: u64,
}

impl DocStoreWriter {
    pub fn create(dir: &Path) -> Result<Self> {
        let path = dir.join(DATA_FILE);
        let file = File::create(&path).map_err(|e| ToolError::io(&path, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            data: BufWriter::with_capacity(1 << 20, file),
            offsets: Vec::new(),
            pos: 0,
        })
    }

    fn put_str(&mut self, s: &str) -> std::io::Result<()> {
        let len =
            u32::try_from(s.len()).map_err(|_| std::io::Error::other("field longer than 4 GiB"))?;
        self.data.write_all(&len.to_le_bytes())?;
        self.data.write_all(s.as_bytes())?;
        self.pos += 4 + s.len() as u64;
        Ok(())
    }

    /// Appends one document; returns its ordinal.
    pub fn add(&mut self, doc: &Document) -> Result<u64> {
        let ord = self.offsets.len() as u64;
        self.offsets.push(self.pos);
        let url = doc.url.as_deref().unwrap_or("");
        [doc.id.as_str(), doc.title.as_str(), url, doc.text.as_str()]
            .into_iter()
            .try_for_each(|s| self.put_str(s))
            .map_err(|e| ToolError::io(self.dir.join(DATA_FILE), e))?;
        Ok(ord)
    }

    /// Flushes the data and writes the offsets table.
    pub fn finish(mut self) -> Result<()> {
        self.data
            .flush()
            .map_err(|e| ToolError::io(self.dir.join(DATA_FILE), e))?;
        let path = self.dir.join(OFFSETS_FILE);
        let mut table = Vec::with_capacity((self.offsets.len() + 1) * 8);
        for off in self.offsets.iter().chain(std::iter::once(&self.pos)) {
            table.extend_from_slice(&off.to_le_bytes());
        }
        std::fs::write(&path, table).map_err(|e| ToolError::io(&path, e))
    }
}

/// Read-only, memory-mapped access to the documents by ordinal.
pub struct DocStore {
    dir: PathBuf,
    data: Mmap,
    offsets: Mmap,
}

fn map(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| ToolError::io(path, e))?;
    // SAFETY: index files are written once, before the index is moved into place, and never
    // modified afterwards; a concurrent external writer is outside the contract.
    unsafe { Mmap::map(&file) }.map_err(|e| ToolError::io(path, e))
}

impl DocStore {
    pub fn open(dir: &Path) -> Result<Self> {
        let store = Self {
            dir: dir.to_path_buf(),
            data: map(&dir.join(DATA_FILE))?,
            offsets: map(&dir.join(OFFSETS_FILE))?,
        };
        if store.offsets.len() % 8 != 0 || store.offsets.len() < 8 {
            return Err(store.corrupt("offsets table has a bad size"));
        }
        Ok(store)
    }

    fn corrupt(&self, msg: &str) -> ToolError {
        ToolError::Index {
            path: self.dir.clone(),
            msg: format!("document store is damaged: {msg}; rebuild the index"),
        }
    }

    pub fn len(&self) -> u64 {
        (self.offsets.len() / 8 - 1) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn offset(&self, i: u64) -> usize {
        let at = i as usize * 8;
        u64::from_le_bytes(self.offsets[at..at + 8].try_into().expect("8 bytes")) as usize
    }

    /// The document with ordinal `ord`.
    pub fn get(&self, ord: u64) -> Result<Document> {
        if ord >= self.len() {
            return Err(self.corrupt(&format!("ordinal {ord} out of range")));
        }
        let (start, end) = (self.offset(ord), self.offset(ord + 1));
        let mut rec = self
            .data
            .get(start..end)
            .ok_or_else(|| self.corrupt("record out of range"))?;
        let mut field = || -> Result<String> {
            let len_bytes: [u8; 4] = rec
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| self.corrupt("truncated record"))?;
            let len = u32::from_le_bytes(len_bytes) as usize;
            let bytes = rec
                .get(4..4 + len)
                .ok_or_else(|| self.corrupt("truncated field"))?;
            rec = &rec[4 + len..];
            std::str::from_utf8(bytes)
                .map(str::to_owned)
                .map_err(|_| self.corrupt("invalid UTF-8"))
        };
        let (id, title, url, text) = (field()?, field()?, field()?, field()?);
        Ok(Document {
            id,
            title,
            text,
            url: Some(url).filter(|u| !u.is_empty()),
            score: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips_documents_by_ordinal() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = DocStoreWriter::create(dir.path()).unwrap();
        let docs: Vec<Document> = (0..100)
            .map(|i| Document {
                id: format!("d{i}"),
                title: format!("Tïtle {i}"),
                text: "x".repeat(i),
                url: (i % 2 == 0).then(|| format!("https://w/{i}")),
                score: None,
            })
            .collect();
        for (i, d) in docs.iter().enumerate() {
            assert_eq!(w.add(d).unwrap(), i as u64);
        }
        w.finish().unwrap();
        let s = DocStore::open(dir.path()).unwrap();
        assert_eq!(s.len(), 100);
        for (i, d) in docs.iter().enumerate() {
            assert_eq!(&s.get(i as u64).unwrap(), d);
        }
        assert!(s.get(100).unwrap_err().to_string().contains("out of range"));
    }

    #[test]
    fn damaged_store_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = DocStoreWriter::create(dir.path()).unwrap();
        w.add(&Document {
            id: "a".into(),
            text: "hello".into(),
            ..Default::default()
        })
        .unwrap();
        w.finish().unwrap();
        let data = dir.path().join(DATA_FILE);
        let bytes = std::fs::read(&data).unwrap();
        std::fs::write(&data, &bytes[..bytes.len() - 3]).unwrap();
        let err = DocStore::open(dir.path())
            .unwrap()
            .get(0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("damaged"), "{err}");
    }
}
