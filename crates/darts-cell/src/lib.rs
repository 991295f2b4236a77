//! darts-cell
