//! darts-data
