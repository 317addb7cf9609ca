//! `--repeat N`: walk the path N times (placeholder filled below).
