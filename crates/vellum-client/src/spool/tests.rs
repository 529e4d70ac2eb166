#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tempfile::TempDir;

use super::*;
use crate::error::FieldProblem;

/// An event whose frame length does not depend on `n` (for offset arithmetic).
fn ev(n: usize, priority: Priority) -> SpooledEvent {
    SpooledEvent {
        idempotency_key: format!("key-{n:06}"),
        priority,
        spooled_at_micros: 1_700_000_000_000_000 + n as i64,
        event: json!({
            "action": "patient.record.read",
            "n": format!("{n:06}"),
            // "high" is two bytes shorter than "normal": pad, so that both lanes' frames match.
            "note": match priority {
                Priority::High => "lorem ipsum dolor sit amet!!",
                Priority::Normal => "lorem ipsum dolor sit amet",
            },
        }),
    }
}

/// Frame length of every `ev(n, _)`.
fn frame() -> u64 {
    let a = format::encode_frame(&ev(0, Priority::Normal))
        .unwrap()
        .len() as u64;
    let b = format::encode_frame(&ev(999, Priority::High))
        .unwrap()
        .len() as u64;
    assert_eq!(a, b);
    a
}

fn config(dir: &Path, segment_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 30,
        segment_bytes,
    }
}

fn spool_dir(tmp: &TempDir) -> PathBuf {
    tmp.path().join("spool")
}

/// Everything pending in the first non-empty lane, without acknowledging.
fn peek(spool: &Spool) -> Vec<PendingRecord> {
    spool
        .next_batch(usize::MAX, u64::MAX)
        .unwrap()
        .map(|(_, records)| records)
        .unwrap_or_default()
}

/// Delivers everything (three records at a time), in delivery order.
fn drain(spool: &Spool) -> Vec<(Priority, SpooledEvent)> {
    let mut out = Vec::new();
    while let Some((lane, records)) = spool.next_batch(3, u64::MAX).unwrap() {
        assert!(!records.is_empty());
        out.extend(records.iter().map(|r| (lane, r.record.clone())));
        spool.ack(lane, records.last().unwrap().position).unwrap();
    }
    out
}

fn segments(dir: &Path, lane: Priority) -> Vec<u64> {
    recovery::list_segments(&lane_dir(dir, lane)).unwrap()
}

fn seg_path(dir: &Path, lane: Priority, segment: u64) -> PathBuf {
    fsutil::segment_path(&lane_dir(dir, lane), segment)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn quarantine_files(dir: &Path) -> Vec<PathBuf> {
    match fs::read_dir(dir.join(QUARANTINE_DIR)) {
        Ok(entries) => {
            let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
            files.sort();
            files
        }
        Err(_) => Vec::new(),
    }
}

fn rejection() -> ServerRejection {
    ServerRejection {
        status: 422,
        code: "invalid_event".into(),
        message: "actorId is required".into(),
        details: vec![FieldProblem {
            path: "/actorId".into(),
            message: "required".into(),
        }],
    }
}

#[test]
fn spool_is_send_sync_and_cheap_to_clone() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Spool>();
}

#[test]
fn append_then_reopen_returns_every_record_in_order() {
    let tmp = TempDir::new().unwrap();
    let dir = spool_dir(&tmp);
    let f = frame();
    let events: Vec<_> = (0..20).map(|n| ev(n, Priority::Normal)).collect();
    let positions: Vec<Position> = {
        let spool = Spool::open(config(&dir, 4 * f)).unwrap();
        events
            .iter()
            .map(|e| spool.append_blocking(e.clone()).unwrap())
            .collect()
    };
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert!(segments(&dir, Priority::Normal).len() >= 5);

    let spool = Spool::open(config(&dir, 4 * f)).unwrap();
    let records = peek(&spool);
    assert_eq!(records.len(), 20);
    for ((record, event), position) in records.iter().zip(&events).zip(&positions) {
        assert_eq!(&record.record, event);
        assert_eq!(&record.position, position);
        assert_eq!(record.bytes, f);
    }
    let stats = spool.stats();
    assert_eq!(stats.normal.pending_records, 20);
    assert_eq!(stats.normal.pending_bytes, 20 * f);
    assert_eq!(
        stats.normal.oldest_spooled_at_micros,
        Some(events[0].spooled_at_micros)
    );
    assert_eq!(stats.high, LaneStats::default());
    assert_eq!(stats.used_bytes, 20 * f);
    assert_eq!(stats.max_bytes, 1 << 30);

    // Limits: record count, bytes, and always at least one record.
    assert_eq!(spool.next_batch(7, u64::MAX).unwrap().unwrap().1.len(), 7);
    assert_eq!(spool.next_batch(100, 2 * f).unwrap().unwrap().1.len(), 2);
    assert_eq!(spool.next_batch(100, 1).unwrap().unwrap().1.len(), 1);
    assert_eq!(spool.next_batch(0, u64::MAX).unwrap().unwrap().1.len(), 1);
}

#[test]
fn high_lane_first_acks_advance_and_delivered_segments_are_deleted() {
    let tmp = TempDir::new().unwrap();
    let dir = spool_dir(&tmp);
    let f = frame();
    let cfg = config(&dir, 3 * f);
    let spool = Spool::open(cfg.clone()).unwrap();
    let mut highs = Vec::new();
    let mut normals = Vec::new();
    for n in 0..20 {
        let lane = if n % 4 == 1 {
            Priority::High
        } else {
            Priority::Normal
        };
        let position = spool.append_blocking(ev(n, lane)).unwrap();
        match lane {
            Priority::High => highs.push((n, position)),
            Priority::Normal => normals.push((n, position)),
        }
    }

    // High first, in order; not consumed without an ack.
    let (lane, batch) = spool.next_batch(100, u64::MAX).unwrap().unwrap();
    assert_eq!(lane, Priority::High);
    let keys: Vec<_> = batch.iter().map(|r| r.record.clone()).collect();
    let expected: Vec<_> = highs.iter().map(|&(n, _)| ev(n, Priority::High)).collect();
    assert_eq!(keys, expected);
    let (_, again) = spool.next_batch(100, u64::MAX).unwrap().unwrap();
    assert_eq!(again.len(), batch.len());
    spool.ack(Priority::High, batch[1].position).unwrap();
    let (lane, rest) = spool.next_batch(100, u64::MAX).unwrap().unwrap();
    assert_eq!(lane, Priority::High);
    assert_eq!(rest[0].record, ev(highs[2].0, Priority::High));
    spool
        .ack(Priority::High, rest.last().unwrap().position)
        .unwrap();
    assert_eq!(spool.stats().high.pending_records, 0);

    // Then normal. Ack through the 7th: every segment before its successor's is gone.
    let (lane, batch) = spool.next_batch(7, u64::MAX).unwrap().unwrap();
    assert_eq!(lane, Priority::Normal);
    assert_eq!(batch.len(), 7);
    spool.ack(Priority::Normal, batch[6].position).unwrap();
    let next = normals[7].1;
    for &(_, position) in &normals[..7] {
        let exists = seg_path(&dir, Priority::Normal, position.segment).exists();
        assert_eq!(exists, position.segment >= next.segment, "{position:?}");
    }
    // An older position is a no-op; a position that is no record is an error.
    let before = spool.stats();
    spool.ack(Priority::Normal, normals[0].1).unwrap();
    let bogus = Position {
        segment: next.segment,
        offset: next.offset + 1,
    };
    assert!(matches!(
        spool.ack(Priority::Normal, bogus),
        Err(SpoolError::Io { source, .. }) if source.kind() == io::ErrorKind::InvalidInput
    ));
    assert_eq!(spool.stats(), before);
    assert_eq!(before.normal.pending_records, normals.len() as u64 - 7);
    assert_eq!(
        before.normal.oldest_spooled_at_micros,
        Some(ev(normals[7].0, Priority::Normal).spooled_at_micros)
    );
    drop(spool);

    // After a reopen, acknowledged records stay delivered.
    let spool = Spool::open(cfg.clone()).unwrap();
    let delivered = drain(&spool);
    let expected: Vec<_> = normals[7..]
        .iter()
        .map(|&(n, _)| (Priority::Normal, ev(n, Priority::Normal)))
        .collect();
    assert_eq!(delivered, expected);
    let stats = spool.stats();
    assert_eq!(stats.used_bytes, 0);
    assert_eq!(stats.normal.pending_records, 0);
    assert_eq!(stats.normal.oldest_spooled_at_micros, None);
    assert_eq!(segments(&dir, Priority::Normal).len(), 1);
    assert_eq!(segments(&dir, Priority::High).len(), 1);
    drop(spool);
    let spool = Spool::open(cfg).unwrap();
    assert!(spool.next_batch(10, u64::MAX).unwrap().is_none());
}

#[test]
fn torn_tail_cut_in_the_middle_of_the_last_record_is_truncated() {
    let tmp = TempDir::new().unwrap();
    let dir = spool_dir(&tmp);
    let cfg = config(&dir, 1 << 20);
    let events: Vec<_> = (0..5).map(|n| ev(n, Priority::High)).collect();
    {
        let spool = Spool::open(cfg.clone()).unwrap();
        for e in &events {
            spool.append_blocking(e.clone()).unwrap();
        }
    }
    let seg = seg_path(&dir, Priority::High, 0);
    let len = fs::metadata(&seg).unwrap().len();
    let file = fs::OpenOptions::new().write(true).open(&seg).unwrap();
    file.set_len(len - 7).unwrap();
    drop(file);

    let spool = Spool::open(cfg.clone()).unwrap();
    let got: Vec<_> = peek(&spool).into_iter().map(|r| r.record).collect();
    assert_eq!(got, events[..4]);
    assert_eq!(spool.stats().quarantined_bytes, 0);
    assert_eq!(fs::metadata(&seg).unwrap().len(), 4 * frame());
    let extra = ev(100, Priority::High);
    spool.append_blocking(extra.clone()).unwrap();
    drop(spool);

    let spool = Spool::open(cfg).unwrap();
    let got: Vec<_> = peek(&spool).into_iter().map(|r| r.record).collect();
    let mut expected = events[..4].to_vec();
    expected.push(extra);
    assert_eq!(got, expected);
    assert!(quarantine_files(&dir).is_empty());
}

#[test]
fn garbage_after_the_last_record_is_truncated() {
    for garbage in [
        b"garbage bytes!".to_vec(),
        vec![0u8; 4096],
        b"VSR1\x10\x00".to_vec(),
        b"VSR1\x05\x00\x00\x00\x00\x00\x00\x00abc".to_vec(),
    ] {
        let tmp = TempDir::new().unwrap();
        let dir = spool_dir(&tmp);
        let cfg = config(&dir, 1 << 20);
        let events: Vec<_> = (0..3).map(|n| ev(n, Priority::Normal)).collect();
        {
            let spool = Spool::open(cfg.clone()).unwrap();
            for e in &events {
                spool.append_blocking(e.clone()).unwrap();
            }
        }
        let seg = seg_path(&dir, Priority::Normal, 0);
        let mut file = fs::OpenOptions::new().append(true).open(&seg).unwrap();
        file.write_all(&garbage).unwrap();
        drop(file);

        let spool = Spool::open(cfg.clone()).unwrap();
        let got: Vec<_> = peek(&spool).into_iter().map(|r| r.record).collect();
        assert_eq!(got, events, "{garbage:?}");
        assert_eq!(spool.stats().quarantined_bytes, 0);
        let extra = ev(7, Priority::Normal);
        spool.append_blocking(extra.clone()).unwrap();
        drop(spool);
        let spool = Spool::open(cfg).unwrap();
        let got: Vec<_> = peek(&spool).into_iter().map(|r| r.record).collect();
        assert_eq!(got.len(), 4);
        assert_eq!(got[3], extra);
    }
}

#[test]
fn bit_flip_in_a_sealed_segment_is_quarantined_and_later_segments_delivered() {
    let tmp = TempDir::new().unwrap();
    let dir = spool_dir(&tmp);
    let f = frame();
    let cfg = config(&dir, 3 * f);
    {
        let spool = Spool::open(cfg.clone()).unwrap();
        for n in 0..12 {
            let position = spool.append_blocking(ev(n, Priority::Normal)).unwrap();
            let expected = Position {
                segment: n as u64 / 3,
                offset: (n as u64 % 3) * f,
            };
            assert_eq!(position, expected);
        }
    }
    // Record 4 is the middle one of segment 1 (of 0..=3).
    let seg = seg_path(&dir, Priority::Normal, 1);
    let mut bytes = fs::read(&seg).unwrap();
    bytes[(f + format::HEADER_LEN + 10) as usize] ^= 0x20;
    fs::write(&seg, &bytes).unwrap();

    let spool = Spool::open(cfg.clone()).unwrap();
    let stats = spool.stats();
    assert_eq!(stats.quarantined_bytes, 2 * f);
    assert_eq!(stats.normal.pending_records, 10);
    let files = quarantine_files(&dir);
    assert_eq!(files.len(), 1);
    assert_eq!(
        files[0].file_name().unwrap().to_str().unwrap(),
        format!("normal-1-{f}.bin")
    );
    assert_eq!(fs::read(&files[0]).unwrap(), &bytes[f as usize..]);
    assert_eq!(mode(&files[0]), 0o600);
    assert_eq!(mode(&dir.join(QUARANTINE_DIR)), 0o700);

    let delivered: Vec<_> = drain(&spool).into_iter().map(|(_, e)| e).collect();
    let expected: Vec<_> = (0..12)
        .filter(|n| *n != 4 && *n != 5)
        .map(|n| ev(n, Priority::Normal))
        .collect();
    assert_eq!(delivered, expected);
    drop(spool);

    // Recovery truncated the damaged segment: nothing is quarantined twice.
    let spool = Spool::open(cfg).unwrap();
    assert_eq!(quarantine_files(&dir).len(), 1);
    assert_eq!(spool.stats().quarantined_bytes, 2 * f);
    let (stats, _) = inspect(&dir).unwrap();
    assert_eq!(stats.quarantined_bytes, 2 * f);
}

#[test]
fn damage_in_the_last_segment_before_intact_records_is_quarantined() {
    let tmp = TempDir::new().unwrap();
    let dir = spool_dir(&tmp);
    let f = frame();
    let cfg = config(&dir, 1 << 20);
    {
        let spool = Spool::open(cfg.clone()).unwrap();
        for n in 0..4 {
            spool.append_blocking(ev(n, Priority::High)).unwrap();
        }
    }
    let seg = seg_path(&dir, Priority::High, 0);
    let mut bytes = fs::read(&seg).unwrap();
    bytes[(f + 1) as usize] = b'X'; // magic of record 1
    fs::write(&seg, &bytes).unwrap();

    let spool = Spool::open(cfg.clone()).unwrap();
    assert_eq!(spool.stats().quarantined_bytes, 3 * f);
    let got: Vec<_> = peek(&spool).into_iter().map(|r| r.record).collect();
    assert_eq!(got, vec![ev(0, Priority::High)]);
    spool.append_blocking(ev(9, Priority::High)).unwrap();
    drop(spool);
    let spool = Spool::open(cfg).unwrap();
    let got: Vec<_> = peek(&spool).into_iter().map(|r| r.record).collect();
    assert_eq!(got, vec![ev(0, Priority::High), ev(9, Priority::High)]);
}

#[test]
fn full_spool_refuses_appends_until_acks_free_space() {
    let tmp = TempDir::new().unwrap();
    let dir = spool_dir(&tmp);
    let f = frame();
    let spool = Spool::open(SpoolConfig {
        dir: dir.clone(),
        max_bytes: 5 * f,
        segment_bytes: 2 * f,
    })
    .unwrap();
    let mut appended = 0;
    let err = loop {
        match spool.append_blocking(ev(appended, Priority::Normal)) {
            Ok(_) => appended += 1,
            Err(e) => break e,
        }
        assert!(appended <= 5);
    };
    assert_eq!(appended, 5);
    assert!(
        matches!(err, SpoolError::Full { max_bytes, used_bytes } if max_bytes == 5 * f && used_bytes == 5 * f),
        "{err:?}"
    );
    assert!(err.to_string().contains("max_bytes"), "{err}");
    assert_eq!(spool.stats().used_bytes, 5 * f);
    // A refused append wrote nothing.
    assert_eq!(spool.stats().normal.pending_records, 5);

    let (_, batch) = spool.next_batch(2, u64::MAX).unwrap().unwrap();
    spool.ack(Priority::Normal, batch[1].position).unwrap();
    assert_eq!(spool.stats().used_bytes, 3 * f);
    assert!(!seg_path(&dir, Priority::Normal, 0).exists());
    spool.append_blocking(ev(50, Priority::High)).unwrap();
    spool.append_blocking(ev(51, Priority::Normal)).unwrap();
    assert!(matches!(
        spool.append_blocking(ev(52, Priority::Normal)),
        Err(SpoolError::Full { .. })
    ));

    // One record larger than a segment can never fit.
    let mut huge = ev(60, Priority::Normal);
    huge.event = json!({ "blob": "x".repeat(3 * f as usize) });
    assert!(matches!(
        spool.append_blocking(huge),
        Err(SpoolError::TooLarge { max, .. }) if max == 2 * f
    ));
}

#[test]
fn second_open_is_locked_until_every_clone_is_dropped() {
    let tmp = TempDir::new().unwrap();
    let dir = spool_dir(&tmp);
    let first = Spool::open(SpoolConfig::new(&dir)).unwrap();
    let clone = first.clone();
    let err = Spool::open(SpoolConfig::new(&dir)).unwrap_err();
    assert!(
        matches!(&err, SpoolError::Locked { dir: d } if *d == dir),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&dir.join("LOCK").display().to_string()),
        "{message}"
    );
    assert!(message.contains("in use by another process"), "{message}");
    drop(first);
    assert!(matches!(
        Spool::open(SpoolConfig::new(&dir)),
        Err(SpoolError::Locked { .. })
    ));
    clone.append_blocking(ev(1, Priority::High)).unwrap();
    drop(clone);
    let reopened = Spool::open(SpoolConfig::new(&dir)).unwrap();
    assert_eq!(reopened.stats().high.pending_records, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_appends_share_fsyncs_and_all_survive_a_reopen() {
    let tmp = TempDir::new().unwrap();
    let dir = spool_dir(&tmp);
    let cfg = config(&dir, 64 * 1024);
    let spool = Spool::open(cfg.clone()).unwrap();
    let total = 2000;
    let mut tasks = Vec::with_capacity(total);
    for n in 0..total {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            let lane = if n % 4 == 0 {
                Priority::High
            } else {
                Priority::Normal
            };
            (n, spool.append(ev(n, lane)).await)
        }));
    }
    let mut positions = Vec::new();
    for task in tasks {
        let (n, result) = task.await.unwrap();
        positions.push((n, result.unwrap()));
    }
    let syncs = spool.handle.shared.syncs.load(Ordering::Relaxed);
    assert!(syncs < total as u64, "{syncs} fsyncs for {total} appends");
    assert_eq!(
        spool.stats().high.pending_records + spool.stats().normal.pending_records,
        total as u64
    );
    drop(spool);

    let spool = Spool::open(cfg).unwrap();
    let delivered = drain(&spool);
    assert_eq!(delivered.len(), total);
    let keys: HashSet<_> = delivered
        .iter()
        .map(|(_, e)| e.idempotency_key.clone())
        .collect();
    assert_eq!(keys.len(), total, "duplicates");
    // Each lane comes back in the order of the positions its appends returned.
    for lane in Priority::ALL {
        let mut by_position: Vec<_> = positions
            .iter()
            .filter(|(n, _)| (*n % 4 == 0) == (lane == Priority::High))
            .collect();
        by_position.sort_by_key(|(_, p)| *p);
        let expected: Vec<_> = by_position.iter().map(|(n, _)| ev(*n, lane)).collect();
        let got: Vec<_> = delivered
            .iter()
            .filter(|(l, _)| *l == lane)
            .map(|(_, e)| e.clone())
            .collect();
        assert_eq!(got, expected);
    }
    // High was delivered entirely before normal.
    let first_normal = delivered
        .iter()
        .position(|(l, _)| *l == Priority::Normal)
        .unwrap();
    assert!(
        delivered[first_normal..]
            .iter()
            .all(|(l, _)| *l == Priority::Normal)
    );
}

#[test]
fn dead_letters_are_written_acknowledged_listed_and_replaced() {
    let tmp = TempDir::new().unwrap();
    let dir = spool_dir(&tmp);
    let spool = Spool::open(config(&dir, 1 << 20)).unwrap();
    for n in 0..3 {
        spool.append_blocking(ev(n, Priority::Normal)).unwrap();
    }
    let batch = peek(&spool);
    spool.dead_letter(&batch[0], &rejection()).unwrap();
    let rest = peek(&spool);
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[0].record, ev(1, Priority::Normal));

    let letters = spool.dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].record, ev(0, Priority::Normal));
    assert_eq!(letters[0].rejection, rejection());
    assert!(letters[0].dead_lettered_at_micros > 1_700_000_000_000_000);
    assert_eq!(spool.stats().dead_letters, 1);
    let line = fs::read_to_string(dir.join(DEAD_LETTER_FILE)).unwrap();
    assert!(line.contains("\"deadLetteredAtMicros\""), "{line}");
    assert!(line.contains("\"idempotencyKey\":\"key-000000\""), "{line}");
    assert_eq!(mode(&dir.join(DEAD_LETTER_FILE)), 0o600);

    // inspect, without the lock, while the spool is open.
    let (stats, inspected) = inspect(&dir).unwrap();
    assert_eq!(inspected, letters);
    assert_eq!(stats.dead_letters, 1);
    assert_eq!(stats.normal.pending_records, 2);
    assert_eq!(stats.normal.pending_bytes, 2 * frame());
    assert_eq!(
        stats.normal.oldest_spooled_at_micros,
        Some(ev(1, Priority::Normal).spooled_at_micros)
    );
    assert_eq!(stats.high, LaneStats::default());
    assert_eq!(stats.used_bytes, spool.stats().used_bytes);

    // A dead letter arriving between dead_letters() and replace_dead_letters() survives.
    spool.dead_letter(&rest[0], &rejection()).unwrap();
    spool.replace_dead_letters(&[]).unwrap();
    let letters = spool.dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].record, ev(1, Priority::Normal));
    assert_eq!(spool.stats().dead_letters, 1);
    spool.replace_dead_letters(&[]).unwrap();
    assert!(spool.dead_letters().unwrap().is_empty());
    assert_eq!(spool.stats().dead_letters, 0);
    assert_eq!(mode(&dir.join(DEAD_LETTER_FILE)), 0o600);

    // replace keeps exactly what it is given.
    let keep = vec![DeadLetter {
        dead_lettered_at_micros: 5,
        rejection: rejection(),
        record: ev(42, Priority::High),
    }];
    spool.replace_dead_letters(&keep).unwrap();
    drop(spool);
    let spool = Spool::open(config(&dir, 1 << 20)).unwrap();
    assert_eq!(spool.dead_letters().unwrap(), keep);
    assert_eq!(spool.stats().dead_letters, 1);
    assert_eq!(peek(&spool).len(), 1);
}

#[test]
fn a_torn_dead_letter_line_is_dropped_on_open_and_a_bad_one_is_reported() {
    let tmp = TempDir::new().unwrap();
    let dir = spool_dir(&tmp);
    {
        let spool = Spool::open(config(&dir, 1 << 20)).unwrap();
        spool.append_blocking(ev(0, Priority::Normal)).unwrap();
        spool.append_blocking(ev(1, Priority::Normal)).unwrap();
        let batch = peek(&spool);
        spool.dead_letter(&batch[0], &rejection()).unwrap();
    }
    let path = dir.join(DEAD_LETTER_FILE);
    let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b"{\"deadLetteredAtMicros\":1,\"rej")
        .unwrap();
    drop(file);
    let (stats, letters) = inspect(&dir).unwrap();
    assert_eq!((stats.dead_letters, letters.len()), (1, 1));
    {
        let spool = Spool::open(config(&dir, 1 << 20)).unwrap();
        assert_eq!(spool.dead_letters().unwrap().len(), 1);
        assert_eq!(spool.stats().dead_letters, 1);
        assert!(fs::read(&path).unwrap().ends_with(b"\n"));
    }
    let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b"not json\n").unwrap();
    drop(file);
    let spool = Spool::open(config(&dir, 1 << 20)).unwrap();
    let err = spool.dead_letters().unwrap_err();
    assert!(
        matches!(&err, SpoolError::Corrupt { path: p, detail } if *p == path && detail.contains("line 2")),
        "{err:?}"
    );
}

#[test]
fn files_are_0600_and_directories_0700() {
    let tmp = TempDir::new().unwrap();
    let dir = spool_dir(&tmp);
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let spool = Spool::open(config(&dir, 1 << 20)).unwrap();
    let position = spool.append_blocking(ev(0, Priority::High)).unwrap();
    spool.append_blocking(ev(1, Priority::Normal)).unwrap();
    spool.ack(Priority::High, position).unwrap();
    let batch = peek(&spool);
    spool.dead_letter(&batch[0], &rejection()).unwrap();

    assert_eq!(mode(&dir), 0o700);
    for lane in Priority::ALL {
        let lane_dir = lane_dir(&dir, lane);
        assert_eq!(mode(&lane_dir), 0o700, "{lane:?}");
        assert_eq!(mode(&lane_dir.join(CURSOR_FILE)), 0o600, "{lane:?}");
        assert_eq!(mode(&seg_path(&dir, lane, 0)), 0o600, "{lane:?}");
    }
    assert_eq!(mode(&dir.join(LOCK_FILE)), 0o600);
    assert_eq!(mode(&dir.join(DEAD_LETTER_FILE)), 0o600);
}

#[test]
fn cutting_the_tail_at_every_offset_leaves_exactly_a_prefix() {
    let tmp = TempDir::new().unwrap();
    let dir = spool_dir(&tmp);
    let cfg = config(&dir, 1 << 20);
    let events: Vec<_> = (0..6).map(|n| ev(n, Priority::Normal)).collect();
    let positions: Vec<Position> = {
        let spool = Spool::open(cfg.clone()).unwrap();
        events
            .iter()
            .map(|e| spool.append_blocking(e.clone()).unwrap())
            .collect()
    };
    let seg = seg_path(&dir, Priority::Normal, 0);
    let pristine = fs::read(&seg).unwrap();
    let len = pristine.len() as u64;
    let ends: Vec<u64> = positions[1..]
        .iter()
        .map(|p| p.offset)
        .chain([len])
        .collect();
    let survivors = |cut: u64| ends.iter().filter(|&&end| end <= cut).count();

    let check = |content: &[u8], cut: u64, what: &str| {
        fs::write(&seg, content).unwrap();
        let spool = Spool::open(cfg.clone()).unwrap();
        let got: Vec<_> = peek(&spool).into_iter().map(|r| r.record).collect();
        let complete = survivors(cut);
        assert_eq!(got, events[..complete], "{what}");
        assert_eq!(spool.stats().quarantined_bytes, 0, "{what}");
        assert_eq!(
            spool.stats().normal.pending_records,
            complete as u64,
            "{what}"
        );
        let kept = if complete == 0 { 0 } else { ends[complete - 1] };
        assert_eq!(fs::metadata(&seg).unwrap().len(), kept, "{what}");
    };

    // Every cut in the last two records.
    for cut in positions[4].offset..=len {
        check(&pristine[..cut as usize], cut, &format!("cut at {cut}"));
    }
    // Random cuts followed by random junk (a crash with unordered page writeback).
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for round in 0..200 {
        let cut = rng.u64(positions[4].offset..=len);
        let mut content = pristine[..cut as usize].to_vec();
        let junk = rng.usize(1..64);
        content.extend((0..junk).map(|_| rng.u8(..)));
        check(
            &content,
            cut,
            &format!("round {round}: cut at {cut} + {junk} junk bytes"),
        );
    }
}

#[test]
fn an_unreadable_cursor_is_quarantined_and_the_lane_redelivered() {
    let tmp = TempDir::new().unwrap();
    let dir = spool_dir(&tmp);
    let cfg = config(&dir, 1 << 20);
    {
        let spool = Spool::open(cfg.clone()).unwrap();
        for n in 0..4 {
            spool.append_blocking(ev(n, Priority::Normal)).unwrap();
        }
        let batch = peek(&spool);
        spool.ack(Priority::Normal, batch[1].position).unwrap();
        assert_eq!(peek(&spool).len(), 2);
    }
    let cursor = lane_dir(&dir, Priority::Normal).join(CURSOR_FILE);
    let mut bytes = fs::read(&cursor).unwrap();
    bytes[6] ^= 1;
    fs::write(&cursor, &bytes).unwrap();

    let spool = Spool::open(cfg.clone()).unwrap();
    assert_eq!(peek(&spool).len(), 4);
    let files = quarantine_files(&dir);
    assert_eq!(files.len(), 1);
    assert!(
        files[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("normal-cursor-")
    );
    drop(spool);

    // A cursor past the end of its segment is clamped to the first record.
    fs::write(
        &cursor,
        format::encode_cursor(Position {
            segment: 0,
            offset: 1 << 40,
        }),
    )
    .unwrap();
    let spool = Spool::open(cfg.clone()).unwrap();
    assert_eq!(peek(&spool).len(), 4);
    drop(spool);
    // So is a cursor naming a segment that does not exist.
    fs::write(
        &cursor,
        format::encode_cursor(Position {
            segment: 7,
            offset: 0,
        }),
    )
    .unwrap();
    let spool = Spool::open(cfg).unwrap();
    assert_eq!(peek(&spool).len(), 4);
    assert_eq!(spool.stats().normal.pending_records, 4);
}

#[test]
fn leftover_segments_before_the_cursor_are_deleted_on_open() {
    let tmp = TempDir::new().unwrap();
    let dir = spool_dir(&tmp);
    let f = frame();
    let cfg = config(&dir, 2 * f);
    let saved = {
        let spool = Spool::open(cfg.clone()).unwrap();
        for n in 0..6 {
            spool.append_blocking(ev(n, Priority::High)).unwrap();
        }
        fs::read(seg_path(&dir, Priority::High, 0)).unwrap()
    };
    {
        let spool = Spool::open(cfg.clone()).unwrap();
        let (_, batch) = spool.next_batch(3, u64::MAX).unwrap().unwrap();
        spool.ack(Priority::High, batch[2].position).unwrap();
    }
    // As if the process died between the cursor write and the deletion.
    fs::write(seg_path(&dir, Priority::High, 0), &saved).unwrap();
    let spool = Spool::open(cfg).unwrap();
    assert!(!seg_path(&dir, Priority::High, 0).exists());
    let got: Vec<_> = drain(&spool).into_iter().map(|(_, e)| e).collect();
    assert_eq!(
        got,
        (3..6).map(|n| ev(n, Priority::High)).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn wait_for_records_resolves_on_append() {
    let tmp = TempDir::new().unwrap();
    let dir = spool_dir(&tmp);
    let spool = Spool::open(config(&dir, 1 << 20)).unwrap();
    let waiter = {
        let spool = spool.clone();
        tokio::spawn(async move { spool.wait_for_records().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());
    spool.append(ev(0, Priority::Normal)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(1), spool.wait_for_records())
        .await
        .unwrap();
}

#[test]
fn inspect_of_a_missing_directory_is_an_error_and_of_a_fresh_one_is_empty() {
    let tmp = TempDir::new().unwrap();
    let dir = spool_dir(&tmp);
    assert!(matches!(inspect(&dir), Err(SpoolError::Io { .. })));
    drop(Spool::open(SpoolConfig::new(&dir)).unwrap());
    let (stats, letters) = inspect(&dir).unwrap();
    assert_eq!(stats, SpoolStats::default());
    assert!(letters.is_empty());
}
