//! `--hold DURATION`: idle-cut detection (placeholder filled below).
