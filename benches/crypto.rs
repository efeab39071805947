//! Chunk token throughput: Lazarus's binary-token path beside the `fernet` crate's text API
//! (which base64-encodes and decodes every token), per core, on 1 MiB chunks.
//!
//! Run: `cargo bench --bench crypto`.

use std::time::Instant;

use base64::Engine as _;
use lazarus::crypto::Keyring;
use lazarus::crypto::keys::generate;
use lazarus::crypto::token;

const CHUNK: usize = 1 << 20;
const ROUNDS: usize = 256;

fn mb_per_s(bytes: usize, seconds: f64) -> f64 {
    bytes as f64 / seconds / 1e6
}

fn main() {
    let ring = Keyring::parse(&generate(), "bench").unwrap();
    let key = ring.primary().unwrap();
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    let total = CHUNK * ROUNDS;

    let started = Instant::now();
    for _ in 0..ROUNDS {
        std::hint::black_box(token::encrypt(key, &chunk));
    }
    let ours_enc = mb_per_s(total, started.elapsed().as_secs_f64());
    let started = Instant::now();
    for _ in 0..ROUNDS {
        std::hint::black_box(key.fernet().encrypt(&chunk));
    }
    let crate_enc = mb_per_s(total, started.elapsed().as_secs_f64());

    let binary = token::encrypt(key, &chunk);
    let text = base64::engine::general_purpose::URL_SAFE.encode(&binary);
    let mut buf = binary.clone();
    let started = Instant::now();
    for _ in 0..ROUNDS {
        buf.copy_from_slice(&binary);
        std::hint::black_box(token::decrypt_in_place(&ring, &mut buf, None).unwrap());
    }
    let ours_dec = mb_per_s(total, started.elapsed().as_secs_f64());
    let started = Instant::now();
    for _ in 0..ROUNDS {
        std::hint::black_box(key.fernet().decrypt(&text).unwrap());
    }
    let crate_dec = mb_per_s(total, started.elapsed().as_secs_f64());

    println!("1 MiB chunk tokens, one core, {ROUNDS} rounds:");
    println!("  {:<34} {:>9} {:>9}", "", "encrypt", "decrypt");
    println!(
        "  {:<34} {:>6.0} MB/s {:>6.0} MB/s",
        "lazarus binary tokens", ours_enc, ours_dec
    );
    println!(
        "  {:<34} {:>6.0} MB/s {:>6.0} MB/s",
        "fernet crate (base64 text tokens)", crate_enc, crate_dec
    );
    println!(
        "  ratio lazarus / fernet crate       {:>6.2}x    {:>6.2}x",
        ours_enc / crate_enc,
        ours_dec / crate_dec
    );
}
