//! The disk in memory, for tests: a log segment held in a buffer, the real catalog over a
//! `BTreeMap`, and recovery's own restore and replay.
//!
//! The simulation, the `queue_ops` fuzz target and the broker's unit tests drive a broker the way
//! the storage thread does — each request's contents and ops become one frame, through the same
//! frame codec — and take checkpoints and restarts through the same catalog and recovery code as
//! the server, so a restart in a test rebuilds exactly what a real restart would, only without
//! files and fsyncs.

use super::catalog::{Catalog, CheckpointJob};
use super::codec::FrameWriter;
use super::recovery;
use super::wal::{WalPosition, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use super::StoreError;
use crate::queue::{Broker, BrokerConfig, ContentLocation, Lookup, MessageId, MessageMeta, Op};

/// The log and the catalog of one data directory, in memory.
pub struct DiskModel {
    catalog: Catalog,
    /// Segment 0's bytes, as the file would hold them (the header's 16 bytes are zeros).
    segment: Vec<u8>,
    /// The frames after the last checkpoint: the position after each, and where its payload is.
    frames: Vec<(WalPosition, std::ops::Range<usize>)>,
    /// The open frame: its writer and where its header starts.
    open: Option<(FrameWriter, usize)>,
    /// Frames written since the model was made.
    pub frame_count: u64,
}

impl Default for DiskModel {
    fn default() -> DiskModel {
        DiskModel::new()
    }
}

impl DiskModel {
    pub fn new() -> DiskModel {
        DiskModel {
            catalog: Catalog::in_memory(),
            segment: vec![0; SEGMENT_HEADER_BYTES as usize],
            frames: Vec::new(),
            open: None,
            frame_count: 0,
        }
    }

    /// Opens a frame that carries `contents` and returns where each will be.
    pub fn place(&mut self, contents: &[Vec<u8>]) -> Vec<ContentLocation> {
        assert!(self.open.is_none(), "a frame is already open");
        let header_at = self.segment.len();
        self.segment.extend_from_slice(&[0; FRAME_HEADER_BYTES as usize]);
        let payload_offset = self.segment.len() as u64;
        let mut writer = FrameWriter::begin(&mut self.segment, 0, payload_offset, contents.len());
        let locations =
            contents.iter().map(|content| writer.content(&mut self.segment, content)).collect();
        self.open = Some((writer, header_at));
        locations
    }

    /// Ends the open frame (opening one without contents if none is) with `ops`, or drops it
    /// when there are none, as the storage thread does.
    pub fn log(&mut self, ops: &[Op]) {
        if self.open.is_none() {
            if ops.is_empty() {
                return;
            }
            self.place(&[]);
        }
        let (writer, header_at) = self.open.take().expect("opened above");
        if ops.is_empty() {
            self.segment.truncate(header_at);
            return;
        }
        writer.finish(&mut self.segment, ops);
        let payload = header_at + FRAME_HEADER_BYTES as usize..self.segment.len();
        let length = u32::try_from(payload.len()).expect("small frames");
        let crc = crc32fast::hash(&self.segment[payload.clone()]);
        self.segment[header_at..header_at + 4].copy_from_slice(&length.to_le_bytes());
        self.segment[header_at + 4..header_at + 8].copy_from_slice(&crc.to_le_bytes());
        let position = WalPosition { segment_seq: 0, offset: self.segment.len() as u64 };
        self.frames.push((position, payload));
        self.frame_count += 1;
    }

    /// The bytes of a content the model holds.
    pub fn content(&self, id: MessageId, location: ContentLocation) -> Option<Vec<u8>> {
        match location {
            ContentLocation::Log { segment: 0, offset, len } => {
                let start = offset as usize;
                self.segment.get(start..start + len as usize).map(<[u8]>::to_vec)
            }
            ContentLocation::Log { .. } => None,
            ContentLocation::Catalog { .. } => self.catalog.content(id).ok().flatten(),
        }
    }

    /// Takes a checkpoint of `broker` at the end of the log, as the server does (synchronously).
    pub fn checkpoint(&mut self, broker: &mut Broker, now_ms: u64) -> Result<(), StoreError> {
        assert!(self.open.is_none(), "checkpoint with a frame open");
        let position = WalPosition { segment_seq: 0, offset: self.segment.len() as u64 };
        let job =
            CheckpointJob { snapshot: broker.snapshot(), position, now_ms, ..Default::default() };
        self.catalog.write_checkpoint(&job)?;
        broker.checkpoint_durable(job.snapshot.epoch);
        self.frames.clear();
        Ok(())
    }

    /// A broker rebuilt the way a restart rebuilds it: restored from the catalog, then every
    /// frame after the checkpoint replayed.
    pub fn recover(
        &self,
        config: BrokerConfig,
        now_ms: u64,
        seed: u64,
    ) -> Result<Broker, StoreError> {
        let (mut broker, from, _) = recovery::restore(&self.catalog, config, now_ms, seed, false)?;
        for (position, payload) in &self.frames {
            if *position <= from {
                continue;
            }
            recovery::replay_frame(
                &mut broker,
                &self.catalog,
                *position,
                &self.segment[payload.clone()],
                false,
            )?;
        }
        broker.take_notices();
        broker.take_woken();
        Ok(broker)
    }

    /// A message's record as a reader sees it: the broker's, else the catalog's.
    pub fn observe(&self, broker: &Broker, id: MessageId) -> Option<MessageMeta> {
        match broker.lookup(id) {
            Lookup::Found(meta) => Some(meta),
            Lookup::Removed => None,
            Lookup::InCatalog { .. } => self.catalog.meta(id).ok().flatten(),
        }
    }

    /// The catalog (for listings and histories).
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }
}
