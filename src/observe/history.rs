//! In-memory time series with downsampling: 1 s points for 15 min, 10 s points for 6 h,
//! 1 min points for 7 days.
//!
//! Fed once a second by the control thread's sampler, never by requests. Each series is
//! three fixed rings of `f32` (a missing second is NaN, served as `null`), so memory does
//! not grow with time: 13,140 points × 4 bytes ≈ 51 KiB per series. The number of series
//! is capped at [`MAX_SERIES`] (new names beyond it are dropped and counted), so the store
//! never holds more than [`MAX_BYTES`] ≈ 8.2 MiB.

use std::collections::BTreeMap;

/// `(step seconds, points)` of each tier, finest first.
pub const TIERS: [(u64, usize); 3] = [(1, 900), (10, 2160), (60, 10_080)];
/// Most series kept (overall ones + per-backend ones).
pub const MAX_SERIES: usize = 160;
/// Points of one series across all tiers.
pub const POINTS_PER_SERIES: usize = 900 + 2160 + 10_080;
/// The memory ceiling of the store's points.
pub const MAX_BYTES: usize = MAX_SERIES * POINTS_PER_SERIES * std::mem::size_of::<f32>();

/// How a coarser point summarizes the finer ones: rates average, latency percentiles keep
/// the worst (a 1-minute p99 point is the highest 1-second p99 within it: conservative).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollup {
    /// Average of the finite finer points (rates, gauges).
    Mean,
    /// Highest of the finer points (latency percentiles, memory).
    Max,
}

struct Ring {
    step: u64,
    values: Box<[f32]>,
    /// Index (time / step) of the newest slot written; `None` before the first.
    head: Option<u64>,
    /// Accumulates the finer points of the slot being built.
    acc_sum: f64,
    acc_max: f64,
    acc_n: u32,
    acc_slot: Option<u64>,
}

impl Ring {
    fn new(step: u64, len: usize) -> Self {
        Ring {
            step,
            values: vec![f32::NAN; len].into_boxed_slice(),
            head: None,
            acc_sum: 0.0,
            acc_max: f64::NEG_INFINITY,
            acc_n: 0,
            acc_slot: None,
        }
    }

    fn put(&mut self, slot: u64, v: f32) {
        let len = self.values.len() as u64;
        match self.head {
            Some(h) if slot <= h => {
                if h - slot < len {
                    self.values[(slot % len) as usize] = v;
                }
                return;
            }
            Some(h) => {
                // Blank the slots skipped over (at most one full turn).
                for s in (h + 1)..slot.min(h + 1 + len) {
                    self.values[(s % len) as usize] = f32::NAN;
                }
            }
            None => {}
        }
        self.values[(slot % len) as usize] = v;
        self.head = Some(slot);
    }

    /// Adds a finer point at unix time `t`; writes this ring's point when its slot closes.
    fn accumulate(&mut self, t: u64, v: f64, rollup: Rollup) {
        let slot = t / self.step;
        if self.acc_slot.is_some_and(|s| s != slot) {
            self.flush(rollup);
        }
        self.acc_slot = Some(slot);
        if v.is_finite() {
            self.acc_sum += v;
            self.acc_max = self.acc_max.max(v);
            self.acc_n += 1;
        }
    }

    fn flush(&mut self, rollup: Rollup) {
        if let Some(slot) = self.acc_slot.take() {
            let v = if self.acc_n == 0 {
                f32::NAN
            } else {
                match rollup {
                    Rollup::Mean => (self.acc_sum / self.acc_n as f64) as f32,
                    Rollup::Max => self.acc_max as f32,
                }
            };
            self.put(slot, v);
        }
        self.acc_sum = 0.0;
        self.acc_max = f64::NEG_INFINITY;
        self.acc_n = 0;
    }

    /// Points of the last `range` seconds up to `now`, oldest first.
    fn read(&self, now: u64, range: u64) -> Vec<(u64, Option<f64>)> {
        let len = self.values.len() as u64;
        let last = now / self.step;
        let n = (range / self.step).clamp(1, len);
        let first = last.saturating_sub(n - 1);
        let Some(head) = self.head else {
            return (first..=last)
                .map(|slot| (slot * self.step, None))
                .collect();
        };
        (first..=last)
            .map(|slot| {
                let v = if slot <= head && head - slot < len {
                    let v = self.values[(slot % len) as usize];
                    v.is_finite().then_some(v as f64)
                } else {
                    None
                };
                (slot * self.step, v)
            })
            .collect()
    }
}

struct Series {
    rollup: Rollup,
    rings: [Ring; 3],
}

impl Series {
    fn new(rollup: Rollup) -> Self {
        Series {
            rollup,
            rings: TIERS.map(|(step, len)| Ring::new(step, len)),
        }
    }

    fn push(&mut self, t: u64, v: f64) {
        self.rings[0].put(t, if v.is_finite() { v as f32 } else { f32::NAN });
        self.rings[1].accumulate(t, v, self.rollup);
        // The minute tier is fed from the same 1-second points (a mean of means of
        // equal-sized groups is the same mean; a max of maxes the same max).
        self.rings[2].accumulate(t, v, self.rollup);
    }
}

/// A query's answer.
#[derive(Debug, serde::Serialize)]
pub struct Points {
    /// The series name queried.
    pub metric: String,
    /// Step of the tier that answered: 1, 10 or 60 seconds.
    pub step_seconds: u64,
    /// Range covered, in seconds: the one asked for, capped at what the tier holds.
    pub range_seconds: u64,
    /// `[unix_seconds, value or null]`, oldest first.
    pub points: Vec<(u64, Option<f64>)>,
}

/// The store: one three-tier series per name, at most [`MAX_SERIES`]. Lives in a mutex in
/// the `Observer`; pushed by the sampler, read by the admin history endpoints.
#[derive(Default)]
pub struct History {
    series: BTreeMap<String, Series>,
    /// Pushes refused because the series cap was reached.
    pub dropped: u64,
}

impl History {
    /// An empty store (no series, nothing dropped).
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `v` for `name` at unix second `t`. A series is created on first use, unless
    /// [`MAX_SERIES`] exist already.
    pub fn push(&mut self, name: &str, rollup: Rollup, t: u64, v: f64) {
        if let Some(s) = self.series.get_mut(name) {
            s.push(t, v);
            return;
        }
        if self.series.len() >= MAX_SERIES {
            self.dropped += 1;
            return;
        }
        let mut s = Series::new(rollup);
        s.push(t, v);
        self.series.insert(name.to_string(), s);
    }

    /// The last `range` seconds of `name` up to `now`, from the finest tier that covers
    /// the range. `None` if there is no such series.
    pub fn query(&self, name: &str, now: u64, range: u64) -> Option<Points> {
        let s = self.series.get(name)?;
        let tier = TIERS
            .iter()
            .position(|(step, len)| range <= step * *len as u64)
            .unwrap_or(TIERS.len() - 1);
        let ring = &s.rings[tier];
        Some(Points {
            metric: name.to_string(),
            step_seconds: ring.step,
            range_seconds: range.min(ring.step * ring.values.len() as u64),
            points: ring.read(now, range),
        })
    }

    /// Names of the series held, in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.series.keys().map(|k| k.as_str())
    }

    /// Series held (at most [`MAX_SERIES`]).
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// True when no series has been recorded.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Bytes held by points (the part that scales; map overhead is a few KiB).
    pub fn memory_bytes(&self) -> usize {
        self.series
            .values()
            .map(|s| {
                s.rings
                    .iter()
                    .map(|r| r.values.len() * std::mem::size_of::<f32>())
                    .sum::<usize>()
            })
            .sum()
    }
}

// ---- persistence -------------------------------------------------------------------
//
// The store is written to `runtime_dir/history.bin` (through `private_fs`: mode 0600,
// temporary file + rename) every minute and at a graceful stop or upgrade, and read at
// start, so a restart or `drover -u` keeps the charts. After `-u` the new process merges
// the file the old one wrote at its exit into what it recorded meanwhile. The format is
// a small fixed binary layout (magic, version, then per series its name, rollup and the
// three rings as they are in memory), so the file can never outgrow the memory ceiling:
// at most [`MAX_FILE_BYTES`].

/// File name in `runtime_dir`.
pub const FILE: &str = "history.bin";
const MAGIC: &[u8; 4] = b"DRVH";
const VERSION: u32 = 1;
/// The largest file a full store writes (points plus per-series overhead), and so the
/// most ever read back.
pub const MAX_FILE_BYTES: u64 = (MAX_BYTES + MAX_SERIES * 512) as u64;

/// Why a history file was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum HistoryFileError {
    /// The file could not be read: absent, an I/O error, or refused by `private_fs` (a
    /// link, wrong owner, open to others, larger than [`MAX_FILE_BYTES`]).
    #[error("{0}")]
    File(#[from] crate::private_fs::PrivateFsError),
    /// The bytes are not a history file this build can decode.
    #[error("not a history file of this version, or cut short")]
    Format,
}

struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], HistoryFileError> {
        if self.b.len() < n {
            return Err(HistoryFileError::Format);
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, HistoryFileError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, HistoryFileError> {
        Ok(u32::from_le_bytes(
            self.take(4)?
                .try_into()
                .map_err(|_| HistoryFileError::Format)?,
        ))
    }
    fn u64(&mut self) -> Result<u64, HistoryFileError> {
        Ok(u64::from_le_bytes(
            self.take(8)?
                .try_into()
                .map_err(|_| HistoryFileError::Format)?,
        ))
    }
    fn f64(&mut self) -> Result<f64, HistoryFileError> {
        Ok(f64::from_bits(self.u64()?))
    }
    fn opt(&mut self) -> Result<Option<u64>, HistoryFileError> {
        let flag = self.u8()?;
        let v = self.u64()?;
        Ok((flag == 1).then_some(v))
    }
}

fn put_opt(out: &mut Vec<u8>, v: Option<u64>) {
    out.push(v.is_some() as u8);
    out.extend_from_slice(&v.unwrap_or(0).to_le_bytes());
}

impl Ring {
    fn encode(&self, out: &mut Vec<u8>) {
        put_opt(out, self.head);
        put_opt(out, self.acc_slot);
        out.extend_from_slice(&self.acc_sum.to_bits().to_le_bytes());
        out.extend_from_slice(&self.acc_max.to_bits().to_le_bytes());
        out.extend_from_slice(&self.acc_n.to_le_bytes());
        for v in self.values.iter() {
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
    }

    fn decode(r: &mut Reader<'_>, step: u64, len: usize) -> Result<Ring, HistoryFileError> {
        let mut ring = Ring::new(step, len);
        ring.head = r.opt()?;
        ring.acc_slot = r.opt()?;
        ring.acc_sum = r.f64()?;
        ring.acc_max = r.f64()?;
        ring.acc_n = r.u32()?;
        let raw = r.take(len * 4)?;
        for (v, b) in ring.values.iter_mut().zip(raw.chunks_exact(4)) {
            *v = f32::from_bits(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        }
        Ok(ring)
    }

    /// Fills this ring's missing points from `other` (same step and length) where both
    /// cover the slot.
    fn fill_from(&mut self, other: &Ring) {
        let (Some(oh), len) = (other.head, self.values.len() as u64) else {
            return;
        };
        let Some(h) = self.head else {
            self.values.copy_from_slice(&other.values);
            self.head = other.head;
            return;
        };
        let lo = h.saturating_sub(len - 1).max(oh.saturating_sub(len - 1));
        for slot in lo..=h.min(oh) {
            let i = (slot % len) as usize;
            if !self.values[i].is_finite() && other.values[i].is_finite() {
                self.values[i] = other.values[i];
            }
        }
    }
}

impl History {
    /// The whole store in the file format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.memory_bytes() + 64 * self.series.len() + 12);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.series.len() as u32).to_le_bytes());
        for (name, s) in &self.series {
            let n = name.as_bytes();
            out.extend_from_slice(&(n.len().min(255) as u32).to_le_bytes());
            out.extend_from_slice(&n[..n.len().min(255)]);
            out.push(matches!(s.rollup, Rollup::Max) as u8);
            for r in &s.rings {
                r.encode(&mut out);
            }
        }
        out
    }

    /// A store from the file format.
    pub fn decode(bytes: &[u8]) -> Result<History, HistoryFileError> {
        let mut r = Reader { b: bytes };
        if r.take(4)? != MAGIC || r.u32()? != VERSION {
            return Err(HistoryFileError::Format);
        }
        let count = r.u32()? as usize;
        if count > MAX_SERIES {
            return Err(HistoryFileError::Format);
        }
        let mut h = History::new();
        for _ in 0..count {
            let len = r.u32()? as usize;
            if len > 255 {
                return Err(HistoryFileError::Format);
            }
            let name = std::str::from_utf8(r.take(len)?)
                .map_err(|_| HistoryFileError::Format)?
                .to_string();
            let rollup = if r.u8()? == 1 {
                Rollup::Max
            } else {
                Rollup::Mean
            };
            let mut rings = Vec::with_capacity(3);
            for (step, len) in TIERS {
                rings.push(Ring::decode(&mut r, step, len)?);
            }
            let rings: [Ring; 3] = rings.try_into().map_err(|_| HistoryFileError::Format)?;
            h.series.insert(name, Series { rollup, rings });
        }
        Ok(h)
    }

    /// Adds what `other` holds and this store lacks: whole series (up to the cap), and
    /// points missing here in series both have.
    pub fn merge(&mut self, other: History) {
        for (name, theirs) in other.series {
            let room = self.series.len() < MAX_SERIES;
            match self.series.get_mut(&name) {
                Some(ours) => {
                    for (a, b) in ours.rings.iter_mut().zip(theirs.rings.iter()) {
                        a.fill_from(b);
                    }
                }
                None if room => {
                    self.series.insert(name, theirs);
                }
                None => self.dropped += 1,
            }
        }
    }

    /// Writes the store to `path` (private file, atomic replace).
    pub fn save(&self, path: &std::path::Path) -> Result<(), HistoryFileError> {
        crate::private_fs::write_private(path, &self.encode())?;
        Ok(())
    }

    /// Reads a store written by [`History::save`].
    pub fn load(path: &std::path::Path) -> Result<History, HistoryFileError> {
        let bytes = crate::private_fs::read_private(
            path,
            MAX_FILE_BYTES,
            crate::private_fs::Links::Refuse,
        )?;
        History::decode(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_format_round_trips_and_merges_missing_points() {
        let mut h = History::new();
        let t0 = 1_700_000_040;
        for i in 0..130 {
            h.push("rps", Rollup::Mean, t0 + i, i as f64);
            h.push("p99", Rollup::Max, t0 + i, 0.5);
        }
        let bytes = h.encode();
        let back = History::decode(&bytes).unwrap();
        for (name, range) in [("rps", 120), ("p99", 3600), ("rps", 86_400)] {
            assert_eq!(
                back.query(name, t0 + 129, range).unwrap().points,
                h.query(name, t0 + 129, range).unwrap().points
            );
        }
        // The file of a full store stays under its stated cap.
        let mut full = History::new();
        for b in 0..MAX_SERIES {
            full.push(&format!("backend_rps/{b:0>200}"), Rollup::Mean, t0, 1.0);
        }
        assert!(full.encode().len() as u64 <= MAX_FILE_BYTES);
        // A new process recorded seconds 200..210; the old one's file had 0..130.
        let mut newer = History::new();
        for i in 200..210 {
            newer.push("rps", Rollup::Mean, t0 + i, 1000.0);
        }
        newer.merge(back);
        let p = newer.query("rps", t0 + 209, 300).unwrap().points;
        let known: Vec<f64> = p.iter().filter_map(|(_, v)| *v).collect();
        assert_eq!(known.len(), 140, "both processes' points");
        assert!(
            newer.query("p99", t0 + 209, 300).is_some(),
            "series only the file had"
        );
        assert!(matches!(
            History::decode(b"DRVH\x02\0\0\0"),
            Err(HistoryFileError::Format)
        ));
        assert!(matches!(
            History::decode(&bytes[..bytes.len() - 1]),
            Err(HistoryFileError::Format)
        ));
    }

    #[test]
    fn one_second_points_come_back_in_order_with_gaps_as_null() {
        let mut h = History::new();
        let t0 = 1_700_000_000;
        for i in 0..10 {
            if i != 4 {
                h.push("rps", Rollup::Mean, t0 + i, i as f64);
            }
        }
        let p = h.query("rps", t0 + 9, 10).unwrap();
        assert_eq!(p.step_seconds, 1);
        assert_eq!(p.points.len(), 10);
        assert_eq!(p.points[0], (t0, Some(0.0)));
        assert_eq!(p.points[4], (t0 + 4, None));
        assert_eq!(p.points[9], (t0 + 9, Some(9.0)));
    }

    #[test]
    fn coarser_tiers_downsample_by_mean_or_max() {
        let mut h = History::new();
        let t0 = 1_700_000_040; // a multiple of 60
        assert_eq!(t0 % 60, 0);
        for i in 0..130 {
            h.push("rps", Rollup::Mean, t0 + i, (i % 10) as f64);
            h.push("p99", Rollup::Max, t0 + i, (i % 10) as f64);
        }
        let p = h.query("rps", t0 + 129, 3600).unwrap();
        assert_eq!(p.step_seconds, 10);
        // Slots flush when the next one starts: [t0, t0+10) .. [t0+110, t0+120) closed.
        let closed: Vec<_> = p.points.iter().filter_map(|(_, v)| *v).collect();
        assert_eq!(closed.len(), 12);
        assert!(closed.iter().all(|v| (*v - 4.5).abs() < 1e-6), "{closed:?}");
        let p = h.query("p99", t0 + 129, 3600).unwrap();
        assert!(p.points.iter().filter_map(|(_, v)| *v).all(|v| v == 9.0));
        let p = h.query("rps", t0 + 129, 24 * 3600).unwrap();
        assert_eq!(p.step_seconds, 60);
        let closed: Vec<_> = p.points.iter().filter_map(|(_, v)| *v).collect();
        assert_eq!(closed, vec![4.5, 4.5]);
    }

    #[test]
    fn old_points_fall_out_of_each_ring() {
        let mut h = History::new();
        let t0 = 1_700_000_000;
        h.push("x", Rollup::Mean, t0, 1.0);
        // 16 minutes later the 1-second tier no longer has it.
        h.push("x", Rollup::Mean, t0 + 960, 2.0);
        let p = h.query("x", t0 + 960, 900).unwrap();
        assert_eq!(p.points.iter().filter(|(_, v)| v.is_some()).count(), 1);
        assert_eq!(p.points.last().unwrap().1, Some(2.0));
        // A jump of more than a full turn blanks everything without looping for long.
        h.push("x", Rollup::Mean, t0 + 100 * 24 * 3600, 3.0);
        let p = h.query("x", t0 + 100 * 24 * 3600, 900).unwrap();
        assert_eq!(p.points.iter().filter(|(_, v)| v.is_some()).count(), 1);
    }

    #[test]
    fn flooding_with_series_stays_under_the_memory_ceiling() {
        let mut h = History::new();
        let t0 = 1_700_000_000;
        for t in 0..3 {
            for b in 0..5_000 {
                h.push(&format!("backend_rps/w{b}"), Rollup::Mean, t0 + t, 1.0);
            }
        }
        assert_eq!(h.len(), MAX_SERIES);
        assert_eq!(h.dropped, 3 * (5_000 - MAX_SERIES as u64));
        assert!(h.memory_bytes() <= MAX_BYTES);
        assert_eq!(h.memory_bytes(), MAX_BYTES);
        const { assert!(MAX_BYTES < 9 * 1024 * 1024) };
        // A week of 1-second pushes into one series still holds fixed memory.
        let mut one = History::new();
        for t in 0..(7 * 24 * 3600) {
            one.push("rps", Rollup::Mean, t0 + t, 1.0);
        }
        assert_eq!(one.memory_bytes(), POINTS_PER_SERIES * 4);
        let week = one
            .query("rps", t0 + 7 * 24 * 3600 - 1, 7 * 24 * 3600)
            .unwrap();
        assert_eq!(week.step_seconds, 60);
        assert_eq!(week.points.len(), 10_080);
        assert!(week
            .points
            .iter()
            .rev()
            .skip(1)
            .all(|(_, v)| *v == Some(1.0)));
    }
}
