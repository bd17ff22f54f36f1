//! The `calc_tools` plugin.
