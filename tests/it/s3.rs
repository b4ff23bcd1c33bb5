//! The S3 client against the real object store.

use aws_sdk_s3::{
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart},
};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sluice_core::s3;
use sluice_testkit::TestEnv;

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_head_list_and_delete_round_trip() {
    let env = TestEnv::new().await;
    let client = env.s3().await;
    let bucket = &env.config.s3.bucket;
    let body = random_bytes(64 * 1024);
    for key in ["raw/cats/a.jpg", "raw/cats/b.jpg", "raw/dogs/c.jpg"] {
        client.put_object().bucket(bucket).key(key).body(ByteStream::from(body.clone())).send().await.expect("put");
    }

    let got = client.get_object().bucket(bucket).key("raw/cats/a.jpg").send().await.expect("get");
    let bytes = got.body.collect().await.expect("read body").into_bytes();
    assert_eq!(Sha256::digest(&bytes), Sha256::digest(&body), "downloaded bytes match");

    let head = client.head_object().bucket(bucket).key("raw/cats/b.jpg").send().await.expect("head");
    assert_eq!(head.content_length(), Some(64 * 1024));

    let listing = client.list_objects_v2().bucket(bucket).prefix("raw/cats/").send().await.expect("list");
    let keys: Vec<_> = listing.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["raw/cats/a.jpg", "raw/cats/b.jpg"]);

    client.delete_object().bucket(bucket).key("raw/cats/a.jpg").send().await.expect("delete");
    let err = client.head_object().bucket(bucket).key("raw/cats/a.jpg").send().await.expect_err("gone");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(404));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_over_16_mib_keeps_every_byte() {
    let env = TestEnv::new().await;
    let client = env.s3().await;
    let bucket = &env.config.s3.bucket;
    let part_size = 6 * 1024 * 1024;
    let body = random_bytes(3 * part_size + 12_345);
    let key = "raw/big/video.mp4";

    let upload = client.create_multipart_upload().bucket(bucket).key(key).send().await.expect("create upload");
    let upload_id = upload.upload_id().expect("upload id");
    let mut parts = Vec::new();
    for (index, chunk) in body.chunks(part_size).enumerate() {
        let number = i32::try_from(index + 1).expect("few parts");
        let part = client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await
            .expect("upload part");
        parts.push(CompletedPart::builder().part_number(number).set_e_tag(part.e_tag().map(str::to_owned)).build());
    }
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .expect("complete upload");

    let got = client.get_object().bucket(bucket).key(key).send().await.expect("get");
    assert_eq!(got.content_length(), Some(i64::try_from(body.len()).expect("fits")));
    let bytes = got.body.collect().await.expect("read body").into_bytes();
    assert_eq!(hex::encode(Sha256::digest(&bytes)), hex::encode(Sha256::digest(&body)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_rejected() {
    let env = TestEnv::new().await;
    let mut config = env.config.s3.clone();
    config.secret_access_key = "0".repeat(64).into();
    let client = s3::client(&config).await;
    let err = client
        .put_object()
        .bucket(&config.bucket)
        .key("should-not-exist")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .expect_err("a wrong secret must be refused");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(403), "{err:?}");
    let err = s3::check_bucket(&client, &config.bucket).await.expect_err("head bucket refused too");
    assert!(err.to_string().contains("HeadBucket"), "{err}");

    let listing = env.s3().await.list_objects_v2().bucket(&config.bucket).send().await.expect("list");
    assert_eq!(listing.key_count(), Some(0), "nothing was written with the wrong secret");
}
