//! One module per command area.
