//! Part of jarvis-crypt; filled by a later issue.
