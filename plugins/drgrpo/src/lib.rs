//! The `drgrpo` plugin.
