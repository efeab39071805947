//! A `pg_dump -Fc` archive's table of contents rewritten as a directory-format archive
//! (`toc.dat`) whose data files are named pipes: `pg_restore --jobs N` then reads every
//! table's rows as they are decoded from the backup, and the plain archive is never written
//! out (on a 1 GB archive that write, its flush and its deletion were most of what a
//! recovery spent beyond pg_restore itself).
//!
//! `pg_restore` starts the biggest tables first by the size of their data files; a pipe has
//! none, so among entries of equal size it goes by dump id. The rewrite renumbers the entries
//! so that dump-id order is size order — each table's data by its size, each index or
//! constraint by the size of the data it waits for, everything else after — which gives
//! pg_restore's scheduler back the order it would have chosen from real file sizes.

use std::collections::HashMap;

use super::dump_blocks::DataBlock;
use super::dump_format::{
    Entry, OFFSET_NO_DATA, SECTION_POST_DATA, TABLE_DATA, Toc, encode_int, encode_toc_with,
    parse_head,
};

/// The format byte pg_dump writes in a directory archive's `toc.dat` (read off `pg_dump -Fd`).
const FORMAT_DIRECTORY: u8 = 3;
/// Where the format byte sits in the header.
const FORMAT_AT: usize = 10;

/// One data file of the directory archive and the block of the backup it is read from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataFile {
    /// File name inside the archive directory (`ID.dat`).
    pub name: String,
    /// The table whose rows it holds, `schema.table`, for messages.
    pub table: String,
    /// The entry's data block in the custom-format archive.
    pub block: DataBlock,
}

/// A directory archive ready to be streamed.
#[derive(Debug, Clone)]
pub struct DirArchive {
    /// The contents of `toc.dat`.
    pub toc: Vec<u8>,
    /// The data files, in the order pg_restore will open them (biggest first).
    pub files: Vec<DataFile>,
    /// Bytes per integer in the archive (to read its data blocks).
    pub int_size: usize,
}

/// Why an archive cannot be streamed; the restore then writes the whole archive out instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamRefusal {
    /// Not an uncompressed custom-format archive of a version this build reads.
    #[error("the archive is not an uncompressed pg_dump -Fc of PostgreSQL 15 or 16")]
    Format,
    /// The table of contents does not end where the first data block starts.
    #[error(
        "the table of contents ends at byte {toc_end}, the first data block starts at {first_block}"
    )]
    Misplaced {
        /// Where the parsed table of contents ended.
        toc_end: usize,
        /// Where the manifest says data starts.
        first_block: u64,
    },
    /// An entry holds data other than table rows (large objects).
    #[error("entry {id} holds {desc} data, which only a written-out archive restores")]
    Unsupported {
        /// The entry.
        id: i64,
        /// Its type.
        desc: String,
    },
    /// The manifest lists no data block for an entry that has data.
    #[error("the backup's manifest lists no data block for entry {0}")]
    MissingBlock(i64),
}

/// Rewrites the header and table of contents `head` (the archive's bytes before its first
/// data block) for a streamed directory-format restore of the data in `blocks`.
pub fn rewrite(head: &[u8], blocks: &[DataBlock]) -> Result<DirArchive, StreamRefusal> {
    let (toc, used) = match parse_head(head) {
        Ok(Some(parsed)) => parsed,
        _ => return Err(StreamRefusal::Format),
    };
    let first_block = blocks.iter().map(|b| b.offset).min();
    if first_block.is_some_and(|at| at != used as u64)
        || (first_block.is_none() && used != head.len())
    {
        return Err(StreamRefusal::Misplaced {
            toc_end: used,
            first_block: first_block.unwrap_or(head.len() as u64),
        });
    }
    let by_id: HashMap<i64, DataBlock> = blocks.iter().map(|b| (b.id, *b)).collect();
    // Data entries and the size of what they load; tables by the size of their data.
    let mut data_size: HashMap<i64, u64> = HashMap::new();
    let mut table_size: HashMap<Vec<u8>, u64> = HashMap::new();
    for entry in &toc.entries {
        if entry.flag == OFFSET_NO_DATA {
            continue;
        }
        if entry.desc() != TABLE_DATA {
            return Err(StreamRefusal::Unsupported {
                id: entry.dump_id,
                desc: String::from_utf8_lossy(entry.desc()).into_owned(),
            });
        }
        let block = by_id
            .get(&entry.dump_id)
            .ok_or(StreamRefusal::MissingBlock(entry.dump_id))?;
        data_size.insert(entry.dump_id, block.length);
        table_size.insert(entry.dump_id.to_string().into_bytes(), block.length);
        if let Some(table) = entry.deps.first() {
            table_size.insert(table.clone(), block.length);
        }
    }
    let size_of = |entry: &Entry| -> u64 {
        if let Some(&size) = data_size.get(&entry.dump_id) {
            return size;
        }
        if entry.section != SECTION_POST_DATA {
            return 0;
        }
        entry
            .deps
            .iter()
            .filter_map(|d| table_size.get(d))
            .copied()
            .max()
            .unwrap_or(0)
    };
    let mut order: Vec<(u64, i64)> = toc
        .entries
        .iter()
        .map(|e| (size_of(e), e.dump_id))
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let new_id: HashMap<Vec<u8>, i64> = order
        .iter()
        .enumerate()
        .map(|(rank, &(_, old))| (old.to_string().into_bytes(), rank as i64 + 1))
        .collect();
    let mut entries = Vec::with_capacity(toc.entries.len());
    let mut names: HashMap<i64, String> = HashMap::new();
    let mut tables: HashMap<i64, String> = HashMap::new();
    for entry in &toc.entries {
        let mut entry = entry.clone();
        let old = entry.dump_id;
        entry.dump_id = new_id
            .get(old.to_string().as_bytes())
            .copied()
            .unwrap_or(old);
        // A dependency on an object not in the archive is ignored by pg_restore; dropped
        // here, it cannot collide with a renumbered entry.
        entry.deps = entry
            .deps
            .iter()
            .filter_map(|d| new_id.get(d).map(|id| id.to_string().into_bytes()))
            .collect();
        if data_size.contains_key(&old) {
            names.insert(entry.dump_id, format!("{old}.dat"));
            let text = |s: Option<&Option<Vec<u8>>>| {
                String::from_utf8_lossy(s.and_then(|v| v.as_deref()).unwrap_or_default())
                    .into_owned()
            };
            tables.insert(
                entry.dump_id,
                format!("{}.{}", text(entry.rest.get(3)), text(entry.names.get(2))),
            );
        }
        entries.push(entry);
    }
    let mut prefix = toc.prefix.clone();
    prefix[FORMAT_AT] = FORMAT_DIRECTORY;
    let dir_toc = Toc { prefix, ..toc };
    let int_size = dir_toc.int_size;
    let bytes = encode_toc_with(&dir_toc, &entries, &mut |e, out| {
        let name = names.get(&e.dump_id).map_or("", String::as_str);
        out.extend(encode_int(name.len() as i64, int_size));
        out.extend_from_slice(name.as_bytes());
    });
    let mut files: Vec<(i64, DataFile)> = entries
        .iter()
        .filter_map(|e| {
            let name = names.get(&e.dump_id)?;
            let old: i64 = name.trim_end_matches(".dat").parse().ok()?;
            Some((
                e.dump_id,
                DataFile {
                    name: name.clone(),
                    table: tables.get(&e.dump_id).cloned().unwrap_or_default(),
                    block: *by_id.get(&old)?,
                },
            ))
        })
        .collect();
    files.sort_by_key(|(id, _)| *id);
    Ok(DirArchive {
        toc: bytes,
        files: files.into_iter().map(|(_, f)| f).collect(),
        int_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::dump_blocks::BlockScanner;
    use crate::pg::dump_format::synthetic::{INT, block, entry, header};
    use crate::pg::dump_format::{OFFSET_NOT_SET, SECTION_DATA};

    /// Tables 1 (small) and 3 (big), their data 10 and 30, their keys 11 and 31, and an
    /// index 32 on table 3 that also names an object (99) not in the archive.
    fn archive(extra: &[Vec<u8>]) -> Vec<u8> {
        let copy = "COPY t (a) FROM stdin;\n";
        let named = |id: i64, desc: &str, section: i64, deps: &[i64], flag: u8| {
            entry(id, &format!("t{id}"), desc, section, copy, deps, flag)
        };
        let mut out = header(7 + extra.len() as i64, 0);
        out.extend(named(1, "TABLE", 2, &[], OFFSET_NO_DATA));
        out.extend(named(3, "TABLE", 2, &[], OFFSET_NO_DATA));
        out.extend(named(10, "TABLE DATA", SECTION_DATA, &[1], OFFSET_NOT_SET));
        out.extend(named(30, "TABLE DATA", SECTION_DATA, &[3], OFFSET_NOT_SET));
        out.extend(named(
            11,
            "CONSTRAINT",
            SECTION_POST_DATA,
            &[1],
            OFFSET_NO_DATA,
        ));
        out.extend(named(
            31,
            "CONSTRAINT",
            SECTION_POST_DATA,
            &[3],
            OFFSET_NO_DATA,
        ));
        out.extend(named(
            32,
            "INDEX",
            SECTION_POST_DATA,
            &[3, 99],
            OFFSET_NO_DATA,
        ));
        for e in extra {
            out.extend_from_slice(e);
        }
        for (id, rows) in [(10, 2), (30, 50)] {
            out.extend(block(id, (0..rows).map(|row| format!("{row}\n"))));
        }
        out
    }

    struct DirEntry {
        dump_id: i64,
        tag: String,
        deps: Vec<Vec<u8>>,
        file: String,
    }

    /// Reads a directory-format toc.dat as pg_restore does (entries' tail: a file name).
    fn read_dir_toc(bytes: &[u8]) -> (Vec<DirEntry>, usize) {
        use crate::pg::dump_format::decode_int;
        let int = |pos: &mut usize| {
            let v = decode_int(&bytes[*pos..*pos + 1 + INT]);
            *pos += 1 + INT;
            v
        };
        let string = |pos: &mut usize| -> Option<Vec<u8>> {
            let len = int(pos);
            if len < 0 {
                return None;
            }
            let s = bytes[*pos..*pos + len as usize].to_vec();
            *pos += len as usize;
            Some(s)
        };
        let mut pos = 11;
        for _ in 0..8 {
            int(&mut pos); // compression, then the creation time
        }
        for _ in 0..3 {
            string(&mut pos);
        }
        let count = int(&mut pos);
        let mut entries = Vec::new();
        let mut files = 0;
        for _ in 0..count {
            let dump_id = int(&mut pos);
            int(&mut pos);
            let names: Vec<Option<Vec<u8>>> = (0..4).map(|_| string(&mut pos)).collect();
            int(&mut pos);
            for _ in 0..8 {
                string(&mut pos);
            }
            let mut deps = Vec::new();
            while let Some(d) = string(&mut pos) {
                deps.push(d);
            }
            let file = String::from_utf8(string(&mut pos).unwrap_or_default()).unwrap();
            files += usize::from(!file.is_empty());
            entries.push(DirEntry {
                dump_id,
                tag: String::from_utf8(names[2].clone().unwrap()).unwrap(),
                deps,
                file,
            });
        }
        assert_eq!(pos, bytes.len(), "toc.dat has trailing bytes");
        (entries, files)
    }

    fn blocks_of(bytes: &[u8]) -> Vec<DataBlock> {
        let mut scanner = BlockScanner::new();
        scanner.feed(bytes);
        scanner.finish().unwrap()
    }

    #[test]
    fn rewrites_as_a_directory_archive_biggest_table_first() {
        let bytes = archive(&[]);
        let blocks = blocks_of(&bytes);
        let head = &bytes[..blocks[0].offset as usize];
        let dir = rewrite(head, &blocks).unwrap();
        let names: Vec<&str> = dir.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["30.dat", "10.dat"]);
        assert_eq!(dir.files[0].block.id, 30);
        assert_eq!(dir.files[0].table, "public.t30");
        let (toc, files) = read_dir_toc(&dir.toc);
        assert_eq!(dir.toc[FORMAT_AT], FORMAT_DIRECTORY);
        let by_tag: HashMap<String, &DirEntry> = toc.iter().map(|e| (e.tag.clone(), e)).collect();
        assert_eq!(by_tag["t30"].file, "30.dat");
        assert_eq!(by_tag["t31"].file, "");
        assert_eq!(files, 2);
        // Big table's data, then its key and index, then the small table's, then the rest.
        assert_eq!(by_tag["t30"].dump_id, 1);
        assert_eq!(by_tag["t10"].dump_id, 4);
        assert!(by_tag["t31"].dump_id < by_tag["t10"].dump_id);
        assert!(by_tag["t32"].dump_id < by_tag["t10"].dump_id);
        assert!(by_tag["t11"].dump_id > by_tag["t10"].dump_id);
        // Dependencies follow the new numbering; the one on a missing object is gone.
        let table3 = by_tag["t3"].dump_id.to_string().into_bytes();
        assert_eq!(by_tag["t30"].deps, vec![table3.clone()]);
        assert_eq!(by_tag["t32"].deps, vec![table3]);
    }

    #[test]
    fn refuses_large_objects_missing_blocks_and_compressed_archives() {
        let blobs = entry(50, "t50", "BLOBS", SECTION_DATA, "", &[], OFFSET_NOT_SET);
        let bytes = archive(&[blobs]);
        let blocks = blocks_of(&bytes);
        let head = &bytes[..blocks[0].offset as usize];
        let mut with_blob = blocks.clone();
        with_blob.push(DataBlock {
            id: 50,
            offset: bytes.len() as u64,
            length: 1,
        });
        assert!(matches!(
            rewrite(head, &with_blob),
            Err(StreamRefusal::Unsupported { id: 50, .. })
        ));
        let bytes = archive(&[]);
        let blocks = blocks_of(&bytes);
        let head = &bytes[..blocks[0].offset as usize];
        assert_eq!(
            rewrite(head, &blocks[..1]).unwrap_err(),
            StreamRefusal::MissingBlock(30)
        );
        assert!(matches!(
            rewrite(head, &blocks[1..]).unwrap_err(),
            StreamRefusal::Misplaced { .. }
        ));
        let mut compressed = head.to_vec();
        compressed[12] = 6;
        assert_eq!(
            rewrite(&compressed, &blocks).unwrap_err(),
            StreamRefusal::Format
        );
    }
}
