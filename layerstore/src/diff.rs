//! Upper tree → layer tar.
