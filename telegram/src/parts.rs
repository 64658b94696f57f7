//! Planning `upload.getFile` requests: which parts to ask for, and how many at once.
//!
//! Pure arithmetic, no I/O. Telegram's documentation allows, in precise mode, any `offset` and
//! `limit` that are multiples of 1 KiB with `limit` ≤ 1 MiB, as long as the request does not
//! cross a 1 MiB boundary; but third parties report LIMIT_INVALID for a limit that does not
//! divide 1 MiB (as non-precise mode requires). The plan therefore asks only for whole 1 MiB
//! parts aligned on 1 MiB, a resumed download included: its first part starts at the resume
//! offset rounded down to 1 MiB, and its first `skip` bytes, already on disk, are dropped
//! (less than 1 MiB fetched twice, once per resume).

/// Telegram's largest part, and the alignment no request may cross.
pub const PART_SIZE: u64 = 1024 * 1024;

/// The granularity of offsets and limits in precise mode.
pub const ALIGNMENT: u64 = 1024;

/// The most parts one file keeps in flight, whatever `threads` says: 32 parts is 32 MiB of
/// buffers per file, and more parallelism over one connection per data centre buys nothing.
pub const MAX_PARTS_IN_FLIGHT: usize = 32;

/// One `upload.getFile` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Position in the plan, from 0.
    pub index: usize,
    /// Byte offset of the request: a multiple of [`ALIGNMENT`].
    pub offset: u64,
    /// Bytes asked for: a divisor of [`PART_SIZE`] and a multiple of [`ALIGNMENT`] (the plan
    /// always asks for [`PART_SIZE`]), and `offset + limit` never passes the next 1 MiB
    /// boundary.
    pub limit: u32,
    /// Leading bytes of the answer the caller already has (a resume inside this part).
    pub skip: u64,
}

/// The parts that fetch bytes `start..size` of a file. Empty when `start >= size`.
pub fn plan(start: u64, size: u64) -> Vec<Part> {
    let mut parts = Vec::new();
    if start >= size {
        return parts;
    }
    let mut offset = start - start % PART_SIZE;
    let mut skip = start - offset;
    while offset < size {
        let boundary = (offset / PART_SIZE + 1) * PART_SIZE;
        let limit = boundary - offset;
        parts.push(Part {
            index: parts.len(),
            offset,
            // `limit` is at most PART_SIZE (1 MiB), which fits in a u32.
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
            skip,
        });
        offset = boundary;
        skip = 0;
    }
    parts
}

/// How many parts of a file of `size` bytes to keep in flight, given the configured `threads`.
///
/// Bigger files get more, as tdl and SaveAny-Bot do, but where they shrink `threads` for small
/// files, this grows it for big ones: `threads` below 64 MiB, twice that from 64 MiB, four
/// times from 512 MiB, never more than [`MAX_PARTS_IN_FLIGHT`] (unless `threads` itself is
/// larger) and never more than the file has parts. The cost of a part in flight is one 1 MiB
/// buffer, so memory per download is about this number of MiB.
pub fn parts_in_flight(size: u64, threads: usize, parts: usize) -> usize {
    let threads = threads.max(1);
    let scaled = if size >= 512 * PART_SIZE {
        threads.saturating_mul(4)
    } else if size >= 64 * PART_SIZE {
        threads.saturating_mul(2)
    } else {
        threads
    };
    scaled.min(MAX_PARTS_IN_FLIGHT.max(threads)).min(parts).max(1)
}

/// Whether a request obeys precise mode's rules, with a limit that divides 1 MiB besides (see
/// the module's documentation); the fake enforces exactly this.
pub fn is_valid_request(offset: u64, limit: u32) -> bool {
    let limit = u64::from(limit);
    offset.is_multiple_of(ALIGNMENT)
        && limit.is_multiple_of(ALIGNMENT)
        && limit > 0
        && limit <= PART_SIZE
        && PART_SIZE.is_multiple_of(limit)
        && offset / PART_SIZE == (offset + limit - 1) / PART_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = PART_SIZE;

    #[test]
    fn plans_cover_exactly_the_missing_bytes_with_valid_requests() {
        for size in [1, 1023, 1024, MIB - 1, MIB, MIB + 1, 10 * MIB + 12_345] {
            for start in [0, 1, 1023, 1024, MIB - 1, MIB, MIB + 1, size / 2, size - 1] {
                if start >= size {
                    continue;
                }
                let parts = plan(start, size);
                assert!(!parts.is_empty());
                assert_eq!(
                    parts[0].offset + parts[0].skip,
                    start,
                    "size {size} start {start}"
                );
                for (index, part) in parts.iter().enumerate() {
                    assert_eq!(part.index, index);
                    assert_eq!(u64::from(part.limit), MIB, "{part:?}");
                    assert!(is_valid_request(part.offset, part.limit), "{part:?}");
                    if index > 0 {
                        let previous = parts[index - 1];
                        assert_eq!(previous.offset + u64::from(previous.limit), part.offset);
                        assert_eq!(part.skip, 0);
                    }
                }
                let last = parts[parts.len() - 1];
                assert!(last.offset < size && last.offset + u64::from(last.limit) >= size);
            }
        }
    }

    #[test]
    fn a_resume_inside_a_part_requests_the_whole_part() {
        assert_eq!(
            plan(1500, 3 * MIB),
            vec![
                Part {
                    index: 0,
                    offset: 0,
                    limit: MIB as u32,
                    skip: 1500
                },
                Part {
                    index: 1,
                    offset: MIB,
                    limit: MIB as u32,
                    skip: 0
                },
                Part {
                    index: 2,
                    offset: 2 * MIB,
                    limit: MIB as u32,
                    skip: 0
                },
            ]
        );
    }

    #[test]
    fn nothing_is_planned_past_the_end() {
        assert!(plan(0, 0).is_empty());
        assert!(plan(5, 5).is_empty());
        assert!(plan(6, 5).is_empty());
    }

    #[test]
    fn precise_mode_rules() {
        assert!(is_valid_request(0, MIB as u32));
        assert!(is_valid_request(MIB - 1024, 1024));
        assert!(is_valid_request(3072, 4096));
        assert!(!is_valid_request(3072, 5120), "limit does not divide 1 MiB");
        assert!(
            !is_valid_request(1024, (MIB - 1024) as u32),
            "limit does not divide 1 MiB"
        );
        assert!(!is_valid_request(1, 1024), "misaligned offset");
        assert!(!is_valid_request(0, 1000), "misaligned limit");
        assert!(!is_valid_request(0, 0), "empty limit");
        assert!(!is_valid_request(0, (MIB + 1024) as u32), "limit above 1 MiB");
        assert!(!is_valid_request(MIB - 1024, 2048), "crosses a 1 MiB boundary");
    }

    #[test]
    fn bigger_files_get_more_parts_in_flight() {
        assert_eq!(parts_in_flight(10 * MIB, 4, 10), 4);
        assert_eq!(parts_in_flight(100 * MIB, 4, 100), 8);
        assert_eq!(parts_in_flight(1000 * MIB, 4, 1000), 16);
        assert_eq!(parts_in_flight(1000 * MIB, 16, 1000), 32, "capped");
        assert_eq!(
            parts_in_flight(1000 * MIB, 64, 1000),
            64,
            "threads above the cap win"
        );
        assert_eq!(parts_in_flight(3 * MIB, 8, 3), 3, "never more than the parts");
        assert_eq!(parts_in_flight(0, 0, 0), 1);
    }
}
