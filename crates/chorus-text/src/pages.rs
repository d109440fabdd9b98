//! A sequence stored in pages, so that an edit writes what it changed: the chunk
//! pages it touched, the last page of the delete log and of its agent's stamps, and
//! a small root (the header), not the whole text.
//!
//! ```text
//! header      = format:u8=2 next:counts next_deletes:counts pages:varint
//!               chunks: n × page-id  deletes: n  stamps: n × (agent count)
//! counts      = n × (agent seq)                        all varints
//! chunk page  = agents runs                            (as in format 1)
//! delete page = agents deletes                         DELETES_PER_PAGE entries
//! stamp page  = stamps                                 STAMPS_PER_PAGE of one agent
//! ```
//!
//! Chunk pages are numbered from 1 as chunks are first saved (chunks split but are
//! never removed, so a page once written is never orphaned); the delete log's page
//! `k` is `DELETE_PAGES + k`, agent number `a`'s (in the header's order) stamps page
//! `k` is `STAMP_PAGES + a << 32 + k`. The delete log and stamps only grow at their
//! end (a merge may rewrite an agent's stamps), so a save writes from the first
//! page holding a changed entry. The header is the root: what is in it, and the
//! chunk pages in order, is the whole sequence (`Sequence::load`).
//!
//! Invariant: after [`Sequence::save`], every chunk has a page and is clean, and
//! the clean prefixes cover every entry: a save with no edit since writes only the
//! header.

use crate::codec::{
    Agents, corrupt, count, number, read_deletes, read_runs, read_stamps, write_deletes,
    write_runs, write_stamps,
};
use crate::{CHUNK_RUNS_MAX, Chunk, Content, Corrupt, Run, Sequence, varint};

const PAGED_FORMAT: u8 = 2;
/// Bytes of items a chunk holds, about, before a save splits it (a page stays a few
/// KiB whatever was pasted at once).
const PAGE_BYTES_MAX: u64 = 4096;
/// Items of a run shown, at most, once saved (a long paste is split into runs).
const RUN_ITEMS_MAX: u64 = 1024;
const DELETES_PER_PAGE: usize = 256;
const STAMPS_PER_PAGE: usize = 256;
const DELETE_PAGES: u64 = 1 << 62;
const STAMP_PAGES: u64 = 2 << 62;

/// What a save writes: the header (the root, kept by the caller with the document),
/// and the pages that changed since the last save.
#[derive(Debug, Default)]
pub struct Saved {
    pub header: Vec<u8>,
    pub pages: Vec<(u64, Vec<u8>)>,
    /// Never saved before (or loaded): pages of another sequence stored under the
    /// same name must be dropped first.
    pub fresh: bool,
}

/// What the last save wrote (see [`Sequence::save`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct Saving {
    /// Chunk pages numbered so far.
    pages: u64,
    /// Leading entries of the delete log unchanged since the last save.
    deletes_clean: usize,
    /// Per agent of `stamps` (in its order), leading stamps unchanged since.
    stamps_clean: Vec<usize>,
    saved: bool,
}

impl Saving {
    pub(crate) fn changed_delete(&mut self, at: usize) {
        self.deletes_clean = self.deletes_clean.min(at);
    }

    pub(crate) fn changed_stamp(&mut self, agent: usize, at: usize) {
        if let Some(clean) = self.stamps_clean.get_mut(agent) {
            *clean = (*clean).min(at);
        }
    }
}

fn write_counts(out: &mut Vec<u8>, counts: &[(u64, u64)]) {
    varint::write(out, counts.len() as u64);
    for &(agent, n) in counts {
        varint::write(out, agent);
        varint::write(out, n);
    }
}

fn read_counts(input: &mut &[u8]) -> Result<Vec<(u64, u64)>, Corrupt> {
    (0..count(input, "count of agents")?)
        .map(|_| Ok((number(input, "agent")?, number(input, "count")?)))
        .collect()
}

impl<C: Content> Sequence<C> {
    /// Saves the sequence: the header, and the pages changed since the last save
    /// (all of them the first time).
    pub fn save(&mut self) -> Saved {
        self.pace();
        let fresh = !self.saving.saved;
        let mut pages = Vec::new();
        for chunk in &mut self.chunks {
            if chunk.page == 0 {
                self.saving.pages += 1;
                chunk.page = self.saving.pages;
                chunk.dirty = true;
            }
            if chunk.dirty {
                let runs: Vec<&Run<C>> = chunk.runs.iter().collect();
                let agents = Agents::of(runs.iter().flat_map(|r| r.ids()).map(|id| id.agent));
                let mut page = Vec::new();
                agents.write(&mut page);
                write_runs(&mut page, &agents, &runs);
                pages.push((chunk.page, page));
                chunk.dirty = false;
            }
        }
        // From the page of the first changed entry (none when all are clean).
        let first = |clean: usize, len: usize, per_page: usize| match clean < len {
            true => clean / per_page,
            false => usize::MAX,
        };
        let from = first(
            self.saving.deletes_clean,
            self.deletes.len(),
            DELETES_PER_PAGE,
        );
        for (k, entries) in self.deletes.chunks(DELETES_PER_PAGE).enumerate().skip(from) {
            let agents = Agents::of(entries.iter().flat_map(|d| [d.by.agent, d.target.agent]));
            let mut page = Vec::new();
            agents.write(&mut page);
            write_deletes(&mut page, &agents, entries);
            pages.push((DELETE_PAGES + k as u64, page));
        }
        self.saving.deletes_clean = self.deletes.len();
        self.saving.stamps_clean.resize(self.stamps.len(), 0);
        for (a, (_, list)) in self.stamps.iter().enumerate() {
            let from = first(self.saving.stamps_clean[a], list.len(), STAMPS_PER_PAGE);
            for (k, stamps) in list.chunks(STAMPS_PER_PAGE).enumerate().skip(from) {
                let mut page = Vec::new();
                write_stamps(&mut page, stamps);
                pages.push((STAMP_PAGES + ((a as u64) << 32) + k as u64, page));
            }
            self.saving.stamps_clean[a] = list.len();
        }
        self.saving.saved = true;
        let mut header = vec![PAGED_FORMAT];
        write_counts(&mut header, &self.next);
        write_counts(&mut header, &self.next_deletes);
        varint::write(&mut header, self.saving.pages);
        varint::write(&mut header, self.chunks.len() as u64);
        for chunk in &self.chunks {
            varint::write(&mut header, chunk.page);
        }
        varint::write(&mut header, self.deletes.len() as u64);
        varint::write(&mut header, self.stamps.len() as u64);
        for (agent, list) in &self.stamps {
            varint::write(&mut header, *agent);
            varint::write(&mut header, list.len() as u64);
        }
        Saved {
            header,
            pages,
            fresh,
        }
    }

    /// Splits long runs shown and big chunks among those changed since the last
    /// save, so that each page stays small: an edit then rewrites a few KiB, however
    /// the text came (a paste of a megabyte is one run until then). The items and
    /// their order stay; only how they are held in runs and chunks changes.
    fn pace(&mut self) {
        let mut c = 0;
        let mut moved = false;
        while c < self.chunks.len() {
            let chunk = &mut self.chunks[c];
            if !chunk.dirty {
                c += 1;
                continue;
            }
            if chunk
                .runs
                .iter()
                .any(|r| !r.deleted && r.len > RUN_ITEMS_MAX)
            {
                let runs = std::mem::take(&mut chunk.runs);
                chunk.runs = runs
                    .into_iter()
                    .flat_map(|run| match !run.deleted && run.len > RUN_ITEMS_MAX {
                        true => run.pieces(RUN_ITEMS_MAX),
                        false => vec![run],
                    })
                    .collect();
            }
            let big = chunk.bytes > PAGE_BYTES_MAX || chunk.runs.len() > CHUNK_RUNS_MAX;
            if big && chunk.runs.len() > 1 {
                let half = chunk.runs.len() / 2;
                let mut second = Chunk {
                    runs: chunk.runs.split_off(half),
                    ..Chunk::default()
                };
                second.recount();
                chunk.recount();
                self.chunks.insert(c + 1, second);
                moved = true;
                continue; // The first half may still be big.
            }
            c += 1;
        }
        if moved {
            // Chunks moved along: the hints of where to start a search start over.
            self.touched(0);
            self.found.set(0);
        }
    }

    /// The sequence a save's `header` is the root of, its pages read by `page`
    /// (`None`: missing, which makes the sequence corrupt).
    pub fn load(
        header: &[u8],
        mut page: impl FnMut(u64) -> Option<Vec<u8>>,
    ) -> Result<Sequence<C>, Corrupt> {
        let mut input = header;
        let mut page = |id: u64| page(id).ok_or_else(|| Corrupt(format!("page {id} missing")));
        if input.first() != Some(&PAGED_FORMAT) {
            return Err(corrupt("not the header of a paged sequence"));
        }
        input = &input[1..];
        let next = read_counts(&mut input)?;
        let next_deletes = read_counts(&mut input)?;
        let numbered = number(&mut input, "pages")?;
        let mut text = Sequence::new();
        for _ in 0..count(&mut input, "count of chunks")? {
            let id = number(&mut input, "page")?;
            if id == 0 || id > numbered || text.chunks.iter().any(|c| c.page == id) {
                return Err(corrupt("chunk page out of range or repeated"));
            }
            let bytes = page(id)?;
            let mut body = bytes.as_slice();
            let agents = Agents::read(&mut body)?;
            let runs = read_runs(&mut body, &agents)?;
            if !body.is_empty() || runs.is_empty() {
                return Err(corrupt(
                    "a chunk page of no run or with bytes after its runs",
                ));
            }
            text.push_chunk(runs, id);
            text.chunks.last_mut().expect("pushed").dirty = false;
        }
        let deletes = usize::try_from(number(&mut input, "count of deletes")?)
            .map_err(|_| corrupt("count of deletes"))?;
        for k in 0..deletes.div_ceil(DELETES_PER_PAGE) {
            let bytes = page(DELETE_PAGES + k as u64)?;
            let mut body = bytes.as_slice();
            let agents = Agents::read(&mut body)?;
            let entries = read_deletes(&mut body, &agents)?;
            let whole = (k + 1) * DELETES_PER_PAGE <= deletes;
            let wanted = if whole {
                DELETES_PER_PAGE
            } else {
                deletes % DELETES_PER_PAGE
            };
            if !body.is_empty() || entries.len() != wanted {
                return Err(corrupt("a delete page of another length"));
            }
            entries.into_iter().for_each(|e| text.push_deleted(e));
        }
        for a in 0..count(&mut input, "count of stamped agents")? {
            let agent = number(&mut input, "agent")?;
            let stamps = usize::try_from(number(&mut input, "count of stamps")?)
                .map_err(|_| corrupt("count of stamps"))?;
            let mut list = Vec::with_capacity(stamps.min(1 << 20));
            for k in 0..stamps.div_ceil(STAMPS_PER_PAGE) {
                let bytes = page(STAMP_PAGES + (a << 32) + k as u64)?;
                let mut body = bytes.as_slice();
                let part = read_stamps(&mut body)?;
                if !body.is_empty() || part.is_empty() {
                    return Err(corrupt("a stamp page of no stamp or with bytes after them"));
                }
                list.extend(part);
            }
            if list.len() != stamps || list.windows(2).any(|w| w[0].counter >= w[1].counter) {
                return Err(corrupt("stamps of another count or out of order"));
            }
            text.stamps.push((agent, list));
        }
        if !input.is_empty() {
            return Err(corrupt("bytes after the header"));
        }
        // The counts are those the pages hold (a header naming others is corrupt).
        let sorted = |mut counts: Vec<(u64, u64)>| {
            counts.retain(|(_, n)| *n > 0);
            counts.sort_unstable();
            counts
        };
        if sorted(next) != sorted(text.next.clone())
            || sorted(next_deletes) != sorted(text.next_deletes.clone())
        {
            return Err(corrupt("the header's counts differ from its pages'"));
        }
        text.saving = Saving {
            pages: numbered,
            deletes_clean: text.deletes.len(),
            stamps_clean: text.stamps.iter().map(|(_, l)| l.len()).collect(),
            saved: true,
        };
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use crate::Text;
    use std::collections::HashMap;

    /// Pages as a store would keep them.
    #[derive(Default)]
    struct Store {
        pages: HashMap<u64, Vec<u8>>,
        header: Vec<u8>,
    }

    impl Store {
        /// Saves `text`; answers how many bytes the save wrote.
        fn save(&mut self, text: &mut Text) -> usize {
            let saved = text.save();
            if saved.fresh {
                self.pages.clear();
            }
            let written: usize =
                saved.header.len() + saved.pages.iter().map(|(_, p)| p.len()).sum::<usize>();
            self.pages.extend(saved.pages);
            self.header = saved.header;
            written
        }

        fn load(&self) -> Text {
            Text::load(&self.header, |id| self.pages.get(&id).cloned()).unwrap()
        }
    }

    /// A long text typed then edited in place: each save after an edit writes a few
    /// pages, not the text, and loading gives back the text, its version and what
    /// it does next.
    #[test]
    fn an_edit_saves_a_few_pages_and_loads_back() {
        let mut text = Text::new();
        let mut store = Store::default();
        // 2,000 lines typed by two agents, word by word, some words deleted.
        for line in 0..2000u64 {
            let agent = 1 + line % 2;
            let at = text.len();
            text.insert(agent, at, format!("line {line} of the text, "));
            if line % 7 == 0 {
                text.delete(agent, at, 5);
            }
            text.stamp(agent, line + 1);
        }
        let whole = store.save(&mut text);
        assert!(whole > 40_000, "{whole} bytes");
        for k in 0..20u64 {
            let pos = text.len() / 3 + k * 97;
            text.insert(3, pos, "x");
            text.delete(3, pos + 5, 1);
            text.stamp(3, 5000 + k);
            let written = store.save(&mut text);
            assert!(
                written < whole / 10,
                "an edit wrote {written} of {whole} bytes"
            );
            let loaded = store.load();
            assert_eq!(loaded.to_string(), text.to_string());
            assert_eq!(loaded.version(), text.version());
            assert_eq!(loaded.encode(), text.encode());
        }
        let mut loaded = store.load();
        let op = text.insert(4, 10, "!");
        loaded.apply(&op).unwrap();
        assert_eq!(loaded.to_string(), text.to_string());
        store.save(&mut text);
        let again = store.save(&mut text);
        assert_eq!(again, store.header.len(), "no edit: only the header");
    }

    /// A long paste (one run until saved) is saved in small pages, and an edit in
    /// its middle rewrites one or two of them.
    #[test]
    fn a_long_paste_is_saved_in_small_pages() {
        let mut text = Text::new();
        text.insert(1, 0, "0123456789".repeat(100_000));
        text.stamp(1, 1);
        let mut store = Store::default();
        let whole = store.save(&mut text);
        assert!(store.pages.values().all(|p| p.len() < 6_000), "small pages");
        text.insert(2, 500_000, "x");
        text.stamp(2, 1);
        let written = store.save(&mut text);
        assert!(written < 20_000, "an edit wrote {written} of {whole} bytes");
        assert_eq!(store.load().to_string(), text.to_string());
    }

    /// A header whose pages are missing, or any damaged page, is refused, never
    /// panicked on.
    #[test]
    fn missing_or_damaged_pages_are_refused() {
        let mut text = Text::new();
        for k in 0..300u64 {
            text.insert(1, k, "ab");
            text.delete(1, k, 1);
            text.stamp(1, k + 1);
        }
        let saved = text.save();
        let pages: HashMap<u64, Vec<u8>> = saved.pages.into_iter().collect();
        for missing in pages.keys() {
            let without = Text::load(&saved.header, |id| {
                (id != *missing).then(|| pages[&id].clone())
            });
            assert!(without.is_err(), "page {missing} missing");
        }
        for (&id, page) in &pages {
            for at in 0..page.len() {
                let mut damaged = page.clone();
                damaged[at] ^= 0x5a;
                let _ = Text::load(&saved.header, |p| {
                    Some(if p == id {
                        damaged.clone()
                    } else {
                        pages[&p].clone()
                    })
                });
            }
        }
        for cut in 0..saved.header.len() {
            assert!(Text::load(&saved.header[..cut], |p| pages.get(&p).cloned()).is_err());
        }
    }
}
