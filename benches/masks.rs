//! Mask UDF micro-benchmarks: each method on 1M-row Utf8 and Int64 arrays,
//! side by side with the bare keyed HMAC-SHA256 primitive.
//!
//! `cargo bench -p veil-udfs --bench masks`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use datafusion::arrow::array::{ArrayRef, DictionaryArray, Int64Array, StringArray};
use datafusion::arrow::datatypes::{Field, Int32Type};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use veil_udfs::{mask_udf, KeyHandle, MaskKey, MaskSpec, TruncUnit};

const N: usize = 1_000_000;

fn key() -> MaskKey {
    MaskKey::new(
        KeyHandle {
            id: "bench".into(),
            version: 1,
        },
        [7u8; 32],
    )
}

fn strings() -> ArrayRef {
    // 16-byte values.
    Arc::new(StringArray::from_iter_values(
        (0..N).map(|i| format!("user-{i:011}")),
    ))
}

fn ints() -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(
        (0..N as i64).map(|i| i * 7919),
    ))
}

fn invoke(udf: &ScalarUDF, input: &ArrayRef) -> ArrayRef {
    let field = Arc::new(Field::new("c", input.data_type().clone(), true));
    let ret = udf.return_type(&[input.data_type().clone()]).expect("type");
    let args = ScalarFunctionArgs {
        args: vec![ColumnarValue::Array(Arc::clone(input))],
        arg_fields: vec![field],
        number_rows: input.len(),
        return_field: Arc::new(Field::new("m", ret, true)),
        config_options: Arc::new(ConfigOptions::default()),
    };
    match udf.invoke_with_args(args).expect("invoke") {
        ColumnarValue::Array(a) => a,
        ColumnarValue::Scalar(_) => unreachable!(),
    }
}

fn bench(c: &mut Criterion) {
    let s = strings();
    let i = ints();
    let mut g = c.benchmark_group("mask_1m");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);

    // The bare primitive: keyed HMAC-SHA256, state precomputed, 16-byte inputs.
    let state = <Hmac<Sha256> as Mac>::new_from_slice(&[7u8; 32]).expect("key");
    let values: Vec<String> = (0..N).map(|i| format!("user-{i:011}")).collect();
    g.bench_function("bare_hmac_sha256_16B", |b| {
        b.iter(|| {
            let mut acc = 0u8;
            for v in &values {
                let mut m = state.clone();
                m.update(v.as_bytes());
                acc ^= m.finalize().into_bytes()[0];
            }
            acc
        })
    });

    let specs: Vec<(&str, MaskSpec)> = vec![
        ("hash", MaskSpec::Hash(key())),
        ("encrypt", MaskSpec::Encrypt(key())),
        ("null", MaskSpec::Null),
        ("constant", MaskSpec::Constant("***".into())),
        (
            "regex",
            MaskSpec::Regex {
                pattern: "[0-9]".into(),
                replacement: "#".into(),
            },
        ),
        ("show_last_4", MaskSpec::ShowLast(4)),
    ];
    for (name, spec) in specs {
        let udf = mask_udf(spec).expect("udf");
        g.bench_with_input(BenchmarkId::new(name, "utf8"), &s, |b, a| {
            b.iter(|| invoke(&udf, a))
        });
    }
    // A fresh UDF per iteration: HASH remembers integer tokens within one
    // instance (one statement), which would turn later iterations into
    // cache lookups. 1M distinct values, so every value is hashed.
    for (name, spec) in [
        ("hash", MaskSpec::Hash(key())),
        ("encrypt", MaskSpec::Encrypt(key())),
        ("round", MaskSpec::Round(1000.0)),
        ("null", MaskSpec::Null),
    ] {
        g.bench_with_input(BenchmarkId::new(name, "int64"), &i, |b, a| {
            b.iter_batched(
                || mask_udf(spec.clone()).expect("udf"),
                |udf| invoke(&udf, a),
                BatchSize::SmallInput,
            )
        });
    }
    let dates: ArrayRef = Arc::new(datafusion::arrow::array::Date32Array::from_iter_values(
        (0..N as i32).map(|d| d % 20_000),
    ));
    let udf = mask_udf(MaskSpec::DateTrunc(TruncUnit::Month)).expect("udf");
    g.bench_with_input(
        BenchmarkId::new("date_trunc_month", "date32"),
        &dates,
        |b, a| b.iter(|| invoke(&udf, a)),
    );

    // Low cardinality: a dictionary of 3 values masks 3 values, not 1M.
    let keys = datafusion::arrow::array::Int32Array::from_iter_values((0..N as i32).map(|k| k % 3));
    let dict: ArrayRef = Arc::new(
        DictionaryArray::<Int32Type>::try_new(
            keys,
            Arc::new(StringArray::from(vec!["EU", "US", "APAC"])),
        )
        .expect("dict"),
    );
    let udf = mask_udf(MaskSpec::Hash(key())).expect("udf");
    g.bench_with_input(BenchmarkId::new("hash", "dict3"), &dict, |b, a| {
        b.iter(|| invoke(&udf, a))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
