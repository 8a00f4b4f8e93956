//! shelfboot transfer engine: sans-IO one-to-many sender and receiver with slices, NACK bitmaps, pacing and catch-up.
