// Sealing with a caller-chosen nonce needs jarvis-crypt's `hazmat` feature, which this
// package does not enable.
fn main() {
    let key = [7u8; 32];
    let _ = jarvis_crypt::cipher::seal_with_nonce(&key, &[1u8; 12], b"", b"value");
}
