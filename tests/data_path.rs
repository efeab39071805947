//! The data path end to end through the real binary: downloads with failover across two real
//! S3 servers (moto and s3s-fs) and a local store, resumable downloads, streaming decryption
//! of chunked files and of the seed's single-token files, and a clear error for each bad input.

mod common;

use std::process::Output;
use std::time::Duration;

use common::s3::{ACCESS_KEY, Moto, S3sFs, SECRET_KEY, Throttle, create_bucket, put_object};
use common::{Sandbox, kill9, text};
use lazarus::crypto::Keyring;
use lazarus::crypto::chunked::{self, EncodeOptions};
use lazarus::crypto::keys::generate;

const BUCKET: &str = "backups";
const PREFIX: &str = "db/";
const KEY: &str = "shop/2026-11-24.dump.zst.lzr";

const FETCH: &str = r#"
name = "fetch"
[params]
key = { required = true }
dest = { required = true }
checkpoint_every = { default = "67108864" }
[[steps]]
id = "download"
activity = "download"
with = { key = "${params.key}", dest = "${params.dest}", checkpoint_every = "${params.checkpoint_every}" }
[[steps]]
id = "decrypt"
activity = "decrypt"
with = { src = "${steps.download.path}", dest = "${params.dest}.plain", decompress = true }
"#;

/// A sandbox with keys and a stores configuration.
struct Fixture {
    sb: Sandbox,
    key: String,
    ring: Keyring,
}

impl Fixture {
    fn new(stores: &[(&str, String)], local: &[&str]) -> Fixture {
        let sb = Sandbox::new();
        let key = generate();
        let ring = Keyring::parse(&key, "test").unwrap();
        let mut config = String::new();
        for (name, endpoint) in stores {
            config.push_str(&format!(
                "[[stores]]\nname = \"{name}\"\nkind = \"s3\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\nbucket = \"{BUCKET}\"\nprefix = \"{PREFIX}\"\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n\n"
            ));
        }
        for name in local {
            config.push_str(&format!(
                "[[stores]]\nname = \"{name}\"\nkind = \"local\"\npath = \"{name}-store\"\n\n"
            ));
        }
        let path = sb.write("lazarus.toml", &config);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        sb.write("fetch.toml", FETCH);
        Fixture { sb, key, ring }
    }

    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = self.sb.cmd();
        cmd.env("LAZARUS_KEYS", &self.key).args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run lazarus")
    }

    fn put_local(&self, store: &str, bytes: &[u8]) {
        self.sb.write(&format!("{store}-store/{KEY}"), "");
        std::fs::write(self.sb.path().join(format!("{store}-store/{KEY}")), bytes).unwrap();
    }

    fn fetch(&self, run: &str, extra: &[&str]) -> Output {
        let dest = format!("dest={}", self.sb.path().join("out/backup.lzr").display());
        let key = format!("key={KEY}");
        let mut args = vec![
            "run",
            "fetch.toml",
            "--id",
            run,
            "--reason",
            "test",
            "-p",
            &key,
            "-p",
            &dest,
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    fn restored(&self) -> Vec<u8> {
        std::fs::read(self.sb.path().join("out/backup.lzr.plain")).unwrap_or_default()
    }
}

/// Data that does not compress, so the object is as big as the data.
fn random_data(len: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    data
}

fn encode(data: &[u8], ring: &Keyring, chunk_size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let options = EncodeOptions {
        chunk_size,
        ..Default::default()
    };
    chunked::encode(data, &mut out, ring.primary().unwrap(), options).unwrap();
    out
}

fn download_output(sb: &Sandbox, run: &str) -> serde_json::Value {
    Sandbox::step(&sb.status(run), "download")["output"].clone()
}

fn part_size(sb: &Sandbox) -> u64 {
    std::fs::metadata(sb.path().join("out/backup.lzr.part")).map_or(0, |m| m.len())
}

#[test]
fn download_fails_over_and_resumes_on_the_next_store_when_the_primary_stops() {
    let mut moto = Moto::start();
    let s3s = S3sFs::start(&std::env::temp_dir().join(format!("lz-s3s-{}", std::process::id())));
    create_bucket(&moto.endpoint(), BUCKET);
    create_bucket(&s3s.endpoint(), BUCKET);
    let slow = Throttle::start(format!("127.0.0.1:{}", moto.port).parse().unwrap(), 6 << 20);
    let fx = Fixture::new(
        &[("r2", slow.endpoint()), ("b2", s3s.endpoint())],
        &["local"],
    );
    let data = random_data(24 << 20);
    let object = encode(&data, &fx.ring, 1 << 20);
    put_object(
        &moto.endpoint(),
        BUCKET,
        &format!("{PREFIX}{KEY}"),
        object.clone(),
    );
    put_object(
        &s3s.endpoint(),
        BUCKET,
        &format!("{PREFIX}{KEY}"),
        object.clone(),
    );
    fx.put_local("local", &object);

    let dest = format!("dest={}", fx.sb.path().join("out/backup.lzr").display());
    let key = format!("key={KEY}");
    let mut runner = fx
        .cmd(&[
            "run",
            "fetch.toml",
            "--id",
            "f1",
            "--reason",
            "test",
            "-p",
            &key,
            "-p",
            &dest,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    fx.sb
        .wait_for("the download to get going", Duration::from_secs(60), || {
            part_size(&fx.sb) >= 4 << 20
        });
    moto.kill();
    assert!(
        runner.wait().unwrap().success(),
        "the run succeeds on the other stores"
    );

    let out = download_output(&fx.sb, "f1");
    let sources = out["sources"].as_array().unwrap();
    assert_eq!(sources[0]["store"], "r2");
    assert_eq!(sources[0]["from"], 0);
    let cut = sources[0]["to"].as_u64().unwrap();
    assert!(
        cut >= 4 << 20 && cut < object.len() as u64,
        "primary served {cut} bytes"
    );
    assert_eq!(sources[1]["store"], "b2");
    assert_eq!(
        sources[1]["from"], cut,
        "the secondary continues at the same offset"
    );
    assert_eq!(sources[1]["to"], object.len() as u64);
    assert_eq!(out["served_by"], "b2");
    assert_eq!(out["authenticated"], true);
    let skipped = out["skipped"].to_string();
    assert!(skipped.contains("r2"), "{skipped}");
    assert_eq!(fx.restored(), data);
}

#[test]
fn a_flipped_byte_on_the_primary_fails_over_at_the_damaged_chunk() {
    let moto = Moto::start();
    let s3s =
        S3sFs::start(&std::env::temp_dir().join(format!("lz-s3s-flip-{}", std::process::id())));
    create_bucket(&moto.endpoint(), BUCKET);
    create_bucket(&s3s.endpoint(), BUCKET);
    let fx = Fixture::new(&[("r2", s3s.endpoint()), ("b2", moto.endpoint())], &[]);
    let data = random_data(6 << 20);
    let object = encode(&data, &fx.ring, 1 << 20);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &object).unwrap();
    let third = chunked::open(file.as_file(), &fx.ring)
        .unwrap()
        .index
        .entries[2]
        .offset;
    let mut tampered = object.clone();
    tampered[third as usize + 1000] ^= 0x01;
    put_object(&s3s.endpoint(), BUCKET, &format!("{PREFIX}{KEY}"), tampered);
    put_object(
        &moto.endpoint(),
        BUCKET,
        &format!("{PREFIX}{KEY}"),
        object.clone(),
    );

    let out = fx.fetch("t1", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = download_output(&fx.sb, "t1");
    let skipped = out["skipped"].as_array().unwrap();
    assert_eq!(skipped[0]["store"], "r2", "the report names the bad store");
    assert_eq!(
        skipped[0]["reason"],
        format!("HMAC failure at chunk 2 (offset {third})")
    );
    let sources = out["sources"].as_array().unwrap();
    assert_eq!(sources[0]["store"], "r2");
    assert_eq!(sources[0]["to"], third);
    assert_eq!(sources[1]["store"], "b2");
    assert_eq!(sources[1]["from"], third);
    assert_eq!(fx.restored(), data);
}

#[test]
fn chunks_damaged_in_different_places_of_two_copies_come_from_whichever_has_them_good() {
    let moto = Moto::start();
    let fx = Fixture::new(&[("r2", moto.endpoint())], &["local"]);
    create_bucket(&moto.endpoint(), BUCKET);
    let data = random_data(8 << 20);
    let object = encode(&data, &fx.ring, 1 << 20);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &object).unwrap();
    let entries = chunked::open(file.as_file(), &fx.ring)
        .unwrap()
        .index
        .entries;
    let (second, sixth) = (entries[1].offset, entries[5].offset);
    // r2 is damaged at chunk 1, local at chunk 5: every chunk is good in one of them.
    let mut on_r2 = object.clone();
    on_r2[second as usize + 500] ^= 0x01;
    let mut on_local = object.clone();
    on_local[sixth as usize + 500] ^= 0x01;
    put_object(&moto.endpoint(), BUCKET, &format!("{PREFIX}{KEY}"), on_r2);
    fx.put_local("local", &on_local);

    let out = fx.fetch("mix", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = download_output(&fx.sb, "mix");
    let sources: Vec<(String, u64, u64)> = out["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["store"].as_str().unwrap().to_string(),
                s["from"].as_u64().unwrap(),
                s["to"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sources,
        vec![
            ("r2".to_string(), 0, second),
            ("local".to_string(), second, sixth),
            ("r2".to_string(), sixth, object.len() as u64),
        ],
        "failover goes back to the first store past the second's damage"
    );
    assert_eq!(fx.restored(), data);
}

#[test]
fn a_killed_download_resumes_from_its_checkpoint() {
    let moto = Moto::start();
    create_bucket(&moto.endpoint(), BUCKET);
    let slow = Throttle::start(format!("127.0.0.1:{}", moto.port).parse().unwrap(), 6 << 20);
    let fx = Fixture::new(&[("r2", slow.endpoint())], &[]);
    let data = random_data(20 << 20);
    let object = encode(&data, &fx.ring, 1 << 20);
    put_object(&moto.endpoint(), BUCKET, &format!("{PREFIX}{KEY}"), object);

    let dest = format!("dest={}", fx.sb.path().join("out/backup.lzr").display());
    let key = format!("key={KEY}");
    let mut runner = fx
        .cmd(&[
            "run",
            "fetch.toml",
            "--id",
            "k1",
            "--reason",
            "test",
            "-p",
            &key,
            "-p",
            &dest,
            "-p",
            "checkpoint_every=2097152",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    fx.sb.wait_for(
        "the download to pass a few checkpoints",
        Duration::from_secs(60),
        || part_size(&fx.sb) >= 8 << 20,
    );
    kill9(&mut runner);

    let out = fx.run(&["resume", "k1"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = download_output(&fx.sb, "k1");
    let resumed = out["resumed_from"].as_u64().unwrap();
    assert!(
        resumed >= 4 << 20,
        "resumed from byte {resumed}, not from the start"
    );
    assert_eq!(
        Sandbox::step(&fx.sb.status("k1"), "download")["attempts"],
        2
    );
    assert_eq!(fx.restored(), data);
}

fn python(script: &str, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("this test needs python3 with the cryptography package");
    assert!(
        out.status.success(),
        "python3 failed (needs the cryptography package): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

const PY_LEGACY: &str = "import sys, gzip\nfrom cryptography.fernet import Fernet\nkey, src, dst = sys.argv[1:4]\nopen(dst, 'wb').write(Fernet(key.encode()).encrypt(gzip.compress(open(src, 'rb').read())))\n";

#[test]
fn a_legacy_backup_made_by_python_downloads_and_decrypts() {
    let fx = Fixture::new(&[], &["local"]);
    let data: Vec<u8> = (0..3_000_000u32)
        .flat_map(|i| format!("{i},row\n").into_bytes())
        .take(5 << 20)
        .collect();
    let plain = fx.sb.write("plain.dump", "");
    std::fs::write(&plain, &data).unwrap();
    let legacy = fx.sb.path().join(format!("local-store/{KEY}"));
    std::fs::create_dir_all(legacy.parent().unwrap()).unwrap();
    python(
        PY_LEGACY,
        &[&fx.key, plain.to_str().unwrap(), legacy.to_str().unwrap()],
    );

    let out = fx.fetch("l1", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let report = fx.sb.status("l1");
    assert_eq!(
        Sandbox::step(&report, "download")["output"]["format"],
        "legacy_fernet"
    );
    assert_eq!(
        Sandbox::step(&report, "decrypt")["output"]["compression"],
        "none"
    );
    assert_eq!(fx.restored(), data);

    // The seed's steps one by one: decrypt to the gzip file, then decompress it.
    fx.sb.write(
        "steps.toml",
        &format!(
            r#"name = "steps"
[[steps]]
id = "decrypt"
activity = "decrypt"
with = {{ src = "{src}", dest = "{dir}/b.gz" }}
[[steps]]
id = "decompress"
activity = "decompress"
with = {{ src = "${{steps.decrypt.path}}", dest = "{dir}/b.dump" }}
"#,
            src = legacy.display(),
            dir = fx.sb.path().display()
        ),
    );
    let out = fx.run(&["run", "steps.toml", "--id", "l2", "--reason", "test"]);
    assert!(out.status.success(), "{}", text(&out));
    let report = fx.sb.status("l2");
    assert_eq!(
        Sandbox::step(&report, "decrypt")["output"]["compression"],
        "gzip"
    );
    assert_eq!(
        Sandbox::step(&report, "decompress")["output"]["compression"],
        "gzip"
    );
    assert_eq!(std::fs::read(fx.sb.path().join("b.dump")).unwrap(), data);
}

const PY_DECRYPT_TOKEN: &str = "import sys\nfrom cryptography.fernet import Fernet\nsys.stdout.buffer.write(Fernet(sys.argv[1].encode()).decrypt(open(sys.argv[2], 'rb').read()))\n";

#[test]
fn a_chunk_of_the_lazarus_format_is_a_token_python_decrypts() {
    use base64::Engine as _;
    let key = generate();
    let ring = Keyring::parse(&key, "t").unwrap();
    let data = random_data(300_000);
    let object = encode(&data, &ring, 100_000);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &object).unwrap();
    let opened = chunked::open(file.as_file(), &ring).unwrap();
    let entry = opened.index.entries[1];
    let token =
        &object[entry.offset as usize + chunked::FRAME_PREFIX..][..entry.token_len as usize];
    let text = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        text.path(),
        base64::engine::general_purpose::URL_SAFE.encode(token),
    )
    .unwrap();
    let from_python = python(PY_DECRYPT_TOKEN, &[&key, text.path().to_str().unwrap()]);
    assert_eq!(
        from_python,
        lazarus::crypto::token::decrypt(&ring, token, None).unwrap()
    );
    assert_eq!(
        &from_python[..16],
        &opened.header.file_id,
        "the plaintext names its file"
    );
    assert_eq!(
        &from_python[16..24],
        &1u64.to_be_bytes(),
        "and its position"
    );
}

#[test]
fn bad_inputs_get_clear_errors_and_leave_nothing_under_the_final_name() {
    let fx = Fixture::new(&[], &["a", "b"]);
    let data = random_data(3 << 20);
    let object = encode(&data, &fx.ring, 1 << 20);

    // Missing everywhere.
    let out = fx.fetch("m1", &[]);
    assert_eq!(out.status.code(), Some(3));
    let error = fx.sb.status("m1")["error"].as_str().unwrap().to_string();
    assert!(
        error.contains(&format!("object {KEY} is in no store")),
        "{error}"
    );
    assert!(
        error.contains("a: ") && error.contains("b: ") && error.contains("not found"),
        "{error}"
    );

    // Truncated everywhere.
    fx.put_local("a", &object[..object.len() - 50]);
    fx.put_local("b", &object[..object.len() - 50]);
    let out = fx.fetch("m2", &[]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "damaged everywhere: refused, not halted"
    );
    let error = fx.sb.status("m2")["error"].as_str().unwrap().to_string();
    assert!(error.contains("truncated"), "{error}");
    assert!(
        !fx.sb.path().join("out/backup.lzr").exists(),
        "no partial file under the final name"
    );

    // Wrong key: the good copy downloads (structure checks) but nothing decrypts.
    fx.put_local("a", &object);
    let other = generate();
    let mut cmd = fx.sb.cmd();
    let dest = format!("dest={}", fx.sb.path().join("out/backup.lzr").display());
    let key = format!("key={KEY}");
    let out = cmd
        .env("LAZARUS_KEYS", &other)
        .args([
            "run",
            "fetch.toml",
            "--id",
            "m3",
            "--reason",
            "test",
            "-p",
            &key,
            "-p",
            &dest,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let report = fx.sb.status("m3");
    let error = report["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("HMAC failure") || error.contains("HMAC check failed"),
        "{error}"
    );
    assert!(
        !error.contains(&other) && !error.contains(&fx.key),
        "no key in errors"
    );
    assert!(!fx.sb.path().join("out/backup.lzr.plain").exists());
    assert!(!fx.sb.path().join("out/backup.lzr.plain.part").exists());

    // No keys at all.
    let mut cmd = fx.sb.cmd();
    let out = cmd
        .env_remove("LAZARUS_KEYS")
        .args([
            "run",
            "fetch.toml",
            "--id",
            "m4",
            "--reason",
            "test",
            "-p",
            &key,
            "-p",
            &dest,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let error = fx.sb.status("m4")["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("no encryption keys configured: set LAZARUS_KEYS"),
        "{error}"
    );
}

#[test]
fn storage_check_says_which_stores_are_reachable_and_writable() {
    let mut moto = Moto::start();
    create_bucket(&moto.endpoint(), BUCKET);
    let fx = Fixture::new(&[("r2", moto.endpoint())], &["local"]);
    let out = fx.run(&["storage", "check", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["store"], "r2");
    assert_eq!(rows[0]["writable"], true);
    assert_eq!(rows[1]["writable"], true);
    moto.kill();
    let out = fx.run(&["storage", "check"]);
    assert_eq!(out.status.code(), Some(1));
    let shown = text(&out);
    assert!(
        shown.contains("r2") && shown.contains("UNREACHABLE"),
        "{shown}"
    );
    assert!(!shown.contains(SECRET_KEY), "no credentials in output");
}

#[test]
fn a_file_left_at_the_destination_is_reused_only_if_it_is_this_object() {
    let fx = Fixture::new(&[], &["local"]);
    let first = random_data(2 << 20);
    fx.put_local("local", &encode(&first, &fx.ring, 1 << 20));
    let out = fx.fetch("r1", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = fx.fetch("r2", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        download_output(&fx.sb, "r2")["reused"],
        true,
        "same object: reused"
    );

    // Another object under the same key: the old file must not pass for it.
    let second = random_data(3 << 20);
    fx.put_local("local", &encode(&second, &fx.ring, 1 << 20));
    let out = fx.fetch("r3", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(download_output(&fx.sb, "r3")["reused"], false);
    assert_eq!(fx.restored(), second);
}

#[test]
fn encrypt_once_and_upload_the_same_bytes_to_every_store() {
    let moto = Moto::start();
    let s3s = S3sFs::start(&std::env::temp_dir().join(format!("lz-s3s-up-{}", std::process::id())));
    create_bucket(&moto.endpoint(), BUCKET);
    create_bucket(&s3s.endpoint(), BUCKET);
    let fx = Fixture::new(
        &[("r2", moto.endpoint()), ("b2", s3s.endpoint())],
        &["local"],
    );
    let data: Vec<u8> = (0..2_000_000u32)
        .flat_map(|i| format!("{i}\trow\n").into_bytes())
        .collect();
    std::fs::write(fx.sb.path().join("dump"), &data).unwrap();
    fx.sb.write(
        "backup.toml",
        &format!(
            r#"name = "backup"
[[steps]]
id = "encrypt"
activity = "encrypt"
with = {{ src = "{dir}/dump", dest = "{dir}/dump.lzr", chunk_size = 1048576 }}
[[steps]]
id = "upload"
activity = "upload"
with = {{ src = "${{steps.encrypt.path}}", key = "{KEY}" }}
"#,
            dir = fx.sb.path().display()
        ),
    );
    let out = fx.run(&["run", "backup.toml", "--id", "u1", "--reason", "test"]);
    assert!(out.status.success(), "{}", text(&out));
    let report = fx.sb.status("u1");
    let encrypt = &Sandbox::step(&report, "encrypt")["output"];
    let upload = &Sandbox::step(&report, "upload")["output"];
    assert_eq!(upload["landed"], 3);
    let copies: Vec<&str> = upload["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["store"].as_str().unwrap())
        .collect();
    assert_eq!(copies, ["r2", "b2", "local"]);
    assert!(encrypt["compressed_size"].as_u64().unwrap() < data.len() as u64 / 2);

    // Every store holds the very same bytes: fetch from each alone and compare.
    let sha = encrypt["sha256"].as_str().unwrap().to_string();
    for (i, store) in ["r2", "b2", "local"].iter().enumerate() {
        fx.sb.write(
            "one.toml",
            &format!(
                r#"name = "one"
[[steps]]
id = "download"
activity = "download"
with = {{ key = "{KEY}", dest = "{dir}/from-{store}", stores = ["{store}"], sha256 = "{sha}" }}
"#,
                dir = fx.sb.path().display()
            ),
        );
        let id = format!("d{i}");
        let out = fx.run(&["run", "one.toml", "--id", &id, "--reason", "test"]);
        assert!(out.status.success(), "{store}: {}", text(&out));
        assert_eq!(download_output(&fx.sb, &id)["served_by"], *store);
    }
}

#[test]
fn a_multipart_upload_is_checked_by_the_object_it_left_not_by_the_replys_shape() {
    // moto answers CompleteMultipartUpload with a root element the SDK cannot parse; the
    // object is whole all the same, and the upload must count that copy.
    let moto = Moto::start();
    create_bucket(&moto.endpoint(), BUCKET);
    let fx = Fixture::new(&[("r2", moto.endpoint())], &["local"]);
    let data = random_data(70 << 20);
    std::fs::write(fx.sb.path().join("big"), &data).unwrap();
    fx.sb.write(
        "up.toml",
        &format!(
            r#"name = "up"
[[steps]]
id = "upload"
activity = "upload"
with = {{ src = "{dir}/big", key = "{KEY}" }}
[[steps]]
id = "download"
activity = "download"
with = {{ key = "{KEY}", dest = "{dir}/from-r2", stores = ["r2"] }}
"#,
            dir = fx.sb.path().display()
        ),
    );
    let out = fx.run(&["run", "up.toml", "--id", "mp", "--reason", "test"]);
    assert!(out.status.success(), "{}", text(&out));
    let report = fx.sb.status("mp");
    let upload = &Sandbox::step(&report, "upload")["output"];
    assert_eq!(upload["landed"], 2, "{upload}");
    assert_eq!(download_output(&fx.sb, "mp")["served_by"], "r2");
    assert!(std::fs::read(fx.sb.path().join("from-r2")).unwrap() == data);
}
