//! Content-addressed, OCI-compatible layer store (see DESIGN.md).
