//! `POST /v1/embeddings`.

use serde_json::{Value, json};

use super::*;

/// The float vectors of an embeddings reply, in order.
fn vectors(reply: &Value) -> Result<Vec<Vec<f64>>> {
    let data = reply["data"].as_array().context("no data array")?;
    data.iter()
        .map(|item| {
            let values = item["embedding"].as_array().context("no embedding array")?;
            values
                .iter()
                .map(|x| x.as_f64().context("not a number"))
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn embeddings_are_deterministic_unit_vectors() -> Result<()> {
    let sim = start().await?;
    let body = json!({"model": "text-embedding-3-small", "input": ["apple", "pear", "apple"]});
    let (status, reply) = post_json(&sim, "/embeddings", &body).await?;
    let (_, again) = post_json(&sim, "/embeddings", &body).await?;

    assert_eq!(status, 200);
    assert_eq!(reply["object"], "list");
    assert_eq!(reply["model"], "text-embedding-3-small");
    assert_eq!(reply["data"][2]["index"], 2);
    assert_eq!(reply["data"][0]["object"], "embedding");
    assert_eq!(
        reply["usage"],
        json!({"prompt_tokens": 5, "total_tokens": 5})
    );

    let vectors = vectors(&reply)?;
    assert_eq!(vectors, self::vectors(&again)?);
    assert_eq!(vectors[0], vectors[2]);
    assert_ne!(vectors[0], vectors[1]);
    for vector in &vectors {
        assert_eq!(vector.len(), 384);
        let norm = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
    Ok(())
}

#[tokio::test]
async fn dimensions_and_token_inputs_are_honoured() -> Result<()> {
    let sim = start().await?;
    let body = json!({"model": "m", "input": [[1, 2, 3], [4]], "dimensions": 8});
    let (_, reply) = post_json(&sim, "/embeddings", &body).await?;

    let vectors = vectors(&reply)?;
    assert_eq!((vectors.len(), vectors[0].len()), (2, 8));
    assert_eq!(reply["usage"]["prompt_tokens"], 4);
    Ok(())
}

#[tokio::test]
async fn base64_encoding_carries_little_endian_floats() -> Result<()> {
    let sim = start().await?;
    let body = json!({"model": "m", "input": "x", "dimensions": 3, "encoding_format": "base64"});
    let (_, reply) = post_json(&sim, "/embeddings", &body).await?;

    // 3 floats are 12 bytes, which base64 encodes in 16 characters.
    let encoded = reply["data"][0]["embedding"].as_str().unwrap();
    assert_eq!(encoded.len(), 16);
    assert!(
        encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    );
    Ok(())
}

#[tokio::test]
async fn empty_or_missing_input_is_refused() -> Result<()> {
    let sim = start().await?;
    for body in [
        json!({"model": "m", "input": []}),
        json!({"model": "m", "input": ""}),
        json!({"model": "m"}),
        json!({"model": "m", "input": "x", "encoding_format": "hex"}),
        json!({"model": "m", "input": "x", "dimensions": 0}),
    ] {
        let (status, reply) = post_json(&sim, "/embeddings", &body).await?;
        assert_eq!(status, 400, "{body}");
        assert_eq!(reply["error"]["type"], "invalid_request_error", "{body}");
    }
    Ok(())
}
